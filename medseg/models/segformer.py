"""SegFormer (Xie et al., NeurIPS 2021): Mix Transformer encoder and all-MLP decoder.

The network itself is the faithful implementation in ``transformers``
(:class:`transformers.SegformerForSemanticSegmentation`), built from a :class:`transformers.SegformerConfig` and
randomly initialised: nothing is downloaded. This module chooses the published configurations, maps the input
channels (``num_channels = in_channels``, so 1-channel CT goes straight into the first overlapped patch embedding) and
upsamples the decoder's ``H/4 x W/4`` logits bilinearly to the input size.

Architecture (all variants): four stages of overlapped patch embedding (kernel 7/3/3/3, stride 4/2/2/2), efficient
self-attention with sequence-reduction ratios 8/4/2/1, Mix-FFN (expansion 4 with a 3x3 depthwise conv), no position
embedding; the decoder projects each stage to ``decoder_hidden_size`` channels with a linear layer, upsamples to H/4,
concatenates, fuses with a 1x1 conv + BN + ReLU and classifies with a 1x1 conv.

Variants (parameters with 1 input channel and 9 classes; the paper's counts are for 3 channels and 150 classes):
    ``SegFormer-B0``  dims 32/64/160/256, depths 2/2/2/2, decoder 256:  3.71M (paper 3.8M)
    ``SegFormer-B1``  dims 64/128/320/512, depths 2/2/2/2, decoder 256: 13.67M (paper 13.7M)
    ``SegFormer-B2``  dims 64/128/320/512, depths 3/4/6/3, decoder 768: 27.35M (paper 27.5M)
    ``SegFormer-B3``  depths 3/4/18/3, decoder 768: 47.22M (paper 47.3M)
    ``SegFormer-B4``  depths 3/8/27/3, decoder 768: 63.99M (paper 64.1M)
    ``SegFormer-B5``  depths 3/6/40/3, decoder 768: 84.59M (paper 84.7M)
Attention heads are 1/2/5/8 in every variant.

Inputs must be multiples of 32 (the encoder's total stride), so that every stage has an exact size.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import CheckpointError
from medseg.models.options import check_options
from medseg.models.pretrained import (PretrainedReport, adapt_first_kernel, copy_weights, read_weights,
                                      register_official_converter, register_pretrained_loader, rename_keys)
from medseg.models.registry import OfficialCount, register_model

if TYPE_CHECKING:  # transformers is imported when a SegFormer is built, not when the registry loads
    from transformers import SegformerConfig

# Config fields a caller may override; anything else is rejected (SegformerConfig silently keeps unknown keys).
_OVERRIDABLE = {
    "hidden_sizes", "depths", "num_attention_heads", "decoder_hidden_size", "sr_ratios", "mlp_ratios",
    "patch_sizes", "strides", "drop_path_rate", "hidden_dropout_prob", "attention_probs_dropout_prob",
    "classifier_dropout_prob", "hidden_act", "layer_norm_eps", "initializer_range",
}

_MIT_SMALL = [32, 64, 160, 256]
_MIT_LARGE = [64, 128, 320, 512]

# name -> (hidden_sizes, depths, decoder_hidden_size, published parameter count in millions)
VARIANTS = {
    "SegFormer-B0": (_MIT_SMALL, [2, 2, 2, 2], 256, 3.8),
    "SegFormer-B1": (_MIT_LARGE, [2, 2, 2, 2], 256, 13.7),
    "SegFormer-B2": (_MIT_LARGE, [3, 4, 6, 3], 768, 27.5),
    "SegFormer-B3": (_MIT_LARGE, [3, 4, 18, 3], 768, 47.3),
    "SegFormer-B4": (_MIT_LARGE, [3, 8, 27, 3], 768, 64.1),
    "SegFormer-B5": (_MIT_LARGE, [3, 6, 40, 3], 768, 84.7),
}


class SegFormer(nn.Module):
    """SegFormer mapping ``(B, in_channels, H, W)`` images to ``(B, num_classes, H, W)`` logits.

    Attributes:
        model: the wrapped :class:`transformers.SegformerForSemanticSegmentation`.
        config: its :class:`transformers.SegformerConfig`.
    """

    def __init__(self, config: SegformerConfig):
        from transformers import SegformerForSemanticSegmentation

        super().__init__()
        self.config = config
        self.model = SegformerForSemanticSegmentation(config)
        set_official_norm_eps(self.model, config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> logits ``(B, num_classes, H, W)``.

        The decoder predicts at ``(H/4, W/4)``; the logits are upsampled bilinearly (``align_corners=False``).
        """
        logits = self.model(pixel_values=x, return_dict=True).logits  # (B, num_classes, H/4, W/4)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def set_official_norm_eps(model: nn.Module, eps: float) -> None:
    """Give the MiT blocks' two LayerNorms and each stage's closing LayerNorm the official epsilon, in place.

    The official MiT (NVlabs/SegFormer ``mix_transformer.py``) builds those norms with
    ``partial(nn.LayerNorm, eps=1e-6)``; transformers builds them with ``nn.LayerNorm``'s default 1e-5 and ignores
    ``SegformerConfig.layer_norm_eps`` (1e-6). The patch-embedding and sequence-reduction norms keep 1e-5, as in the
    official code, which builds them with the default too.
    """
    for stage in model.segformer.stages:
        stage.layer_norm.eps = eps
        for block in stage.blocks:
            block.layernorm_before.eps = eps
            block.layernorm_after.eps = eps


