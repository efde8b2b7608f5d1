"""3D rebuild: put slice predictions back onto the grid of the case's own NIfTI file.

The one place that maps model-size label slices back to a case's grid. Inference
(:func:`medseg.engine.inference.segment_oriented`, used by ``medseg predict``, the pipeline and the validation
during training) gathers each predicted batch with :func:`nearest_index_map` and puts the oriented volume back
with :func:`restore_to_source`; :func:`rebuild_volume` does both for a whole stored stack.

Slice predictions (from the slice cache, a TransUNet h5 volume converted by medseg, or a model run) are stored
slice-first in medseg's slice orientation: ``stack[k] == oriented_volume[:, :, k]``, shape ``(D, h, w)``, where the
oriented volume has axis codes ``("P", "L", "S")`` (see :mod:`medseg.data.orientation`). The rebuild

1. resizes each slice back to the oriented in-plane size ``(H, W)`` with nearest neighbour when ``(h, w)`` differs
   (the index mapping of ``scipy.ndimage.zoom(order=0)`` with its default grid handling, the resize the TransUNet
   test script applies to each predicted slice),
2. stacks the slices into an ``(H, W, D)`` volume,
3. undoes the orientation step (permutations and flips only, no resampling),

and returns a :class:`~medseg.io.Volume` with the source file's shape and affine, so the NIfTI written from it
overlays the input exactly in a viewer.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from medseg.data.orientation import SLICE_AXCODES, orientation_transform, restore_orientation
from medseg.errors import InputError
from medseg.io import Volume


def oriented_shape(source_shape, source_affine, axcodes=SLICE_AXCODES) -> tuple[int, int, int]:
    """Shape of a volume of ``source_shape`` (voxel axes of ``source_affine``) after medseg's orientation step.

    Returns:
        ``(H, W, D)``: rows (anterior -> posterior), columns (right -> left), axial slices (inferior -> superior).
    """
    transform = orientation_transform(np.asarray(source_affine, dtype=np.float64), axcodes)
    shape = [0, 0, 0]
    for source_axis, (target_axis, _flip) in enumerate(transform):
        shape[int(target_axis)] = int(source_shape[source_axis])
    return tuple(shape)


def nearest_index_map(model_size: int, native_size: int) -> np.ndarray:
    """Source index along one axis for each of ``native_size`` output pixels, resizing ``model_size`` -> native.

    It is the mapping of ``scipy.ndimage.zoom(order=0)`` with the reference's factor ``native / model`` (corner
    pixels aligned, rounding to the nearest), so gathering with it reproduces the reference's label resize exactly.
    """
    from scipy import ndimage

    if model_size == native_size:
        return np.arange(native_size)
    mapped = ndimage.zoom(np.arange(model_size, dtype=np.float64), native_size / model_size, order=0)
    if mapped.shape[0] != native_size:  # zoom rounds the output length; never seen, but fail loudly
        raise InputError(f"label resize {model_size} -> {native_size} gave {mapped.shape[0]} pixels")
    return mapped.astype(np.int64)


def resize_slices_nearest(slice_labels: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Resize a ``(D, h, w)`` label stack to ``(D, rows, cols)`` with nearest neighbour (scipy zoom's order 0)."""
    _depth, height, width = slice_labels.shape
    if (height, width) == (rows, cols):
        return slice_labels
    return slice_labels[:, nearest_index_map(height, rows)][:, :, nearest_index_map(width, cols)]


def restore_to_source(oriented: np.ndarray, source_affine, source_shape, axcodes=SLICE_AXCODES) -> np.ndarray:
    """An ``(H, W, D, ...)`` array in ``axcodes`` order put back into the source file's voxel order (no resampling).

    Args:
        oriented: labels ``(H, W, D)`` (or per-class values ``(H, W, D, C)``) in ``axcodes`` orientation.
        source_affine: 4x4 voxel-to-world affine of the source file.
        source_shape: the source's 3D shape ``(i, j, k)``; the result must have it.
        axcodes: the orientation ``oriented`` is in (the checkpoint's preprocessing ``axcodes``).

    Raises:
        InputError: the restored array does not have ``source_shape`` (the prediction belongs to another grid).
    """
    array = restore_orientation(oriented, np.asarray(source_affine, dtype=np.float64), tuple(axcodes))
    source_shape = tuple(int(n) for n in source_shape)
    if array.shape[:3] != source_shape:
        raise InputError(f"slice predictions: rebuilt shape {array.shape[:3]} differs from the source {source_shape}")
    return array


