"""TransUNet (Chen et al., 2021): a ResNet-50 + ViT encoder with a cascaded-upsampler (CUP) decoder.

The module tree copies the naming of the reference implementation, so that a state_dict saved by the reference
code (``transformer.embeddings.hybrid_model.root.conv.weight``, ``decoder.conv_more.0.weight``,
``segmentation_head.0.weight``, ...) loads here with ``strict=True`` and gives the same logits. The details that
matter for that (see ``tests/data`` and the reference notes):

* ResNet-v2 convolutions are *weight-standardised* (:class:`StdConv2d`): each output filter is shifted to mean 0
  and scaled to variance 1 (biased variance over ``in x kh x kw``, eps 1e-5) before the convolution.
* GroupNorm with 32 groups and eps 1e-6 in the body; the shortcut's ``gn_proj`` has one group per channel and the
  PyTorch default eps 1e-5.
* The stem's max-pool has no padding (112 -> 55 at 224), and the 55x55 block-1 output is zero-padded at the
  bottom/right to 56x56 for the skip connection only.
* The decoder upsamples bilinearly with ``align_corners=True``.
* The token grid is ``img_size / 16`` (14x14 at 224, 32x32 at 512), one token per pixel of the ResNet output.

Shapes (R50-ViT-B_16, 224x224 input, batch B)::

    input (B, 1, 224, 224) -> repeated to (B, 3, 224, 224)
    root: (B, 64, 112, 112)  [skip 3]  -> max-pool (B, 64, 55, 55)
    block1: (B, 256, 55, 55) -> padded (B, 256, 56, 56)  [skip 2]
    block2: (B, 512, 28, 28)  [skip 1]
    block3: (B, 1024, 14, 14) -> 1x1 conv -> tokens (B, 196, 768) + position embedding
    12 transformer layers -> (B, 196, 768) -> (B, 768, 14, 14)
    decoder: conv_more (B, 512, 14, 14) -> (B, 256, 28, 28) -> (B, 128, 56, 56) -> (B, 64, 112, 112)
             -> (B, 16, 224, 224) -> head (B, num_classes, 224, 224)
"""
from __future__ import annotations

import logging
import math
import zipfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import CheckpointError, ConfigError
from medseg.models.options import check_counts, check_options, dataclass_options
from medseg.models.pretrained import PretrainedReport, register_pretrained_loader
from medseg.models.registry import OfficialCount, register_model
from medseg.models.wrappers import unwrap_model

logger = logging.getLogger(__name__)

# The ViT token stride: the ResNet body (or the plain patch embedding) reduces the image 16 times.
TOKEN_STRIDE = 16


@dataclass(frozen=True)
class TransUNetConfig:
    """Hyper-parameters of one TransUNet variant (the names follow the reference configs).

    Attributes:
        hidden_size: token width of the transformer (768 for ViT-B).
        mlp_dim: hidden width of each transformer MLP (3072 for ViT-B).
        num_heads: attention heads (``hidden_size`` must be divisible by it).
        num_layers: transformer layers.
        dropout_rate: dropout after the position embedding and inside the MLPs (train mode only).
        attention_dropout_rate: dropout on the attention probabilities (0 in the published configs).
        resnet_num_layers: bottleneck units in the three ResNet blocks, e.g. ``(3, 4, 9)``; ``None`` builds the pure
            ViT (16x16 patch embedding, no CNN skips).
        resnet_width_factor: ResNet width multiplier; the root has ``64 * factor`` channels and the blocks
            ``4x, 8x, 16x`` that. ``64 * factor`` must be a multiple of 32 (GroupNorm with 32 groups).
        decoder_head_channels: channels of ``conv_more``, the first decoder convolution.
        decoder_channels: output channels of the four decoder blocks.
        n_skip: how many CNN skips the decoder uses (0-3); forced to 0 for the pure ViT.
    """

    hidden_size: int = 768
    mlp_dim: int = 3072
    num_heads: int = 12
    num_layers: int = 12
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.0
    resnet_num_layers: "tuple[int, ...] | None" = (3, 4, 9)
    resnet_width_factor: float = 1.0
    decoder_head_channels: int = 512
    decoder_channels: tuple[int, int, int, int] = (256, 128, 64, 16)
    n_skip: int = 3

    @property
    def hybrid(self) -> bool:
        """True when a ResNet body feeds the transformer (R50-ViT); False for the pure ViT."""
        return self.resnet_num_layers is not None

    @property
    def resnet_width(self) -> int:
        """Channels of the ResNet root (64 for R50)."""
        return int(64 * self.resnet_width_factor)

    def skip_channels(self) -> list[int]:
        """Channels of the skip fed to each of the four decoder blocks (0 = no skip).

        The skips are, in decoder order, block2 output (8 x width), block1 output (4 x width) and the root output
        (width); the fourth decoder block never has one.
        """
        if not self.hybrid or self.n_skip == 0:
            return [0, 0, 0, 0]
        width = self.resnet_width
        channels = [width * 8, width * 4, width, 0]
        return [c if i < self.n_skip else 0 for i, c in enumerate(channels)]

    def to_dict(self) -> dict:
        """Plain-data form (lists instead of tuples) for checkpoints and JSON."""
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        return data


