"""ImageNet-21k weights for TransUNet from the original ViT release (``R50+ViT-B_16.npz``, ``ViT-B_16.npz``).

The npz files hold JAX/Flax arrays under slash-separated names. :func:`load_vit_npz` copies them into a
:class:`~medseg.models.transunet.TransUNet` with the conversions of the reference code:

npz key -> TransUNet parameter (``transformer.`` prefix left out), transform:

- ``embedding/kernel``, ``embedding/bias`` -> ``embeddings.patch_embeddings``; kernel HWIO -> OIHW
- ``Transformer/posembed_input/pos_embedding`` (1, 1 + g*g, D) -> ``embeddings.position_embeddings`` (1, G*G, D);
  class token dropped, grid resized when g != G
- ``Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/{query,key,value,out}/{kernel,bias}`` ->
  ``encoder.layer.{i}.attn.{query,key,value,out}``; kernels (D, heads, head_dim) or (heads, head_dim, D) reshaped
  to (D, D) and transposed, biases flattened
- ``Transformer/encoderblock_{i}/MlpBlock_3/Dense_{0,1}/{kernel,bias}`` -> ``encoder.layer.{i}.ffn.fc{1,2}``;
  kernel (in, out) transposed
- ``Transformer/encoderblock_{i}/LayerNorm_0`` -> ``attention_norm``, ``LayerNorm_2`` -> ``ffn_norm``;
  ``Transformer/encoder_norm`` -> ``encoder.encoder_norm``; ``scale`` -> ``weight``
- hybrid only: ``conv_root/kernel``, ``gn_root/{scale,bias}`` -> ``embeddings.hybrid_model.root.{conv,gn}``;
  ``block{b}/unit{u}/{conv1,conv2,conv3,conv_proj}/kernel`` -> ``...body.block{b}.unit{u}.{conv1,conv2,conv3,
  downsample}`` (HWIO -> OIHW); ``block{b}/unit{u}/{gn1,gn2,gn3,gn_proj}/{scale,bias}`` -> the GroupNorms

The decoder and segmentation head are not in the file and keep their initialisation. When the model's token grid
differs from the file's (an input of 512 gives 32x32 tokens, the file has 14x14), the position embedding is
resized bilinearly over the 2D grid with the corners aligned, which is what the reference's
``scipy.ndimage.zoom(order=1)`` computes.

Reached through :func:`medseg.models.pretrained.load_pretrained` (``medseg train --pretrained FILE``).
"""
from __future__ import annotations

import logging
import math
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import CheckpointError
from medseg.models.checkpoint import unwrap_model
from medseg.models.pretrained import PretrainedReport, register_pretrained_loader

logger = logging.getLogger(__name__)

POSITION_EMBEDDING_KEY = "Transformer/posembed_input/pos_embedding"

# How an npz array becomes a PyTorch tensor.
_CONV = "conv"  # HWIO kernel -> OIHW
_LINEAR = "linear"  # (in, ...) kernel -> (out, in)
_VECTOR = "vector"  # any shape -> flat
_POSITION = "position"  # (1, [1 +] g*g, D) -> (1, G*G, D)


