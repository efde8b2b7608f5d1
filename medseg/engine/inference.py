"""Volume inference: a CT volume in, a label volume on exactly the input's grid out, a few slices at a time.

Steps for one NIfTI volume (the same preprocessing as training, see :mod:`medseg.data.transforms`)::

    read (keeps the stored dtype, e.g. int16 HU)
    orient to the checkpoint's axis codes (P, L, S by default): a permuted/flipped *view*, no copy, no resampling
    for each batch of ``batch_size`` axial slices (only these are ever in floating point):
        move to the device; HU window: clip to [hu_min, hu_max], scale to [0, 1] (the prepare chain's hu_window)
        resize to img_size x img_size: bicubic, align_corners=True, clamped to [0, 1]
            (torch grid_sample, exactly the resampling of the training dataset)
        forward (optional bf16 autocast, optional flip test-time augmentation), softmax, argmax
        labels back to the native in-plane size with nearest neighbour (the index mapping of scipy's
            ``zoom(order=0)``, as the reference test script, gathered on the device)
        copy into a preallocated uint8 (H, W, D) volume
    undo the orientation -> a Volume with the input's shape and affine

Choices, documented:

* **Labels are resized, not probabilities.** The reference test loop resizes the argmax labels back with nearest
  neighbour; medseg does the same by default, so its labels can be compared voxel by voxel with the reference's.
* **Resize to the model size.** ``resize="torch"`` (default) is the training dataset's bicubic resampling, on the
  device. ``resize="scipy"`` resizes each slice with ``scipy.ndimage.zoom(order=3)`` on the CPU, as the reference
  TransUNet test loop does: slower, but the model sees the reference's exact pixels (used for parity checks and
  ``benchmarks/infer_speed.py``). A slice already at the model size is not resized in the scipy mode (as in the
  reference).
* **Probabilities** (``return_probabilities=True``) are the softmax resized back with bilinear interpolation
  (align_corners=True), stored float16 as ``(i, j, k, C)`` on the input grid: ``probabilities[..., c]`` is class
  ``c``. Their argmax can differ from the labels by a pixel at organ borders (labels follow the reference).
* **Memory.** Apart from the input array and the uint8 output, only ``batch_size`` slices are in flight (input,
  model-size tensors, logits); a 512 x 512 x 1000 CT uses the same working memory as a 100-slice one. Asking for
  probabilities preallocates them on the input grid (float16, C bytes x 2 per voxel).
* **TransUNet h5 volumes** (``caseXXXX.npy.h5``) hold slice-first images already scaled to [0, 1] and no geometry:
  they are predicted slice by slice as stored (no orientation, no HU window) and returned as an ``(H, W, D)``
  volume (``array[:, :, k]`` is the prediction of ``image[k]``) with an identity affine.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medseg.data.orientation import orient_view as _orient
from medseg.data.orientation import oriented_spacing
from medseg.data.spacing import resample, resampled_size, sliding_window_probabilities, to_native
from medseg.data.transunet_h5 import read_volume_h5
from medseg.engine.rebuild import nearest_index_map, restore_to_source
from medseg.errors import CheckpointError, ConfigError, InputError
from medseg.io import Volume, is_nifti, read_volume
from medseg.labels import LabelSet, get_label_set
from medseg.models.checkpoint import load_checkpoint
from medseg.preprocessing import PreprocessingParams, hu_window
from medseg.progress import progress_bar

log = logging.getLogger(__name__)

RESIZE_MODES = ("torch", "scipy")
H5_SUFFIXES = (".h5", ".hdf5")


@dataclass
class Predictor:
    """A model ready for inference with everything needed to preprocess its input.

    Attributes:
        model: the network in eval mode, on ``device``.
        model_name: registry name.
        label_set: the classes the model predicts.
        preprocessing: HU window, orientation, model input size and image interpolation.
        device: where the model runs.
        amp: ``bf16`` (autocast) or ``off``.
        source: checkpoint path (for messages).
        info: the checkpoint's metadata (:class:`medseg.models.checkpoint.CheckpointInfo`) or None.
    """

    model: nn.Module
    model_name: str
    label_set: LabelSet
    preprocessing: PreprocessingParams
    device: torch.device
    amp: str = "off"
    source: str = ""
    info: object = field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        return self.label_set.num_classes

    @property
    def img_size(self) -> int:
        return self.preprocessing.img_size


def resolve_device(device: "str | torch.device" = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``, ``cuda``, ``cuda:N`` as given (checked).

    Raises:
        ConfigError: a CUDA device was asked for but none is available, or the name is unknown.
    """
    if isinstance(device, torch.device):
        return device
    name = str(device).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {device} asked for but no CUDA device is available")
        return torch.device(name)
    raise ConfigError(f"device: expected auto, cpu, cuda or cuda:N, got {device!r}")