def make_config(base: TransUNetConfig, overrides: dict) -> TransUNetConfig:
    """``base`` with ``overrides`` applied; unknown keys and impossible values are a :class:`ConfigError`."""
    check_options("TransUNet", overrides, dataclass_options(TransUNetConfig))
    values = dict(overrides)
    for key in ("resnet_num_layers", "decoder_channels"):
        if values.get(key) is not None:
            values[key] = tuple(int(v) for v in values[key])
    config = replace(base, **values)
    if config.hidden_size % config.num_heads:
        raise ConfigError(f"model: hidden_size {config.hidden_size} is not divisible by num_heads {config.num_heads}")
    if len(config.decoder_channels) != 4:
        raise ConfigError(f"model: decoder_channels needs 4 values, got {list(config.decoder_channels)}")
    if not 0 <= config.n_skip <= 3:
        raise ConfigError(f"model: n_skip must be 0..3, got {config.n_skip}")
    if config.hybrid:
        if len(config.resnet_num_layers) != 3 or min(config.resnet_num_layers) < 1:
            raise ConfigError(f"model: resnet_num_layers needs 3 positive values, got {list(config.resnet_num_layers)}")
        if config.resnet_width <= 0 or config.resnet_width % 32:
            raise ConfigError(f"model: resnet_width_factor {config.resnet_width_factor} gives a root width of "
                              f"{config.resnet_width}; it must be a multiple of 32 (GroupNorm with 32 groups)")
    return config


