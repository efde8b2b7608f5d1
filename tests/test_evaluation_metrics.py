"""Per-organ metrics against medpy 0.5.2 and MONAI on randomized shapes, spacings and anisotropies."""
from __future__ import annotations

import math
import warnings

# The references these tests compare against: medpy is in the test extra (pyproject.toml), torch and MONAI are
# dependencies. A missing one is an error, never a silent skip of every metric test.
import medpy.metric.binary as medpy_binary
import monai.metrics as monai_metrics
import monai.metrics.hausdorff_distance as monai_hausdorff
import numpy as np
import pytest
import torch
from scipy import ndimage

from medseg.errors import ConfigError, InputError
from medseg.evaluation import (
    boundary,
    evaluate_case,
    image_diagonal_mm,
    standard_metrics,
    surface_distances,
    transunet_metrics,
)
from medseg.labels import SYNAPSE8

TOL = 1e-6


# ----------------------------------------------------------------------------------------------------------------
# random masks: blobs with holes and islands, ellipsoids cut by the image edge, thin structures, single voxels


def _random_shape_and_spacing(rng, ndim=3):
    shape = tuple(int(n) for n in rng.integers(6, 36, ndim))
    in_plane = rng.uniform(0.3, 1.5)
    spacing = [in_plane * rng.uniform(0.8, 1.25) for _ in range(ndim)]
    spacing[int(rng.integers(ndim))] *= rng.choice([1.0, 2.0, 5.0])  # anisotropy along a random axis
    return shape, tuple(float(s) for s in spacing)


def _random_mask(rng, shape):
    kind = rng.integers(4)
    if kind == 0:  # smoothed noise: several components, holes
        field = ndimage.gaussian_filter(rng.standard_normal(shape), rng.uniform(0.8, 3.0))
        return field > np.quantile(field, rng.uniform(0.55, 0.97))
    if kind == 1:  # ellipsoid, possibly cut by the image edge
        grids = np.ogrid[tuple(slice(0, n) for n in shape)]
        centre = [rng.uniform(-0.1, 1.1) * n for n in shape]
        radii = [rng.uniform(0.15, 0.6) * n + 0.5 for n in shape]
        return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0
    if kind == 2:  # thin line / plate along an axis, touching the edge
        mask = np.zeros(shape, bool)
        index = [slice(None)] + [int(rng.integers(n)) for n in shape[1:]]
        mask[tuple(index)] = True
        return mask
    mask = np.zeros(shape, bool)  # a few scattered voxels (tiny structures, detached islands)
    for _ in range(int(rng.integers(1, 4))):
        mask[tuple(int(rng.integers(n)) for n in shape)] = True
    return mask


def _random_pair(rng, ndim=3):
    shape, spacing = _random_shape_and_spacing(rng, ndim)
    while True:
        ref = _random_mask(rng, shape)
        if rng.random() < 0.5:  # a prediction near the reference: shifted and/or dilated/eroded
            pred = np.roll(ref, int(rng.integers(-2, 3)), axis=int(rng.integers(ndim)))
            if rng.random() < 0.5:
                pred = ndimage.binary_dilation(pred) if rng.random() < 0.5 else ndimage.binary_erosion(pred)
            if rng.random() < 0.3:
                pred[tuple(int(rng.integers(n)) for n in shape)] = True  # a detached false positive
        else:
            pred = _random_mask(rng, shape)
        if pred.any() and ref.any():
            return pred, ref, spacing


def _onehot(mask):
    return torch.from_numpy(np.ascontiguousarray(mask))[None, None].float()


def _monai_quantile_float64(surface_distance, percentile=None):
    """MONAI's percentile step with the rank computed in float64 (MONAI computes it in float32)."""
    if surface_distance.shape == (0,):
        return torch.tensor(float("nan"))
    return torch.quantile(surface_distance.double(), percentile / 100)


# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [2, 3])
def test_boundary_equals_mask_minus_its_erosion(ndim):
    rng = np.random.default_rng(7 + ndim)
    for _ in range(20):
        shape, _ = _random_shape_and_spacing(rng, ndim)
        mask = _random_mask(rng, shape) if ndim == 3 else rng.random(shape) < 0.6
        structure = ndimage.generate_binary_structure(ndim, 1)
        expected = mask ^ ndimage.binary_erosion(mask, structure=structure, border_value=0)
        assert np.array_equal(boundary(mask), expected)
    full = np.ones((4, 5, 3), bool)  # a mask filling the image: its faces on the image edge are boundary
    assert boundary(full).sum() == full.size - 2 * 3 * 1


@pytest.mark.parametrize("seed", range(6))
def test_transunet_protocol_equals_medpy(seed):
    rng = np.random.default_rng(100 + seed)
    for _ in range(10):
        pred, ref, _ = _random_pair(rng)
        ours = transunet_metrics(pred, ref)
        assert ours["status"] == "scored"
        assert abs(ours["dice"] - medpy_binary.dc(pred, ref)) <= TOL
        assert abs(ours["hd95_voxels"] - medpy_binary.hd95(pred, ref)) <= TOL


@pytest.mark.parametrize("seed", range(4))
def test_spacing_aware_distances_equal_medpy(seed):
    """The pooled percentile of our mm distances equals medpy's hd95 with voxelspacing: same distances in mm."""
    rng = np.random.default_rng(200 + seed)
    for _ in range(10):
        pred, ref, spacing = _random_pair(rng)
        d_pred_ref, d_ref_pred = surface_distances(pred, ref, spacing)
        ours = np.percentile(np.concatenate([d_pred_ref, d_ref_pred]), 95)
        assert abs(ours - medpy_binary.hd95(pred, ref, voxelspacing=spacing)) <= TOL
        assert abs(np.mean(d_pred_ref) - medpy_binary.asd(pred, ref, voxelspacing=spacing)) <= TOL


@pytest.mark.parametrize("seed", range(6))
def test_standard_protocol_equals_monai(seed, monkeypatch):
    """Dice, HD95 (mm), ASSD (mm) and NSD equal MONAI's functions with the same spacing.

    MONAI stores distances as float32 and computes torch.quantile's rank in float32 (0.95 becomes 0.949999988),
    which moves its HD95 by up to ~1e-2 of a gap between neighbouring sorted distances. The HD95 comparison
    therefore runs MONAI with its percentile step in float64; edges and distances are MONAI's own.
    """
    monkeypatch.setattr(monai_hausdorff, "_compute_percentile_hausdorff_distance", _monai_quantile_float64)
    rng = np.random.default_rng(300 + seed)
    for _ in range(8):
        pred, ref, spacing = _random_pair(rng)
        tolerance = float(rng.uniform(0.3, 4.0))
        ours = standard_metrics(pred, ref, spacing, tolerance_mm=tolerance)
        p, r = _onehot(pred), _onehot(ref)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            hd95 = monai_metrics.compute_hausdorff_distance(p, r, include_background=True, percentile=95,
                                                            spacing=spacing).item()
            assd = monai_metrics.compute_average_surface_distance(p, r, include_background=True, symmetric=True,
                                                                  spacing=spacing).item()
            nsd = monai_metrics.compute_surface_dice(p, r, [tolerance], include_background=True,
                                                     spacing=spacing).item()
            dice = monai_metrics.compute_dice(p, r, include_background=True).item()
        assert ours["status"] == "scored"
        assert ours["hd95_mm"] == pytest.approx(hd95, rel=TOL, abs=TOL)
        assert ours["assd_mm"] == pytest.approx(assd, rel=TOL, abs=TOL)
        assert ours["nsd"] == pytest.approx(nsd, rel=TOL, abs=TOL)
        assert ours["dice"] == pytest.approx(dice, rel=TOL, abs=TOL)