def cpu_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX-BF16 in ``cpuinfo``'s flags) and torch's
    oneDNN can use it. Elsewhere (no such flags, not Linux, no oneDNN) bf16 is emulated and slower than fp32."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return bool({"avx512_bf16", "amx_bf16"} & set(flags)) and torch.backends.mkldnn.is_available()


def resolve_amp(amp: "str | bool | None", device: torch.device, cpu_bf16: bool = False) -> str:
    """``None``/``auto`` -> ``bf16`` on CUDA, and on a CPU with native bf16 when ``cpu_bf16`` (training), else
    ``off``; ``True``/``bf16`` -> ``bf16``; ``False``/``off``/``fp32`` -> ``off``."""
    if amp is None or amp == "auto":
        if device.type == "cuda" or (device.type == "cpu" and cpu_bf16 and cpu_native_bf16()):
            return "bf16"
        return "off"
    if amp is True or amp == "bf16":
        return "bf16"
    if amp is False or amp in ("off", "fp32"):
        return "off"
    raise ConfigError(f"amp: expected auto, bf16, fp32 or off, got {amp!r}")


def autocast(device: torch.device, amp: str):
    """The autocast context of a resolved ``amp`` (``bf16`` or ``off``) on ``device`` (training and inference)."""
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


def load_predictor(checkpoint: "str | Path | Predictor", device: "str | torch.device" = "auto", *,
                   model_name: "str | None" = None, labels: "str | LabelSet | None" = None,
                   img_size: "int | None" = None, amp: "str | bool | None" = None) -> Predictor:
    """Load a checkpoint for inference.

    Args:
        checkpoint: a medseg checkpoint (``last.pt`` / ``best.pt``), or a bare state_dict such as one saved by the
            reference TransUNet code (then ``model_name`` is required); a :class:`Predictor` passes through.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        model_name: registry name for a bare state_dict (e.g. ``R50-ViT-B_16``); checked against a medseg
            checkpoint.
        labels: label set of a bare state_dict (default ``synapse8``, the paper's 8 organs).
        img_size: model input size of a bare state_dict (default: the variant's published size, 224).
        amp: ``auto``/None (bf16 on CUDA), ``bf16`` or ``off``.

    Raises:
        CheckpointError: the file is missing, unreadable, unsafe, or does not fit the architecture.
        ConfigError: bad device or label set name.
    """
    if isinstance(checkpoint, Predictor):
        return checkpoint

    torch_device = resolve_device(device)
    model, info = load_checkpoint(checkpoint, model_name=model_name, img_size=img_size, map_location="cpu")
    if info.label_set is not None:
        label_set = info.label_set
        if labels is not None and get_label_set(labels).name != label_set.name:
            raise CheckpointError(f"{checkpoint}: the checkpoint predicts {label_set.name}, not {labels}")
    else:
        label_set = get_label_set(labels or "synapse8")
    num_classes = int(info.model_config["num_classes"])
    if num_classes != label_set.num_classes:
        raise CheckpointError(f"{checkpoint}: the model has {num_classes} classes but label set {label_set.name} "
                              f"has {label_set.num_classes} (pass the right --labels)")
    preprocessing = dict(info.preprocessing or {})
    preprocessing["img_size"] = int(info.model_config["img_size"])
    try:
        params = PreprocessingParams.from_dict(preprocessing, source=f"{checkpoint}: preprocessing")
    except ConfigError as exc:  # e.g. a key this medseg does not know: never predict with a default instead
        raise CheckpointError(str(exc)) from None
    return make_predictor(model, info.model_name, label_set, params, torch_device, amp=amp, source=str(checkpoint),
                          info=info, channels_last=True)


