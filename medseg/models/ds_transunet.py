"""DS-TransUNet: two Swin encoders at two patch sizes, fused by transformers (Lin et al., IEEE TIM 2022).

Architecture (as the paper describes it, arXiv:2106.06716; the code is medseg's own)::

    image (B, 1, H, W) -> repeated to 3 channels so ImageNet Swin weights fit
      fine encoder   (Swin, patch 4): maps F0..F3 at H/4, H/8, H/16, H/32   with Cf, 2Cf, 4Cf, 8Cf channels
      coarse encoder (Swin, patch 8): maps C0..C3 at H/8, H/16, H/32, H/64  with Cc, 2Cc, 4Cc, 8Cc channels
      at each scale s: Transformer Interactive Fusion (TIF) of Fs and Cs, then
                       Cs upsampled x2 (nearest), concatenated with Fs, two conv-GN-ReLU layers -> Ss (D*2^s channels)
      decoder: S3 -> three Swin stages (upsample + conv, two Swin blocks, skip S2, S1, S0) -> H/4
               -> two conv stages with CNN stem skips (H/2, H) -> main head
      deep supervision: one head on S3 (bottleneck) and one on the H/4 decoder output

In training mode the forward returns ``(main, aux_bottleneck, aux_quarter)``, all bilinearly upsampled to the input
size and weighted ``aux_loss_weights = (0.6, 0.2, 0.2)``; in eval mode only the main logits.

The Swin encoders keep the official Swin module layout (``patch_embed``, ``layers.{i}.blocks.{j}``,
``layers.{i}.downsample``) and are built from MONAI's ``PatchEmbed``, ``SwinTransformerBlock`` and
``PatchMerging`` (2D), so :func:`load_swin_imagenet` maps official ImageNet checkpoints almost key for key.

Input sizes (why the reference needs multiples of 64, and why this one does not)
--------------------------------------------------------------------------------
The coarse branch's last stage sits at H/64, which is 3.5 at 224, and the reference fuses by "upsample the coarse
map x2 and concatenate", which only lines up when every coarse grid is exactly half the fine one. medseg solves this
by design, with three rules that keep every grid cell in place (all padding is at the bottom/right):

1. Patch merging of an odd grid pads one row/column first (MONAI's ``PatchMerging``, as in the official Swin
   backbone), so the coarse grids at 224 are 28, 14, 7, 4: coarse cell ``i`` always covers fine cells ``2i, 2i+1``.
2. The fusion upsamples the coarse map x2 and crops it to the fine map's size (8 -> 7 at 224). Because of rule 1
   the crop only removes the padded half-cell; it is exact alignment, not a resize.
3. Inside a Swin stage a grid that is not a multiple of the window is padded to one (MONAI's block pads after its
   first norm, as the official Swin segmentation backbone does). A grid smaller than one window (the coarse 4x4 at
   224, anything small at low resolution) is first zero-padded to a full window: MONAI would otherwise shrink the
   window to the grid and index the 7x7 relative-position table as if the window were 7 wide.

The fine branch and the decoder need whole grids at H/32, so any multiple of 32 works (224, 256, 512, ...). The
model has no position embeddings, so the ``img_size`` it was built for is informative only.

Parameters
----------
``DS-TransUNet-B`` (Swin-B fine branch, Swin-T coarse branch, decoder width 128, TIF sizes as in the reference)
has 171,450,825 parameters for 9 classes (:func:`parameter_breakdown`): fine encoder 86,745,016 (the Swin-B
backbone without its classifier, 86,743,224, plus three per-stage output norms), coarse encoder 27,534,522 (Swin-T
without classifier, 27,519,354, plus per-stage norms, plus 13,824 for the 8x8 instead of 4x4 patch kernel), TIF
4,516,896, conv fusion 34,479,360, decoder, stem and heads 18,175,031 (1,187 of them per class). That is the
paper's "about 171M". The layers follow the reference design one for one, but the reference code only builds on
a GPU, so an exact match with its own count is not checked. Small variants (``-S``, ``-Tiny``) keep the design
with narrow widths and depths 2/2/2/2, for tests and CPU demos.

Departures from the reference code, on purpose: the deep-supervision heads have no ReLU on their logits and are
upsampled bilinearly (the reference clamps them at zero and upsamples nearest); the TIF attention uses
``torch.nn.functional.scaled_dot_product_attention`` (same maths, less memory at 512).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import PatchEmbed
from monai.networks.nets.swin_unetr import PatchMerging, SwinTransformerBlock, compute_mask, get_window_size

from medseg.errors import CheckpointError, ConfigError
from medseg.models.registry import register_model

logger = logging.getLogger(__name__)

__all__ = [
    "DSTransUNet",
    "DSTransUNetConfig",
    "SwinEncoder",
    "SwinLoadReport",
    "TransformerInteractiveFusion",
    "load_swin_imagenet",
    "parameter_breakdown",
]

# Input height and width must be multiples of this (see the module docstring).
IMG_SIZE_MULTIPLE = 32


# ----------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DSTransUNetConfig:
    """Every size of a DS-TransUNet; the defaults are the published one (DS-TransUNet-B).

    Any field can be overridden by name through ``medseg.models.create(..., **overrides)``.

    Attributes:
        fine_embed_dim, fine_depths, fine_heads, fine_patch_size: the fine Swin branch (Swin-B: 128, 2/2/18/2,
            4/8/16/32, patch 4). Stage ``s`` has ``fine_embed_dim * 2**s`` channels.
        coarse_embed_dim, coarse_depths, coarse_heads, coarse_patch_size: the coarse Swin branch (Swin-T: 96,
            2/2/6/2, 3/6/12/24, patch 8). The coarse patch must be twice the fine one.
        window_size: Swin attention window (7, as the ImageNet checkpoints).
        mlp_ratio: Swin MLP width / channels.
        decoder_dim: width D of the fused map S0; S1..S3 have 2D, 4D, 8D channels; the stems have D/4 and D/2.
        decoder_heads: heads of the three decoder Swin stages (at 4D, 2D, D channels).
        decoder_depth: Swin blocks per decoder stage (every second one is shifted).
        tif_fine_heads, tif_fine_head_dim, tif_fine_mlp_dim: the global transformer layer run on the fine tokens
            (the same at all four scales, as in the reference).
        tif_coarse_heads, tif_coarse_head_dim, tif_coarse_mlp_dim: the same for the coarse tokens.
        fine_drop_path, coarse_drop_path, decoder_drop_path: stochastic-depth rate of the last block of each
            Swin stack (rising linearly from 0, as in Swin).
        gradient_checkpointing: recompute Swin blocks in the backward pass to save memory (GPU, 512 px).
    """

    fine_embed_dim: int = 128
    fine_depths: tuple[int, ...] = (2, 2, 18, 2)
    fine_heads: tuple[int, ...] = (4, 8, 16, 32)
    fine_patch_size: int = 4
    coarse_embed_dim: int = 96
    coarse_depths: tuple[int, ...] = (2, 2, 6, 2)
    coarse_heads: tuple[int, ...] = (3, 6, 12, 24)
    coarse_patch_size: int = 8
    window_size: int = 7
    mlp_ratio: float = 4.0
    decoder_dim: int = 128
    decoder_heads: tuple[int, ...] = (8, 4, 2)
    decoder_depth: int = 2
    tif_fine_heads: int = 1
    tif_fine_head_dim: int = 64
    tif_fine_mlp_dim: int = 256
    tif_coarse_heads: int = 3
    tif_coarse_head_dim: int = 32
    tif_coarse_mlp_dim: int = 128
    fine_drop_path: float = 0.5
    coarse_drop_path: float = 0.2
    decoder_drop_path: float = 0.2
    gradient_checkpointing: bool = False

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first inconsistent field."""
        for branch in ("fine", "coarse"):
            embed = getattr(self, f"{branch}_embed_dim")
            depths = getattr(self, f"{branch}_depths")
            heads = getattr(self, f"{branch}_heads")
            if len(depths) != 4 or len(heads) != 4:
                raise ConfigError(f"{branch}_depths/{branch}_heads: four stages expected, got {depths} and {heads}")
            for stage, num_heads in enumerate(heads):
                if (embed * 2**stage) % num_heads:
                    raise ConfigError(f"{branch}_heads: stage {stage} has {embed * 2**stage} channels, "
                                      f"not divisible by {num_heads} heads")
        if self.coarse_patch_size != 2 * self.fine_patch_size:
            raise ConfigError(f"coarse_patch_size: must be twice fine_patch_size ({2 * self.fine_patch_size}), "
                              f"got {self.coarse_patch_size}")
        if self.window_size < 2:
            raise ConfigError(f"window_size: must be at least 2, got {self.window_size}")
        if self.decoder_dim % 4:
            raise ConfigError(f"decoder_dim: must be divisible by 4, got {self.decoder_dim}")
        if len(self.decoder_heads) != 3:
            raise ConfigError(f"decoder_heads: three decoder Swin stages expected, got {self.decoder_heads}")
        for stage, num_heads in enumerate(self.decoder_heads):
            channels = self.decoder_dim * 2 ** (2 - stage)
            if channels % num_heads:
                raise ConfigError(f"decoder_heads: decoder stage {stage} has {channels} channels, "
                                  f"not divisible by {num_heads} heads")