# --------------------------------------------------------------------------------------------------------------
# ResNet-v2 body (hybrid stem)
# --------------------------------------------------------------------------------------------------------------
class StdConv2d(nn.Conv2d):
    """Conv2d with weight standardisation: every output filter is normalised before use.

    ``w_hat = (w - mean(w)) / sqrt(var(w) + 1e-5)`` with mean and biased variance over ``(in, kh, kw)`` of each
    output filter. Input/output shapes are those of :class:`torch.nn.Conv2d`.

    In eval mode without gradients (inference), ``w_hat`` is computed once and kept until the weight changes: the
    cache is keyed on the weight tensor's storage, version counter (bumped by every in-place change: optimiser
    steps, ``load_state_dict``), device and dtype, and is dropped by :meth:`train`, by moves (``.to()``) and by
    ``load_state_dict``. Training, and any forward that
    may need the weight's gradient, standardise on every call as the reference does; both paths run the same
    :meth:`standardized_weight` arithmetic, so the cached weights are bit-identical to freshly computed ones. The
    cache holds one extra copy of these weights (about 50 MB for R50-ViT-B_16's 52 convolutions in fp32).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._standardized: "tuple[tuple, torch.Tensor] | None" = None

    def standardized_weight(self) -> torch.Tensor:
        """``w_hat``, shape ``(out, in, kh, kw)``, recomputed unless the eval-mode cache is valid."""
        weight = self.weight
        cacheable = not self.training and not (torch.is_grad_enabled() and weight.requires_grad)
        if not cacheable:
            return _standardize(weight)
        key = (weight.data_ptr(), weight._version, weight.device, weight.dtype, weight.shape)
        if self._standardized is None or self._standardized[0] != key:
            with torch.no_grad():
                self._standardized = (key, _standardize(weight))
        return self._standardized[1]

    def train(self, mode: bool = True) -> "StdConv2d":
        self._standardized = None
        return super().train(mode)

    def _apply(self, fn, recurse=True):  # .to(), .cuda(), .half(), ... replace the weight tensor
        self._standardized = None
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs):
        self._standardized = None
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.standardized_weight(), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)


def _standardize(weight: torch.Tensor) -> torch.Tensor:
    """Weight standardisation per output filter (biased variance over dims 1-3, eps 1e-5)."""
    var, mean = torch.var_mean(weight, dim=[1, 2, 3], keepdim=True, unbiased=False)
    return (weight - mean) / torch.sqrt(var + 1e-5)


def std_conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> StdConv2d:
    """3x3 weight-standardised convolution with padding 1 and no bias."""
    return StdConv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def std_conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> StdConv2d:
    """1x1 weight-standardised convolution with no bias."""
    return StdConv2d(in_channels, out_channels, kernel_size=1, stride=stride, padding=0, bias=False)


class PreActBottleneck(nn.Module):
    """ResNet-v2 bottleneck unit as used by the R50 of ViT (despite the name, normalisation follows each conv).

    ``(B, in_channels, H, W) -> (B, out_channels, H / stride, W / stride)``::

        y = relu(gn1(conv1(x)))          1x1, in -> mid
        y = relu(gn2(conv2(y)))          3x3 with the stride, mid -> mid
        y = gn3(conv3(y))                1x1, mid -> out
        out = relu(y + shortcut(x))      shortcut = gn_proj(downsample(x)) in the first unit of a block, else x
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int, stride: int = 1):
        super().__init__()
        # Attribute order follows the reference so that state_dict keys come out in the same order.
        self.gn1 = nn.GroupNorm(32, mid_channels, eps=1e-6)
        self.conv1 = std_conv1x1(in_channels, mid_channels)
        self.gn2 = nn.GroupNorm(32, mid_channels, eps=1e-6)
        self.conv2 = std_conv3x3(mid_channels, mid_channels, stride)
        self.gn3 = nn.GroupNorm(32, out_channels, eps=1e-6)
        self.conv3 = std_conv1x1(mid_channels, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.has_projection = stride != 1 or in_channels != out_channels
        if self.has_projection:
            self.downsample = std_conv1x1(in_channels, out_channels, stride)
            self.gn_proj = nn.GroupNorm(out_channels, out_channels)  # one group per channel, eps 1e-5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.gn_proj(self.downsample(x)) if self.has_projection else x
        y = self.relu(self.gn1(self.conv1(x)))
        y = self.relu(self.gn2(self.conv2(y)))
        y = self.gn3(self.conv3(y))
        return self.relu(y + shortcut)


class ResNetV2(nn.Module):
    """The R50 body of the hybrid ViT: a root and three blocks of bottleneck units.

    ``forward((B, C, H, W))`` returns the block-3 map ``(B, 16w, H/16, W/16)`` and the decoder skips in decoder
    order: ``[(B, 8w, H/8, W/8), (B, 4w, H/4, W/4), (B, w, H/2, W/2)]`` with ``w`` the root width (64 for R50).
    """

    def __init__(self, block_units: tuple[int, ...], width_factor: float, in_channels: int = 3):
        super().__init__()
        width = int(64 * width_factor)
        self.width = width
        self.root = nn.Sequential()
        self.root.add_module("conv", StdConv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False))
        self.root.add_module("gn", nn.GroupNorm(32, width, eps=1e-6))
        self.root.add_module("relu", nn.ReLU(inplace=True))
        # The max-pool is applied in forward (no parameters), with no padding: 112 -> 55 at a 224 input.
        self.body = nn.Sequential()
        block_specs = [  # (in, out, mid, stride of the first unit)
            (width, width * 4, width, 1),
            (width * 4, width * 8, width * 2, 2),
            (width * 8, width * 16, width * 4, 2),
        ]
        for block_index, (units, (cin, cout, cmid, stride)) in enumerate(zip(block_units, block_specs), start=1):
            block = nn.Sequential()
            block.add_module("unit1", PreActBottleneck(cin, cout, cmid, stride))
            for unit_index in range(2, units + 1):
                block.add_module(f"unit{unit_index}", PreActBottleneck(cout, cout, cmid))
            self.body.add_module(f"block{block_index}", block)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        in_size = x.shape[2]
        features = []
        x = self.root(x)  # (B, w, H/2, W/2)
        features.append(x)
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=0)  # (B, w, H/4 - 1, W/4 - 1)
        blocks = list(self.body)
        for index, block in enumerate(blocks[:-1]):
            x = block(x)
            # The skip must be exactly H/4 (block 1) or H/8 (block 2); the unpadded pool leaves block 1 one pixel
            # short, which the reference fills with zeros at the bottom/right (for the skip only).
            right_size = in_size // (4 * 2 ** index)
            missing = right_size - x.shape[2]
            if missing:
                if not 0 < missing < 3:
                    raise ValueError(f"ResNet feature map {tuple(x.shape)} does not fit a {in_size} input")
                features.append(F.pad(x, (0, missing, 0, missing)))
            else:
                features.append(x)
        x = blocks[-1](x)  # (B, 16w, H/16, W/16)
        return x, features[::-1]


