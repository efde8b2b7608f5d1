"""TopFormer (Zhang et al., CVPR 2022): token pyramid transformer for mobile semantic segmentation.

Token pyramid module: a 3x3 stride-2 stem and a stack of MobileNetV2 inverted-residual blocks (ReLU: the official
``TokenPyramidModule`` is built without ``act_layer``, so its default ``nn.ReLU`` applies); the outputs
at 1/4, 1/8, 1/16 and 1/32 are the token pyramid.
Scale-aware semantics extractor: every pyramid level is average-pooled to the 1/64 grid (the 1/32 grid pooled with
stride 2, rounding up) and the levels are concatenated along channels; a stack of transformer blocks runs on that
small grid. The blocks are convolutional: 1x1 conv + BN projections for queries/keys/values (key dim 16, value dim 32
per head), attention over the grid, ReLU6 + 1x1 conv + BN output projection, and an MLP of
1x1 conv + BN, 3x3 depthwise conv, ReLU6, 1x1 conv + BN (ratio 2); stochastic depth 0.1.
As in the official implementation the attention logits are not scaled by ``key_dim ** -0.5``.
Semantic injection: the semantics are split back per level; at 1/8, 1/16 and 1/32 the local tokens (1x1 conv + BN)
are multiplied by the hard-sigmoid of the semantics (1x1 conv + BN, upsampled) and the semantics (1x1 conv + BN,
upsampled) are added.
Segmentation head: the three injected maps are upsampled to 1/8 and summed, fused by a 1x1 conv + BN + ReLU
(depthwise in Tiny), dropout 0.1 and a 1x1 classifier; the logits are upsampled bilinearly to the input size.

Variants (official configs; parameters with 1 input channel and 9 classes, then with 3 channels and 150 classes as
in the paper's ADE20K table):
    ``TopFormer-Tiny``   channels 16/32/64/96, 4 heads, head 128:   1.37M; 1.39M (paper 1.4M)
    ``TopFormer-Small``  channels 24/48/96/128, 6 heads, head 192:  3.01M; 3.03M (paper 3.1M)
    ``TopFormer-Base``   channels 32/64/128/160, 8 heads, head 256: 5.03M; 5.06M (paper 5.1M)
The Small and Base counts sit 2% and 1% under the paper's although the modules follow the official code: the
backbones have exactly the official ``Topformer`` counts (2,968,464 and 4,958,048), and Tiny's whole model the
official 1,389,654 at 150 classes with RGB input; the official outputs are matched exactly
(``tests/test_zoo_parity.py``; key map :func:`from_official`).
Inputs must be multiples of 32.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from medseg.models.layers import DropPath
from medseg.models.options import check_options, constructor_options
from medseg.models.pretrained import (PretrainedReport, adapt_first_kernel, copy_weights, read_weights,
                                      register_official_converter, register_pretrained_loader, rename_keys)
from medseg.models.registry import OfficialCount, register_model

# Inverted-residual stacks, one row per block: (kernel size, expansion ratio, output channels, stride).
_TINY_BLOCKS = [
    (3, 1, 16, 1), (3, 4, 16, 2), (3, 3, 16, 1), (5, 3, 32, 2), (5, 3, 32, 1),
    (3, 3, 64, 2), (3, 3, 64, 1), (5, 6, 96, 2), (5, 6, 96, 1),
]
_SMALL_BLOCKS = [
    (3, 1, 16, 1), (3, 4, 24, 2), (3, 3, 24, 1), (5, 3, 48, 2), (5, 3, 48, 1),
    (3, 3, 96, 2), (3, 3, 96, 1), (5, 6, 128, 2), (5, 6, 128, 1), (3, 6, 128, 1),
]
_BASE_BLOCKS = [
    (3, 1, 16, 1), (3, 4, 32, 2), (3, 3, 32, 1), (5, 3, 64, 2), (5, 3, 64, 1),
    (3, 3, 128, 2), (3, 3, 128, 1), (5, 6, 160, 2), (5, 6, 160, 1), (3, 6, 160, 1),
]

# Official hustvl/TopFormer counts: the whole Tiny model (ADE20K config, 150 classes, RGB) and, for Small and Base,
# the backbone (the official Topformer class with its configs; tests/data/zoo/pretrained_formats).
_BACKBONE = ("pyramid.", "transformer.", "injections.")  # the official Topformer class: tpm, trans, SIM
OFFICIAL_COUNTS = {
    "TopFormer-Tiny": OfficialCount(1_389_654, 150, 3, 512, source="hustvl/TopFormer topformer_tiny.py"),
    "TopFormer-Small": OfficialCount(2_968_464, 150, 3, 512, scope="backbone", counted=_BACKBONE,
                                     source="hustvl/TopFormer Topformer"),
    "TopFormer-Base": OfficialCount(4_958_048, 150, 3, 512, scope="backbone", counted=_BACKBONE,
                                    source="hustvl/TopFormer Topformer"),
}

VARIANTS = {
    # name: blocks, indices of the blocks whose outputs form the pyramid, heads, head channels, depthwise fuse, paper M
    "TopFormer-Tiny": dict(blocks=_TINY_BLOCKS, pyramid_indices=(2, 4, 6, 8), num_heads=4, head_channels=128,
                           depthwise_fuse=True, published_m=1.4),
    "TopFormer-Small": dict(blocks=_SMALL_BLOCKS, pyramid_indices=(2, 4, 6, 9), num_heads=6, head_channels=192,
                            depthwise_fuse=False, published_m=3.1),
    "TopFormer-Base": dict(blocks=_BASE_BLOCKS, pyramid_indices=(2, 4, 6, 9), num_heads=8, head_channels=256,
                           depthwise_fuse=False, published_m=5.1),
}


class ConvBN(nn.Sequential):
    """Conv (no bias, 'same' padding) + BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1x1 expand + ReLU] -> kxk depthwise (stride) + ReLU -> 1x1 project.

    ReLU, not MobileNetV2's ReLU6: the official ``TokenPyramidModule`` is built without ``act_layer`` and so
    falls back to ``nn.ReLU``.

    The input is added back when the shapes match (stride 1, same channels).

    ``(B, in_channels, h, w)`` -> ``(B, out_channels, h / stride, w / stride)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [ConvBN(in_channels, hidden, 1), nn.ReLU(inplace=True)]
        layers += [
            ConvBN(hidden, hidden, kernel_size, stride, groups=hidden), nn.ReLU(inplace=True),
            ConvBN(hidden, out_channels, 1),
        ]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class TokenPyramid(nn.Module):
    """Stem + inverted residuals; ``(B, in_channels, H, W)`` -> pyramid ``[(B, c_i, H/2^(i+2), W/2^(i+2))]``."""

    def __init__(self, in_channels: int, blocks, pyramid_indices, stem_channels: int = 16):
        super().__init__()
        self.stem = nn.Sequential(ConvBN(in_channels, stem_channels, 3, 2), nn.ReLU(inplace=True))
        layers = []
        channels = stem_channels
        for kernel_size, expand_ratio, out_channels, stride in blocks:
            layers.append(InvertedResidual(channels, out_channels, kernel_size, stride, expand_ratio))
            channels = out_channels
        self.layers = nn.ModuleList(layers)
        self.pyramid_indices = tuple(pyramid_indices)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        pyramid = []
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index in self.pyramid_indices:
                pyramid.append(x)
        return pyramid


