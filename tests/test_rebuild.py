"""3D rebuild: slice predictions go back onto the source file's grid, voxel for voxel (the two steps inference uses:
the label resize by :func:`nearest_index_map` and the orientation undone by :func:`restore_to_source`)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from medseg.data.orientation import reorient
from medseg.engine.rebuild import nearest_index_map, restore_to_source
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
    """What the slice cache stores and the model sees: the oriented volume, slice-first (D, H, W)."""
    oriented, _ = reorient(volume, affine)
    return np.ascontiguousarray(np.moveaxis(oriented, -1, 0))


def _rebuild(stack: np.ndarray, rows: int, cols: int, affine: np.ndarray, shape) -> np.ndarray:
    """Inference's rebuild of a (D, h, w) label stack: gather to (rows, cols), stack to (H, W, D), restore."""
    _, height, width = stack.shape
    resized = stack[:, nearest_index_map(height, rows)][:, :, nearest_index_map(width, cols)]
    return restore_to_source(np.moveaxis(resized, 0, -1), affine, shape)


@pytest.mark.parametrize("name", list(AFFINES))
def test_rebuilt_reference_equals_it_voxel_for_voxel(name):
    affine = AFFINES[name]
    reference = _label_volume((14, 17, 9))
    stack = _slices_of(reference, affine)
    rebuilt = _rebuild(stack, stack.shape[1], stack.shape[2], affine, reference.shape)
    assert rebuilt.dtype == reference.dtype
    assert np.array_equal(rebuilt, reference)
    spacing = Volume(rebuilt, affine).spacing
    scores = evaluate_case(rebuilt, reference, spacing, "synapse8", protocol="standard")
    assert all(r["dice"] == 1.0 and r["hd95_mm"] == 0.0 for r in scores["standard"].values() if r["dice"] is not None)


def test_written_nifti_overlays_the_source(tmp_path):
    affine = AFFINES["LPS (BTCV-like)"]
    reference = _label_volume((16, 12, 7), seed=1)
    source = write_volume(tmp_path / "label0001.nii.gz", Volume(reference, affine), dtype=np.uint8)
    stack = _slices_of(reference, affine)
    rebuilt = _rebuild(stack, stack.shape[1], stack.shape[2], affine, reference.shape)
    written = read_volume(write_volume(tmp_path / "case0001.nii.gz", Volume(rebuilt, affine), dtype=np.uint8))
    assert np.array_equal(written.affine, read_volume(source).affine)
    assert np.array_equal(written.array, reference)


def test_resized_slices_come_back_at_the_source_size():
    affine = AFFINES["permuted axes"]
    reference = _label_volume((6, 20, 24), seed=2)
    stack = _slices_of(reference, affine)  # (D, H, W) at the native in-plane size
    depth, rows, cols = stack.shape
    small = ndimage.zoom(stack, (1, 8 / rows, 10 / cols), order=0)  # as a model input size
    rebuilt = _rebuild(small, rows, cols, affine, reference.shape)
    assert rebuilt.shape == reference.shape
    # each slice is resized back with scipy's order-0 zoom, as TransUNet's test script does
    expected = np.stack([ndimage.zoom(s, (rows / 8, cols / 10), order=0) for s in small])
    assert np.array_equal(_slices_of(rebuilt, affine), expected)
    assert set(np.unique(rebuilt)) <= set(np.unique(reference))


def test_a_stack_of_another_grid_is_refused():
    affine = AFFINES["RAS"]
    reference = _label_volume((8, 9, 6), seed=4)
    oriented = np.moveaxis(_slices_of(reference, affine), 0, -1)
    with pytest.raises(InputError, match=r"rebuilt shape \(8, 9, 5\) differs from the source \(8, 9, 6\)"):
        restore_to_source(oriented[:, :, :5], affine, reference.shape)