# --------------------------------------------------------------------------------------------------------------
# Transformer encoder
# --------------------------------------------------------------------------------------------------------------
class Embeddings(nn.Module):
    """Image -> tokens with position embedding.

    ``forward((B, 3, H, W))`` returns tokens ``(B, (H/16) * (W/16), hidden)`` and the CNN skips (a list, see
    :class:`ResNetV2`) or ``None`` for the pure ViT.
    """

    def __init__(self, config: TransUNetConfig, img_size: int, in_channels: int = 3):
        super().__init__()
        grid = img_size // TOKEN_STRIDE
        self.grid_size = (grid, grid)
        if config.hybrid:
            # The ResNet already reduces by 16, so the patch embedding is a 1x1 convolution.
            self.hybrid_model = ResNetV2(config.resnet_num_layers, config.resnet_width_factor, in_channels)
            self.patch_embeddings = nn.Conv2d(self.hybrid_model.width * 16, config.hidden_size, kernel_size=1)
        else:
            self.hybrid_model = None
            self.patch_embeddings = nn.Conv2d(in_channels, config.hidden_size, kernel_size=TOKEN_STRIDE,
                                              stride=TOKEN_STRIDE)
        self.position_embeddings = nn.Parameter(torch.zeros(1, grid * grid, config.hidden_size))
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, "list[torch.Tensor] | None"]:
        features = None
        if self.hybrid_model is not None:
            x, features = self.hybrid_model(x)
        x = self.patch_embeddings(x)  # (B, hidden, H/16, W/16)
        if tuple(x.shape[2:]) != self.grid_size:
            raise ValueError(f"input gives a {tuple(x.shape[2:])} token grid but the model was built for "
                             f"{self.grid_size} (img_size {self.grid_size[0] * TOKEN_STRIDE})")
        x = x.flatten(2).transpose(1, 2)  # (B, tokens, hidden)
        x = self.dropout(x + self.position_embeddings)
        return x, features


class Attention(nn.Module):
    """Multi-head self-attention with separate query/key/value/out linears: ``(B, N, D) -> (B, N, D)``."""

    def __init__(self, config: TransUNetConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_size = config.hidden_size // config.num_heads
        hidden = config.hidden_size
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)
        self.attention_dropout_rate = config.attention_dropout_rate
        self.proj_dropout = nn.Dropout(config.attention_dropout_rate)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        return x.view(batch, tokens, self.num_heads, self.head_size).transpose(1, 2)  # (B, heads, N, head_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, hidden = x.shape
        q = self._split_heads(self.query(x))
        k = self._split_heads(self.key(x))
        v = self._split_heads(self.value(x))
        # softmax(q k^T / sqrt(head_size)) v, computed by PyTorch's fused kernel.
        dropout = self.attention_dropout_rate if self.training else 0.0
        context = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)  # (B, heads, N, head_size)
        context = context.transpose(1, 2).reshape(batch, tokens, hidden)
        return self.proj_dropout(self.out(context))


