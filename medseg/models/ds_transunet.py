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

In training mode the forward returns ``(main, aux_bottleneck, aux_quarter)``, all at the input size and weighted
``aux_loss_weights = (0.6, 0.2, 0.2)``; in eval mode only the main logits. The two deep-supervision heads are the
reference's ``loss1``/``loss2``: 1x1 conv, ReLU, nearest upsampling (option ``aux_head_style="linear"``: no ReLU,
bilinear, medseg's earlier heads).

The Swin encoders keep the official Swin module layout (``patch_embed``, ``layers.{i}.blocks.{j}``,
``layers.{i}.downsample``) and are built from MONAI's ``PatchEmbed``, ``SwinTransformerBlock`` and
``PatchMerging`` (2D), so :func:`load_swin_imagenet` maps official ImageNet checkpoints almost key for key, and
:func:`from_official` maps a checkpoint of the reference code (``lib/DS_TransUNet.py``) onto this model.

Parity: with the reference's weights (key map :func:`from_official`) the outputs, main and auxiliary, equal the
reference's at 64 px within 1e-4 (``tests/test_zoo_parity.py``; the reference's 512 px output matched to a
relative 7e-7 before). This needs the official Swin behaviour on small grids, which MONAI's block does not have
(see :class:`OfficialSwinBlock` and rule 3).

Input sizes (why the reference needs multiples of 64, and why this one does not)
--------------------------------------------------------------------------------
The coarse branch's last stage sits at H/64, which is 3.5 at 224, and the reference fuses by "upsample the coarse
map x2 and concatenate", which only lines up when every coarse grid is exactly half the fine one. medseg solves this
by design, with three rules that keep every grid cell in place (all padding is at the bottom/right):

1. Patch merging of an odd grid pads one row/column first (MONAI's ``PatchMerging``, as in the official Swin
   backbone), so the coarse grids at 224 are 28, 14, 7, 4: coarse cell ``i`` always covers fine cells ``2i, 2i+1``.
2. The fusion upsamples the coarse map x2 and crops it to the fine map's size (8 -> 7 at 224). Because of rule 1
   the crop only removes the padded half-cell; it is exact alignment, not a resize.