def load_vit_npz(model: nn.Module, path: "str | Path", *, strict: bool = True) -> PretrainedReport:
    """Copy ImageNet-21k ViT / R50+ViT weights from ``path`` into a TransUNet ``model`` in place.

    Args:
        model: a :class:`~medseg.models.transunet.TransUNet` (or a DataParallel/DDP wrapper of one).
        path: ``R50+ViT-B_16.npz`` for the hybrid variants, ``ViT-B_16.npz`` for the pure ViT.
        strict: when True (default) an array whose shape does not fit is an error; when False it is skipped and
            listed in ``report.skipped`` (e.g. ``ViT-L_16.npz``'s 16x16 patch kernel for R50-ViT-L_16).

    Returns:
        a :class:`~medseg.models.pretrained.PretrainedReport` (also logged at INFO level).

    Raises:
        CheckpointError: the file is missing or unreadable, holds none of the expected arrays, or an array's shape
            does not fit the model with ``strict`` (e.g. ViT-L weights into a ViT-B model); nothing is copied then.
    """
    path = Path(path)
    model = unwrap_model(model)
    if not hasattr(model, "transformer") or not hasattr(model.transformer, "embeddings"):
        raise CheckpointError(f"{path}: {type(model).__name__} has no ViT encoder to load ImageNet weights into")
    arrays = _open_npz(path)
    parameters = dict(model.named_parameters())
    report = PretrainedReport(source=path.name, family="transunet")

    converted: dict[str, torch.Tensor] = {}
    mismatches: list[str] = []
    for param_name, npz_key, kind in _parameter_map(model):
        if npz_key not in arrays:
            continue
        target = parameters[param_name]
        value = np.asarray(arrays[npz_key], dtype=np.float32)
        tensor, was_resized, problem = _convert(value, kind, tuple(target.shape))
        if problem:
            mismatches.append(f"{npz_key} {problem}")
            continue
        converted[param_name] = tensor
        if was_resized:
            report.resized.append(param_name)
    if mismatches and strict:
        shown = "; ".join(mismatches[:3]) + (f"; +{len(mismatches) - 3} more" if len(mismatches) > 3 else "")
        raise CheckpointError(f"{path}: weights do not fit {type(model).__name__}: {shown}")
    if not converted:
        raise CheckpointError(f"{path}: none of the expected ViT arrays found (is this a ViT / R50+ViT npz file?)")

    with torch.no_grad():
        for name, tensor in converted.items():
            target = parameters[name]
            target.copy_(tensor.to(device=target.device, dtype=target.dtype))
    expected_keys = {npz_key for _, npz_key, _ in _parameter_map(model)}
    report.loaded = list(converted)
    report.missing = [name for name in parameters if name not in converted]
    report.unexpected = sorted(key for key in arrays if key not in expected_keys)
    report.skipped = mismatches
    report.notes.append("1-channel CT is repeated to 3 channels by the model, as in the reference")
    logger.info("ImageNet weights %s", report.summary())
    return report


register_pretrained_loader("transunet", load_vit_npz)


def _open_npz(path: Path) -> "_LazyArrays":
    """The arrays of an npz file by name (read lazily); errors name the file."""
    if not path.exists():
        raise CheckpointError(f"{path}: file not found")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"{path}: not a readable npz file ({type(exc).__name__})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise CheckpointError(f"{path}: not an npz archive of named arrays")
    return _LazyArrays(archive, path)


class _LazyArrays(dict):
    """Dict-like view of an open npz archive: arrays are read when indexed, and read errors name the file."""

    def __init__(self, archive, path: Path):
        super().__init__((key, None) for key in archive.files)
        self._archive = archive
        self._path = path

    def __getitem__(self, key: str) -> np.ndarray:
        try:
            return self._archive[key]
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise CheckpointError(f"{self._path}: array {key!r} is corrupt ({type(exc).__name__})") from None


def _parameter_map(model: nn.Module) -> list[tuple[str, str, str]]:
    """``(model parameter name, npz key, transform)`` for every parameter the ViT npz files can provide."""
    prefix = "transformer.embeddings."
    rows = [
        (prefix + "patch_embeddings.weight", "embedding/kernel", _CONV),
        (prefix + "patch_embeddings.bias", "embedding/bias", _VECTOR),
        (prefix + "position_embeddings", POSITION_EMBEDDING_KEY, _POSITION),
        ("transformer.encoder.encoder_norm.weight", "Transformer/encoder_norm/scale", _VECTOR),
        ("transformer.encoder.encoder_norm.bias", "Transformer/encoder_norm/bias", _VECTOR),
    ]
    for index in range(len(model.transformer.encoder.layer)):
        ours = f"transformer.encoder.layer.{index}."
        theirs = f"Transformer/encoderblock_{index}/"
        attention = theirs + "MultiHeadDotProductAttention_1/"
        for name in ("query", "key", "value", "out"):
            rows.append((ours + f"attn.{name}.weight", attention + f"{name}/kernel", _LINEAR))
            rows.append((ours + f"attn.{name}.bias", attention + f"{name}/bias", _VECTOR))
        for ours_fc, dense in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
            rows.append((ours + f"ffn.{ours_fc}.weight", theirs + f"MlpBlock_3/{dense}/kernel", _LINEAR))
            rows.append((ours + f"ffn.{ours_fc}.bias", theirs + f"MlpBlock_3/{dense}/bias", _VECTOR))
        for ours_norm, layer_norm in (("attention_norm", "LayerNorm_0"), ("ffn_norm", "LayerNorm_2")):
            rows.append((ours + f"{ours_norm}.weight", theirs + f"{layer_norm}/scale", _VECTOR))
            rows.append((ours + f"{ours_norm}.bias", theirs + f"{layer_norm}/bias", _VECTOR))

    resnet = model.transformer.embeddings.hybrid_model
    if resnet is not None:
        ours = prefix + "hybrid_model."
        rows += [
            (ours + "root.conv.weight", "conv_root/kernel", _CONV),
            (ours + "root.gn.weight", "gn_root/scale", _VECTOR),
            (ours + "root.gn.bias", "gn_root/bias", _VECTOR),
        ]
        for block_name, block in resnet.body.named_children():
            for unit_name, unit in block.named_children():
                here = f"{ours}body.{block_name}.{unit_name}."
                there = f"{block_name}/{unit_name}/"
                convs = ["conv1", "conv2", "conv3"]
                norms = ["gn1", "gn2", "gn3"]
                if unit.has_projection:
                    convs.append("downsample")
                    norms.append("gn_proj")
                for conv in convs:
                    npz_conv = "conv_proj" if conv == "downsample" else conv
                    rows.append((here + f"{conv}.weight", there + f"{npz_conv}/kernel", _CONV))
                for norm in norms:
                    rows.append((here + f"{norm}.weight", there + f"{norm}/scale", _VECTOR))
                    rows.append((here + f"{norm}.bias", there + f"{norm}/bias", _VECTOR))
    return rows