class Mlp(nn.Module):
    """Transformer MLP ``fc1 -> GELU -> dropout -> fc2 -> dropout``: ``(B, N, D) -> (B, N, D)``."""

    def __init__(self, config: TransUNetConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.mlp_dim)
        self.fc2 = nn.Linear(config.mlp_dim, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout_rate)
        # Initialisation of the reference: Xavier-uniform weights, near-zero biases.
        nn.init.xavier_uniform_(self.fc1.weight)
        nn.init.xavier_uniform_(self.fc2.weight)
        nn.init.normal_(self.fc1.bias, std=1e-6)
        nn.init.normal_(self.fc2.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(F.gelu(self.fc1(x)))
        return self.dropout(self.fc2(x))


class Block(nn.Module):
    """Pre-norm transformer layer: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``; ``(B, N, D) -> (B, N, D)``."""

    def __init__(self, config: TransUNetConfig):
        super().__init__()
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=1e-6)
        self.ffn_norm = nn.LayerNorm(config.hidden_size, eps=1e-6)
        self.ffn = Mlp(config)
        self.attn = Attention(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attention_norm(x))
        return x + self.ffn(self.ffn_norm(x))


class Encoder(nn.Module):
    """``num_layers`` transformer layers and a final LayerNorm: ``(B, N, D) -> (B, N, D)``."""

    def __init__(self, config: TransUNetConfig):
        super().__init__()
        self.layer = nn.ModuleList([Block(config) for _ in range(config.num_layers)])
        self.encoder_norm = nn.LayerNorm(config.hidden_size, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.layer:
            x = block(x)
        return self.encoder_norm(x)


class Transformer(nn.Module):
    """Embeddings + encoder: ``(B, 3, H, W)`` -> tokens ``(B, N, D)`` and the CNN skips (or ``None``)."""

    def __init__(self, config: TransUNetConfig, img_size: int, in_channels: int = 3):
        super().__init__()
        self.embeddings = Embeddings(config, img_size, in_channels)
        self.encoder = Encoder(config)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, "list[torch.Tensor] | None"]:
        tokens, features = self.embeddings(x)
        return self.encoder(tokens), features


