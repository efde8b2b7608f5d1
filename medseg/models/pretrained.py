"""ImageNet (and other official) initialisation for every family, through one entry point.

Each architecture file holds the loader for its family's official release, beside the model (timm's habit), and
registers it here with :func:`register_pretrained_loader`; :func:`load_pretrained` is what ``medseg train
--pretrained FILE`` and the pipelines' ``train.pretrained`` call. Every loader returns one
:class:`PretrainedReport` (loaded, resized, missing, unexpected), which training writes to ``train.log``.

The pieces shared by the loaders live here too: reading a weight file with one-line errors (:func:`read_weights`),
renaming keys by rules (:func:`rename_keys`), adapting the first convolution to 1-channel CT
(:func:`adapt_input_channels`) and copying tensors with shape checks (:func:`copy_weights`).

Families and their files (each loader lives in the family's model file; details in its docstring):

- transunet: ``R50+ViT-B_16.npz`` / ``ViT-B_16.npz`` (Google ViT, ImageNet-21k)
- ds_transunet: ``swin_base_patch4_window7_224_22k.pth`` and ``swin_tiny_patch4_window7_224.pth`` (Microsoft)
- segformer: ``mit_b0.pth`` .. ``mit_b5.pth`` (NVlabs), or a local Hugging Face folder
- setr: timm ``vit_base_patch16_*`` / ``vit_large_patch16_*``, ``.pth`` or Google ``.npz``
- bisenet: torchvision ``resnet18-*.pth``
- topformer: ``topformer-T/S/B-224-*.pth`` (hustvl, ImageNet backbones)
"""
from __future__ import annotations

import importlib
import logging
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medseg.errors import CheckpointError, ConfigError
from medseg.io import file_sha256
from medseg.models.wrappers import unwrap_model

logger = logging.getLogger(__name__)

__all__ = [
    "PretrainedReport",
    "adapt_first_kernel",
    "adapt_input_channels",
    "copy_weights",
    "load_pretrained",
    "read_weights",
    "convert_official",
    "register_official_converter",
    "register_pretrained_loader",
    "rename_keys",
]

_LOADERS: dict[str, Callable] = {}

# Module that holds each family's loader (imported on first use).
_LOADER_MODULES = {
    "transunet": "medseg.models.transunet",
    "ds_transunet": "medseg.models.ds_transunet",
    "segformer": "medseg.models.segformer",
    "setr": "medseg.models.setr",
    "bisenet": "medseg.models.bisenet",
    "topformer": "medseg.models.topformer",
}


@dataclass
class PretrainedReport:
    """What a pretrained loader did; the same type for every family.

    Attributes:
        source: the file (or folder) name.
        family: the architecture family it was loaded into.
        loaded: model keys filled from the file as they were.
        resized: model keys filled from a transformed tensor, with how (``"key: (3, 4, 4) -> (1, 8, 8) ..."``).
        missing: model keys the file does not provide; they keep their initialisation (decoders, heads, ...).
        unexpected: file keys no model key took (classifier heads, buffers the model rebuilds, ...).
        skipped: file tensors left out because their shape does not fit (only where a loader allows that).
        notes: decisions worth a line in the log (input-channel adaptation, final norm, ...).
    """

    source: str
    family: str
    loaded: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def merge(self, other: "PretrainedReport") -> "PretrainedReport":
        """A report covering both loads (two files into one model); a key filled by either is not missing."""
        filled = set(self.loaded) | set(other.loaded) | {line.split(":")[0] for line in self.resized + other.resized}
        missing = [key for key in self.missing if key not in filled]
        missing += [key for key in other.missing if key not in filled and key not in missing]
        return PretrainedReport(
            source=f"{self.source} + {other.source}", family=self.family, loaded=self.loaded + other.loaded,
            resized=self.resized + other.resized, missing=missing, unexpected=self.unexpected + other.unexpected,
            skipped=self.skipped + other.skipped, notes=self.notes + other.notes,
        )

    def summary(self) -> str:
        """One line for logs."""
        text = (f"{self.source} -> {self.family}: {len(self.loaded)} loaded, {len(self.resized)} resized, "
                f"{len(self.missing)} missing (kept at init), {len(self.unexpected)} unexpected (ignored)")
        if self.skipped:
            text += f", {len(self.skipped)} skipped for their shape"
        return text

    def lines(self) -> list[str]:
        """The summary, then one line per resized tensor and note, then the first missing/unexpected keys."""
        out = [self.summary()]
        out += [f"  resized: {line}" for line in self.resized]
        out += [f"  note: {line}" for line in self.notes]
        for name, keys in (("missing", self.missing), ("unexpected", self.unexpected), ("skipped", self.skipped)):
            if keys:
                shown = ", ".join(keys[:6]) + (f", ... (+{len(keys) - 6})" if len(keys) > 6 else "")
                out.append(f"  {name}: {shown}")
        return out