class Attention(nn.Module):
    """Multi-head attention over the pixels of a ``(B, C, h, w)`` map (conv + BN projections)."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, attn_ratio: int = 2):
        super().__init__()
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.value_dim = attn_ratio * key_dim
        self.to_q = ConvBN(dim, key_dim * num_heads)
        self.to_k = ConvBN(dim, key_dim * num_heads)
        self.to_v = ConvBN(dim, self.value_dim * num_heads)
        self.proj = nn.Sequential(nn.ReLU6(), ConvBN(self.value_dim * num_heads, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, h, w)`` -> ``(B, C, h, w)``."""
        batch, _, height, width = x.shape
        q = self.to_q(x).reshape(batch, self.num_heads, self.key_dim, height * width).transpose(2, 3)
        k = self.to_k(x).reshape(batch, self.num_heads, self.key_dim, height * width)
        v = self.to_v(x).reshape(batch, self.num_heads, self.value_dim, height * width).transpose(2, 3)
        attention = torch.matmul(q, k).softmax(dim=-1)  # (B, heads, hw, hw); unscaled, as the official code
        out = torch.matmul(attention, v)  # (B, heads, hw, value_dim)
        out = out.transpose(2, 3).reshape(batch, self.num_heads * self.value_dim, height, width)
        return self.proj(out)