def rebuild_volume(slice_labels: np.ndarray, source_shape, source_affine) -> Volume:
    """Rebuild a label volume on the source file's grid from slice predictions.

    Args:
        slice_labels: integer label slices ``(D, h, w)``, slice-first in medseg's oriented slice order
            (``slice_labels[k]`` is axial slice ``k``, inferior -> superior).
        source_shape: shape ``(i, j, k)`` of the source NIfTI volume (its voxel axes).
        source_affine: 4x4 voxel-to-world affine of the source NIfTI (mm).

    Returns:
        :class:`~medseg.io.Volume` of shape ``source_shape`` with affine ``source_affine`` and the dtype of
        ``slice_labels``.

    Raises:
        InputError: the stack is not 3D or its number of slices differs from the source's axial slice count.
    """
    slice_labels = np.asarray(slice_labels)
    source_shape = tuple(int(n) for n in source_shape)
    affine = np.asarray(source_affine, dtype=np.float64)
    if slice_labels.ndim != 3:
        raise InputError(f"slice predictions: expected a (D, h, w) stack, got shape {slice_labels.shape}")
    if len(source_shape) != 3 or affine.shape != (4, 4):
        raise InputError(f"source geometry: expected a 3D shape and a 4x4 affine, got {source_shape}, {affine.shape}")
    rows, cols, depth = oriented_shape(source_shape, affine)
    if slice_labels.shape[0] != depth:
        raise InputError(
            f"slice predictions: {slice_labels.shape[0]} slices, but the source volume has {depth} axial slices"
        )
    resized = resize_slices_nearest(slice_labels, rows, cols)
    oriented = np.moveaxis(resized, 0, -1)  # (D, H, W) -> (H, W, D): stack[k] becomes oriented[:, :, k]
    array = restore_to_source(oriented, affine, source_shape)
    return Volume(array=np.ascontiguousarray(array), affine=affine.copy())


def rebuild_from_manifest_entry(slice_labels: np.ndarray, entry: dict) -> Volume:
    """Rebuild from a slice-cache manifest case entry (keys ``source_shape``, ``source_affine``, ``oriented_shape``).

    Raises:
        InputError: an entry key is missing, or the entry's ``oriented_shape`` disagrees with its source geometry.
    """
    case_id = entry.get("case_id", "case")
    try:
        source_shape = [int(n) for n in entry["source_shape"]]
        source_affine = np.asarray(entry["source_affine"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"manifest entry {case_id}: missing or malformed source geometry ({exc!r})") from None
    expected = entry.get("oriented_shape")
    if expected is not None and tuple(int(n) for n in expected) != oriented_shape(source_shape, source_affine):
        raise InputError(
            f"manifest entry {case_id}: oriented_shape {list(expected)} does not match source_shape {source_shape} "
            "and source_affine"
        )
    return rebuild_volume(slice_labels, source_shape, source_affine)


def rebuild_for_source(slice_labels: np.ndarray, source_path: "str | Path") -> Volume:
    """Rebuild onto the grid of a NIfTI file, reading only its header (shape and affine).

    Raises:
        InputError: the file is missing or not a readable 3D NIfTI.
    """
    import nibabel as nib

    source_path = Path(source_path)
    if not source_path.is_file():
        raise InputError(f"{source_path}: file not found")
    try:
        image = nib.load(str(source_path))
    except Exception as exc:  # nibabel raises several types for unreadable headers
        raise InputError(f"{source_path}: not a readable NIfTI file ({type(exc).__name__})") from None
    shape = tuple(image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(f"{source_path}: expected a 3D volume, got shape {shape}")
    return rebuild_volume(slice_labels, shape, image.affine)