3. Inside a Swin block the grid is padded (bottom/right) to a multiple of the window after the block's first norm,
   the window stays 7x7 and odd blocks keep the half-window shift with the mask of the padded grid, at every grid
   size: the rule of the official Swin block, which the reference applies at every size it can run (its 64 px run
   has grids of 4, 2 and 1). At 224, which the reference cannot run, the same rule applies to the coarse 4x4 and
   the 7x7 grids. (MONAI's block would shrink the window to the grid and drop the shift there.)

The fine branch and the decoder need whole grids at H/32, so any multiple of 32 works (224, 256, 512, ...). The
model has no position embeddings, so the ``img_size`` it was built for is informative only.

Parameters
----------
``DS-TransUNet-B`` (Swin-B fine branch, Swin-T coarse branch, decoder width 128, TIF sizes as in the reference)
has 171,450,825 parameters for 9 classes (:func:`parameter_breakdown`): fine encoder 86,745,016 (the Swin-B
backbone without its classifier, 86,743,224, plus three per-stage output norms), coarse encoder 27,534,522 (Swin-T
without classifier, 27,519,354, plus per-stage norms, plus 13,824 for the 8x8 instead of 4x4 patch kernel), TIF
4,516,896, conv fusion 34,479,360, decoder, stem and heads 18,175,031 (1,187 of them per class). That is the
reference code's own count (``UNet(128, 9)``: 171,450,825; its 840 state_dict entries map one for one) and the
paper's "about 171M". Small variants (``-S``, ``-Tiny``) keep the design with narrow widths and depths 2/2/2/2,
for tests and CPU demos.

Departures from the reference code: the input-size rules 1-2 above (the reference fails at 224); the TIF attention
uses ``torch.nn.functional.scaled_dot_product_attention`` (same maths, less memory at 512); 1-channel input is
repeated to 3 channels before both encoders and the CNN stem (the reference only runs 3-channel input).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import PatchEmbed
from monai.networks.nets.swin_unetr import (PatchMerging, SwinTransformerBlock, compute_mask, window_partition,
                                            window_reverse)

from medseg.errors import CheckpointError, ConfigError
from medseg.models.layers import TransformerLayer
from medseg.models.pretrained import (PretrainedReport, copy_weights, read_weights, register_official_converter,
                                      register_pretrained_loader, rename_keys)
from medseg.models.options import check_counts, check_options, dataclass_options
from medseg.models.registry import OfficialCount, register_model

logger = logging.getLogger(__name__)

__all__ = [
    "DSTransUNet",
    "DSTransUNetConfig",
    "SwinEncoder",
    "TransformerInteractiveFusion",
    "from_official",
    "load_ds_transunet_imagenet",
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
        aux_head_style: ``"official"`` (default): the deep-supervision logits pass a ReLU and are upsampled
            nearest, as the reference's ``loss1``/``loss2``; ``"linear"``: no ReLU, bilinear upsampling (medseg's
            earlier heads, which let the auxiliary logits go negative).
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
    aux_head_style: str = "official"

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first inconsistent field."""
        if self.aux_head_style not in ("official", "linear"):
            raise ConfigError(f"aux_head_style: 'official' or 'linear', got {self.aux_head_style!r}")
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
class OfficialSwinBlock(SwinTransformerBlock):
    """MONAI's 2D Swin block with the official Swin behaviour on small grids.

    MONAI shrinks the window to the grid and turns the shift off when a grid is not larger than the window. The
    official Swin block (the segmentation backbone DS-TransUNet uses) never does: after its first LayerNorm it pads
    the grid (bottom/right) to a multiple of the window, keeps the full window and, in odd blocks, the half-window
    shift, with the attention mask of the padded grid. This block does the same, at every grid size; MONAI's
    parameters and key names are unchanged. Input and output: channels-last tokens (B, H, W, C).
    """

    def forward_part1(self, x: torch.Tensor, mask_matrix: torch.Tensor | None) -> torch.Tensor:
        _, height, width, channels = x.shape
        window = tuple(self.window_size)
        shift = tuple(self.shift_size)
        x = self.norm1(x)
        pad_b = (window[0] - height % window[0]) % window[0]
        pad_r = (window[1] - width % window[1]) % window[1]
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))  # pad tokens come after the norm, as in the official block
        _, padded_h, padded_w, _ = x.shape
        shifted = any(size > 0 for size in shift)
        if shifted:
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        windows = window_partition(x, window)  # (B * nW, window_h * window_w, C)
        attended = self.attn(windows, mask=mask_matrix if shifted else None)
        x = window_reverse(attended.view(-1, *window, channels), window, [x.shape[0], padded_h, padded_w])
        if shifted:
            x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
        return x[:, :height, :width].contiguous()


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
            OfficialSwinBlock(dim=dim, num_heads=num_heads, window_size=window,
                                 shift_size=(0, 0) if j % 2 == 0 else shift, mlp_ratio=mlp_ratio, qkv_bias=True,
                                 drop_path=drop_path[j], use_checkpoint=use_checkpoint)
            for j in range(depth)
        ])
        self.downsample = PatchMerging(dim=dim, norm_layer=nn.LayerNorm, spatial_dims=2) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) tokens -> (B, H, W, C) tokens after all blocks of the stage.

        Each block pads the grid to a multiple of the window after its first norm (:class:`OfficialSwinBlock`);
        the mask of the shifted blocks is computed for that padded grid, as the official ``BasicLayer`` does.
        """
        window = (self.window_size, self.window_size)
        shift = (self.window_size // 2, self.window_size // 2)
        padded = [math.ceil(size / self.window_size) * self.window_size for size in (x.shape[1], x.shape[2])]
        mask = compute_mask(padded, window, shift, x.device) if self.window_size > 1 else None
        for block in self.blocks:
            x = block(x, mask)
        return x


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
        # One pre-norm global transformer layer per branch (the reference's Transformer(depth=1)): the attention
        # width heads * head_dim differs from the branch width; no qkv bias; PyTorch's LayerNorm epsilon.
        self.fine_layer = TransformerLayer(fine_dim, config.tif_fine_heads, config.tif_fine_mlp_dim,
                                           head_dim=config.tif_fine_head_dim, qkv_bias=False, norm_eps=1e-5)
        self.coarse_layer = TransformerLayer(coarse_dim, config.tif_coarse_heads, config.tif_coarse_mlp_dim,
                                             head_dim=config.tif_coarse_head_dim, qkv_bias=False, norm_eps=1e-5)

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
        check_counts(num_classes, in_channels)
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
        return logits, self._aux_logits(self.aux_head_bottleneck, fused[3], size), \
            self._aux_logits(self.aux_head_quarter, quarter, size)

    def _aux_logits(self, head: nn.Conv2d, feature: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """A deep-supervision head: 1x1 conv, then (official) ReLU and nearest upsampling to ``size``, or (option
        ``aux_head_style="linear"``) no ReLU and bilinear upsampling."""
        logits = head(feature)
        if self.config.aux_head_style == "official":
            return F.interpolate(F.relu(logits), size=size, mode="nearest")
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


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
    check_options("DS-TransUNet", overrides, dataclass_options(DSTransUNetConfig))
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in overrides.items()}
    return DSTransUNet(replace(base, **values), num_classes=num_classes, in_channels=in_channels, img_size=img_size)


@register_model("DS-TransUNet-B", family="ds_transunet", default_img_size=224, published=True,
                img_size_multiple=IMG_SIZE_MULTIPLE,
                official=OfficialCount(171_450_825, 9, 3, 224, source="TianBaoGe/DS-TransUNet UNet(128, 9)"),
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
# Official checkpoints (TianBaoGe/DS-TransUNet ``lib/DS_TransUNet.py``)
# ----------------------------------------------------------------------------------------------------------------
def _swin_rules(official: str, ours: str) -> list[tuple[str, str | None]]:
    """Official Swin backbone keys under ``official`` -> a :class:`SwinEncoder` under ``ours``."""
    return [
        (rf"{official}\.(layers\.\d+\.blocks\.\d+)\.mlp\.fc1\.(.*)", rf"{ours}.\1.mlp.linear1.\2"),
        (rf"{official}\.(layers\.\d+\.blocks\.\d+)\.mlp\.fc2\.(.*)", rf"{ours}.\1.mlp.linear2.\2"),
        (rf"{official}\.(layers\.\d+\.blocks\.\d+\.attn\.relative_position_index)", None),  # rebuilt
        (rf"{official}\.(layers\.\d+\.blocks\.\d+\.(?:norm1|norm2|attn)\..*)", rf"{ours}.\1"),
        (rf"{official}\.(layers\.\d+\.downsample\..*)", rf"{ours}.\1"),
        (rf"{official}\.(patch_embed\.(?:proj|norm)\..*)", rf"{ours}.\1"),
        (rf"{official}\.norm([0-3])\.(.*)", rf"{ours}.out_norms.\1.\2"),
    ]


def _fusion_rules(official: str, ours: str) -> list[tuple[str, str | None]]:
    """An official ``Cross_Att`` (``_l`` = the fine/large branch, ``_s`` = the coarse/small one) -> TIF."""
    rules = [(rf"{official}\.norm_l\.(.*)", rf"{ours}.fine_summary_norm.\1"),
             (rf"{official}\.norm_s\.(.*)", rf"{ours}.coarse_summary_norm.\1"),
             (rf"{official}\.linear_l\.(.*)", rf"{ours}.fine_to_coarse.\1"),
             (rf"{official}\.linear_s\.(.*)", rf"{ours}.coarse_to_fine.\1")]
    for branch, layer in (("l", "fine_layer"), ("s", "coarse_layer")):
        there = rf"{official}\.transformer_{branch}\.layers\.0"
        rules += [(rf"{there}\.0\.norm\.(.*)", rf"{ours}.{layer}.norm1.\1"),
                  (rf"{there}\.0\.fn\.to_qkv\.(.*)", rf"{ours}.{layer}.attn.qkv.\1"),
                  (rf"{there}\.0\.fn\.to_out\.0\.(.*)", rf"{ours}.{layer}.attn.proj.\1"),
                  (rf"{there}\.1\.norm\.(.*)", rf"{ours}.{layer}.norm2.\1"),
                  (rf"{there}\.1\.fn\.net\.0\.(.*)", rf"{ours}.{layer}.mlp.fc1.\1"),
                  (rf"{there}\.1\.fn\.net\.3\.(.*)", rf"{ours}.{layer}.mlp.fc2.\1")]
    return rules


def _official_rules() -> list[tuple[str, str | None]]:
    """Key rules from the official ``UNet(128, n_class)`` state_dict to :class:`DSTransUNet`."""
    rules = _swin_rules("encoder", "fine_encoder") + _swin_rules("encoder2", "coarse_encoder")
    for scale in range(4):
        rules += _fusion_rules(rf"cross_att_{scale + 1}", f"interactive_fusions.{scale}")
        rules += [(rf"change{scale + 1}\.conv\.([0134])\.(.*)", rf"conv_fusions.{scale}.\1.\2")]
    for stage in range(3):  # Swin decoder stages layer1..3
        there, here = rf"layer{stage + 1}", f"swin_decoder.{stage}"
        rules += [(rf"{there}\.up\.up\.up\.([12])\.(.*)", rf"{here}.up.\1.\2"),
                  (rf"{there}\.up\.layer\.blocks\.(\d+)\.attn\.relative_position_index", None),
                  (rf"{there}\.up\.layer\.blocks\.(\d+)\.mlp\.fc1\.(.*)", rf"{here}.swin.blocks.\1.mlp.linear1.\2"),
                  (rf"{there}\.up\.layer\.blocks\.(\d+)\.mlp\.fc2\.(.*)", rf"{here}.swin.blocks.\1.mlp.linear2.\2"),
                  (rf"{there}\.up\.layer\.blocks\.(\d+)\.(.*)", rf"{here}.swin.blocks.\1.\2"),
                  (rf"{there}\.up\.conv_relu\.0\.(.*)", rf"{here}.reduce.0.\1"),
                  (rf"{there}\.conv2\.0\.(.*)", rf"{here}.skip_reduce.0.\1"),
                  (rf"{there}\.conv_relu\.0\.(.*)", rf"{here}.merge.0.\1")]
    for stage in range(2):  # convolutional decoder stages layer4, layer5
        there, here = rf"layer{stage + 4}", f"conv_decoder.{stage}"
        rules += [(rf"{there}\.up\.up\.([12])\.(.*)", rf"{here}.up.\1.\2"),
                  (rf"{there}\.conv_relu\.0\.(.*)", rf"{here}.merge.0.\1")]
    rules += [(r"down1\.(.*)", r"stem_full.\1"),
              (r"down2\.conv\.([1245])\.(.*)", r"stem_half.\1.\2"),
              (r"final\.(.*)", r"head.\1"),
              (r"loss1\.0\.(.*)", r"aux_head_bottleneck.\1"),
              (r"loss2\.0\.(.*)", r"aux_head_quarter.\1")]
    return rules


def from_official(state_dict: dict[str, torch.Tensor], model: DSTransUNet) -> dict[str, torch.Tensor] | None:
    """An official DS-TransUNet state_dict in ``model``'s keys, or None if it does not look official.

    The integer ``relative_position_index`` buffers are not learned: the model's own are kept.
    """
    if not any(key.startswith("encoder2.") for key in state_dict):
        return None
    renamed, _ = rename_keys(state_dict, _official_rules())
    own = model.state_dict()
    renamed.update({key: value for key, value in own.items() if key.endswith("relative_position_index")})
    return renamed


register_official_converter("ds_transunet", from_official)


# ----------------------------------------------------------------------------------------------------------------
# ImageNet Swin weights
# ----------------------------------------------------------------------------------------------------------------
def _official_to_encoder_key(key: str, final_norm: bool) -> str | None:
    """The encoder key for an official Swin ImageNet key, or None for entries the encoder has no place for."""
    parts = key.split(".")
    if parts[0] in ("head", "absolute_pos_embed") or parts[-1] in ("attn_mask", "relative_position_index",
                                                                     "relative_coords_table"):
        return None
    if parts[0] == "norm":  # the final norm after stage 4
        return "out_norms.3." + ".".join(parts[1:]) if final_norm else None
    if ".mlp.fc1." in key:
        return key.replace(".mlp.fc1.", ".mlp.linear1.")
    if ".mlp.fc2." in key:
        return key.replace(".mlp.fc2.", ".mlp.linear2.")
    return key


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


def load_swin_imagenet(model: DSTransUNet, source, branch: str, resize_patch_embed: bool = True,
                       final_norm: bool = False) -> PretrainedReport:
    """Copy an official Swin ImageNet checkpoint onto one of the two encoders.

    Args:
        model: a :class:`DSTransUNet`.
        source: path to an official Swin checkpoint (``swin_base_patch4_window7_224_22k.pth`` for the fine branch,
            ``swin_tiny_patch4_window7_224.pth`` for the coarse one, as the reference; Microsoft's dict with
            ``model``, or ``state_dict``, or plain; read with ``torch.load(weights_only=True)``), or a loaded dict.
        branch: ``"fine"`` (patch 4) or ``"coarse"`` (patch 8).
        resize_patch_embed: the ImageNet patch kernel is 4x4; the coarse branch needs 8x8. When True (default) it
            is enlarged (each weight repeated 2x2 and divided by 4, i.e. the 4x4 filter applied to the 2x
            average-pooled image) and reported as resized; when False it is skipped, as the reference's loader
            does (its shape check leaves the coarse patch embedding at its initialisation).
        final_norm: the checkpoint's final ``norm`` (after stage 4 of the classifier). The reference has no module
            of that name (its per-stage output norms are ``norm0..3``), so its loader ignores it and ``norm3``
            stays at its initialisation: that is the default here (``norm.*`` is reported unexpected). True copies
            it into ``out_norms.3``, the norm at the same place.

    Returns:
        a :class:`~medseg.models.pretrained.PretrainedReport`; the model's parameters are changed in place. The
        1-channel CT input needs nothing: the model repeats it to 3 channels before both encoders.

    Raises:
        ConfigError: ``branch`` is not fine/coarse.
        CheckpointError: the file is missing, truncated or not a plain tensor checkpoint, or a tensor of a Swin key
            does not fit (another Swin size), or nothing of the file is Swin-shaped.
    """
    if not isinstance(model, DSTransUNet):
        raise CheckpointError(f"Swin ImageNet weights load into a DSTransUNet, not a {type(model).__name__}")
    if branch not in ("fine", "coarse"):
        raise ConfigError(f"branch: expected 'fine' or 'coarse', got {branch!r}")
    if isinstance(source, (str, Path)):
        name, checkpoint = Path(source).name, read_weights(source, "Swin ImageNet checkpoint")
    else:
        name, checkpoint = "Swin state dict", dict(source)
        for wrapper in ("model", "state_dict"):
            if isinstance(checkpoint.get(wrapper), Mapping):
                checkpoint = dict(checkpoint[wrapper])
                break
    encoder: SwinEncoder = getattr(model, f"{branch}_encoder")
    prefix = f"{branch}_encoder."
    report = PretrainedReport(source=name, family="ds_transunet")
    targets = encoder.state_dict()
    renamed = {}
    for key, value in checkpoint.items():
        target_key = _official_to_encoder_key(key, final_norm)
        if target_key is None or target_key not in targets or not isinstance(value, torch.Tensor):
            report.unexpected.append(key)
            continue
        target = targets[target_key]
        if target_key == "patch_embed.proj.weight" and value.shape != target.shape:
            resized = None
            if resize_patch_embed and value.ndim == 4 and value.shape[:2] == target.shape[:2]:
                resized = _resize_patch_kernel(value, tuple(target.shape[-2:]))
            if resized is None:
                report.skipped.append(f"{key}: {tuple(value.shape)} -> {tuple(target.shape)}")
                continue
            report.resized.append(f"{prefix}{target_key}: {tuple(value.shape)} -> {tuple(target.shape)} "
                                  "(each weight repeated 2x2 and divided by 4)")
            value = resized
        renamed[prefix + target_key] = value
    if not final_norm:
        report.notes.append(f"{branch} encoder: the checkpoint's final norm is ignored and out_norms.3 keeps its "
                            "initialisation, as the reference's loader does")
    wanted = {prefix + key for key in targets if not key.endswith("relative_position_index")}
    copy_weights(model, renamed, report, expected=wanted, what="Swin ImageNet checkpoint")
    return report


def load_ds_transunet_imagenet(model: DSTransUNet, path) -> PretrainedReport:
    """The reference recipe's initialisation: Swin-B (22k) into the fine encoder, Swin-T into the coarse one.

    ``path`` is two files, fine first (a list, or ``"swin_base.pth,swin_tiny.pth"``), or one file, which goes into
    every encoder whose width it has (Swin-B: embed 128 = the fine branch of DS-TransUNet-B; Swin-T: embed 96 =
    the coarse branch). See :func:`load_swin_imagenet` for what is done with each tensor.
    """
    paths = [Path(p) for p in (path.split(",") if isinstance(path, str) else
                               ([path] if isinstance(path, Path) else list(path))) if str(p).strip()]
    if len(paths) > 2:
        raise ConfigError(f"pretrained: DS-TransUNet takes one or two Swin checkpoints (fine, coarse), "
                          f"got {len(paths)}")
    if len(paths) == 2:
        return load_swin_imagenet(model, paths[0], "fine").merge(load_swin_imagenet(model, paths[1], "coarse"))
    state = read_weights(paths[0], "Swin ImageNet checkpoint")
    kernel = state.get("patch_embed.proj.weight")
    width = kernel.shape[0] if isinstance(kernel, torch.Tensor) else None
    branches = [branch for branch in ("fine", "coarse")
                if width == getattr(model.config, f"{branch}_embed_dim")]
    if not branches:
        raise CheckpointError(f"{paths[0]}: not a Swin checkpoint of this model's widths (patch embedding "
                              f"{tuple(kernel.shape) if kernel is not None else 'missing'}; the fine encoder needs "
                              f"{model.config.fine_embed_dim} channels, the coarse {model.config.coarse_embed_dim})")
    report = load_swin_imagenet(model, state, branches[0])
    for branch in branches[1:]:
        report = report.merge(load_swin_imagenet(model, state, branch))
    report.source = paths[0].name
    return report


register_pretrained_loader("ds_transunet", load_ds_transunet_imagenet)