def make_predictor(model: nn.Module, model_name: str, label_set: LabelSet, preprocessing: PreprocessingParams,
                   device: "str | torch.device" = "auto", *, amp: "str | bool | None" = None, source: str = "",
                   info=None, channels_last: "bool | None" = None) -> Predictor:
    """Wrap an already built model (e.g. during training) as a :class:`Predictor` (moved to ``device``, eval).

    ``channels_last`` converts the model's weights to the channels-last memory format (faster convolutions on CPU
    and GPU; the model is converted in place). Default: on CUDA only, so that a CPU training run that validates
    with its own model keeps its weights' layout (and its exact resume); :func:`load_predictor`, which owns its
    model, passes True.
    """
    torch_device = resolve_device(device)
    model = model.to(torch_device).eval()
    if channels_last is None:
        channels_last = torch_device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return Predictor(model=model, model_name=model_name, label_set=get_label_set(label_set),
                     preprocessing=preprocessing, device=torch_device, amp=resolve_amp(amp, torch_device),
                     source=source, info=info)


# ----------------------------------------------------------------------------------------------------------------
# Reading inputs


def is_h5(path: "str | Path") -> bool:
    """True for a TransUNet h5 volume file (``.npy.h5``, ``.h5``, ``.hdf5``)."""
    return str(path).lower().endswith(H5_SUFFIXES)


def read_input(path: "str | Path") -> tuple[Volume, bool]:
    """Read a CT volume to predict: a NIfTI file or a TransUNet h5 volume.

    Returns:
        ``(volume, is_h5)``. For NIfTI the array keeps its stored dtype (HU); for h5 the ``(D, H, W)`` image in
        [0, 1] becomes an ``(H, W, D)`` float32 view with an identity affine.

    Raises:
        InputError: missing, unreadable, corrupt or non-3D file, or an unsupported file type.
    """
    path = Path(path)
    if is_h5(path):
        image, _ = read_volume_h5(path)
        if not np.all(np.isfinite(image)):
            raise InputError(f"{path}: volume contains NaN or infinite values")
        return Volume(np.moveaxis(image, 0, -1), np.eye(4)), True
    if not is_nifti(path):
        raise InputError(f"{path}: not a NIfTI (.nii, .nii.gz) or TransUNet h5 (.npy.h5) file")
    return read_volume(path), False


# ----------------------------------------------------------------------------------------------------------------
# Resizing


def model_size_grid(batch: int, size: int, device: torch.device) -> torch.Tensor:
    """The sampling grid of a plain resize to ``size x size`` (identity affine, align_corners=True): ``(B, S, S, 2)``.

    It is the grid :func:`medseg.data.transforms.resample_slice` uses without augmentation, so a batch resized with
    it has exactly the pixels the training dataset produces.
    """
    theta = torch.eye(3, dtype=torch.float32)[:2][None]
    grid = F.affine_grid(theta, (1, 1, size, size), align_corners=True)
    return grid.to(device).expand(batch, -1, -1, -1)


def resize_to_model(slices: torch.Tensor, size: int, interpolation: str = "bicubic") -> torch.Tensor:
    """``(B, H, W)`` float slices in [0, 1] -> ``(B, 1, size, size)``, as the training dataset resizes them.

    Bicubic output is clamped to [0, 1] (cubic overshoot), as in training.
    """
    grid = model_size_grid(slices.shape[0], size, slices.device)
    resized = F.grid_sample(slices[:, None].float(), grid, mode=interpolation, padding_mode="zeros",
                            align_corners=True)
    if interpolation == "bicubic":
        resized = resized.clamp_(0.0, 1.0)
    return resized


