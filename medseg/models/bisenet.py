"""BiSeNet v1 (Yu et al., ECCV 2018): a spatial path and a ResNet-18 context path joined by a feature fusion module.

Spatial path: three stride-2 convs (7x7 then 3x3, 3x3; 64 channels, BN + ReLU) and a 1x1 conv to 128 channels, at 1/8.
Context path: ResNet-18 (stem takes ``in_channels``); the global context (global average pool of the 1/32 stage,
1x1 conv to 128) is added to the attention-refined 1/32 stage; attention refinement modules (3x3 conv to 128, then
channel attention: global pool, 1x1 conv, BN, sigmoid) refine the 1/32 and 1/16 stages; each level is upsampled x2,
smoothed with a 3x3 conv and added to the next, ending at 1/8 with 128 channels.
Feature fusion module: concatenation (256), 1x1 conv + BN + ReLU, then ``x + x * attention`` with the official
channel attention (global pool, 1x1 conv 256->256 without bias, BN, sigmoid).
Heads: main head on the fused 1/8 feature (3x3 conv 256 + BN + ReLU, 1x1 conv to the classes, no dropout, as the
official code); two auxiliary heads
(3x3 conv 64 + BN + ReLU, 1x1 conv) on the context path's 1/8 and 1/16 features, used in training only, as the paper
supervises the context path. The paper's joint loss weights every auxiliary loss with alpha = 1, so
``aux_loss_weights = (1.0, 1.0, 1.0)``.

In training mode the forward returns ``(main, aux_1/8, aux_1/16)``, all ``(B, N, H, W)``; in eval mode the main logits.
Inputs must be multiples of 32.

Variants (1 input channel, 9 classes):
    ``BiSeNet-R18``        ResNet-18 context path (64-512 channels): 13.41M parameters (with 3 channels:
                           13,421,851, the official ``BiSeNetV1(9)``'s count).
    ``BiSeNet-R18-Small``  every width halved: 3.36M parameters; not published, for tests and CPU demos.

The module names differ from the official ones; :func:`from_official` maps a CoinCheung checkpoint onto this model
(parity with the official outputs, main and both auxiliary heads: ``tests/test_zoo_parity.py``).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from medseg.models.options import check_options, constructor_options
from medseg.models.pretrained import (PretrainedReport, adapt_first_kernel, copy_weights, read_weights,
                                      register_official_converter, register_pretrained_loader, rename_keys)
from medseg.models.registry import OfficialCount, register_model


class ConvBNReLU(nn.Sequential):
    """Conv (no bias, 'same' padding) + BatchNorm + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with an identity (or 1x1 strided projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class ResNet18(nn.Module):
    """ResNet-18 feature extractor returning the 1/8, 1/16 and 1/32 stages.

    ``(B, in_channels, H, W)`` -> ``(B, 2w, H/8, W/8)``, ``(B, 4w, H/16, W/16)``, ``(B, 8w, H/32, W/32)`` with
    ``w = base_width`` (64 for the standard network).
    """

    def __init__(self, in_channels: int = 1, base_width: int = 64):
        super().__init__()
        widths = [base_width, 2 * base_width, 4 * base_width, 8 * base_width]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, base_width, 7, 2, padding=3, bias=False),
            nn.BatchNorm2d(base_width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, padding=1),
        )
        self.layer1 = nn.Sequential(BasicBlock(widths[0], widths[0]), BasicBlock(widths[0], widths[0]))
        self.layer2 = nn.Sequential(BasicBlock(widths[0], widths[1], 2), BasicBlock(widths[1], widths[1]))
        self.layer3 = nn.Sequential(BasicBlock(widths[1], widths[2], 2), BasicBlock(widths[2], widths[2]))
        self.layer4 = nn.Sequential(BasicBlock(widths[2], widths[3], 2), BasicBlock(widths[3], widths[3]))
        self.out_channels = tuple(widths[1:])
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.layer1(self.stem(x))
        feat8 = self.layer2(x)
        feat16 = self.layer3(feat8)
        feat32 = self.layer4(feat16)
        return feat8, feat16, feat32