def segformer_config(name: str, num_classes: int, in_channels: int, **overrides) -> SegformerConfig:
    """The :class:`SegformerConfig` of variant ``name`` with ``overrides`` applied (unknown keys: ConfigError)."""
    check_options(name, overrides, _OVERRIDABLE)
    from transformers import SegformerConfig

    hidden_sizes, depths, decoder_hidden_size, _ = VARIANTS[name]
    values = {
        "num_channels": in_channels,
        "num_labels": num_classes,
        "hidden_sizes": list(hidden_sizes),
        "depths": list(depths),
        "num_attention_heads": [1, 2, 5, 8],
        "sr_ratios": [8, 4, 2, 1],
        "patch_sizes": [7, 3, 3, 3],
        "strides": [4, 2, 2, 2],
        "mlp_ratios": [4, 4, 4, 4],
        "decoder_hidden_size": decoder_hidden_size,
        "drop_path_rate": 0.1,
        "classifier_dropout_prob": 0.1,
    }
    values.update(overrides)
    return SegformerConfig(**values)


def _register(name: str) -> None:
    hidden_sizes, depths, decoder, published_m = VARIANTS[name]

    def build(num_classes: int, img_size: int = 512, in_channels: int = 1, **overrides) -> SegFormer:
        return SegFormer(segformer_config(name, num_classes, in_channels, **overrides))

    build.__name__ = "build_" + name.lower().replace("-", "_")
    build.__doc__ = f"{name}: MiT dims {hidden_sizes}, depths {depths}, decoder {decoder} (paper: {published_m}M)."
    official = None
    if name == "SegFormer-B0":  # mit_b0 + SegFormerHead, ADE20K config; its unused conv_seg is 150 x 128 + 150
        official = OfficialCount(3_772_044, 150, 3, 512, not_built=19_350, source="NVlabs/SegFormer B0 config")
    register_model(name, family="segformer", default_img_size=512, published=True, img_size_multiple=32,
                   official=official,
                   description=f"SegFormer, MiT-{name[-2:]} encoder (dims {'/'.join(map(str, hidden_sizes))}, "
                               f"depths {'/'.join(map(str, depths))}) + all-MLP decoder {decoder}")(build)


for _name in VARIANTS:
    _register(_name)


# ----------------------------------------------------------------------------------------------------------------
# Official checkpoints (NVlabs/SegFormer, mmseg layout), MiT ImageNet weights and Hugging Face folders
# ----------------------------------------------------------------------------------------------------------------
_ENCODER = "model.segformer."
_DECODER = "model.decode_head."

