"""3D rebuild: put slice predictions back onto the grid of the case's own NIfTI file.

Slice predictions (from the slice cache, a TransUNet h5 volume converted by medseg, or a model run) are stored
slice-first in medseg's slice orientation: ``stack[k] == oriented_volume[:, :, k]``, shape ``(D, h, w)``, where the
oriented volume has axis codes ``("P", "L", "S")`` (see :mod:`medseg.data.orientation`). The rebuild

1. resizes each slice back to the oriented in-plane size ``(H, W)`` with nearest neighbour when ``(h, w)`` differs
   (``scipy.ndimage.zoom(order=0)`` with its default grid handling, the resize the TransUNet test script applies
   to each predicted slice),
2. stacks the slices into an ``(H, W, D)`` volume,
3. undoes the orientation step (permutations and flips only, no resampling),

and returns a :class:`~medseg.io.Volume` with the source file's shape and affine, so the NIfTI written from it
overlays the input exactly in a viewer.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

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


def resize_slices_nearest(slice_labels: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Resize a ``(D, h, w)`` label stack to ``(D, rows, cols)`` with nearest neighbour (scipy zoom, order 0)."""
    depth, height, width = slice_labels.shape
    if (height, width) == (rows, cols):
        return slice_labels
    factors = (1.0, rows / height, cols / width)
    resized = ndimage.zoom(slice_labels, factors, order=0)
    if resized.shape != (depth, rows, cols):  # zoom rounds the output size; guard against a rounding surprise
        raise InputError(f"slice predictions: resize to {(rows, cols)} gave {resized.shape[1:]}")
    return resized


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
    array = restore_orientation(oriented, affine)
    if array.shape != source_shape:  # cannot happen for a valid affine; a clear message if it ever does
        raise InputError(f"slice predictions: rebuilt shape {array.shape} differs from the source {source_shape}")
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