def channel_attention(channels: int) -> nn.Sequential:
    """The official ARM/FFM channel attention: ``(B, C, h, w)`` -> ``(B, C, 1, 1)`` weights in (0, 1) from a global
    average pool, 1x1 conv (no bias), BN and sigmoid (indices 1 and 2 are the official ``conv_atten``/``bn_atten``)."""
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1),
        nn.Conv2d(channels, channels, 1, bias=False),
        nn.BatchNorm2d(channels),
        nn.Sigmoid(),
    )


class AttentionRefinement(nn.Module):
    """ARM: 3x3 conv to ``out_channels``, then channel attention (global pool, 1x1 conv, BN, sigmoid) multiplies it.

    ``(B, in_channels, h, w)`` -> ``(B, out_channels, h, w)``.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, out_channels, 3)
        self.attention = channel_attention(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x * self.attention(x)


class ContextPath(nn.Module):
    """ResNet-18 with global context and ARMs.

    ``(B, in_channels, H, W)`` -> ``(B, c, H/8, W/8)`` and ``(B, c, H/16, W/16)`` context features
    (``c = context_channels``).
    """

    def __init__(self, in_channels: int, base_width: int = 64, context_channels: int = 128):
        super().__init__()
        self.backbone = ResNet18(in_channels, base_width)
        _, channels16, channels32 = self.backbone.out_channels
        self.global_context = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBNReLU(channels32, context_channels, 1))
        self.arm32 = AttentionRefinement(channels32, context_channels)
        self.arm16 = AttentionRefinement(channels16, context_channels)
        self.refine32 = ConvBNReLU(context_channels, context_channels, 3)
        self.refine16 = ConvBNReLU(context_channels, context_channels, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat8, feat16, feat32 = self.backbone(x)
        context = self.global_context(feat32)  # (B, c, 1, 1), broadcast over the 1/32 grid
        up32 = self.arm32(feat32) + context
        up32 = self.refine32(F.interpolate(up32, size=feat16.shape[-2:], mode="nearest"))  # 1/16
        up16 = self.arm16(feat16) + up32
        up16 = self.refine16(F.interpolate(up16, size=feat8.shape[-2:], mode="nearest"))  # 1/8
        return up16, up32


class SpatialPath(nn.Module):
    """Three stride-2 convs and a 1x1 projection: ``(B, in_channels, H, W)`` -> ``(B, out, H/8, W/8)``."""

    def __init__(self, in_channels: int, width: int = 64, out_channels: int = 128):
        super().__init__()
        self.layers = nn.Sequential(
            ConvBNReLU(in_channels, width, 7, 2),
            ConvBNReLU(width, width, 3, 2),
            ConvBNReLU(width, width, 3, 2),
            ConvBNReLU(width, out_channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class FeatureFusion(nn.Module):
    """FFM: ``(B, c1, h, w)`` and ``(B, c2, h, w)`` -> ``(B, out_channels, h, w)``.

    Concatenation, 1x1 conv + BN + ReLU, then ``x + x * attention`` with the channel attention of the official
    implementation (CoinCheung/BiSeNet): global average pool, 1x1 conv (no bias, ``out -> out``), BN, sigmoid.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = ConvBNReLU(in_channels, out_channels, 1)
        self.attention = channel_attention(out_channels)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.conv(torch.cat([spatial, context], dim=1))
        return x + x * self.attention(x)


class SegHead(nn.Sequential):
    """3x3 conv + BN + ReLU then a 1x1 classifier (with bias; no dropout, as the official ``BiSeNetOutput``):
    ``(B, in, h, w)`` -> ``(B, num_classes, h, w)``."""

    def __init__(self, in_channels: int, mid_channels: int, num_classes: int):
        super().__init__(
            ConvBNReLU(in_channels, mid_channels, 3),
            nn.Conv2d(mid_channels, num_classes, 1),
        )