# Official MiT backbone names (without ``backbone.``) -> the transformers model's encoder names.
_MIT_RULES: list[tuple[str, str | None]] = [
    (r"patch_embed([1-4])\.proj\.(.*)", r"stages.{\1}.patch_embeddings.proj.\2"),
    (r"patch_embed([1-4])\.norm\.(.*)", r"stages.{\1}.patch_embeddings.layer_norm.\2"),
    (r"block([1-4])\.(\d+)\.norm1\.(.*)", r"stages.{\1}.blocks.\2.layernorm_before.\3"),
    (r"block([1-4])\.(\d+)\.norm2\.(.*)", r"stages.{\1}.blocks.\2.layernorm_after.\3"),
    (r"block([1-4])\.(\d+)\.attn\.q\.(.*)", r"stages.{\1}.blocks.\2.attention.q_proj.\3"),
    (r"block([1-4])\.(\d+)\.attn\.kv\.(.*)", r"stages.{\1}.blocks.\2.attention.kv.\3"),  # split below
    (r"block([1-4])\.(\d+)\.attn\.proj\.(.*)", r"stages.{\1}.blocks.\2.attention.o_proj.\3"),
    (r"block([1-4])\.(\d+)\.attn\.sr\.(.*)",
     r"stages.{\1}.blocks.\2.attention.sequence_reduction.sequence_reduction.\3"),
    (r"block([1-4])\.(\d+)\.attn\.norm\.(.*)", r"stages.{\1}.blocks.\2.attention.sequence_reduction.layer_norm.\3"),
    (r"block([1-4])\.(\d+)\.mlp\.(fc1|fc2|dwconv\.dwconv)\.(.*)", r"stages.{\1}.blocks.\2.mlp.\3.\4"),
    (r"norm([1-4])\.(.*)", r"stages.{\1}.layer_norm.\2"),
    (r"head\..*", None),  # the ImageNet classifier
]
_HEAD_RULES: list[tuple[str, str | None]] = [
    (r"decode_head\.conv_seg\..*", None),  # built by mmseg, never used
    (r"decode_head\.linear_c([1-4])\.proj\.(.*)", _DECODER + r"linear_projections.{\1}.proj.\2"),
    (r"decode_head\.linear_fuse\.conv\.(.*)", _DECODER + r"linear_fuse.\1"),
    (r"decode_head\.linear_fuse\.bn\.(.*)", _DECODER + r"batch_norm.\1"),
    (r"decode_head\.linear_pred\.(.*)", _DECODER + r"classifier.\1"),
]
# Hugging Face checkpoints saved before transformers 5 (e.g. the hub's nvidia/mit-b0) -> the current names.
_OLD_HF_NAMES = [
    (r"encoder\.patch_embeddings\.(\d+)\.", r"stages.\1.patch_embeddings."),
    (r"encoder\.block\.(\d+)\.", r"stages.\1.blocks."),
    (r"encoder\.layer_norm\.(\d+)", r"stages.\1.layer_norm"),
    (r"attention\.self\.query", "attention.q_proj"), (r"attention\.self\.key", "attention.k_proj"),
    (r"attention\.self\.value", "attention.v_proj"),
    (r"attention\.self\.sr", "attention.sequence_reduction.sequence_reduction"),
    (r"attention\.self\.layer_norm", "attention.sequence_reduction.layer_norm"),
    (r"attention\.output\.dense", "attention.o_proj"), (r"mlp\.dense1", "mlp.fc1"), (r"mlp\.dense2", "mlp.fc2"),
    (r"layer_norm_1", "layernorm_before"), (r"layer_norm_2", "layernorm_after"),
    (r"decode_head\.linear_c\.", "decode_head.linear_projections."),
]


def _renumber(key: str) -> str:
    """``stages.{3}`` (1-based official stage number) -> ``stages.2``."""
    return re.sub(r"\{(\d)\}", lambda match: str(int(match.group(1)) - 1), key)