# Published size: Swin-B (22k ImageNet) fine branch + Swin-T (1k ImageNet) coarse branch.
CONFIG_B = DSTransUNetConfig()

# Small variants for tests and CPU demos at 128-224 px (not published).
CONFIG_S = DSTransUNetConfig(
    fine_embed_dim=48, fine_depths=(2, 2, 2, 2), fine_heads=(2, 4, 8, 16),
    coarse_embed_dim=32, coarse_depths=(2, 2, 2, 2), coarse_heads=(1, 2, 4, 8),
    decoder_dim=64, decoder_heads=(8, 4, 2),
    tif_fine_heads=1, tif_fine_head_dim=32, tif_fine_mlp_dim=128,
    tif_coarse_heads=2, tif_coarse_head_dim=16, tif_coarse_mlp_dim=64,
    fine_drop_path=0.1, coarse_drop_path=0.1, decoder_drop_path=0.1,
)
CONFIG_TINY = DSTransUNetConfig(
    fine_embed_dim=32, fine_depths=(2, 2, 2, 2), fine_heads=(1, 2, 4, 8),
    coarse_embed_dim=24, coarse_depths=(2, 2, 2, 2), coarse_heads=(1, 2, 4, 8),
    decoder_dim=32, decoder_heads=(4, 2, 1),
    tif_fine_heads=1, tif_fine_head_dim=16, tif_fine_mlp_dim=64,
    tif_coarse_heads=1, tif_coarse_head_dim=16, tif_coarse_mlp_dim=48,
    fine_drop_path=0.0, coarse_drop_path=0.0, decoder_drop_path=0.0,
)


