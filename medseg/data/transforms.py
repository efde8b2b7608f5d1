"""Preprocessing as a chain of small, named MONAI dictionary transforms.

Volume chain (one case, used by ``medseg prepare``)::

    LoadVolumed        read + validate NIfTI (medseg.io), channel-first MetaTensor with the file's affine
    CheckPaird         image and label lie on the same voxel grid (shape, affine within GRID_TOLERANCE_MM)
    Orientd            explicit orientation to ("P", "L", "S"): axis 2 is the axial slice axis (orient_view)
    HUWindowd          HU clipped to [-125, 275] and scaled to [0, 1] (hu_window)
    RemapLabelsd       raw BTCV values -> classes of the label set (unknown values are an error)
    ToSliceStackd      (H, W, D) -> slice-first stack (D, H, W), plus which slices hold an organ

One preprocessing path: as in MONAI's array / dictionary twins (``ScaleIntensityRange`` and
``ScaleIntensityRanged``), the orientation and the HU window are plain array functions
(:func:`medseg.data.orientation.orient_view`, :func:`hu_window`); the dictionary steps above wrap them for the
prepare chain, and inference (:mod:`medseg.engine.inference`) calls the same functions on each batch of slices,
so a model sees exactly the values the slice cache holds.

Slice chain (one 2D slice, used by the training dataset)::

    PaperAugmentd      TransUNet's training augmentation (the reference RandomGenerator's draws), in one of two
                       resampling modes (AUGMENTATION_MODES):
                         paper  the reference's two resamplings: np.rot90 + np.flip, or ndimage.rotate(order=0,
                                reshape=False), then ndimage.zoom to the model size (image order 3, no clamp;
                                label order 0): the same arrays as the reference code for the same draw
                         fused  one torch grid_sample of the slice (rotation/flip and resize together; image
                                bicubic clamped to [0, 1], label nearest): the same branch probabilities, k and
                                flip axis, a continuous angle in [-20, 20), drawn from a torch generator; one
                                resampling instead of two, several times faster (benchmarks/loader_speed.py)
    ResizeSliced       resize only (evaluation / no augmentation): image bicubic or bilinear, label nearest

Axis order: volumes ``(i, j, k)`` with ``k`` the slice axis after orientation, rows ``i`` anterior -> posterior,
columns ``j`` patient right -> left. Slices are ``(H, W) = (rows, columns)``.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import Compose, MapTransform

from medseg.data.orientation import SLICE_AXCODES, orient_view
from medseg.dicom import read_image
from medseg.errors import InputError, MedsegError
from medseg.io import GRID_TOLERANCE_MM, grid_difference_mm, voxel_order_onto
from medseg.labels import LabelSet, remap_labels
from medseg.preprocessing import PreprocessingParams, hu_window

IMAGE, LABEL = "image", "label"


class LoadVolumed(MapTransform):
    """Read NIfTI files named by ``data[key]`` (paths) into channel-first MetaTensors ``(1, i, j, k)``.

    Uses :func:`medseg.dicom.read_image` (NIfTI through :func:`medseg.io.read_volume`, or a DICOM series folder or zip),
    so a missing, truncated or non-3D file raises an :class:`InputError` that
    names it. The source path, shape and affine are kept under ``<key>_source``, ``<key>_source_shape`` and
    ``<key>_source_affine`` so a prediction can be put back onto the file's grid.
    """

    def __init__(self, keys, allow_missing_keys: bool = True):
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            dtype = np.float32 if key == IMAGE else None
            volume = read_image(path, dtype=dtype)
            d[f"{key}_source"] = str(path)
            d[f"{key}_source_shape"] = tuple(int(s) for s in volume.shape)
            d[f"{key}_source_affine"] = volume.affine
            d[key] = MetaTensor(torch.from_numpy(np.ascontiguousarray(volume.array))[None],
                                affine=torch.from_numpy(volume.affine))
        return d


class Orientd(MapTransform):
    """Bring ``data[key]`` (channel-first ``(1, i, j, k)`` or ``(i, j, k)``, in the file's voxel order) into
    ``axcodes`` order with :func:`medseg.data.orientation.orient_view` (a permutation/flip, no resampling).

    Stores plain ``(H, W, D)`` numpy arrays and ``oriented_affine`` (the image's affine in the new voxel order).
    """

    def __init__(self, keys, axcodes=SLICE_AXCODES, allow_missing_keys: bool = True):
        super().__init__(keys, allow_missing_keys)
        self.axcodes = tuple(axcodes)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            array = d[key].detach().cpu().numpy() if torch.is_tensor(d[key]) else np.asarray(d[key])
            if array.ndim == 4:
                array = array[0]
            oriented, affine = orient_view(array, d[f"{key}_source_affine"], self.axcodes)
            d[key] = np.ascontiguousarray(oriented)
            if key == IMAGE:
                d["oriented_affine"] = affine
        return d


class HUWindowd(MapTransform):
    """Apply :func:`hu_window` to ``data[key]`` (HU -> [0, 1] float32)."""

    def __init__(self, keys=(IMAGE,), hu_min: float = -125.0, hu_max: float = 275.0):
        super().__init__(keys)
        self.hu_min, self.hu_max = hu_min, hu_max

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = hu_window(d[key], self.hu_min, self.hu_max)
        return d


class CheckPaird(MapTransform):
    """Raise :class:`InputError` when image and label are not on the same physical voxel grid: different shapes, or
    affines that put a corner voxel more than ``atol_mm`` (:data:`medseg.io.GRID_TOLERANCE_MM`) apart.

    A label stored in another voxel order on the image's grid (axes permuted or flipped, as some annotation tools
    write) is accepted: :class:`Orientd` brings each volume into the slice order by its own affine, so both then
    share one grid, voxel for voxel."""

    def __init__(self, atol_mm: float = GRID_TOLERANCE_MM):
        super().__init__([IMAGE, LABEL], allow_missing_keys=True)
        self.atol_mm = atol_mm

    def __call__(self, data):
        if LABEL not in data:
            return data
        label_file = data.get(f"{LABEL}_source", "label")
        image_shape, label_shape = data[f"{IMAGE}_source_shape"], data[f"{LABEL}_source_shape"]
        image_affine = data[f"{IMAGE}_source_affine"]
        _, shape, affine = voxel_order_onto(label_shape, data[f"{LABEL}_source_affine"], image_affine)
        if tuple(shape) != tuple(image_shape):
            raise InputError(f"{label_file}: label shape {label_shape} does not match image shape {image_shape}")
        difference = grid_difference_mm(image_affine, affine, image_shape)
        if difference > self.atol_mm:
            raise InputError(f"{label_file}: label affine differs from the image's (a corner voxel is "
                             f"{difference:.3g} mm away > {self.atol_mm:g} mm)")
        return data


class RemapLabelsd(MapTransform):
    """Map raw BTCV label values to the classes of ``label_set`` (uint8); values outside 0..13 are an error."""

    def __init__(self, label_set: LabelSet, keys=(LABEL,)):
        super().__init__(keys, allow_missing_keys=True)
        self.label_set = label_set

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            source = d.get(f"{key}_source", key)
            raw = np.asarray(d[key].detach().cpu().numpy() if torch.is_tensor(d[key]) else d[key])
            d[key] = remap_labels(raw, self.label_set, source=str(source))
        return d


class ToSliceStackd(MapTransform):
    """Volumes ``(H, W, D)`` (or channel-first ``(1, H, W, D)``) -> slice-first numpy stacks ``(D, H, W)``.

    Adds ``organ_slices``: indices of slices whose label holds any foreground (empty list without a label), so a
    consumer can drop organ-free slices. Records the oriented shape ``(H, W, D)`` and affine.
    """

    def __init__(self, keys=(IMAGE, LABEL)):
        super().__init__(keys, allow_missing_keys=True)

    def __call__(self, data):
        d = dict(data)
        image = d[IMAGE]
        if isinstance(image, MetaTensor):
            d["oriented_affine"] = np.asarray(image.affine, dtype=np.float64)
        d.setdefault("oriented_affine", None)
        d["oriented_shape"] = tuple(int(s) for s in image.shape[-3:])
        for key in self.key_iterator(d):
            array = d[key]
            array = array.detach().cpu().numpy() if torch.is_tensor(array) else np.asarray(array)
            if array.ndim == 4:
                array = array[0]
            dtype = np.float32 if key == IMAGE else np.uint8
            d[key] = np.ascontiguousarray(np.moveaxis(array, -1, 0), dtype=dtype)
        d["organ_slices"] = organ_slice_indices(d[LABEL]) if LABEL in d else []
        return d


def organ_slice_indices(label_stack: np.ndarray) -> list[int]:
    """Indices ``k`` of the slices ``label_stack[k]`` (slice-first ``(D, H, W)``) that hold any foreground."""
    return [int(k) for k in np.flatnonzero(label_stack.reshape(label_stack.shape[0], -1).any(axis=1))]


def volume_preprocessing(label_set: "LabelSet | None", params: PreprocessingParams = PreprocessingParams(),
                         window: bool = True):
    """The volume chain: ``{"image": path, "label": path?}`` -> slice stacks and geometry.

    Output keys: ``image`` float32 ``(D, H, W)`` in [0, 1] (with ``window``; without it the oriented HU values,
    float32, which :func:`hu_window` turns into the same [0, 1] values bit for bit); ``label`` uint8 ``(D, H, W)``
    (when given);
    ``organ_slices``; ``image_source_shape`` / ``image_source_affine`` (the file's grid); ``oriented_shape``
    ``(H, W, D)`` and ``oriented_affine``.
    """
    steps = [
        LoadVolumed([IMAGE, LABEL]),
        CheckPaird(),
        Orientd([IMAGE, LABEL], axcodes=params.axcodes),
    ]
    if window:
        steps.append(HUWindowd([IMAGE], hu_min=params.hu_min, hu_max=params.hu_max))
    if label_set is not None:
        steps.append(RemapLabelsd(label_set))
    steps.append(ToSliceStackd())
    return _UnwrapErrors(Compose(steps))


class _UnwrapErrors:
    """Call a MONAI Compose, re-raising a MedsegError that MONAI wrapped in a RuntimeError as it is."""

    def __init__(self, compose: Compose):
        self.compose = compose

    def __call__(self, data):
        try:
            return self.compose(data)
        except RuntimeError as exc:
            cause = exc
            while cause is not None and not isinstance(cause, MedsegError):
                cause = cause.__cause__
            if cause is None:
                raise
            raise cause from None


# ----------------------------------------------------------------------------------------------------------------
# 2D slice steps: augmentation and resizing, both as one resampling of the slice with torch.grid_sample.


@dataclass(frozen=True)
class SliceAugmentation:
    """One draw of the TransUNet augmentation.

    ``kind`` is ``rot_flip`` (rotate by ``k`` x 90 degrees, then flip along ``flip_axis``), ``rotate`` (by
    ``angle_deg``) or ``none``.
    """

    kind: str = "none"
    k: int = 0
    flip_axis: int = 0
    angle_deg: float = 0.0


#: ``paper`` reproduces the reference's draws and resamplings; ``fused`` is one faster resampling.
AUGMENTATION_MODES = ("paper", "fused")


def augmentation_generators(seed: int) -> tuple[random.Random, np.random.RandomState]:
    """The two random streams the reference draws from, seeded from one sample seed (any int >= 0).

    The reference ``RandomGenerator`` picks its branch with Python's ``random.random()`` and draws its parameters
    with numpy's legacy global ``np.random``; here each sample gets its own instance of both, so the draws depend
    only on the seed (not on the loader worker that serves the sample).
    """
    seed = int(seed)
    return random.Random(seed), np.random.RandomState([seed % 2**32, seed // 2**32 % 2**32])


def draw_paper_augmentation(py_random: random.Random, np_random: np.random.RandomState) -> SliceAugmentation:
    """One draw of the TransUNet reference ``RandomGenerator``, in its order of calls.

    ``py_random.random() > 0.5`` (probability 1/2): rot90 by ``k = np_random.randint(0, 4)`` then a flip along
    ``axis = np_random.randint(0, 2)``; else ``py_random.random() > 0.5`` (1/4): a rotation by the integer angle
    ``np_random.randint(-20, 20)`` degrees (-20..19); else (1/4) nothing.
    """
    if py_random.random() > 0.5:
        k = int(np_random.randint(0, 4))
        axis = int(np_random.randint(0, 2))
        return SliceAugmentation("rot_flip", k=k, flip_axis=axis)
    if py_random.random() > 0.5:
        return SliceAugmentation("rotate", angle_deg=float(np_random.randint(-20, 20)))
    return SliceAugmentation()


def draw_fused_augmentation(generator: torch.Generator) -> SliceAugmentation:
    """One draw of medseg's ``fused`` mode: the reference's distribution with a continuous angle.

    With probability 0.5 a random rot90 (k in 0..3) and a flip on a random axis; otherwise with probability 0.5 a
    rotation by an angle uniform in [-20, 20) degrees (the reference draws whole degrees, -20..19); otherwise
    nothing. Kept as it was before the ``paper`` mode existed, so fused runs reproduce earlier results.
    """
    u = torch.rand(3, generator=generator)
    if u[0] > 0.5:
        k = int(torch.randint(0, 4, (1,), generator=generator))
        axis = int(torch.randint(0, 2, (1,), generator=generator))
        return SliceAugmentation("rot_flip", k=k, flip_axis=axis)
    if u[1] > 0.5:
        return SliceAugmentation("rotate", angle_deg=float(u[2]) * 40.0 - 20.0)
    return SliceAugmentation()


def paper_resample_slice(image: np.ndarray, label: "np.ndarray | None", out_size: int,
                         augmentation: SliceAugmentation = SliceAugmentation()
                         ) -> tuple[np.ndarray, "np.ndarray | None"]:
    """The reference's augmentation and resize of one slice, step by step (``paper`` mode).

    Args:
        image: ``(H, W)`` float32 slice (values in [0, 1]).
        label: ``(H, W)`` integer label slice or None.
        out_size: output height and width in pixels.
        augmentation: the draw to apply.

    Returns:
        ``(image (out, out) float32, label (out, out) or None)``: ``np.rot90(k)`` then ``np.flip(axis)``, or
        ``ndimage.rotate(angle, order=0, reshape=False)`` (nearest neighbour, zeros outside), then, when the size
        differs, ``ndimage.zoom`` by ``(out / H, out / W)`` with order 3 for the image (cubic B-spline, not
        clamped, so values can leave [0, 1] a little) and order 0 for the label, as the reference does.
    """
    from scipy import ndimage

    if augmentation.kind == "rot_flip":
        image = np.flip(np.rot90(image, augmentation.k), axis=augmentation.flip_axis).copy()
        if label is not None:
            label = np.flip(np.rot90(label, augmentation.k), axis=augmentation.flip_axis).copy()
    elif augmentation.kind == "rotate":
        image = ndimage.rotate(image, augmentation.angle_deg, order=0, reshape=False)
        if label is not None:
            label = ndimage.rotate(label, augmentation.angle_deg, order=0, reshape=False)
    height, width = image.shape
    if (height, width) != (out_size, out_size):
        factors = (out_size / height, out_size / width)
        image = ndimage.zoom(image, factors, order=3)
        if label is not None:
            label = ndimage.zoom(label, factors, order=0)
    return image.astype(np.float32, copy=False), label


def _sampling_matrix(augmentation: SliceAugmentation) -> torch.Tensor:
    """2x3 matrix mapping output coordinates to input coordinates, in grid_sample's normalised [-1, 1] units.

    Normalised coordinates are ``(x, y) = (column, row)``. A rotation by ``+angle`` (counter-clockwise as shown) is
    sampled with the inverse rotation.
    """
    eye = torch.eye(3, dtype=torch.float64)
    if augmentation.kind == "rot_flip":
        # np.rot90(a, k) followed by np.flip(a, axis). Output coordinate c samples the input at R^-k F c.
        inverse = eye.clone()
        for _ in range(augmentation.k % 4):
            # one np.rot90 (counter-clockwise): out[r, c] = in[c, W-1-r] -> input x = -y_out, input y = x_out
            inverse = inverse @ torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
        flip = eye.clone()
        if augmentation.flip_axis == 0:  # rows flipped: y -> -y
            flip[1, 1] = -1.0
        else:  # columns flipped: x -> -x
            flip[0, 0] = -1.0
        matrix = inverse @ flip
    elif augmentation.kind == "rotate":
        a = math.radians(augmentation.angle_deg)
        matrix = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0, 0, 1.0]],
                              dtype=torch.float64)
    else:
        matrix = eye
    return matrix[:2].to(torch.float32)


def resample_slice(image: torch.Tensor, label: "torch.Tensor | None", out_size: int,
                   augmentation: SliceAugmentation = SliceAugmentation(),
                   image_interpolation: str = "bicubic") -> tuple[torch.Tensor, "torch.Tensor | None"]:
    """Augment and resize one slice in a single resampling.

    Args:
        image: float tensor ``(C, H, W)`` (values in [0, 1]).
        label: integer tensor ``(H, W)`` or None.
        out_size: output height and width in pixels.
        augmentation: the geometric augmentation to apply (default: none, a pure resize).
        image_interpolation: ``bicubic`` or ``bilinear`` for the image; the label uses nearest neighbour.

    Returns:
        ``(image (C, out, out) float32, label (out, out) int64 or None)``. Pixels rotated in from outside the slice
        are 0 in both, as in the reference code. With ``align_corners=True`` a 90-degree rotation or a flip without
        resizing reproduces ``np.rot90`` / ``np.flip`` exactly.
    """
    theta = _sampling_matrix(augmentation)[None]
    grid = F.affine_grid(theta, (1, 1, out_size, out_size), align_corners=True)
    image_out = F.grid_sample(image[None].float(), grid, mode=image_interpolation, padding_mode="zeros",
                              align_corners=True)[0]
    if image_interpolation == "bicubic":
        image_out = image_out.clamp_(0.0, 1.0)  # cubic overshoot outside the HU window's [0, 1] range
    label_out = None
    if label is not None:
        label_out = F.grid_sample(label[None, None].float(), grid, mode="nearest", padding_mode="zeros",
                                  align_corners=True)[0, 0].round().long()
    return image_out, label_out


class PaperAugmentd(MapTransform):
    """TransUNet's training augmentation and the resize to the model size, in ``paper`` or ``fused`` mode.

    Randomness comes from ``data["seed"]`` (an int per sample and epoch), so a run is reproducible whatever the
    number of data-loader workers, and a resumed run draws the same augmentations as an uninterrupted one.
    ``paper`` draws with :func:`draw_paper_augmentation` from :func:`augmentation_generators`, ``fused`` with
    :func:`draw_fused_augmentation` from a torch generator.

    Input: ``image`` float ``(1, H, W)`` tensor, ``label`` integer ``(H, W)`` tensor. Output: ``image`` float32
    ``(1, S, S)``, ``label`` int64 ``(S, S)``.
    """

    def __init__(self, out_size: int, image_interpolation: str = "bicubic", mode: str = "fused"):
        super().__init__([IMAGE, LABEL])
        if mode not in AUGMENTATION_MODES:
            raise ValueError(f"augmentation mode: expected one of {', '.join(AUGMENTATION_MODES)}, got {mode!r}")
        self.out_size = out_size
        self.image_interpolation = image_interpolation
        self.mode = mode

    def __call__(self, data):
        d = dict(data)
        if self.mode == "fused":
            augmentation = draw_fused_augmentation(torch.Generator().manual_seed(int(d["seed"])))
            d[IMAGE], d[LABEL] = resample_slice(d[IMAGE], d.get(LABEL), self.out_size, augmentation,
                                                self.image_interpolation)
            return d
        augmentation = draw_paper_augmentation(*augmentation_generators(d["seed"]))
        label = d.get(LABEL)
        image, label = paper_resample_slice(d[IMAGE][0].numpy(), None if label is None else label.numpy(),
                                            self.out_size, augmentation)
        d[IMAGE] = torch.from_numpy(image)[None]
        d[LABEL] = None if label is None else torch.from_numpy(label.astype(np.int64))
        return d


class ResizeSliced(MapTransform):
    """Resize a slice to the model size (image bicubic/bilinear, label nearest), no augmentation."""

    def __init__(self, out_size: int, image_interpolation: str = "bicubic"):
        super().__init__([IMAGE, LABEL], allow_missing_keys=True)
        self.out_size = out_size
        self.image_interpolation = image_interpolation

    def __call__(self, data):
        d = dict(data)
        d[IMAGE], d[LABEL] = resample_slice(d[IMAGE], d.get(LABEL), self.out_size,
                                            image_interpolation=self.image_interpolation)
        if d[LABEL] is None:
            del d[LABEL]
        return d