def _official_encoder(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official MiT keys (no prefix) -> medseg keys; the fused ``kv`` projection is split into ``k`` and ``v``."""
    renamed, unexpected = rename_keys(state, _MIT_RULES)
    out = {}
    for key, value in renamed.items():
        key = _ENCODER + _renumber(key)
        if ".attention.kv." in key:
            key_part, value_part = value.chunk(2, dim=0)  # official: kv = Linear(C, 2C), keys first
            out[key.replace(".kv.", ".k_proj.")] = key_part
            out[key.replace(".kv.", ".v_proj.")] = value_part
        else:
            out[key] = value
    return out, unexpected


def from_official(state_dict: dict[str, torch.Tensor], model: SegFormer) -> dict[str, torch.Tensor] | None:
    """An official SegFormer (mmseg) state_dict in ``model``'s keys, or None if it does not look official."""
    if not any(key.startswith("backbone.patch_embed1.") for key in state_dict):
        return None
    backbone = {key[len("backbone."):]: value for key, value in state_dict.items() if key.startswith("backbone.")}
    out, _ = _official_encoder(backbone)
    head, _ = rename_keys({k: v for k, v in state_dict.items() if k.startswith("decode_head.")}, _HEAD_RULES)
    out.update({_renumber(key): value for key, value in head.items()})
    return out


def _read_hf_folder(folder: Path) -> dict[str, torch.Tensor]:
    """The weights of a local Hugging Face SegFormer/MiT folder (``config.json`` + safetensors or bin), in
    medseg keys."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{folder}: not a Hugging Face model folder (no config.json)")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{config_file}: unreadable ({exc})") from None
    if model_type != "segformer":
        raise CheckpointError(f"{folder}: a Hugging Face {model_type!r} model, not SegFormer/MiT")
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            state = read_weights(folder / name, "Hugging Face SegFormer weight file")
            break
    else:
        raise CheckpointError(f"{folder}: no model.safetensors or pytorch_model.bin")
    out = {}
    for key, value in state.items():
        for pattern, replacement in _OLD_HF_NAMES:
            key = re.sub(pattern, replacement, key)
        if key.startswith("segformer."):
            key = "model." + key
        elif key.startswith("decode_head."):
            key = "model." + key
        out[key] = value
    return out


def load_mit_imagenet(model: SegFormer, path) -> PretrainedReport:
    """MiT ImageNet weights into the SegFormer encoder: the official ``mit_b0.pth`` .. ``mit_b5.pth`` (plain or
    under ``state_dict``), or a local Hugging Face folder (``nvidia/mit-b*`` or a SegFormer fine-tuned there).

    Official files: ``patch_embed{i}``, ``block{i}``, ``norm{i}`` are renamed to the transformers modules and the
    fused ``attn.kv`` projection is split into key and value (keys first, as the official attention reads it);
    the classifier ``head`` is unexpected. Hugging Face folders: old and current transformers names are accepted;
    a decode head is loaded too unless its classifier has another number of classes (then the classifier is left
    at init and reported). 1-channel CT: the first patch-embedding kernel is summed over RGB (exactly the RGB
    network on the grey image repeated to three channels).
    """
    path = Path(path)
    report = PretrainedReport(source=path.name, family="segformer")
    if path.is_dir():
        renamed = _read_hf_folder(path)
        targets = model.state_dict()
        for key in [k for k in renamed if k.startswith(_DECODER + "classifier.")]:
            if key in targets and renamed[key].shape != targets[key].shape:
                report.skipped.append(f"{key}: {tuple(renamed.pop(key).shape)} in the file, "
                                      f"{tuple(targets[key].shape)} in the model")
        report.unexpected = [k for k in renamed if not k.startswith(("model.segformer.", _DECODER))]
        renamed = {k: v for k, v in renamed.items() if k not in report.unexpected}
    else:
        state = read_weights(path, "MiT ImageNet checkpoint")
        state = {key[len("backbone."):] if key.startswith("backbone.") else key: value for key, value in state.items()}
        renamed, report.unexpected = _official_encoder(state)
    adapt_first_kernel(renamed, _ENCODER + "stages.0.patch_embeddings.proj.weight", model.config.num_channels, report)
    copy_weights(model, renamed, report, prefix=_ENCODER, what="MiT ImageNet checkpoint")
    return report


register_official_converter("segformer", from_official)
register_pretrained_loader("segformer", load_mit_imagenet)