def resize_to_model_scipy(slices: np.ndarray, size: int) -> torch.Tensor:
    """The reference test loop's resize: ``scipy.ndimage.zoom(slice, (size/H, size/W), order=3)`` per slice.

    Args:
        slices: ``(B, H, W)`` float32 numpy slices in [0, 1].

    Returns:
        ``(B, 1, size, size)`` float32 CPU tensor (not clamped, as in the reference). Slices already at the model
        size are passed through unchanged, as the reference does.
    """
    from scipy import ndimage

    _, height, width = slices.shape
    if (height, width) == (size, size):
        return torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))[:, None]
    factors = (size / height, size / width)
    out = np.stack([ndimage.zoom(np.asarray(s, dtype=np.float32), factors, order=3) for s in slices])
    return torch.from_numpy(out)[:, None]


# ----------------------------------------------------------------------------------------------------------------
# Forward


def _autocast(predictor: Predictor):
    return autocast(predictor.device, predictor.amp)


def _main_logits(output) -> torch.Tensor:
    """Logits of a model output (the first element when a model returns a tuple)."""
    return output[0] if isinstance(output, (tuple, list)) else output


@torch.no_grad()
def forward_probabilities(predictor: Predictor, images: torch.Tensor, tta: bool = False) -> torch.Tensor:
    """Softmax probabilities ``(B, C, S, S)`` float32 of model-size images ``(B, 1, S, S)`` on the device.

    With ``tta`` the softmax of the image, its left-right flip and its up-down flip are averaged (each flipped
    back first).
    """
    model = predictor.model
    images = images.contiguous(memory_format=torch.channels_last)  # (B, 1, S, S): the layout is the same either way
    flips = [None, (3,), (2,)] if tta else [None]
    total = None
    with _autocast(predictor):
        for dims in flips:
            x = images if dims is None else torch.flip(images, dims)
            probabilities = torch.softmax(_main_logits(model(x)).float(), dim=1)
            if dims is not None:
                probabilities = torch.flip(probabilities, dims)
            total = probabilities if total is None else total + probabilities
    return total if len(flips) == 1 else total / len(flips)


