"""3D rebuild: slice predictions go back onto the source file's grid, voxel for voxel, with the source affine."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from medseg.data.orientation import reorient
from medseg.engine.rebuild import (
    oriented_shape,
    rebuild_for_source,
    rebuild_from_manifest_entry,
    rebuild_volume,
)
from medseg.errors import InputError
from medseg.evaluation import evaluate_case
from medseg.io import Volume, read_volume, write_volume


def _affine(columns, spacing, origin=(10.0, -20.0, 30.0)):
    """Affine whose voxel axis i runs along world axis columns[i][0] with sign columns[i][1]."""
    affine = np.eye(4)
    affine[:3, :3] = 0.0
    for axis, ((world, sign), size) in enumerate(zip(columns, spacing)):
        affine[world, axis] = sign * size
    affine[:3, 3] = origin
    return affine


def _oblique(spacing):
    angle = np.deg2rad(7.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = (-100.0, 50.0, 7.5)
    return affine


AFFINES = {
    "RAS": _affine([(0, 1), (1, 1), (2, 1)], (0.8, 0.7, 2.5)),
    "LPS (BTCV-like)": _affine([(0, -1), (1, -1), (2, 1)], (0.76, 0.76, 3.0)),
    "superior-inferior": _affine([(0, -1), (1, 1), (2, -1)], (0.6, 0.9, 5.0)),
    "permuted axes": _affine([(2, 1), (0, -1), (1, 1)], (3.0, 0.7, 0.8)),
    "oblique": _oblique((0.9, 0.8, 2.0)),
}


def _label_volume(shape, seed=0):
    rng = np.random.default_rng(seed)
    return ndimage.median_filter(rng.integers(0, 9, shape).astype(np.uint8), 3)


def _slices_of(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """What the slice cache stores: the oriented volume, slice-first (D, H, W)."""
    oriented, _ = reorient(volume, affine)
    return np.ascontiguousarray(np.moveaxis(oriented, -1, 0))


@pytest.mark.parametrize("name", list(AFFINES))
def test_rebuilt_reference_equals_it_voxel_for_voxel(name):
    affine = AFFINES[name]
    reference = _label_volume((14, 17, 9))
    stack = _slices_of(reference, affine)
    assert oriented_shape(reference.shape, affine) == reorient(reference, affine)[0].shape
    rebuilt = rebuild_volume(stack, reference.shape, affine)
    assert isinstance(rebuilt, Volume)
    assert rebuilt.array.dtype == reference.dtype
    assert np.array_equal(rebuilt.array, reference)
    assert np.array_equal(rebuilt.affine, affine)
    scores = evaluate_case(rebuilt.array, reference, rebuilt.spacing, "synapse8", protocol="standard")
    assert all(r["dice"] == 1.0 and r["hd95_mm"] == 0.0 for r in scores["standard"].values() if r["dice"] is not None)


def test_written_nifti_overlays_the_source(tmp_path):
    affine = AFFINES["LPS (BTCV-like)"]
    reference = _label_volume((16, 12, 7), seed=1)
    source = write_volume(tmp_path / "label0001.nii.gz", Volume(reference, affine), dtype=np.uint8)
    rebuilt = rebuild_for_source(_slices_of(reference, affine), source)
    written = write_volume(tmp_path / "case0001.nii.gz", rebuilt, dtype=np.uint8)
    source_image, written_image = nib.load(str(source)), nib.load(str(written))
    assert np.array_equal(written_image.affine, source_image.affine)
    assert written_image.shape == source_image.shape
    assert np.array_equal(read_volume(written).array, reference)


def test_resized_slices_come_back_at_the_source_size():
    affine = AFFINES["permuted axes"]
    reference = _label_volume((6, 20, 24), seed=2)
    stack = _slices_of(reference, affine)  # (D, H, W) at the native in-plane size
    depth, rows, cols = stack.shape
    small = ndimage.zoom(stack, (1, 8 / rows, 10 / cols), order=0)  # as a model input size
    rebuilt = rebuild_volume(small, reference.shape, affine)
    assert rebuilt.shape == reference.shape
    # each slice is resized back with scipy's order-0 zoom, as TransUNet's test script does
    expected = np.stack([ndimage.zoom(s, (rows / 8, cols / 10), order=0) for s in small])
    assert np.array_equal(_slices_of(rebuilt.array, affine), expected)
    assert set(np.unique(rebuilt.array)) <= set(np.unique(reference))


def test_rebuild_from_a_manifest_entry():
    affine = AFFINES["superior-inferior"]
    reference = _label_volume((11, 13, 5), seed=3)
    oriented, _ = reorient(reference, affine)
    entry = {"case_id": "case0001", "source_shape": list(reference.shape), "source_affine": affine.tolist(),
             "oriented_shape": list(oriented.shape)}
    rebuilt = rebuild_from_manifest_entry(_slices_of(reference, affine), entry)
    assert np.array_equal(rebuilt.array, reference) and np.array_equal(rebuilt.affine, affine)
    with pytest.raises(InputError, match="case0001: oriented_shape"):
        rebuild_from_manifest_entry(_slices_of(reference, affine), {**entry, "oriented_shape": [1, 2, 3]})
    with pytest.raises(InputError, match="source geometry"):
        rebuild_from_manifest_entry(_slices_of(reference, affine), {"case_id": "case0001"})


def test_rebuild_errors(tmp_path):
    affine = AFFINES["RAS"]
    reference = _label_volume((8, 9, 6), seed=4)
    stack = _slices_of(reference, affine)
    with pytest.raises(InputError, match="5 slices, but the source volume has 6 axial slices"):
        rebuild_volume(stack[:5], reference.shape, affine)
    with pytest.raises(InputError, match="stack"):
        rebuild_volume(stack[0], reference.shape, affine)
    with pytest.raises(InputError, match="not found"):
        rebuild_for_source(stack, tmp_path / "missing.nii.gz")