class TransformerBlock(nn.Module):
    """``x + Attention(x)`` then ``x + MLP(x)`` on ``(B, C, h, w)`` maps, with stochastic depth."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, mlp_ratio: int = 2, attn_ratio: int = 2,
                 drop_path_rate: float = 0.0):
        super().__init__()
        hidden = dim * mlp_ratio
        self.attn = Attention(dim, key_dim, num_heads, attn_ratio)
        self.mlp = nn.Sequential(
            ConvBN(dim, hidden),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden),
            nn.ReLU6(inplace=True),
            ConvBN(hidden, dim),
        )
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(x))
        return x + self.drop_path(self.mlp(x))


class SemanticInjection(nn.Module):
    """``local * hsigmoid(up(BN(conv(semantics)))) + up(BN(conv(semantics)))``.

    ``(B, c, h, w)`` local tokens and ``(B, c, h', w')`` semantics -> ``(B, out_channels, h, w)``.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.local_embedding = ConvBN(in_channels, out_channels)
        self.global_embedding = ConvBN(in_channels, out_channels)
        self.global_act = ConvBN(in_channels, out_channels)

    def forward(self, local: torch.Tensor, semantics: torch.Tensor) -> torch.Tensor:
        size = local.shape[-2:]
        gate = F.interpolate(F.hardsigmoid(self.global_act(semantics)), size=size, mode="bilinear",
                             align_corners=False)
        embedding = F.interpolate(self.global_embedding(semantics), size=size, mode="bilinear", align_corners=False)
        return self.local_embedding(local) * gate + embedding


