"""Explicit orientation: bring any volume into medseg's slice orientation and back.

medseg's slice orientation has nibabel axis codes ``("P", "L", "S")``: array axis 0 (image rows) runs
anterior -> posterior, axis 1 (image columns) runs patient right -> left, axis 2 (the slice axis) runs
inferior -> superior. ``volume[:, :, k]`` is then an axial slice as a radiologist expects to see it (anterior up,
patient's right on the left of the image), whatever the voxel order of the file. A volume saved with a flipped or
permuted affine gives exactly the same slices.

Only axis permutations and flips are applied (no resampling), so the operation is exact and invertible.
"""
from __future__ import annotations

import numpy as np

from medseg.io import spacing_from_affine
from medseg.preprocessing import SLICE_AXCODES


def orientation_transform(affine: np.ndarray, axcodes=SLICE_AXCODES) -> np.ndarray:
    """nibabel orientation transform (3x2 array) from the voxel order of ``affine`` to ``axcodes``."""
    import nibabel.orientations as nio

    source = nio.io_orientation(np.asarray(affine))
    target = nio.axcodes2ornt(tuple(axcodes))
    return nio.ornt_transform(source, target)


def orient_view(array: np.ndarray, affine: np.ndarray, axcodes=SLICE_AXCODES) -> tuple[np.ndarray, np.ndarray]:
    """``array`` permuted/flipped into ``axcodes`` order as a numpy *view* (no copy), and its new affine.

    The one orientation step of medseg: the prepare chain (:class:`medseg.data.transforms.Orientd`) and inference
    both call it.

    Args:
        array: 3D array indexed in the voxel axes of ``affine`` (extra trailing axes are carried along).
        affine: 4x4 voxel-to-world affine of ``array``.
        axcodes: target axis codes, by default medseg's slice orientation (P, L, S).
    """
    import nibabel.orientations as nio

    transform = orientation_transform(affine, axcodes)
    oriented = nio.apply_orientation(array, transform)
    return oriented, np.asarray(affine) @ nio.inv_ornt_aff(transform, array.shape[:3])


def reorient(array: np.ndarray, affine: np.ndarray, axcodes=SLICE_AXCODES) -> tuple[np.ndarray, np.ndarray]:
    """Permute and flip ``array`` (indexed in the voxel axes of ``affine``) into ``axcodes`` order.

    Args:
        array: 3D array, or an array with extra trailing axes (only the first three are reoriented).
        affine: 4x4 voxel-to-world affine of ``array``.
        axcodes: target axis codes, by default medseg's slice orientation (P, L, S).

    Returns:
        ``(oriented_array, oriented_affine)``; the affine maps the new voxel indices to the same world points.
    """
    oriented, oriented_affine = orient_view(array, affine, axcodes)
    return np.ascontiguousarray(oriented), oriented_affine


def restore_orientation(oriented: np.ndarray, original_affine: np.ndarray, axcodes=SLICE_AXCODES) -> np.ndarray:
    """Undo :func:`reorient`: put an array in ``axcodes`` order back into the voxel order of ``original_affine``.

    Args:
        oriented: array produced in ``axcodes`` order (e.g. a prediction rebuilt from slices).
        original_affine: affine of the source file the prediction belongs to.
        axcodes: the orientation ``oriented`` is in.
    """
    import nibabel.orientations as nio

    backward = nio.ornt_transform(nio.axcodes2ornt(tuple(axcodes)), nio.io_orientation(np.asarray(original_affine)))
    return np.ascontiguousarray(nio.apply_orientation(oriented, backward))


def oriented_spacing(affine, axcodes=SLICE_AXCODES) -> tuple[float, float, float]:
    """Voxel size in mm along the axes of a volume brought into ``axcodes`` order (medseg's slice orientation by
    default: rows, columns, slices), from the file's 4x4 ``affine``."""
    spacing = spacing_from_affine(affine)
    transform = orientation_transform(affine, axcodes)
    oriented = [0.0, 0.0, 0.0]
    for source_axis, (target_axis, _) in enumerate(transform):
        oriented[int(target_axis)] = float(spacing[source_axis])
    return tuple(oriented)