# ----------------------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------------------
def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups as in the reference, or the largest power of two below that divides ``channels``."""
    groups = 32
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, channels)


def _conv_gn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    """3x3 conv (padding 1) + GroupNorm + ReLU, as a list of layers to put in an ``nn.Sequential``."""
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1), _group_norm(out_channels), nn.ReLU(inplace=True)]


def _upsample_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """Nearest x2 upsampling + 3x3 conv + GroupNorm + ReLU: (B, Cin, h, w) -> (B, Cout, 2h, 2w)."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), *_conv_gn_relu(in_channels, out_channels))


def _linear_drop_path_rates(last_rate: float, count: int) -> list[float]:
    """Stochastic-depth rates rising linearly from 0 to ``last_rate`` over ``count`` blocks (plain floats, so the
    model can be built on the ``meta`` device)."""
    if count <= 1:
        return [0.0] * count
    return [last_rate * k / (count - 1) for k in range(count)]


def _init_transformer_weights(module: nn.Module) -> None:
    """Swin's initialisation: linear weights normal (std 0.02), biases 0, LayerNorm 1 and 0.

    Swin draws a normal truncated at +-2 in absolute value, 100 standard deviations out: a plain normal in practice,
    and ``normal_`` is much faster to draw on CPU than ``trunc_normal_``.
    """
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# ----------------------------------------------------------------------------------------------------------------
# Swin encoder (MONAI blocks, official Swin layout)
# ----------------------------------------------------------------------------------------------------------------
class SwinStage(nn.Module):
    """One Swin stage: ``depth`` MONAI Swin blocks, every second one shifted by half a window, and optionally the
    patch merging that feeds the next stage (kept here, as ``downsample``, to match the official key layout).

    ``forward`` runs the blocks only: channels-last tokens (B, H, W, C) -> (B, H, W, C). The encoder applies
    ``downsample`` itself: (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C).
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 drop_path: list[float], downsample: bool, use_checkpoint: bool = False) -> None:
        super().__init__()
        self.window_size = window_size
        window = (window_size, window_size)
        shift = (window_size // 2, window_size // 2)
        self.blocks = nn.ModuleList([
            SwinTransformerBlock(dim=dim, num_heads=num_heads, window_size=window,
                                 shift_size=(0, 0) if j % 2 == 0 else shift, mlp_ratio=mlp_ratio, qkv_bias=True,
                                 drop_path=drop_path[j], use_checkpoint=use_checkpoint)
            for j in range(depth)
        ])
        self.downsample = PatchMerging(dim=dim, norm_layer=nn.LayerNorm, spatial_dims=2) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) tokens -> (B, H, W, C) tokens after all blocks of the stage."""
        height, width = x.shape[1], x.shape[2]
        # A grid smaller than one window is zero-padded (bottom/right) to a full window, so every block attends
        # over true 7x7 windows; larger grids are padded to a multiple of the window inside MONAI's block.
        pad_h = max(self.window_size - height, 0)
        pad_w = max(self.window_size - width, 0)
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        grid = (x.shape[1], x.shape[2])
        window, shift = get_window_size(grid, (self.window_size,) * 2, (self.window_size // 2,) * 2)
        mask = None
        if any(s > 0 for s in shift):
            padded = [math.ceil(size / w) * w for size, w in zip(grid, window)]
            mask = compute_mask(padded, window, shift, x.device)
        for block in self.blocks:
            x = block(x, mask)
        return x[:, :height, :width].contiguous()


class SwinEncoder(nn.Module):
    """A Swin Transformer backbone that returns one normalised feature map per stage.

    Input (B, in_chans, H, W); output four maps ``(B, embed_dim * 2**s, ceil(H / (patch * 2**s)), ...)`` for
    ``s = 0..3`` (channels first). Module names follow the official Swin checkpoints (``patch_embed``,
    ``layers.{i}.blocks.{j}``, ``layers.{i}.downsample``); ``out_norms.3`` plays the role of the official final
    ``norm`` and ``out_norms.0..2`` are the extra per-stage norms of the Swin segmentation backbone.
    """

    def __init__(self, in_chans: int, embed_dim: int, depths: tuple[int, ...], num_heads: tuple[int, ...],
                 patch_size: int, window_size: int, mlp_ratio: float, drop_path: float,
                 use_checkpoint: bool = False) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.channels = [embed_dim * 2**stage for stage in range(len(depths))]
        self.patch_embed = PatchEmbed(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                                      norm_layer=nn.LayerNorm, spatial_dims=2)
        rates = _linear_drop_path_rates(drop_path, sum(depths))
        self.layers = nn.ModuleList()
        for stage, depth in enumerate(depths):
            first = sum(depths[:stage])
            self.layers.append(SwinStage(self.channels[stage], depth, num_heads[stage], window_size, mlp_ratio,
                                         rates[first:first + depth], downsample=stage < len(depths) - 1,
                                         use_checkpoint=use_checkpoint))
        self.out_norms = nn.ModuleList([nn.LayerNorm(channels) for channels in self.channels])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, in_chans, H, W) image -> list of four (B, C_s, H_s, W_s) maps, finest first."""
        x = self.patch_embed(x)  # (B, C, H/p, W/p)
        x = x.permute(0, 2, 3, 1)  # channels last for the Swin blocks
        features = []
        for layer, norm in zip(self.layers, self.out_norms):
            x = layer(x)
            features.append(norm(x).permute(0, 3, 1, 2).contiguous())
            if layer.downsample is not None:
                x = layer.downsample(x)
        return features


# ----------------------------------------------------------------------------------------------------------------
# Transformer Interactive Fusion
# ----------------------------------------------------------------------------------------------------------------
class GlobalTransformerLayer(nn.Module):
    """Pre-norm transformer layer with global multi-head self-attention over all tokens: (B, N, dim) -> (B, N, dim).

    The attention width ``heads * head_dim`` may differ from ``dim`` (the reference keeps it small).
    """

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        inner = heads * head_dim
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.attn_out = nn.Linear(inner, dim)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(self.attn_norm(x)).reshape(batch, tokens, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, N, head_dim)
        attended = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, head_dim)
        attended = attended.transpose(1, 2).reshape(batch, tokens, self.heads * self.head_dim)
        x = x + self.attn_out(attended)
        return x + self.mlp(self.mlp_norm(x))


class TransformerInteractiveFusion(nn.Module):
    """TIF at one scale: each branch receives a one-token summary of the other branch.

    Each branch's tokens are layer-normed and averaged into one token, projected to the other branch's width and
    prepended to the other branch's tokens; one global transformer layer runs per branch; the extra token is
    dropped. Inputs and outputs: fine (B, Cf, Hf, Wf) and coarse (B, Cc, Hc, Wc), shapes unchanged.
    """

    def __init__(self, fine_dim: int, coarse_dim: int, config: DSTransUNetConfig) -> None:
        super().__init__()
        self.fine_summary_norm = nn.LayerNorm(fine_dim)
        self.coarse_summary_norm = nn.LayerNorm(coarse_dim)
        self.fine_to_coarse = nn.Linear(fine_dim, coarse_dim)
        self.coarse_to_fine = nn.Linear(coarse_dim, fine_dim)
        self.fine_layer = GlobalTransformerLayer(fine_dim, config.tif_fine_heads, config.tif_fine_head_dim,
                                                 config.tif_fine_mlp_dim)
        self.coarse_layer = GlobalTransformerLayer(coarse_dim, config.tif_coarse_heads, config.tif_coarse_head_dim,
                                                   config.tif_coarse_mlp_dim)

    def forward(self, fine: torch.Tensor, coarse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, fine_dim, fine_h, fine_w = fine.shape
        _, coarse_dim, coarse_h, coarse_w = coarse.shape
        fine_tokens = fine.flatten(2).transpose(1, 2)  # (B, Nf, Cf)
        coarse_tokens = coarse.flatten(2).transpose(1, 2)  # (B, Nc, Cc)
        fine_summary = self.fine_to_coarse(self.fine_summary_norm(fine_tokens).mean(dim=1, keepdim=True))
        coarse_summary = self.coarse_to_fine(self.coarse_summary_norm(coarse_tokens).mean(dim=1, keepdim=True))
        fine_tokens = self.fine_layer(torch.cat([coarse_summary, fine_tokens], dim=1))[:, 1:]
        coarse_tokens = self.coarse_layer(torch.cat([fine_summary, coarse_tokens], dim=1))[:, 1:]
        fine = fine_tokens.transpose(1, 2).reshape(batch, fine_dim, fine_h, fine_w)
        coarse = coarse_tokens.transpose(1, 2).reshape(batch, coarse_dim, coarse_h, coarse_w)
        return fine, coarse


# ----------------------------------------------------------------------------------------------------------------
# Decoder
# ----------------------------------------------------------------------------------------------------------------
class SwinDecoderStage(nn.Module):
    """Upsample + conv, Swin blocks, then merge with a skip: x (B, C, h, w), skip (B, C/2, 2h, 2w) -> (B, C/2, 2h, 2w).

    The upsampled map (C/2 channels) runs through ``depth`` Swin blocks and is reduced to C/4 channels; the skip is
    reduced to C/4 too; both are concatenated and mixed by a 3x3 conv.
    """

    def __init__(self, in_channels: int, num_heads: int, depth: int, window_size: int, mlp_ratio: float,
                 drop_path: float, use_checkpoint: bool = False) -> None:
        super().__init__()
        half, quarter = in_channels // 2, in_channels // 4
        self.up = _upsample_conv(in_channels, half)
        self.swin = SwinStage(half, depth, num_heads, window_size, mlp_ratio,
                              _linear_drop_path_rates(drop_path, depth), downsample=False,
                              use_checkpoint=use_checkpoint)
        self.reduce = nn.Sequential(nn.Conv2d(half, quarter, 1), nn.ReLU(inplace=True))
        self.skip_reduce = nn.Sequential(nn.Conv2d(half, quarter, 1), nn.ReLU(inplace=True))
        self.merge = nn.Sequential(nn.Conv2d(half, half, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)  # (B, C/2, 2h, 2w)
        x = self.swin(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = torch.cat([self.skip_reduce(skip), self.reduce(x)], dim=1)  # (B, C/2, 2h, 2w)
        return self.merge(x)


class ConvDecoderStage(nn.Module):
    """Upsample + conv, then merge with a CNN stem skip.

    x (B, Cin, h, w) and skip (B, Cskip, 2h, 2w) -> (B, Cout, 2h, 2w).
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = _upsample_conv(in_channels, out_channels)
        self.merge = nn.Sequential(nn.Conv2d(out_channels + skip_channels, out_channels, 3, padding=1),
                                   nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.merge(torch.cat([skip, self.up(x)], dim=1))


# ----------------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------------
class DSTransUNet(nn.Module):
    """DS-TransUNet for 2D slices.

    Forward: (B, in_channels, H, W) with H and W multiples of 32 -> eval: logits (B, num_classes, H, W);
    training: ``(main, aux_bottleneck, aux_quarter)``, each (B, num_classes, H, W), weighted by
    ``aux_loss_weights``. One-channel input is repeated to three channels before the encoders and the stem.
    """

    aux_loss_weights = (0.6, 0.2, 0.2)

    def __init__(self, config: DSTransUNetConfig, num_classes: int, in_channels: int = 1, img_size: int = 224):
        super().__init__()
        config.validate()
        if num_classes < 1:
            raise ConfigError(f"num_classes: must be at least 1, got {num_classes}")
        if in_channels < 1:
            raise ConfigError(f"in_channels: must be at least 1, got {in_channels}")
        self.config = config
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.img_size = img_size
        image_channels = 3 if in_channels == 1 else in_channels
        dim = config.decoder_dim

        self.fine_encoder = SwinEncoder(image_channels, config.fine_embed_dim, config.fine_depths, config.fine_heads,
                                        config.fine_patch_size, config.window_size, config.mlp_ratio,
                                        config.fine_drop_path, config.gradient_checkpointing)
        self.coarse_encoder = SwinEncoder(image_channels, config.coarse_embed_dim, config.coarse_depths,
                                          config.coarse_heads, config.coarse_patch_size, config.window_size,
                                          config.mlp_ratio, config.coarse_drop_path, config.gradient_checkpointing)
        fine_channels, coarse_channels = self.fine_encoder.channels, self.coarse_encoder.channels
        self.interactive_fusions = nn.ModuleList([
            TransformerInteractiveFusion(fine_channels[s], coarse_channels[s], config) for s in range(4)
        ])
        self.conv_fusions = nn.ModuleList([
            nn.Sequential(*_conv_gn_relu(fine_channels[s] + coarse_channels[s], dim * 2**s),
                          *_conv_gn_relu(dim * 2**s, dim * 2**s))
            for s in range(4)
        ])
        # CNN stem on the image: full resolution (D/4 channels) and half resolution (D/2 channels).
        self.stem_full = nn.Conv2d(image_channels, dim // 4, 1)
        self.stem_half = nn.Sequential(nn.MaxPool2d(2), *_conv_gn_relu(dim // 4, dim // 2),
                                       *_conv_gn_relu(dim // 2, dim // 2))
        self.swin_decoder = nn.ModuleList([
            SwinDecoderStage(dim * 2 ** (3 - k), config.decoder_heads[k], config.decoder_depth, config.window_size,
                             config.mlp_ratio, config.decoder_drop_path, config.gradient_checkpointing)
            for k in range(3)
        ])
        self.conv_decoder = nn.ModuleList([
            ConvDecoderStage(dim, dim // 2, dim // 2),
            ConvDecoderStage(dim // 2, dim // 4, dim // 4),
        ])
        self.head = nn.Conv2d(dim // 4, num_classes, 1)
        self.aux_head_bottleneck = nn.Conv2d(dim * 8, num_classes, 1)
        self.aux_head_quarter = nn.Conv2d(dim, num_classes, 1)

        for module in (self.fine_encoder, self.coarse_encoder, self.interactive_fusions, self.swin_decoder):
            module.apply(_init_transformer_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, in_channels, H, W) -> logits (B, num_classes, H, W), or the training tuple (see the class doc)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"DS-TransUNet expects (B, {self.in_channels}, H, W) input, got {tuple(x.shape)}")
        height, width = x.shape[-2:]
        if height % IMG_SIZE_MULTIPLE or width % IMG_SIZE_MULTIPLE:
            raise ValueError(f"DS-TransUNet needs height and width that are multiples of {IMG_SIZE_MULTIPLE}, "
                             f"got {height}x{width}")
        if self.in_channels == 1:
            x = x.expand(-1, 3, -1, -1)

        fine = self.fine_encoder(x)  # (B, Cf*2^s, H/4/2^s, W/4/2^s), s = 0..3
        coarse = self.coarse_encoder(x)  # (B, Cc*2^s, ceil(H/8/2^s), ...), s = 0..3
        fused = []
        for s in range(4):
            fine_s, coarse_s = self.interactive_fusions[s](fine[s], coarse[s])
            # Coarse cell i covers fine cells 2i and 2i+1; cropping drops only padding (see the module docstring).
            coarse_s = F.interpolate(coarse_s, scale_factor=2, mode="nearest")
            coarse_s = coarse_s[:, :, :fine_s.shape[2], :fine_s.shape[3]]
            fused.append(self.conv_fusions[s](torch.cat([fine_s, coarse_s], dim=1)))  # (B, D*2^s, H/4/2^s, ...)

        stem_full = self.stem_full(x)  # (B, D/4, H, W)
        stem_half = self.stem_half(stem_full)  # (B, D/2, H/2, W/2)
        decoded = fused[3]  # (B, 8D, H/32, W/32)
        for stage, skip in zip(self.swin_decoder, (fused[2], fused[1], fused[0])):
            decoded = stage(decoded, skip)
        quarter = decoded  # (B, D, H/4, W/4)
        decoded = self.conv_decoder[0](decoded, stem_half)  # (B, D/2, H/2, W/2)
        decoded = self.conv_decoder[1](decoded, stem_full)  # (B, D/4, H, W)
        logits = self.head(decoded)
        if not self.training:
            return logits
        size = (height, width)
        aux_bottleneck = F.interpolate(self.aux_head_bottleneck(fused[3]), size=size, mode="bilinear",
                                       align_corners=False)
        aux_quarter = F.interpolate(self.aux_head_quarter(quarter), size=size, mode="bilinear", align_corners=False)
        return logits, aux_bottleneck, aux_quarter


def parameter_breakdown(model: DSTransUNet) -> dict[str, int]:
    """Parameter counts by part: fine/coarse encoder, TIF, conv fusion, decoder with stem and heads, total."""
    def count(*modules: nn.Module) -> int:
        return sum(p.numel() for m in modules for p in m.parameters())

    parts = {
        "fine_encoder": count(model.fine_encoder),
        "coarse_encoder": count(model.coarse_encoder),
        "interactive_fusion": count(model.interactive_fusions),
        "conv_fusion": count(model.conv_fusions),
        "decoder_and_heads": count(model.stem_full, model.stem_half, model.swin_decoder, model.conv_decoder,
                                   model.head, model.aux_head_bottleneck, model.aux_head_quarter),
    }
    parts["total"] = count(model)
    return parts


# ----------------------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------------------
def _build(base: DSTransUNetConfig, num_classes: int, img_size: int, in_channels: int, overrides: dict):
    """Apply ``overrides`` (lists become tuples, as YAML gives lists) to ``base`` and build the model."""
    known = {f.name for f in fields(DSTransUNetConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"model DS-TransUNet: unknown override(s) {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(known))})")
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in overrides.items()}
    return DSTransUNet(replace(base, **values), num_classes=num_classes, in_channels=in_channels, img_size=img_size)


@register_model("DS-TransUNet-B", family="ds_transunet", default_img_size=224, published=True,
                img_size_multiple=IMG_SIZE_MULTIPLE,
                description="DS-TransUNet as published: Swin-B fine + Swin-T coarse encoders, TIF, ~171M parameters")
def ds_transunet_b(num_classes: int, img_size: int = 224, in_channels: int = 1, **overrides) -> DSTransUNet:
    """The published size (Swin-B patch 4 + Swin-T patch 8 encoders, decoder width 128)."""
    return _build(CONFIG_B, num_classes, img_size, in_channels, overrides)


@register_model("DS-TransUNet-S", family="ds_transunet", default_img_size=224, published=False,
                img_size_multiple=IMG_SIZE_MULTIPLE,
                description="small DS-TransUNet (embed 48/32, depths 2/2/2/2, decoder 64) for CPU demos")
def ds_transunet_s(num_classes: int, img_size: int = 224, in_channels: int = 1, **overrides) -> DSTransUNet:
    """A small variant for CPU demos at 128-224 px."""
    return _build(CONFIG_S, num_classes, img_size, in_channels, overrides)


@register_model("DS-TransUNet-Tiny", family="ds_transunet", default_img_size=128, published=False,
                img_size_multiple=IMG_SIZE_MULTIPLE,
                description="tiny DS-TransUNet (embed 32/24, depths 2/2/2/2, decoder 32) for tests")
def ds_transunet_tiny(num_classes: int, img_size: int = 128, in_channels: int = 1, **overrides) -> DSTransUNet:
    """The smallest variant, for tests."""
    return _build(CONFIG_TINY, num_classes, img_size, in_channels, overrides)


# ----------------------------------------------------------------------------------------------------------------
# ImageNet Swin weights
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class SwinLoadReport:
    """What :func:`load_swin_imagenet` did.

    Attributes:
        branch: ``"fine"`` or ``"coarse"``.
        loaded: model keys filled from the checkpoint as they were.
        resized: model keys filled from a resized checkpoint tensor (the patch-embedding kernel).
        skipped: ``"checkpoint key: checkpoint shape -> model shape"`` for tensors whose shape does not fit.
        unused: checkpoint keys with no place in the encoder (classifier head, attention masks and position
            indices that the model rebuilds, blocks beyond the model's depth).
        missing: encoder keys the checkpoint did not fill; they keep their initial values.
    """

    branch: str
    loaded: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for logs."""
        return (f"Swin ImageNet weights -> {self.branch} encoder: {len(self.loaded)} loaded, "
                f"{len(self.resized)} resized, {len(self.skipped)} skipped (shape), {len(self.unused)} unused, "
                f"{len(self.missing)} missing")


def _official_to_encoder_key(key: str) -> str | None:
    """The encoder key for an official Swin key, or None for entries the encoder has no place for."""
    parts = key.split(".")
    if parts[0] in ("head", "absolute_pos_embed") or parts[-1] in ("attn_mask", "relative_position_index"):
        return None
    if parts[0] == "norm":  # the final norm after stage 4
        return "out_norms.3." + ".".join(parts[1:])
    if ".mlp.fc1." in key:
        return key.replace(".mlp.fc1.", ".mlp.linear1.")
    if ".mlp.fc2." in key:
        return key.replace(".mlp.fc2.", ".mlp.linear2.")
    return key


def _read_swin_state_dict(source) -> dict[str, torch.Tensor]:
    """A flat {key: tensor} dict from a path (loaded with ``weights_only=True``) or a mapping."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"{path}: Swin checkpoint not found")
        try:
            source = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling refused or corrupt file
            raise CheckpointError(f"{path}: cannot be read as a plain tensor checkpoint ({exc})") from None
        where = str(path)
    else:
        where = "Swin state dict"
    if not isinstance(source, Mapping):
        raise CheckpointError(f"{where}: expected a dict of tensors, got {type(source).__name__}")
    for wrapper in ("model", "state_dict"):
        if isinstance(source.get(wrapper), Mapping):
            source = source[wrapper]
            break
    state = {}
    for key, value in source.items():
        if not isinstance(value, torch.Tensor):
            continue
        state[key[len("module."):] if key.startswith("module.") else key] = value
    if not state:
        raise CheckpointError(f"{where}: holds no tensors")
    return state


def _resize_patch_kernel(weight: torch.Tensor, size: tuple[int, int]) -> torch.Tensor | None:
    """Enlarge a (C, in, p, p) patch kernel to (C, in, k*p, k*p): each weight is repeated k x k times and divided
    by k*k, so the new conv equals the old kernel applied to the image average-pooled by k. None if k is not whole.
    """
    old_h, old_w = weight.shape[-2:]
    if size[0] % old_h or size[1] % old_w or size[0] // old_h != size[1] // old_w:
        return None
    factor = size[0] // old_h
    resized = weight.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
    return resized / (factor * factor)


def load_swin_imagenet(model: DSTransUNet, source, branch: str, resize_patch_embed: bool = True) -> SwinLoadReport:
    """Copy an official Swin ImageNet checkpoint onto one of the two encoders, where shapes allow.

    Args:
        model: a :class:`DSTransUNet`.
        source: path to an official Swin checkpoint (``swin_base_patch4_window7_224_22k.pth`` for the fine branch,
            ``swin_tiny_patch4_window7_224.pth`` for the coarse one; loaded with ``torch.load(weights_only=True)``),
            or an already loaded dict. Weights may be wrapped under ``model`` or ``state_dict``.
        branch: ``"fine"`` (patch 4) or ``"coarse"`` (patch 8).
        resize_patch_embed: the ImageNet patch kernel is 4x4; the coarse branch needs 8x8. When True it is enlarged
            (each weight repeated 2x2 and divided by 4, i.e. the 4x4 filter applied to the 2x average-pooled
            image) and reported as resized; when False it is reported as skipped.

    Returns:
        a :class:`SwinLoadReport`; the model's parameters are changed in place.

    Raises:
        ConfigError: ``branch`` is not fine/coarse.
        CheckpointError: the file is missing, not a plain tensor checkpoint, or holds nothing Swin-shaped.
    """
    if not isinstance(model, DSTransUNet):
        raise TypeError(f"load_swin_imagenet needs a DSTransUNet (unwrapped from DDP), got {type(model).__name__}")
    if branch not in ("fine", "coarse"):
        raise ConfigError(f"branch: expected 'fine' or 'coarse', got {branch!r}")
    encoder: SwinEncoder = getattr(model, f"{branch}_encoder")
    prefix = f"{branch}_encoder."
    checkpoint = _read_swin_state_dict(source)
    targets = {key: value for key, value in encoder.state_dict().items() if not key.endswith("relative_position_index")}
    report = SwinLoadReport(branch=branch)
    filled = set()
    with torch.no_grad():
        for key, value in checkpoint.items():
            target_key = _official_to_encoder_key(key)
            if target_key is None or target_key not in targets:
                report.unused.append(key)
                continue
            target = targets[target_key]
            if value.shape == target.shape:
                target.copy_(value.to(target.dtype))
                report.loaded.append(prefix + target_key)
                filled.add(target_key)
                continue
            if (resize_patch_embed and target_key == "patch_embed.proj.weight" and value.ndim == 4
                    and value.shape[:2] == target.shape[:2]):
                resized = _resize_patch_kernel(value, tuple(target.shape[-2:]))
                if resized is not None:
                    target.copy_(resized.to(target.dtype))
                    report.resized.append(prefix + target_key)
                    filled.add(target_key)
                    continue
            report.skipped.append(f"{key}: {tuple(value.shape)} -> {tuple(target.shape)}")
    report.missing = [prefix + key for key in targets if key not in filled]
    if not report.loaded and not report.resized:
        raise CheckpointError(f"{branch} encoder: no tensor of the checkpoint fits (is it a Swin checkpoint?); "
                              f"{len(report.skipped)} shape mismatches, {len(report.unused)} unused keys")
    logger.info(report.summary())
    return report