class TopFormer(nn.Module):
    """TopFormer mapping ``(B, in_channels, H, W)`` images to ``(B, num_classes, H, W)`` logits.

    Args:
        num_classes: output classes including background.
        in_channels: image channels (the stem conv takes them directly).
        blocks: inverted-residual rows ``(kernel, expansion, channels, stride)``.
        pyramid_indices: blocks whose outputs form the 1/4, 1/8, 1/16, 1/32 pyramid.
        num_heads: attention heads of the semantics extractor.
        head_channels: width of the injected maps and of the segmentation head.
        depthwise_fuse: depthwise 1x1 fuse conv in the head (Tiny).
        depth: transformer blocks; key_dim, attn_ratio, mlp_ratio: their shape.
        pool_stride: extra pooling of the 1/32 grid for the semantics extractor (2 -> 1/64).
        drop_path_rate: maximal stochastic depth (linearly increasing over the blocks).
        dropout: dropout before the classifier.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, blocks=tuple(_TINY_BLOCKS),
                 pyramid_indices=(2, 4, 6, 8), num_heads: int = 4, head_channels: int = 128,
                 depthwise_fuse: bool = True, depth: int = 4, key_dim: int = 16, attn_ratio: int = 2,
                 mlp_ratio: int = 2, pool_stride: int = 2, drop_path_rate: float = 0.1, dropout: float = 0.1):
        super().__init__()
        self.pyramid = TokenPyramid(in_channels, blocks, pyramid_indices)
        self.level_channels = [blocks[index][2] for index in pyramid_indices]
        embed_dim = sum(self.level_channels)
        self.pool_stride = pool_stride
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.transformer = nn.Sequential(
            *[TransformerBlock(embed_dim, key_dim, num_heads, mlp_ratio, attn_ratio, rate) for rate in rates]
        )
        # Injection at 1/8, 1/16, 1/32 (the 1/4 level feeds the extractor only).
        self.injections = nn.ModuleList(
            [SemanticInjection(channels, head_channels) for channels in self.level_channels[1:]]
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(head_channels, head_channels, 1, groups=head_channels if depthwise_fuse else 1, bias=False),
            nn.BatchNorm2d(head_channels),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation: convs ``N(0, sqrt(2 / fan_out))`` with zero bias, BatchNorm 1 and 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> logits ``(B, num_classes, H, W)`` (predicted at 1/8, upsampled)."""
        size = x.shape[-2:]
        pyramid = self.pyramid(x)
        height, width = pyramid[-1].shape[-2:]
        grid = ((height - 1) // self.pool_stride + 1, (width - 1) // self.pool_stride + 1)
        tokens = torch.cat([F.adaptive_avg_pool2d(level, grid) for level in pyramid], dim=1)
        semantics = self.transformer(tokens).split(self.level_channels, dim=1)
        injected = [inject(local, sem) for inject, local, sem in zip(self.injections, pyramid[1:], semantics[1:])]
        fused = injected[0]
        for feature in injected[1:]:
            fused = fused + F.interpolate(feature, size=fused.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.classifier(self.dropout(self.fuse(fused)))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _register(name: str) -> None:
    variant = dict(VARIANTS[name])
    published_m = variant.pop("published_m")

    def build(num_classes: int, img_size: int = 512, in_channels: int = 1, **overrides) -> TopFormer:
        check_options(name, overrides, constructor_options(TopFormer))
        config = dict(variant)
        config.update(overrides)
        return TopFormer(num_classes, in_channels, **config)

    build.__name__ = "build_" + name.lower().replace("-", "_")
    build.__doc__ = f"{name}: the official configuration (paper: {published_m}M parameters)."
    channels = "/".join(str(variant["blocks"][i][2]) for i in variant["pyramid_indices"])
    register_model(name, family="topformer", default_img_size=512, published=True, img_size_multiple=32,
                   official=OFFICIAL_COUNTS[name],
                   description=f"TopFormer {name.split('-')[1]}: token pyramid {channels}, "
                               f"{variant['num_heads']}-head semantics extractor, light head")(build)


for _name in VARIANTS:
    _register(_name)


# ----------------------------------------------------------------------------------------------------------------
# Official checkpoints (hustvl/TopFormer, mmseg layout) and the official ImageNet backbones
# ----------------------------------------------------------------------------------------------------------------
# Backbone keys without the ``backbone.`` prefix; ``{n}`` groups are 0-based here and 1-based in ``tpm.layer{n}``.
_BACKBONE_RULES: list[tuple[str, str | None]] = [
    (r"tpm\.stem\.0\.c\.(.*)", r"pyramid.stem.0.0.\1"),
    (r"tpm\.stem\.0\.bn\.(.*)", r"pyramid.stem.0.1.\1"),
    (r"trans\.transformer_blocks\.(\d+)\.attn\.(to_q|to_k|to_v)\.c\.(.*)", r"transformer.\1.attn.\2.0.\3"),
    (r"trans\.transformer_blocks\.(\d+)\.attn\.(to_q|to_k|to_v)\.bn\.(.*)", r"transformer.\1.attn.\2.1.\3"),
    (r"trans\.transformer_blocks\.(\d+)\.attn\.proj\.1\.c\.(.*)", r"transformer.\1.attn.proj.1.0.\2"),
    (r"trans\.transformer_blocks\.(\d+)\.attn\.proj\.1\.bn\.(.*)", r"transformer.\1.attn.proj.1.1.\2"),
    (r"trans\.transformer_blocks\.(\d+)\.mlp\.fc1\.c\.(.*)", r"transformer.\1.mlp.0.0.\2"),
    (r"trans\.transformer_blocks\.(\d+)\.mlp\.fc1\.bn\.(.*)", r"transformer.\1.mlp.0.1.\2"),
    (r"trans\.transformer_blocks\.(\d+)\.mlp\.dwconv\.(.*)", r"transformer.\1.mlp.1.\2"),
    (r"trans\.transformer_blocks\.(\d+)\.mlp\.fc2\.c\.(.*)", r"transformer.\1.mlp.3.0.\2"),
    (r"trans\.transformer_blocks\.(\d+)\.mlp\.fc2\.bn\.(.*)", r"transformer.\1.mlp.3.1.\2"),
]
# Older naming of the same modules (the repo's tools/convert_state_dict.py renames them).
_OLD_NAMES = [("patch_embed.", "tpm."), ("fuse_blocks.", "SIM."), ("to_feat1.", "local_embedding."),
              ("to_feat2.", "global_embedding."), ("fuse2.", "global_act.")]


def _pyramid_layer_rules(model: TopFormer) -> list[tuple[str, str | None]]:
    rules = []
    for index in range(len(model.pyramid.layers)):
        rules += [(rf"tpm\.layer{index + 1}\.conv\.(\d+)\.c\.(.*)", rf"pyramid.layers.{index}.conv.\1.0.\2"),
                  (rf"tpm\.layer{index + 1}\.conv\.(\d+)\.bn\.(.*)", rf"pyramid.layers.{index}.conv.\1.1.\2")]
    for level in range(len(model.injections)):  # official SIM.1..3 (SIM.0, the 1/4 level, is not built)
        for part in ("local_embedding", "global_embedding", "global_act"):
            rules += [(rf"SIM\.{level + 1}\.{part}\.conv\.(.*)", rf"injections.{level}.{part}.0.\1"),
                      (rf"SIM\.{level + 1}\.{part}\.bn\.(.*)", rf"injections.{level}.{part}.1.\1")]
    return rules


def _backbone_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without ``backbone.``, in the current naming."""
    out = {}
    for key, value in state.items():
        key = key[len("backbone."):] if key.startswith("backbone.") else key
        for old, new in _OLD_NAMES:
            key = key.replace(old, new)
        out[key] = value
    return out


def from_official(state_dict: dict[str, torch.Tensor], model: TopFormer) -> dict[str, torch.Tensor] | None:
    """An official TopFormer (mmseg) state_dict in ``model``'s keys, or None if it does not look official."""
    if not any(key.startswith(("backbone.tpm.", "tpm.")) for key in state_dict):
        return None
    rules = _BACKBONE_RULES + _pyramid_layer_rules(model) + [
        (r"decode_head\.conv_seg\.(.*)", r"classifier.\1"),
        (r"decode_head\.linear_fuse\.conv\.(.*)", r"fuse.0.\1"),
        (r"decode_head\.linear_fuse\.bn\.(.*)", r"fuse.1.\1"),
    ]
    state = {("decode_head." + key[len("decode_head."):]) if key.startswith("decode_head.") else key: value
             for key, value in state_dict.items()}
    backbone = _backbone_names({k: v for k, v in state.items() if not k.startswith("decode_head.")})
    backbone.update({k: v for k, v in state.items() if k.startswith("decode_head.")})
    renamed, _ = rename_keys(backbone, rules)
    return renamed


def load_topformer_imagenet(model: TopFormer, path) -> PretrainedReport:
    """The official ImageNet TopFormer backbone (``topformer-T/S/B-224-*.pth``) into ``model``'s token pyramid and
    semantics extractor, as the official ``Topformer.init_weights`` does.

    The weights are read from ``state_dict_ema``, else ``state_dict``, else ``model``, else the file itself (the
    official order); ``backbone.``/``module.`` prefixes and the older module names (``patch_embed``,
    ``fuse_blocks``, ``to_feat1/2``, ``fuse2``) are accepted. The official loader ignores mismatches silently; this
    one reports them: a tensor of the right name but another shape is an error (a Small file into a Tiny model).
    The classifier of the ImageNet file is unexpected; the injection modules (``SIM``) and the head keep their
    initialisation unless the file has them. 1-channel CT: the stem kernel is summed over RGB (exactly the RGB
    network on the grey image repeated to three channels).
    """
    report = PretrainedReport(source=Path(path).name, family="topformer")
    state = _backbone_names(read_weights(path, "TopFormer ImageNet checkpoint"))
    renamed, report.unexpected = rename_keys(state, _BACKBONE_RULES + _pyramid_layer_rules(model))
    adapt_first_kernel(renamed, "pyramid.stem.0.0.weight", model.pyramid.stem[0][0].in_channels, report)
    expected = {key for key in model.state_dict() if key.startswith(("pyramid.", "transformer."))}
    copy_weights(model, renamed, report, expected=expected, what="TopFormer ImageNet checkpoint")
    return report


register_official_converter("topformer", from_official)
register_pretrained_loader("topformer", load_topformer_imagenet)