class BiSeNet(nn.Module):
    """BiSeNet v1: ``(B, in_channels, H, W)`` -> ``(B, num_classes, H, W)`` (eval) or ``(main, aux8, aux16)``.

    Args:
        num_classes: output classes including background.
        in_channels: image channels.
        base_width: ResNet-18 stem width (64; stages are 1x/2x/4x/8x).
        context_channels: width of the context path after the ARMs (128).
        spatial_width: width of the spatial path convs (64); its output has ``2 * spatial_width`` channels.
        aux_heads: build the two auxiliary heads.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, base_width: int = 64, context_channels: int = 128,
                 spatial_width: int = 64, aux_heads: bool = True):
        super().__init__()
        fused = context_channels + 2 * spatial_width
        self.spatial_path = SpatialPath(in_channels, spatial_width, 2 * spatial_width)
        self.context_path = ContextPath(in_channels, base_width, context_channels)
        self.fusion = FeatureFusion(fused, fused)
        self.head = SegHead(fused, fused, num_classes)
        self.aux_heads = nn.ModuleList()
        if aux_heads:
            self.aux_heads.append(SegHead(context_channels, context_channels // 2, num_classes))
            self.aux_heads.append(SegHead(context_channels, context_channels // 2, num_classes))
        self.aux_loss_weights = (1.0,) + (1.0,) * len(self.aux_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, in_channels, H, W)`` -> logits ``(B, N, H, W)``; in training ``(main, aux_1/8, aux_1/16)``."""
        size = x.shape[-2:]
        context8, context16 = self.context_path(x)
        fused = self.fusion(self.spatial_path(x), context8)
        main = F.interpolate(self.head(fused), size=size, mode="bilinear", align_corners=False)
        if not (self.training and len(self.aux_heads)):
            return main
        aux8 = F.interpolate(self.aux_heads[0](context8), size=size, mode="bilinear", align_corners=False)
        aux16 = F.interpolate(self.aux_heads[1](context16), size=size, mode="bilinear", align_corners=False)
        return main, aux8, aux16


@register_model("BiSeNet-R18", family="bisenet", default_img_size=1024, published=True, img_size_multiple=32,
                official=OfficialCount(13_421_851, 9, 3, 1024,
                                       source="CoinCheung/BiSeNet BiSeNetV1(9, aux_mode='train')"),
                description="BiSeNet v1, ResNet-18 context path, spatial path, ARMs, FFM, two auxiliary heads")
def build_bisenet_r18(num_classes: int, img_size: int = 1024, in_channels: int = 1, **overrides) -> BiSeNet:
    """BiSeNet v1 with the standard ResNet-18 context path; ``overrides`` are :class:`BiSeNet` arguments."""
    check_options("BiSeNet-R18", overrides, constructor_options(BiSeNet))
    return BiSeNet(num_classes, in_channels, **overrides)


@register_model("BiSeNet-R18-Small", family="bisenet", default_img_size=1024, published=False, img_size_multiple=32,
                description="BiSeNet v1 at half width (ResNet-18 32-256 channels), for tests and CPU demos")
def build_bisenet_r18_small(num_classes: int, img_size: int = 1024, in_channels: int = 1, **overrides) -> BiSeNet:
    """Half-width BiSeNet v1; ``overrides`` are :class:`BiSeNet` arguments."""
    check_options("BiSeNet-R18-Small", overrides, constructor_options(BiSeNet))
    config = {"base_width": 32, "context_channels": 64, "spatial_width": 32}
    config.update(overrides)
    return BiSeNet(num_classes, in_channels, **config)


# ----------------------------------------------------------------------------------------------------------------
# Official checkpoints (CoinCheung/BiSeNet) and torchvision's ImageNet ResNet-18
# ----------------------------------------------------------------------------------------------------------------
# torchvision ResNet-18 names (also CoinCheung's ``Resnet18``) -> medseg's ResNet18.
_RESNET_RULES: list[tuple[str, str | None]] = [
    (r"conv1\.weight", "stem.0.weight"),
    (r"bn1\.(.*)", r"stem.1.\1"),
    (r"(layer[1-4]\.[01])\.(conv1|bn1|conv2|bn2)\.(.*)", r"\1.\2.\3"),
    (r"(layer[1-4]\.[01])\.downsample\.([01])\.(.*)", r"\1.shortcut.\2.\3"),
    (r"fc\..*", None),  # the ImageNet classifier
]


