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

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from medseg.models.registry import register_model

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> logits ``(B, num_classes, H, W)``.

        The decoder predicts at ``(H/4, W/4)``; the logits are upsampled bilinearly (``align_corners=False``).
        """
        logits = self.model(pixel_values=x, return_dict=True).logits  # (B, num_classes, H/4, W/4)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def segformer_config(name: str, num_classes: int, in_channels: int, **overrides) -> SegformerConfig:
    """The :class:`SegformerConfig` of variant ``name`` with ``overrides`` applied (unknown keys: TypeError)."""
    unknown = sorted(set(overrides) - _OVERRIDABLE)
    if unknown:
        raise TypeError(f"{name} got an unexpected keyword argument {unknown[0]!r} "
                        f"(allowed: {', '.join(sorted(_OVERRIDABLE))})")
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
    register_model(name, family="segformer", default_img_size=512, published=True, img_size_multiple=32,
                   description=f"SegFormer, MiT-{name[-2:]} encoder (dims {'/'.join(map(str, hidden_sizes))}, "
                               f"depths {'/'.join(map(str, depths))}) + all-MLP decoder {decoder}")(build)


for _name in VARIANTS:
    _register(_name)