def segment_oriented(predictor: Predictor, oriented: np.ndarray, *, scaled: bool = False, batch_size: int = 16,
                     tta: bool = False, resize: str = "torch", probabilities: bool = False,
                     progress: bool = False, description: str = "predict",
                     spacing_hw=None) -> tuple[np.ndarray, "np.ndarray | None"]:
    """Segment an oriented volume slice-batch by slice-batch.

    Args:
        predictor: model and preprocessing.
        oriented: ``(H, W, D)`` array in the predictor's orientation (axis 2 = axial slices); HU values, or values
            already in [0, 1] when ``scaled``. May be a view or a memory map: only ``batch_size`` slices are read
            at a time.
        scaled: the values are already windowed to [0, 1] (slice cache stacks, TransUNet h5 volumes).
        batch_size: slices per forward pass.
        tta: flip test-time augmentation.
        resize: ``torch`` (training's bicubic resampling on the device) or ``scipy`` (the reference's zoom).
        probabilities: also return the softmax on the native in-plane grid.
        progress: show a progress bar over slices.
        spacing_hw: in-plane pixel size in mm (rows, columns); needed by a checkpoint with spacing-aware input
            (``input_mode: spacing``): slices are resampled to its target spacing, covered by overlapping
            model-size tiles and the probabilities resampled back (:mod:`medseg.data.spacing`).

    Returns:
        ``(labels uint8 (H, W, D), probabilities float16 (H, W, D, C) or None)``.
    """
    if oriented.ndim != 3:
        raise InputError(f"expected a 3D volume, got shape {oriented.shape}")
    if batch_size < 1:
        raise ConfigError(f"batch_size: must be at least 1, got {batch_size}")
    if resize not in RESIZE_MODES:
        raise ConfigError(f"resize: expected one of {', '.join(RESIZE_MODES)}, got {resize!r}")
    params = predictor.preprocessing
    size = params.img_size
    height, width, depth = oriented.shape
    spacing_mode = params.input_mode == "spacing"
    if spacing_mode:
        if spacing_hw is None:
            raise ConfigError("this checkpoint resamples slices to its target spacing (input_mode spacing): the "
                              "volume's in-plane spacing is needed")
        if resize != "torch":
            raise ConfigError(f"resize: {resize} is not available with spacing-aware input (torch only)")
        spacing_size = resampled_size((height, width), spacing_hw, params.target_spacing_mm)
    device = predictor.device
    rows = torch.from_numpy(nearest_index_map(size, height)).to(device)
    cols = torch.from_numpy(nearest_index_map(size, width)).to(device)
    labels = np.empty((height, width, depth), dtype=np.uint8)
    probs_out = None
    if probabilities:
        probs_out = np.empty((height, width, depth, predictor.num_classes), dtype=np.float16)

    bar = progress_bar(total=depth, desc=description, unit="slice", disable=not progress, leave=False)
    for start in range(0, depth, batch_size):
        stop = min(start + batch_size, depth)
        chunk = np.moveaxis(np.asarray(oriented[:, :, start:stop]), -1, 0)  # (b, H, W), stored dtype
        if resize == "torch":
            slices = torch.from_numpy(np.array(chunk))  # a copy: the source may be a read-only memory map
            if device.type == "cuda":
                slices = slices.pin_memory().to(device, non_blocking=True)
            slices = slices.float()
            if not scaled:
                slices = hu_window(slices, params.hu_min, params.hu_max)
            if spacing_mode:
                images = resample(slices[:, None], spacing_size, interpolation=params.image_interpolation)
            else:
                images = resize_to_model(slices, size, params.image_interpolation)
        else:
            chunk = chunk.astype(np.float32)
            if not scaled:
                chunk = hu_window(chunk, params.hu_min, params.hu_max)
            images = resize_to_model_scipy(chunk, size).to(device)
        if spacing_mode:  # tiles over the resampled slice, probabilities back onto the slice's own pixels
            native = to_native(sliding_window_probabilities(
                images, size, lambda tiles: forward_probabilities(predictor, tiles, tta=tta)), (height, width))
            batch_labels = native.argmax(dim=1)  # (b, H, W)
        else:
            batch_probs = forward_probabilities(predictor, images, tta=tta)  # (b, C, S, S)
            batch_labels = batch_probs.argmax(dim=1)  # (b, S, S)
            batch_labels = batch_labels.index_select(1, rows).index_select(2, cols)  # (b, H, W) nearest, reference
        labels[:, :, start:stop] = batch_labels.to(torch.uint8).cpu().numpy().transpose(1, 2, 0)
        if probs_out is not None:
            if not spacing_mode:
                native = F.interpolate(batch_probs, size=(height, width), mode="bilinear", align_corners=True)
            probs_out[:, :, start:stop, :] = native.to(torch.float16).cpu().numpy().transpose(2, 3, 0, 1)
        bar.update(stop - start)
    bar.close()
    return labels, probs_out


# ----------------------------------------------------------------------------------------------------------------
# The public entry point