def _label_map_case(rng):
    """A synapse8 label map pair with organs of all kinds, some touching the image edge, one organ missing."""
    shape, spacing = _random_shape_and_spacing(rng)
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    for class_value in range(1, 9):
        ref[_random_mask(rng, shape)] = class_value
        if rng.random() < 0.5:
            pred[np.roll(ref == class_value, int(rng.integers(-2, 3)), axis=int(rng.integers(3)))] = class_value
        else:
            pred[_random_mask(rng, shape)] = class_value
    pred[pred == int(rng.integers(1, 9))] = 0  # one organ not predicted at all
    return pred, ref, spacing


@pytest.mark.parametrize("seed", range(3))
def test_evaluate_case_equals_references_on_the_full_volume(seed, monkeypatch):
    """One pass over a label map with cropping gives the numbers medpy and MONAI give on each full binary volume."""
    monkeypatch.setattr(monai_hausdorff, "_compute_percentile_hausdorff_distance", _monai_quantile_float64)
    rng = np.random.default_rng(400 + seed)
    pred, ref, spacing = _label_map_case(rng)
    result = evaluate_case(pred, ref, spacing, SYNAPSE8, protocol="both", tolerance_mm=1.3)
    assert list(result["standard"]) == list(SYNAPSE8.organs)
    for class_value, organ in enumerate(SYNAPSE8.organs, start=1):
        p, r = pred == class_value, ref == class_value
        standard, paper = result["standard"][organ], result["transunet"][organ]
        if p.any() and r.any():
            assert abs(paper["dice"] - medpy_binary.dc(p, r)) <= TOL
            assert abs(paper["hd95_voxels"] - medpy_binary.hd95(p, r)) <= TOL
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                hd95 = monai_metrics.compute_hausdorff_distance(_onehot(p), _onehot(r), include_background=True,
                                                                percentile=95, spacing=spacing).item()
            assert standard["hd95_mm"] == pytest.approx(hd95, rel=TOL, abs=TOL)
            uncropped = standard_metrics(p, r, spacing, tolerance_mm=1.3,
                                         worst_case_mm=image_diagonal_mm(ref.shape, spacing))
            assert standard.keys() == uncropped.keys()
            for key, value in uncropped.items():
                if isinstance(value, str):
                    assert standard[key] == value, key
                else:
                    assert standard[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
        else:
            assert standard["status"] != "scored"


def test_axis_order_of_spacing_follows_the_array():
    rng = np.random.default_rng(5)
    pred, ref, spacing = _label_map_case(rng)
    order = (2, 0, 1)
    original = evaluate_case(pred, ref, spacing, "synapse8", protocol="standard")
    permuted = evaluate_case(pred.transpose(order), ref.transpose(order), [spacing[a] for a in order], "synapse8",
                             protocol="standard")
    for organ in SYNAPSE8.organs:
        for key, value in original["standard"][organ].items():
            if isinstance(value, float):
                assert permuted["standard"][organ][key] == pytest.approx(value, rel=1e-12, abs=1e-12)
            else:
                assert permuted["standard"][organ][key] == value


# ----------------------------------------------------------------------------------------------------------------
# empty-mask policy


def test_empty_mask_policy_standard_protocol():
    shape, spacing = (10, 12, 6), (0.5, 0.8, 3.0)
    diagonal = math.sqrt((10 * 0.5) ** 2 + (12 * 0.8) ** 2 + (6 * 3.0) ** 2)
    assert image_diagonal_mm(shape, spacing) == pytest.approx(diagonal)
    empty = np.zeros(shape, bool)
    organ = np.zeros(shape, bool)
    organ[2:5, 3:7, 1:4] = True

    both = standard_metrics(empty, empty, spacing)
    assert both["status"] == "both_empty"
    assert both["dice"] is None and both["hd95_mm"] is None and both["assd_mm"] is None and both["nsd"] is None

    missed = standard_metrics(empty, organ, spacing)
    assert missed["status"] == "pred_empty"
    assert (missed["dice"], missed["nsd"]) == (0.0, 0.0)
    assert missed["hd95_mm"] == pytest.approx(diagonal) and missed["assd_mm"] == pytest.approx(diagonal)

    false_positive = standard_metrics(organ, empty, spacing)
    assert false_positive["status"] == "ref_empty"
    assert false_positive["dice"] == 0.0 and false_positive["hd95_mm"] == pytest.approx(diagonal)


def test_empty_mask_policy_transunet_protocol():
    empty = np.zeros((8, 8, 4), bool)
    organ = empty.copy()
    organ[2:5, 2:6, 1:3] = True
    assert transunet_metrics(organ, empty) == {"status": "ref_empty", "dice": 1.0, "hd95_voxels": 0.0}
    assert transunet_metrics(empty, organ) == {"status": "pred_empty", "dice": 0.0, "hd95_voxels": 0.0}
    # medpy's dc gives NaN for two empty masks under NumPy 2; the paper's rule gives (0, 0)
    assert transunet_metrics(empty, empty) == {"status": "both_empty", "dice": 0.0, "hd95_voxels": 0.0}


def test_evaluate_case_statuses_and_volumes():
    shape, spacing = (12, 12, 8), (0.5, 0.5, 2.0)
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    ref[1:11, 1:11, 0:2] = 1  # aorta: 200 voxels of 0.5 mm^3 = 0.1 ml, predicted exactly
    pred[1:11, 1:11, 0:2] = 1
    ref[0:3, 0:3, 4:6] = 5  # liver: missed
    pred[8:10, 8:10, 5:7] = 7  # spleen: absent from the reference
    result = evaluate_case(pred, ref, spacing, SYNAPSE8, protocol="both")
    standard, paper = result["standard"], result["transunet"]
    assert standard["aorta"]["status"] == "scored"
    assert standard["aorta"]["dice"] == 1.0 and standard["aorta"]["hd95_mm"] == 0.0 and standard["aorta"]["nsd"] == 1.0
    assert standard["aorta"]["ref_volume_ml"] == pytest.approx(0.1) == standard["aorta"]["pred_volume_ml"]
    assert standard["liver"]["status"] == "pred_empty" and standard["liver"]["dice"] == 0.0
    assert standard["spleen"]["status"] == "ref_empty" and standard["spleen"]["dice"] == 0.0
    assert standard["stomach"]["status"] == "both_empty" and standard["stomach"]["dice"] is None
    assert (paper["liver"]["dice"], paper["spleen"]["dice"], paper["stomach"]["dice"]) == (0.0, 1.0, 0.0)
    only_paper = evaluate_case(pred, ref, spacing, SYNAPSE8, protocol="transunet")
    assert list(only_paper) == ["transunet"] and only_paper["transunet"] == paper


# ----------------------------------------------------------------------------------------------------------------
# error paths


def test_values_outside_the_label_set_are_an_input_error():
    ref = np.zeros((6, 6, 3), np.uint8)
    pred = ref.copy()
    pred[0, 0, 0] = 11
    with pytest.raises(InputError, match="prediction: label values 11 are outside the classes 0..8"):
        evaluate_case(pred, ref, (1, 1, 1), "synapse8")
    with pytest.raises(InputError, match="non-integer"):
        evaluate_case(ref + 0.5, ref, (1, 1, 1), "synapse8")
    with pytest.raises(InputError, match="outside"):
        evaluate_case(ref.astype(np.int16) - 1, ref, (1, 1, 1), "synapse8")


def test_shape_spacing_and_option_errors():
    ref = np.zeros((6, 6, 3), np.uint8)
    with pytest.raises(InputError, match="shape"):
        evaluate_case(np.zeros((6, 6, 4), np.uint8), ref, (1, 1, 1))
    with pytest.raises(ConfigError, match="spacing"):
        evaluate_case(ref, ref, (1, 1))
    with pytest.raises(ConfigError, match="spacing"):
        evaluate_case(ref, ref, (1, 0, 1))
    with pytest.raises(ConfigError, match="protocol"):
        evaluate_case(ref, ref, (1, 1, 1), protocol="paper")
    with pytest.raises(ConfigError, match="tolerance"):
        evaluate_case(ref, ref, (1, 1, 1), tolerance_mm=-1.0)
    with pytest.raises(ValueError):
        surface_distances(np.zeros((4, 4), bool), np.ones((4, 4), bool))