def register_pretrained_loader(family: str, loader: Callable) -> Callable:
    """Register ``loader(model, path) -> PretrainedReport`` for ``family``; returns the loader."""
    _LOADERS[family] = loader
    return loader


def load_pretrained(model: nn.Module, family: str, path: "str | Path | list") -> PretrainedReport:
    """Initialise ``model`` (of ``family``) from an official pretrained file, in place, and log the report.

    Args:
        model: a model built by :func:`medseg.models.create` (a DataParallel/DDP wrapper is unwrapped).
        family: its registry family (``medseg models`` lists them).
        path: the file (or Hugging Face folder for SegFormer). DS-TransUNet takes two files, the Swin-B and the
            Swin-T checkpoint, as a list or one string ``"swin_b.pth,swin_t.pth"``.

    Raises:
        ConfigError: no loader for the family.
        CheckpointError: missing, truncated or unreadable file, or a file of another family (one line).
    """
    module = _LOADER_MODULES.get(family)
    if module is None:
        raise ConfigError(f"pretrained: no pretrained weights are known for the {family} family "
                          f"(known: {', '.join(sorted(_LOADER_MODULES))})")
    importlib.import_module(module)
    report = _LOADERS[family](unwrap_model(model), path)
    report.notes += [f"sha256 {digest} {name}" for name, digest in _file_digests(path)]
    for line in report.lines():
        logger.info("pretrained %s", line)
    return report


_OFFICIAL_CONVERTERS: dict[str, Callable] = {}


def register_official_converter(family: str, converter: Callable) -> Callable:
    """Register ``converter(state_dict, model) -> state_dict``: an official codebase's checkpoint in medseg's keys."""
    _OFFICIAL_CONVERTERS[family] = converter
    return converter


def convert_official(family: str, state_dict: Mapping[str, torch.Tensor], model: nn.Module
                     ) -> "dict[str, torch.Tensor] | None":
    """``state_dict`` of the family's official codebase renamed (and folded) to ``model``'s keys.

    Returns None when the family has no converter or ``state_dict`` does not look official (none of its keys
    has an official name the converter knows). Used by :func:`medseg.models.checkpoint.load_checkpoint` for bare
    state dicts, so a checkpoint trained with the official code loads with ``--model NAME``.
    """
    module = _LOADER_MODULES.get(family)
    if module is not None:
        importlib.import_module(module)
    converter = _OFFICIAL_CONVERTERS.get(family)
    if converter is None:
        return None
    return converter(state_dict, model)


def _file_digests(path) -> list[tuple[str, str]]:
    """``(file name, sha256)`` of the weight file(s) behind ``path``, for the record of what initialised a run."""
    if isinstance(path, (list, tuple)):
        paths = [Path(p) for p in path]
    else:
        paths = [Path(p) for p in str(path).split(",") if p.strip()] if not Path(path).exists() else [Path(path)]
    files = []
    for item in paths:
        if item.is_dir():
            files += [item / name for name in ("model.safetensors", "pytorch_model.bin") if (item / name).is_file()]
        elif item.is_file():
            files.append(item)
    return [(file.name, file_sha256(file)) for file in files]


# ----------------------------------------------------------------------------------------------------------------
# Shared pieces of the loaders
# ----------------------------------------------------------------------------------------------------------------
WRAPPER_KEYS = ("state_dict_ema", "state_dict", "model", "module")


def read_weights(path: "str | Path", what: str) -> dict[str, torch.Tensor]:
    """The tensors of a weight file as a flat ``{key: float tensor}`` dict.

    ``.npz`` archives are read with numpy (no pickle), ``.safetensors`` with safetensors, anything else with
    ``torch.load(weights_only=True)``. A dict nested under ``state_dict_ema``, ``state_dict``, ``model`` or
    ``module`` is unwrapped (the first present, in that order) and a ``module.`` prefix on every key is removed.

    Args:
        path: the file.
        what: what the file should be, for error messages (``"Swin ImageNet checkpoint"``).

    Raises:
        CheckpointError: missing, truncated, corrupt or unsafe file, or no tensors in it.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                data = {key: torch.from_numpy(np.array(archive[key])) for key in archive.files}
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(str(path))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: cannot be read as a {what} (truncated or corrupt? {reason})") from None
    except Exception as exc:  # unpickling refused (weights_only) and other loader failures
        raise CheckpointError(f"{path}: not a plain tensor file ({type(exc).__name__}); expected a {what}") from None
    for _ in range(2):  # e.g. {'state_dict': {'model': ...}} is not expected, but {'model': {...}} is
        if isinstance(data, Mapping):
            for wrapper in WRAPPER_KEYS:
                if isinstance(data.get(wrapper), Mapping):
                    data = data[wrapper]
                    break
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path}: holds a {type(data).__name__}, not a dict of tensors; expected a {what}")
    tensors = {}
    for key, value in data.items():
        if isinstance(value, torch.Tensor):
            tensors[key[len("module."):] if str(key).startswith("module.") else str(key)] = value
    if not tensors:
        raise CheckpointError(f"{path}: holds no tensors; expected a {what}")
    return tensors


def rename_keys(state: Mapping[str, torch.Tensor], rules: list[tuple[str, "str | None"]]
                ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename keys by the first matching ``(regex, replacement)`` rule; replacement ``None`` drops the key.

    Returns ``(renamed, unexpected)``: the renamed tensors, and the original keys no rule matched or a rule dropped.
    """
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in rules]
    renamed, unexpected = {}, []
    for key, value in state.items():
        for pattern, replacement in compiled:
            if pattern.fullmatch(key):
                if replacement is None:
                    unexpected.append(key)
                else:
                    renamed[pattern.sub(replacement, key)] = value
                break
        else:
            unexpected.append(key)
    return renamed, unexpected


def adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """An RGB first-layer kernel ``(C, 3, k, k)`` for a model with ``in_channels`` input channels.

    1 channel: the kernel summed over RGB. For a grey image this is exactly the RGB network applied to the image
    repeated to three channels (``conv(repeat(x)) == conv_summed(x)``), without the cost of three channels.
    3 channels: unchanged. Other counts: the RGB kernel repeated cyclically and scaled by ``3 / in_channels``
    (timm's rule), which keeps the activation scale.
    """
    if weight.shape[1] == in_channels:
        return weight
    if weight.shape[1] != 3:
        raise ValueError(f"first-layer kernel has {weight.shape[1]} input channels, expected 3 (RGB)")
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_channels // 3)
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (3.0 / in_channels)


def adapt_first_kernel(tensors: dict[str, torch.Tensor], key: str, in_channels: int,
                       report: PretrainedReport) -> None:
    """Adapt ``tensors[key]``, an RGB first-layer kernel, to ``in_channels`` in place (see
    :func:`adapt_input_channels`) and record it in ``report.resized``; nothing if absent or already fitting."""
    kernel = tensors.get(key)
    if kernel is None or kernel.ndim != 4 or kernel.shape[1] == in_channels:
        return
    tensors[key] = adapt_input_channels(kernel, in_channels)
    how = ("summed over RGB" if in_channels == 1
           else f"RGB repeated to {in_channels} channels, scaled by 3/{in_channels}")
    report.resized.append(f"{key}: {tuple(kernel.shape)} -> {tuple(tensors[key].shape)} ({how})")


def copy_weights(model: nn.Module, tensors: Mapping[str, torch.Tensor], report: PretrainedReport, *,
                 prefix: str = "", expected: "set[str] | None" = None, what: str = "checkpoint") -> None:
    """Copy ``tensors`` (model key -> tensor) into ``model`` in place and fill ``report``.

    Args:
        model: the model.
        tensors: tensors already renamed to the model's keys (and already resized where that was intended).
        report: filled with ``loaded`` and ``missing``; keys not in the model go to ``unexpected``.
        prefix: only model keys under this prefix count as ``missing`` (the part the file is meant to fill).
        expected: the model keys the file must fill; one absent from ``tensors`` is ``missing``; default all keys
            under ``prefix``.
        what: the kind of file, for the error message.

    Raises:
        CheckpointError: a tensor whose shape does not fit (names the first), or nothing of the file fits the
            model (a file of another family); nothing is copied then.
    """
    targets = model.state_dict()
    matched, mismatched = {}, []
    for key, value in tensors.items():
        if key not in targets:
            report.unexpected.append(key)
        elif tuple(value.shape) != tuple(targets[key].shape):
            mismatched.append(f"{key} {tuple(value.shape)} in the file, {tuple(targets[key].shape)} in the model")
        else:
            matched[key] = value
    if mismatched:
        more = f" (+{len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise CheckpointError(f"{report.source}: {what} does not fit {type(model).__name__}: {mismatched[0]}{more}")
    if not matched:
        raise CheckpointError(f"{report.source}: nothing in the file fits {type(model).__name__} "
                              f"(is it a {what}? a file of another family?)")
    with torch.no_grad():
        for key, value in matched.items():
            targets[key].copy_(value.to(dtype=targets[key].dtype))
    resized = {line.split(":")[0] for line in report.resized}
    report.loaded += [key for key in matched if key not in resized]
    wanted = expected if expected is not None else {key for key in targets if key.startswith(prefix)}
    report.missing += [key for key in targets if key in wanted and key not in matched
                       and not key.endswith("num_batches_tracked")]