# --------------------------------------------------------------------------------------------------------------
# Cascaded upsampler (CUP) decoder
# --------------------------------------------------------------------------------------------------------------
class Conv2dReLU(nn.Sequential):
    """3x3 convolution (no bias) -> BatchNorm -> ReLU, as ``Sequential`` indices 0, 1, 2 (reference keys)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DecoderBlock(nn.Module):
    """Bilinear x2 upsampling (align_corners=True), optional skip concatenation, two conv-BN-ReLU.

    ``(B, in_channels, h, w)`` and skip ``(B, skip_channels, 2h, 2w)`` -> ``(B, out_channels, 2h, 2w)``.
    """

    def __init__(self, in_channels: int, out_channels: int, skip_channels: int = 0):
        super().__init__()
        self.conv1 = Conv2dReLU(in_channels + skip_channels, out_channels)
        self.conv2 = Conv2dReLU(out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: "torch.Tensor | None" = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class DecoderCup(nn.Module):
    """Tokens ``(B, N, D)`` (N = g*g) and skips -> ``(B, decoder_channels[-1], 16g, 16g)``."""

    def __init__(self, config: TransUNetConfig):
        super().__init__()
        self.n_skip = config.n_skip if config.hybrid else 0
        self.conv_more = Conv2dReLU(config.hidden_size, config.decoder_head_channels)
        in_channels = [config.decoder_head_channels] + list(config.decoder_channels[:-1])
        skip_channels = config.skip_channels()
        self.blocks = nn.ModuleList([
            DecoderBlock(cin, cout, skip)
            for cin, cout, skip in zip(in_channels, config.decoder_channels, skip_channels)
        ])

    def forward(self, tokens: torch.Tensor, features: "list[torch.Tensor] | None" = None) -> torch.Tensor:
        batch, num_tokens, hidden = tokens.shape
        grid = math.isqrt(num_tokens)
        x = tokens.transpose(1, 2).reshape(batch, hidden, grid, grid)  # (B, D, g, g)
        x = self.conv_more(x)
        for index, block in enumerate(self.blocks):
            skip = features[index] if features is not None and index < self.n_skip else None
            x = block(x, skip=skip)
        return x


# --------------------------------------------------------------------------------------------------------------
# The whole network
# --------------------------------------------------------------------------------------------------------------
class TransUNet(nn.Module):
    """TransUNet: ``(B, in_channels, H, W)`` float images -> ``(B, num_classes, H, W)`` raw logits.

    ``H == W == img_size`` (a multiple of 16). A 1-channel input is repeated to the 3 channels the stem (and the
    ImageNet weights) expect; a 3-channel input passes through; any other channel count gets a stem of that width.
    """

    def __init__(self, config: TransUNetConfig, num_classes: int, img_size: int = 224, in_channels: int = 1):
        super().__init__()
        if img_size % TOKEN_STRIDE or img_size <= 0:
            raise ConfigError(f"img_size: TransUNet needs a positive multiple of {TOKEN_STRIDE}, got {img_size}")
        check_counts(num_classes, in_channels)
        self.config = config
        self.num_classes = num_classes
        self.img_size = img_size
        self.in_channels = in_channels
        stem_channels = 3 if in_channels in (1, 3) else in_channels
        self.transformer = Transformer(config, img_size, stem_channels)
        self.decoder = DecoderCup(config)
        head = nn.Conv2d(config.decoder_channels[-1], num_classes, kernel_size=3, padding=1)
        self.segmentation_head = nn.Sequential(head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channel(s), got input of shape {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        tokens, features = self.transformer(x)
        x = self.decoder(tokens, features)
        return self.segmentation_head(x)


# --------------------------------------------------------------------------------------------------------------
# Registered variants
# --------------------------------------------------------------------------------------------------------------
#: Published configurations of the reference code.
R50_VIT_B16 = TransUNetConfig()
VIT_B16 = TransUNetConfig(resnet_num_layers=None, n_skip=0)
R50_VIT_L16 = TransUNetConfig(hidden_size=1024, mlp_dim=4096, num_heads=16, num_layers=24)

#: The reduced configuration of the parity fixture (tests/data/transunet_small_parity_*).
SMALL = TransUNetConfig(hidden_size=64, mlp_dim=128, num_heads=4, num_layers=2, resnet_num_layers=(2, 2, 2),
                        decoder_channels=(64, 32, 16, 16))

#: A narrow hybrid for CPU tests and the phantom demo: half-width ResNet (root 32, blocks 128/256/512) with units
#: 1/2/2, four transformer layers of width 128, a 64-channel decoder head. About 1.8M parameters; a training step
#: (forward + backward + SGD) at batch 8, 128x128 costs about 0.45 s of CPU time (0.25-0.3 s on 2 idle cores).
TINY = TransUNetConfig(hidden_size=128, mlp_dim=256, num_heads=4, num_layers=4, resnet_num_layers=(1, 2, 2),
                       resnet_width_factor=0.5, decoder_head_channels=64, decoder_channels=(64, 32, 16, 16))


def build_transunet(base: TransUNetConfig, num_classes: int, img_size: int = 224, in_channels: int = 1,
                    **overrides) -> TransUNet:
    """Build a :class:`TransUNet` from ``base`` with config ``overrides`` (names of :class:`TransUNetConfig`)."""
    return TransUNet(make_config(base, overrides), num_classes=num_classes, img_size=img_size,
                     in_channels=in_channels)


@register_model("R50-ViT-B_16", family="transunet", default_img_size=224, published=True,
                description="TransUNet of the paper (R50 + ViT-B/16, CUP decoder, 3 skips); ImageNet-21k npz",
                official=OfficialCount(105_277_081, 9, 3, 224, source="Beckschen/TransUNet R50-ViT-B_16"))
def r50_vit_b16(num_classes: int, img_size: int = 224, in_channels: int = 1, **overrides) -> TransUNet:
    return build_transunet(R50_VIT_B16, num_classes, img_size, in_channels, **overrides)


@register_model("ViT-B_16", family="transunet", default_img_size=224, published=True,
                description="ViT-CUP baseline of the paper (pure ViT-B/16, no CNN skips)",
                official=OfficialCount(91_674_201, 9, 3, 224, source="Beckschen/TransUNet ViT-B_16"))
def vit_b16(num_classes: int, img_size: int = 224, in_channels: int = 1, **overrides) -> TransUNet:
    return build_transunet(VIT_B16, num_classes, img_size, in_channels, **overrides)


@register_model("R50-ViT-L_16", family="transunet", default_img_size=224, published=True,
                description="TransUNet with the large transformer (R50 + ViT-L/16, 24 layers)")
def r50_vit_l16(num_classes: int, img_size: int = 224, in_channels: int = 1, **overrides) -> TransUNet:
    return build_transunet(R50_VIT_L16, num_classes, img_size, in_channels, **overrides)


@register_model("TransUNet-S", family="transunet", default_img_size=224, published=False,
                description="reduced TransUNet of the parity fixture (R50 units 2/2/2, 2 layers of 64); CPU tests")
def transunet_small(num_classes: int, img_size: int = 224, in_channels: int = 1, **overrides) -> TransUNet:
    return build_transunet(SMALL, num_classes, img_size, in_channels, **overrides)


@register_model("TransUNet-Tiny", family="transunet", default_img_size=128, published=False,
                description="narrow TransUNet for fast CPU tests and the phantom demo (trains in minutes)")
def transunet_tiny(num_classes: int, img_size: int = 128, in_channels: int = 1, **overrides) -> TransUNet:
    return build_transunet(TINY, num_classes, img_size, in_channels, **overrides)


# ----------------------------------------------------------------------------------------------------------------
# ImageNet-21k weights from the original ViT release (R50+ViT-B_16.npz, ViT-B_16.npz)
# ----------------------------------------------------------------------------------------------------------------
# ImageNet-21k weights for TransUNet from the original ViT release (``R50+ViT-B_16.npz``, ``ViT-B_16.npz``).
#
# The npz files hold JAX/Flax arrays under slash-separated names. :func:`load_vit_npz` copies them into a
# :class:`~medseg.models.transunet.TransUNet` with the conversions of the reference code:
#
# npz key -> TransUNet parameter (``transformer.`` prefix left out), transform:
#
# - ``embedding/kernel``, ``embedding/bias`` -> ``embeddings.patch_embeddings``; kernel HWIO -> OIHW
# - ``Transformer/posembed_input/pos_embedding`` (1, 1 + g*g, D) -> ``embeddings.position_embeddings`` (1, G*G, D);
#   class token dropped, grid resized when g != G
# - ``Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/{query,key,value,out}/{kernel,bias}`` ->
#   ``encoder.layer.{i}.attn.{query,key,value,out}``; kernels (D, heads, head_dim) or (heads, head_dim, D) reshaped
#   to (D, D) and transposed, biases flattened
# - ``Transformer/encoderblock_{i}/MlpBlock_3/Dense_{0,1}/{kernel,bias}`` -> ``encoder.layer.{i}.ffn.fc{1,2}``;
#   kernel (in, out) transposed
# - ``Transformer/encoderblock_{i}/LayerNorm_0`` -> ``attention_norm``, ``LayerNorm_2`` -> ``ffn_norm``;
#   ``Transformer/encoder_norm`` -> ``encoder.encoder_norm``; ``scale`` -> ``weight``
# - hybrid only: ``conv_root/kernel``, ``gn_root/{scale,bias}`` -> ``embeddings.hybrid_model.root.{conv,gn}``;
#   ``block{b}/unit{u}/{conv1,conv2,conv3,conv_proj}/kernel`` -> ``...body.block{b}.unit{u}.{conv1,conv2,conv3,
#   downsample}`` (HWIO -> OIHW); ``block{b}/unit{u}/{gn1,gn2,gn3,gn_proj}/{scale,bias}`` -> the GroupNorms
#
# The decoder and segmentation head are not in the file and keep their initialisation. When the model's token grid
# differs from the file's (an input of 512 gives 32x32 tokens, the file has 14x14), the position embedding is
# resized bilinearly over the 2D grid with the corners aligned, which is what the reference's
# ``scipy.ndimage.zoom(order=1)`` computes.
#
# Reached through :func:`medseg.models.pretrained.load_pretrained` (``medseg train --pretrained FILE``).

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