def _conv_bn(official: str, ours: str) -> list[tuple[str, str]]:
    """Rules for an official ``ConvBNReLU`` (``.conv`` + ``.bn``) onto a medseg one (indices 0 and 1)."""
    return [(rf"{official}\.conv\.(.*)", rf"{ours}.0.\1"), (rf"{official}\.bn\.(.*)", rf"{ours}.1.\1")]


def _resnet_rules(official_prefix: str) -> list[tuple[str, str | None]]:
    """Rules for torchvision ResNet-18 keys (after the regex ``official_prefix``) onto the context path's backbone."""
    return [(official_prefix + pattern, None if target is None else f"context_path.backbone.{target}")
            for pattern, target in _RESNET_RULES]


def _official_rules() -> list[tuple[str, str | None]]:
    rules = _resnet_rules(r"cp\.resnet\.")
    for arm in ("arm16", "arm32"):
        rules += _conv_bn(rf"cp\.{arm}\.conv", f"context_path.{arm}.conv")
        rules += [(rf"cp\.{arm}\.conv_atten\.(.*)", rf"context_path.{arm}.attention.1.\1"),
                  (rf"cp\.{arm}\.bn_atten\.(.*)", rf"context_path.{arm}.attention.2.\1")]
    rules += _conv_bn(r"cp\.conv_head32", "context_path.refine32")
    rules += _conv_bn(r"cp\.conv_head16", "context_path.refine16")
    rules += _conv_bn(r"cp\.conv_avg", "context_path.global_context.1")
    for index, name in enumerate(("conv1", "conv2", "conv3", "conv_out")):
        rules += _conv_bn(rf"sp\.{name}", f"spatial_path.layers.{index}")
    rules += _conv_bn(r"ffm\.convblk", "fusion.conv")
    rules += [(r"ffm\.conv\.(.*)", r"fusion.attention.1.\1"), (r"ffm\.bn\.(.*)", r"fusion.attention.2.\1")]
    for official, ours in (("conv_out", "head"), ("conv_out16", "aux_heads.0"), ("conv_out32", "aux_heads.1")):
        rules += _conv_bn(rf"{official}\.conv", f"{ours}.0")
        rules += [(rf"{official}\.conv_out\.(.*)", rf"{ours}.1.\1")]
    return rules


def from_official(state_dict: dict[str, torch.Tensor], model: BiSeNet) -> dict[str, torch.Tensor] | None:
    """An official BiSeNet v1 (CoinCheung) state_dict in ``model``'s keys, or None if it does not look official.

    A checkpoint saved with ``aux_mode='eval'`` lacks the auxiliary heads (``conv_out16``/``conv_out32``): build
    the model with ``aux_heads=False`` to load it strictly.
    """
    if "cp.resnet.conv1.weight" not in state_dict:
        return None
    renamed, _ = rename_keys(state_dict, _official_rules())
    return renamed


def load_resnet18_imagenet(model: BiSeNet, path) -> PretrainedReport:
    """torchvision's ImageNet ResNet-18 (``resnet18-*.pth``, a plain state_dict) into the context path, as the
    official ``Resnet18.init_weight`` does (everything but ``fc``).

    Files with or without ``num_batches_tracked`` both load. 1-channel CT: ``conv1`` is summed over RGB (exactly
    the RGB network on the grey image repeated to three channels). The spatial path, ARMs, fusion and heads keep
    their initialisation.
    """
    report = PretrainedReport(source=Path(path).name, family="bisenet")
    state = read_weights(path, "torchvision ResNet-18 checkpoint")
    rules = _resnet_rules("")
    renamed, report.unexpected = rename_keys(state, rules)
    adapt_first_kernel(renamed, "context_path.backbone.stem.0.weight", model.context_path.backbone.stem[0].in_channels,
                       report)
    copy_weights(model, renamed, report, prefix="context_path.backbone.", what="torchvision ResNet-18 checkpoint")
    return report


register_official_converter("bisenet", from_official)
register_pretrained_loader("bisenet", load_resnet18_imagenet)
