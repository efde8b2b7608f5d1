"""Spacing-aware model input: slices resampled to a fixed in-plane spacing, then tiled or cropped to the model size.

The paper's protocol (``input_mode: resize``) stretches every slice to ``img_size x img_size`` pixels, so an organ's
size in pixels depends on the scanner's field of view. With ``input_mode: spacing`` (:class:`PreprocessingParams`)
every slice is first resampled to ``target_spacing_mm`` per pixel (the training cohort's median in-plane spacing
unless given, as nnU-Net plans its target spacing), so an organ has the same size in pixels on every scanner:

* **training** (:func:`fit_to_input`): the resampled slice is cropped to ``img_size`` at a random position (when
  larger) or padded with 0 (HU at or below the window's minimum) around it (when smaller);
* **inference** (:func:`sliding_window_probabilities`): the whole resampled slice is covered by ``img_size`` tiles
  overlapping by :data:`TILE_OVERLAP` and blended with a Gaussian weight (as MONAI's ``sliding_window_inference``
  with ``mode="gaussian"``, ``sigma_scale=0.125``), so a body larger than the input is never cut; the class
  probabilities are then resampled back onto the slice's own pixel grid (:func:`to_native`) and the argmax taken
  there: every input pixel gets the label of its own position.

Axis order: slices are ``(H, W)`` = (rows, columns) of the oriented volume (rows anterior -> posterior, columns
patient right -> left); ``spacing_hw`` is the pixel size in mm along those two axes. Resampling uses
``align_corners=False`` coordinates (a pixel is a square of its spacing; the slice's extent in mm is kept), so
:func:`resample` and :func:`to_native` are inverse mappings of the same grids.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from medseg.data.orientation import oriented_spacing
from medseg.dicom import read_image
from medseg.errors import InputError
from medseg.io import is_nifti

#: Input modes of :class:`medseg.data.transforms.PreprocessingParams`.
INPUT_MODES = ("resize", "spacing")

#: Share of a tile that overlaps its neighbour at inference.
TILE_OVERLAP = 0.25

#: Gaussian weight of a tile: sigma = this share of the tile size (MONAI's and nnU-Net's 1/8).
SIGMA_SCALE = 0.125


def resampled_size(shape_hw, spacing_hw, target_mm: float) -> tuple[int, int]:
    """Size in pixels of a slice of ``shape_hw`` pixels at ``spacing_hw`` mm resampled to ``target_mm`` mm
    (the extent in mm rounded to whole pixels, at least 1)."""
    if not target_mm or target_mm <= 0 or not math.isfinite(target_mm):
        raise InputError(f"target_spacing_mm: must be a positive size in mm, got {target_mm!r}")
    spacing_hw = [float(s) for s in spacing_hw]
    if len(spacing_hw) != 2 or any(not math.isfinite(s) or s <= 0 for s in spacing_hw):
        raise InputError(f"in-plane spacing: expected two positive sizes in mm, got {spacing_hw}")
    return tuple(max(1, int(round(n * s / target_mm))) for n, s in zip(shape_hw, spacing_hw))


def resample(images: torch.Tensor, size_hw, *, labels: bool = False, interpolation: str = "bicubic") -> torch.Tensor:
    """Slices ``(B, C, H, W)`` resampled to ``size_hw`` pixels (``align_corners=False``).

    Images use ``interpolation`` and are clamped to [0, 1] (the windowed range); label maps (``labels=True``, any
    integer dtype) use nearest neighbour (``nearest-exact``: the source pixel whose square holds the new centre).
    """
    size_hw = tuple(int(s) for s in size_hw)
    if tuple(images.shape[-2:]) == size_hw:
        return images
    if labels:
        out = F.interpolate(images.float(), size=size_hw, mode="nearest-exact")
        return out.to(images.dtype)
    out = F.interpolate(images.float(), size=size_hw, mode=interpolation, align_corners=False)
    return out.clamp_(0.0, 1.0)


def to_native(probabilities: torch.Tensor, size_hw) -> torch.Tensor:
    """Class probabilities ``(B, C, h, w)`` on the resampled grid back onto the slice's own ``size_hw`` grid
    (bilinear, ``align_corners=False``: the inverse mapping of :func:`resample`)."""
    size_hw = tuple(int(s) for s in size_hw)
    if tuple(probabilities.shape[-2:]) == size_hw:
        return probabilities
    return F.interpolate(probabilities, size=size_hw, mode="bilinear", align_corners=False)


def crop_offsets(shape_hw, size: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left corner of an ``size x size`` window in a slice of ``shape_hw``: random along an axis longer than
    ``size``, negative (a centred pad) along a shorter one."""
    return tuple(int(rng.integers(0, n - size + 1)) if n > size else -((size - n) // 2) for n in shape_hw)


def fit_to_input(array: torch.Tensor, size: int, offsets) -> torch.Tensor:
    """The ``size x size`` window of ``array`` (``(..., H, W)``) at ``offsets`` (:func:`crop_offsets`); pixels
    outside the slice are 0."""
    height, width = array.shape[-2:]
    top, left = offsets
    out = array.new_zeros(array.shape[:-2] + (size, size))
    src_r0, src_c0 = max(top, 0), max(left, 0)
    src_r1, src_c1 = min(top + size, height), min(left + size, width)
    if src_r1 > src_r0 and src_c1 > src_c0:
        out[..., src_r0 - top:src_r1 - top, src_c0 - left:src_c1 - left] = array[..., src_r0:src_r1, src_c0:src_c1]
    return out


def tile_starts(length: int, size: int, overlap: float = TILE_OVERLAP) -> list[int]:
    """Start positions of ``size``-pixel tiles covering ``length`` pixels with at least ``overlap`` shared
    (first at 0, last at ``length - size``; one tile at 0 when ``length <= size``)."""
    if length <= size:
        return [0]
    step = max(1, int(size * (1.0 - overlap)))
    count = math.ceil((length - size) / step) + 1
    return sorted({int(round(i * (length - size) / (count - 1))) for i in range(count)})


def gaussian_weight(size: int, device=None) -> torch.Tensor:
    """``(size, size)`` Gaussian tile weight, sigma = ``SIGMA_SCALE * size``, peak 1, never below 1e-3."""
    coords = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2.0
    g = torch.exp(-0.5 * (coords / (SIGMA_SCALE * size)) ** 2)
    return torch.outer(g, g).clamp_(min=1e-3)


def sliding_window_probabilities(images: torch.Tensor, size: int, forward: Callable[[torch.Tensor], torch.Tensor],
                                 overlap: float = TILE_OVERLAP) -> torch.Tensor:
    """Class probabilities of slices of any size from a model that takes ``size x size`` inputs.

    Args:
        images: ``(B, 1, H, W)`` windowed slices; a side shorter than ``size`` is padded with 0 (and cropped off
            the result).
        size: the model's input size.
        forward: ``(n, 1, size, size) -> (n, C, size, size)`` probabilities.
        overlap: tile overlap (:func:`tile_starts`).

    Returns:
        ``(B, C, H, W)`` probabilities: the Gaussian-weighted mean of the tiles covering each pixel.
    """
    batch, _, height, width = images.shape
    pad_h, pad_w = max(0, size - height), max(0, size - width)
    top, left = pad_h // 2, pad_w // 2
    if pad_h or pad_w:
        images = F.pad(images, (left, pad_w - left, top, pad_h - top))
    full_h, full_w = images.shape[-2:]
    weight = gaussian_weight(size, images.device)
    total, norm = None, torch.zeros((full_h, full_w), dtype=torch.float32, device=images.device)
    for r in tile_starts(full_h, size, overlap):
        for c in tile_starts(full_w, size, overlap):
            probs = forward(images[:, :, r:r + size, c:c + size]).float()
            if total is None:
                total = torch.zeros((batch, probs.shape[1], full_h, full_w), dtype=torch.float32, device=images.device)
            total[:, :, r:r + size, c:c + size] += probs * weight
            norm[r:r + size, c:c + size] += weight
    total /= norm
    return total[:, :, top:top + height, left:left + width]


def median_inplane_spacing(spacings) -> float:
    """The median in-plane pixel size (mm) of a cohort: over both in-plane axes of every case (oriented
    ``(rows, columns, slices)`` spacings), rounded to 0.01 mm."""
    values = [float(s) for spacing in spacings for s in list(spacing)[:2]]
    if not values:
        raise InputError("target_spacing_mm: no training case to take the median spacing of")
    return round(float(np.median(values)), 2)


def cohort_target_spacing(image_paths) -> float:
    """:func:`median_inplane_spacing` of the images' in-plane spacings (from the file headers: NIfTI headers are
    read without the voxel data; other inputs are read whole)."""
    spacings = []
    for path in image_paths:
        path = Path(path)
        if is_nifti(path):
            try:
                affine = nib.load(str(path)).affine
            except Exception as exc:  # unreadable: discovery and preparation report the case
                raise InputError(f"{path}: cannot read the NIfTI header ({type(exc).__name__}: {exc})") from None
        else:
            affine = read_image(path).affine
        spacings.append(oriented_spacing(affine))
    return median_inplane_spacing(spacings)


def with_target_spacing(params, image_paths):
    """``params`` (a :class:`~medseg.data.transforms.PreprocessingParams`) with ``target_spacing_mm`` set to the
    images' median in-plane spacing (:func:`cohort_target_spacing`) when it is in ``spacing`` mode without one;
    otherwise unchanged."""
    if params.input_mode != "spacing" or params.target_spacing_mm is not None:
        return params
    return dataclasses.replace(params, target_spacing_mm=cohort_target_spacing(image_paths))