def predict_volume(image: "Volume | str | Path", checkpoint: "str | Path | Predictor", device: str = "auto",
                   batch_size: int = 16, tta: bool = False, amp: "str | bool | None" = None,
                   return_probabilities: bool = False, *, resize: str = "torch", scaled: "bool | None" = None,
                   reorient: "bool | None" = None, progress: bool = False, model_name: "str | None" = None,
                   labels: "str | None" = None, img_size: "int | None" = None):
    """Segment one CT volume and return the label volume on the input's own grid.

    Args:
        image: a :class:`~medseg.io.Volume` (HU values, its affine), or the path of a NIfTI file or TransUNet h5
            volume.
        checkpoint: a checkpoint path or a :class:`Predictor` from :func:`load_predictor` (load once, predict many).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (ignored when a Predictor is given).
        batch_size: slices per forward pass (bounds the memory in flight).
        tta: average the softmax over left-right and up-down flips.
        amp: ``None``/``auto`` (bf16 on CUDA, off on CPU), ``bf16`` or ``off`` (ignored for a Predictor).
        return_probabilities: also return float16 probabilities ``(i, j, k, C)`` on the input grid.
        resize: ``torch`` (default) or ``scipy`` (the reference's per-slice cubic zoom; see the module docstring).
        scaled: the image already holds values in [0, 1] (default: True only for h5 input).
        reorient: bring the volume into the checkpoint's orientation first (default: True, except for h5 input,
            whose stack is predicted as stored; pass False with a Volume made from an h5 stack).
        progress: show a progress bar.
        model_name, labels, img_size: for a bare reference state_dict (see :func:`load_predictor`).

    Returns:
        A :class:`~medseg.io.Volume` of uint8 labels with exactly the input's shape and affine; with
        ``return_probabilities`` the tuple ``(labels, probabilities)``.

    Example::

        from medseg.engine.inference import predict_volume
        labels = predict_volume("img0001.nii.gz", "runs/demo/best.pt")
        labels.array.shape, labels.affine      # those of img0001.nii.gz
    """
    predictor = load_predictor(checkpoint, device, model_name=model_name, labels=labels, img_size=img_size, amp=amp)
    h5_input = False
    if isinstance(image, (str, Path)):
        volume, h5_input = read_input(image)
    elif isinstance(image, Volume):
        volume = image
    else:
        raise InputError(f"image: expected a Volume or a file path, got {type(image).__name__}")
    if volume.array.ndim != 3:
        raise InputError(f"image: expected a 3D volume, got shape {volume.array.shape}")
    if scaled is None:
        scaled = h5_input
    if reorient is None:
        reorient = not h5_input
    started = time.perf_counter()
    if not reorient:
        oriented = volume.array
        spacing_hw = volume.spacing[:2]
    else:
        oriented = orient_view(volume.array, volume.affine, predictor.preprocessing.axcodes)
        spacing_hw = oriented_spacing(volume.affine, predictor.preprocessing.axcodes)[:2]
    labels_oriented, probs = segment_oriented(predictor, oriented, scaled=scaled, batch_size=batch_size, tta=tta,
                                              resize=resize, probabilities=return_probabilities,
                                              progress=progress, spacing_hw=spacing_hw)
    if not reorient:
        label_array = labels_oriented
    else:  # the 3D rebuild: back onto the input's voxel grid (medseg.engine.rebuild)
        axcodes = predictor.preprocessing.axcodes
        label_array = restore_to_source(labels_oriented, volume.affine, volume.array.shape, axcodes)
        if probs is not None:
            probs = restore_to_source(probs, volume.affine, volume.array.shape, axcodes)
    log.debug("predicted %s slices in %.2f s", volume.array.shape, time.perf_counter() - started)
    result = Volume(np.ascontiguousarray(label_array, dtype=np.uint8), np.asarray(volume.affine, dtype=np.float64))
    if result.shape != tuple(volume.array.shape):  # cannot happen; a clear message if it ever does
        raise InputError(f"prediction shape {result.shape} differs from the input's {tuple(volume.array.shape)}")
    if return_probabilities:
        return result, probs
    return result


def orient_view(array: np.ndarray, affine: np.ndarray, axcodes="PLS") -> np.ndarray:
    """``array`` permuted/flipped into ``axcodes`` order as a numpy view: the prepare chain's orientation step
    (:func:`medseg.data.orientation.orient_view`)."""
    return _orient(array, affine, tuple(axcodes))[0]