def _convert(value: np.ndarray, kind: str, shape: tuple[int, ...]) -> tuple[torch.Tensor, bool, str]:
    """Turn one npz array into a tensor of ``shape``; returns ``(tensor, resized, problem)``."""
    resized = False
    if kind == _CONV:
        if value.ndim != 4:
            return None, False, f"is not a 4D kernel (shape {value.shape})"
        tensor = torch.from_numpy(value.transpose(3, 2, 0, 1).copy())  # HWIO -> OIHW
    elif kind == _LINEAR:
        if value.size != math.prod(shape):
            return None, False, f"has shape {value.shape}, model needs {shape}"
        tensor = torch.from_numpy(value.reshape(shape[1], shape[0]).T.copy())  # (in, out) -> (out, in)
    elif kind == _VECTOR:
        tensor = torch.from_numpy(value.reshape(-1).copy())
    else:
        tensor, resized, problem = _position_embedding(value, shape)
        if problem:
            return None, False, problem
    if tuple(tensor.shape) != shape:
        return None, False, f"gives shape {tuple(tensor.shape)}, model needs {shape}"
    return tensor, resized, ""


def _position_embedding(value: np.ndarray, shape: tuple[int, ...]) -> tuple[torch.Tensor, bool, str]:
    """``(1, [1 +] g*g, D)`` from the file -> ``(1, G*G, D)`` of the model: class token dropped, grid resized.

    The resize is bilinear with the corners aligned (``align_corners=True``), the same sampling as the
    reference's ``scipy.ndimage.zoom(grid, (G/g, G/g, 1), order=1)``.
    """
    if value.ndim != 3 or value.shape[0] != 1:
        return None, False, f"is not a (1, tokens, hidden) position embedding (shape {value.shape})"
    tokens, hidden = value.shape[1], value.shape[2]
    new_tokens = shape[1]
    if hidden != shape[2]:
        return None, False, f"has width {hidden}, model needs {shape[2]}"
    if math.isqrt(tokens) ** 2 != tokens:  # a class token comes first
        value = value[:, 1:]
        tokens -= 1
    if math.isqrt(tokens) ** 2 != tokens:
        return None, False, f"holds {value.shape[1]} tokens, not a square grid"
    grid = torch.from_numpy(value.copy())  # (1, g*g, D)
    if tokens == new_tokens:
        return grid, False, ""
    old_side, new_side = math.isqrt(tokens), math.isqrt(new_tokens)
    grid = grid.reshape(1, old_side, old_side, hidden).permute(0, 3, 1, 2)  # (1, D, g, g)
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bilinear", align_corners=True)  # (1, D, G, G)
    return grid.permute(0, 2, 3, 1).reshape(1, new_side * new_side, hidden), True, ""
