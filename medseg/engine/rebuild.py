"""3D rebuild: put slice predictions back onto the grid of the case's own NIfTI file.

The one place that maps model-size label slices back to a case's grid. Inference
(:func:`medseg.engine.inference.segment_oriented`, used by ``medseg predict``, the pipeline and the validation
during training) gathers each predicted batch with :func:`nearest_index_map` and puts the oriented volume back
with :func:`restore_to_source`.

Slice predictions (from the slice cache, a TransUNet h5 volume converted by medseg, or a model run) are stored
slice-first in medseg's slice orientation: ``stack[k] == oriented_volume[:, :, k]``, shape ``(D, h, w)``, where the
oriented volume has axis codes ``("P", "L", "S")`` (see :mod:`medseg.data.orientation`). The rebuild

1. resizes each slice back to the oriented in-plane size ``(H, W)`` with nearest neighbour when ``(h, w)`` differs:
   a gather with :func:`nearest_index_map` (the index mapping of ``scipy.ndimage.zoom(order=0)`` with its default
   grid handling, the resize the TransUNet test script applies to each predicted slice),
2. stacks the slices into an ``(H, W, D)`` volume,
3. undoes the orientation step with :func:`restore_to_source` (permutations and flips only, no resampling),

so the labels have the source file's shape and, written with its affine, overlay the input exactly in a viewer.
"""
from __future__ import annotations

import numpy as np

from medseg.data.orientation import SLICE_AXCODES, restore_orientation
from medseg.errors import InputError


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
