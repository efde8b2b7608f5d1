"""SETR (Zheng et al., CVPR 2021): a plain ViT encoder with the Naive, PUP and MLA decoders.

Encoder: ViT with 16x16 patches (a strided conv), a class token (Naive and PUP; it takes part in attention in every
layer and is dropped before the heads, as in the official code; SETR-MLA's official backbone drops it before the first
layer, so MLA has none), a learned position embedding for the ``(img_size/16)^2`` patch grid
of the size the model is built for and pre-norm transformer layers (multi-head self-attention with
qkv bias, GELU MLP). An input of another size (still a multiple of 16) gets the position embedding resized
bilinearly, as SETR does when it fine-tunes at a new resolution. Each decoder normalises the layer outputs it taps
with its own LayerNorm (the encoder has no final norm), as in the official code.

Decoders (``C`` = hidden size, ``N`` = number of classes, features at ``H/16`` unless said):
    Naive: LayerNorm -> 1x1 conv (C->256) + BN + ReLU -> 1x1 conv (256->N) -> bilinear x16.
    PUP:   LayerNorm -> 4 x [3x3 conv (->256) + BN + ReLU], bilinear x2 after each of the first three, then
           1x1 conv (256->N) and a last bilinear x2 (H/16 -> H).
    MLA:   taps four layers at the quarter points of the encoder (6/12/18/24 of ViT-L, 3/6/9/12 of ViT-B); each:
           LayerNorm -> 1x1 conv (C->256) + BN + ReLU; top-down aggregation (deepest first, each stream adds the one
           above it); 3x3 conv (256->256) + BN + ReLU; 2 x [3x3 conv (->128) + BN + ReLU]; bilinear x4 (corners
           aligned, as the official head). The four 128-channel maps are concatenated, classified with a 3x3 conv
           (512->N) and upsampled x4.

Auxiliary heads (training only; the official configs, loss weight 0.4 each, main 1.0):
    Naive: naive-style heads (LayerNorm, 1x1 conv 256 + BN + ReLU, 1x1 conv) on layers 3/6/9 of ViT-B, 10/15/20 of
           ViT-L and the quarter points of other depths.
    PUP:   heads with a 3x3 conv 256 + BN + ReLU, bilinear x4, 1x1 conv (official ``conv3x3_conv1x1``) on layers
           3/6/9/12 of ViT-B (quarter points), 10/15/20/24 of ViT-L.
    MLA:   a 1x1 conv (256->N) on each of the four aggregated MLA streams.
In training mode the model returns ``(main, aux1, ..., auxK)``, all ``(B, N, H, W)``; ``aux_loss_weights`` holds
``(1.0, 0.4, ..., 0.4)``. Build with ``aux_heads=False`` to drop them (then training returns the main logits only).

Variants (parameters with 1 input channel, 9 classes, at 512 px, aux heads included; the 224-px counts are
0.64M (B16) / 0.85M (L16) smaller because of the position embedding):
    ``SETR-{Naive,PUP,MLA}-B16``  ViT-B/16 (768 wide, 12 layers, 12 heads), published size
    ``SETR-{Naive,PUP,MLA}-L16``  ViT-L/16 (1024 wide, 24 layers, 16 heads), the paper's main encoder
    ``SETR-{Naive,PUP,MLA}-S``    ViT-S/16 (384 wide, 12 layers, 6 heads) with decoder widths halved; not published,
                                  for tests and CPU demos
Exact counts are in the zoo table (``medseg models``) and pinned in ``tests/test_zoo_models.py``; at the official
ADE20K configuration (150 classes, RGB) the L16 variants have the official code's counts less the parameters medseg
does not build (every head's unused ``conv_seg``; conv biases before BatchNorm, folded into it by
:func:`from_official`; MLA's unused class token). With the official weights the outputs, main and auxiliary, equal
the official model's (``tests/test_zoo_parity.py``, reduced ViT).
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import ConfigError
from medseg.models.layers import TransformerLayer
from medseg.models.options import check_options, constructor_options
from medseg.models.pretrained import (PretrainedReport, adapt_first_kernel, copy_weights, read_weights,
                                      register_official_converter, register_pretrained_loader, rename_keys)
from medseg.models.registry import OfficialCount, register_model

AUX_WEIGHT = 0.4


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + ReLU with 'same' padding."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(B, h*w, C)`` tokens -> ``(B, C, h, w)`` feature map."""
    batch, _, channels = tokens.shape
    return tokens.transpose(1, 2).reshape(batch, channels, grid[0], grid[1])


def resize_position_grid(table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize a ``(1, g*g, C)`` square position-embedding grid to ``(1, h*w, C)``, bilinear without aligned corners
    (the official SETR's ``pos_embed_interp``)."""
    size = math.isqrt(table.shape[1])
    if size * size != table.shape[1]:
        raise ValueError(f"position embedding of {table.shape[1]} tokens is not a square grid")
    if (size, size) == tuple(grid):
        return table
    channels = table.shape[-1]
    square = table.reshape(1, size, size, channels).permute(0, 3, 1, 2)
    square = F.interpolate(square, size=tuple(grid), mode="bilinear", align_corners=False)
    return square.flatten(2).transpose(1, 2)


class ViTEncoder(nn.Module):
    """ViT encoder returning every layer's output (patch tokens only).

    With ``class_token`` (SETR Naive and PUP, as the official code) a learned token is prepended to the patch tokens,
    takes part in attention in every layer and is dropped from the outputs; SETR-MLA's official backbone drops it
    before the first layer, which is the same as having none.

    Args:
        in_channels: image channels.
        img_size: square input size the position embedding is built for.
        patch_size: patch size (16).
        hidden_size, num_layers, num_heads, mlp_dim: transformer width, depth, heads and MLP width.
        dropout: dropout after the position embedding, in the MLPs and after attention.
        attn_dropout: dropout on the attention weights.
        class_token: prepend a class token (see above).
    """

    def __init__(self, in_channels: int, img_size: int, patch_size: int = 16, hidden_size: int = 768,
                 num_layers: int = 12, num_heads: int = 12, mlp_dim: int = 3072, dropout: float = 0.0,
                 attn_dropout: float = 0.0, class_token: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.grid = img_size // patch_size
        self.patch_embed = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        # With a class token, row 0 of the position embedding is the token's (official layout (1, 1 + g*g, C)).
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size)) if class_token else None
        self.num_prefix = 1 if class_token else 0
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix + self.grid * self.grid, hidden_size))
        self.pos_drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            [TransformerLayer(hidden_size, num_heads, mlp_dim, dropout=dropout, attn_dropout=attn_dropout)
             for _ in range(num_layers)]
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """ViT initialisation: truncated normal (std 0.02) for the position embedding and linear weights."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.layers.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """The ``(1, [1 +] h*w, C)`` position embedding for a ``grid = (h, w)`` patch grid (resized if needed)."""
        if grid == (self.grid, self.grid):
            return self.pos_embed
        prefix, patches = self.pos_embed[:, :self.num_prefix], self.pos_embed[:, self.num_prefix:]
        return torch.cat([prefix, resize_position_grid(patches, grid)], dim=1)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """``(B, in_channels, H, W)`` -> (the ``(B, H/16 * W/16, C)`` output of every layer, ``(H/16, W/16)``)."""
        height, width = x.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"SETR input {height}x{width} is not a multiple of the patch size {self.patch_size}")
        grid = (height // self.patch_size, width // self.patch_size)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, h*w, C)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = self.pos_drop(tokens + self.position_embedding(grid))
        outputs = []
        for layer in self.layers:
            tokens = layer(tokens)
            outputs.append(tokens[:, self.num_prefix:])  # the class token attends in every layer, heads drop it
        return outputs, grid


class NaiveHead(nn.Module):
    """LayerNorm -> kxk conv + BN + ReLU -> [bilinear x``upsample``] -> 1x1 conv.

    ``(B, h*w, C)`` tokens -> ``(B, N, u*h, u*w)`` logits. The Naive decoder and its auxiliary heads use k = 1,
    u = 1; the PUP auxiliary heads of the official config (``conv3x3_conv1x1``, two upsampling layers) k = 3, u = 4.
    """

    def __init__(self, hidden_size: int, num_classes: int, channels: int = 256, kernel_size: int = 1,
                 upsample: int = 1):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.conv = _conv_bn_relu(hidden_size, channels, kernel_size)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        self.upsample = upsample

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self.conv(_tokens_to_map(self.norm(tokens), grid))
        if self.upsample != 1:
            x = F.interpolate(x, scale_factor=self.upsample, mode="bilinear", align_corners=False)
        return self.classifier(x)


class PUPHead(nn.Module):
    """Progressive upsampling: ``(B, h*w, C)`` tokens -> ``(B, N, 16h, 16w)`` logits (4 convs, 4 x2 upsamplings)."""

    def __init__(self, hidden_size: int, num_classes: int, channels: int = 256):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.convs = nn.ModuleList([_conv_bn_relu(hidden_size, channels, 3)]
                                   + [_conv_bn_relu(channels, channels, 3) for _ in range(3)])
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = _tokens_to_map(self.norm(tokens), grid)
        for index, conv in enumerate(self.convs):
            x = conv(x)
            if index < len(self.convs) - 1:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return F.interpolate(self.classifier(x), scale_factor=2, mode="bilinear", align_corners=False)


class MLAHead(nn.Module):
    """Multi-level aggregation of four tapped layers.

    ``forward`` maps four ``(B, h*w, C)`` token tensors (shallowest first) to the ``(B, N, 4h, 4w)`` logits and the
    four aggregated ``(B, mla_channels, h, w)`` streams (the inputs of the auxiliary heads). The x4 upsampling of
    each stream head aligns corners, as the official ``VIT_MLAHead`` does.
    """

    def __init__(self, hidden_size: int, num_classes: int, mla_channels: int = 256, head_channels: int = 128,
                 align_corners: bool = True):
        super().__init__()
        self.align_corners = align_corners
        self.norms = nn.ModuleList([nn.LayerNorm(hidden_size, eps=1e-6) for _ in range(4)])
        self.lateral = nn.ModuleList([_conv_bn_relu(hidden_size, mla_channels, 1) for _ in range(4)])
        self.smooth = nn.ModuleList([_conv_bn_relu(mla_channels, mla_channels, 3) for _ in range(4)])
        self.heads = nn.ModuleList([
            nn.Sequential(_conv_bn_relu(mla_channels, head_channels, 3), _conv_bn_relu(head_channels, head_channels, 3))
            for _ in range(4)
        ])
        self.classifier = nn.Conv2d(4 * head_channels, num_classes, 3, padding=1)

    def forward(self, taps: list[torch.Tensor], grid: tuple[int, int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        lateral = [conv(_tokens_to_map(norm(tokens), grid))
                   for norm, conv, tokens in zip(self.norms, self.lateral, taps)]
        aggregated = [lateral[3]]  # top-down: deepest stream first, each adds the one above it
        for index in (2, 1, 0):
            aggregated.insert(0, lateral[index] + aggregated[0])
        streams = [smooth(feature) for smooth, feature in zip(self.smooth, aggregated)]
        upsampled = [F.interpolate(head(stream), scale_factor=4, mode="bilinear", align_corners=self.align_corners)
                     for head, stream in zip(self.heads, streams)]
        return self.classifier(torch.cat(upsampled, dim=1)), streams


class SETR(nn.Module):
    """SETR mapping ``(B, in_channels, H, W)`` to ``(B, num_classes, H, W)`` logits (eval) or a tuple (training).

    Args:
        num_classes: output classes including background.
        img_size: square input size the position embedding is built for (multiple of 16).
        in_channels: image channels.
        decoder: ``"naive"``, ``"pup"`` or ``"mla"``.
        hidden_size, num_layers, num_heads, mlp_dim: ViT configuration.
        decoder_channels: width of the Naive/PUP convs and of the MLA streams (256 in the paper).
        mla_head_channels: width of each MLA stream head (128 in the paper).
        mla_layers: 1-based layers the MLA decoder taps (default: the quarter points).
        aux_heads: build the auxiliary heads of the official configs.
        aux_layers: 1-based layers of the Naive/PUP auxiliary heads (default: see the module docstring).
        dropout, attn_dropout: encoder dropout rates (0 in the ADE20K configs).
        class_token: prepend a class token in the encoder (default: True for Naive/PUP, False for MLA, as the
            official code).
        mla_align_corners: align corners in the x4 upsampling of the MLA stream heads (official: True).
    """

    def __init__(self, num_classes: int, img_size: int = 512, in_channels: int = 1, decoder: str = "pup",
                 hidden_size: int = 768, num_layers: int = 12, num_heads: int = 12, mlp_dim: int = 3072,
                 decoder_channels: int = 256, mla_head_channels: int = 128, mla_layers: tuple[int, ...] | None = None,
                 aux_heads: bool = True, aux_layers: tuple[int, ...] | None = None, dropout: float = 0.0,
                 attn_dropout: float = 0.0, class_token: bool | None = None, mla_align_corners: bool = True):
        super().__init__()
        if decoder not in ("naive", "pup", "mla"):
            raise ConfigError(f"model: SETR decoder must be 'naive', 'pup' or 'mla', got {decoder!r}")
        self.decoder_name = decoder
        if class_token is None:
            class_token = decoder != "mla"
        self.encoder = ViTEncoder(in_channels, img_size, 16, hidden_size, num_layers, num_heads, mlp_dim, dropout,
                                  attn_dropout, class_token)
        quarters = tuple(math.ceil(num_layers * q / 4) for q in (1, 2, 3, 4))
        self.mla_layers = tuple(mla_layers or quarters)
        if len(self.mla_layers) != 4:
            raise ConfigError(f"model: SETR-MLA taps exactly 4 layers, got mla_layers={list(self.mla_layers)}")
        if decoder == "naive":
            self.decode_head = NaiveHead(hidden_size, num_classes, decoder_channels)
        elif decoder == "pup":
            self.decode_head = PUPHead(hidden_size, num_classes, decoder_channels)
        else:
            self.decode_head = MLAHead(hidden_size, num_classes, decoder_channels, mla_head_channels,
                                       mla_align_corners)

        if aux_layers is None:
            aux_layers = _default_aux_layers(decoder, num_layers) if decoder != "mla" else ()
        self.aux_layers = tuple(aux_layers) if aux_heads else ()
        for layer in self.mla_layers + self.aux_layers:
            if not 1 <= layer <= num_layers:
                raise ConfigError(f"model: SETR tap layer {layer} (mla_layers/aux_layers) is outside 1..{num_layers}")
        if not aux_heads:
            self.aux_heads = nn.ModuleList()
        elif decoder == "mla":
            self.aux_heads = nn.ModuleList([nn.Conv2d(decoder_channels, num_classes, 1, bias=False) for _ in range(4)])
        else:
            # PUP's auxiliary heads (official conv3x3_conv1x1 with two upsampling layers): 3x3 conv, x4, classifier.
            kernel_size, upsample = (3, 4) if decoder == "pup" else (1, 1)
            self.aux_heads = nn.ModuleList(
                [NaiveHead(hidden_size, num_classes, decoder_channels, kernel_size, upsample) for _ in self.aux_layers]
            )
        self.aux_loss_weights = (1.0,) + (AUX_WEIGHT,) * len(self.aux_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """``(B, in_channels, H, W)`` -> logits ``(B, N, H, W)``; in training with aux heads,
        ``(main, aux1, ..., auxK)``, each ``(B, N, H, W)``."""
        size = x.shape[-2:]
        layer_outputs, grid = self.encoder(x)
        if self.decoder_name == "mla":
            main, streams = self.decode_head([layer_outputs[i - 1] for i in self.mla_layers], grid)
        else:
            main = self.decode_head(layer_outputs[-1], grid)
        main = _resize(main, size)
        if not (self.training and len(self.aux_heads)):
            return main
        if self.decoder_name == "mla":
            aux = [head(stream) for head, stream in zip(self.aux_heads, streams)]
        else:
            aux = [head(layer_outputs[i - 1], grid) for head, i in zip(self.aux_heads, self.aux_layers)]
        return (main,) + tuple(_resize(logits, size) for logits in aux)


def _resize(logits: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of ``(B, N, h, w)`` logits to ``size`` (no-op when already there)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _default_aux_layers(decoder: str, num_layers: int) -> tuple[int, ...]:
    """1-based layers of the Naive/PUP auxiliary heads (official configs for ViT-B/ViT-L, else quarter points)."""
    if num_layers == 24:
        return (10, 15, 20) if decoder == "naive" else (10, 15, 20, 24)
    quarters = tuple(math.ceil(num_layers * q / 4) for q in (1, 2, 3, 4))
    return quarters[:3] if decoder == "naive" else quarters


# name suffix -> (ViT config, decoder widths)
_ENCODERS = {
    "B16": dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072),
    "L16": dict(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096),
    "S": dict(hidden_size=384, num_layers=12, num_heads=6, mlp_dim=1536, decoder_channels=128, mla_head_channels=64),
}
_DECODER_NAMES = {"naive": "Naive", "pup": "PUP", "mla": "MLA"}
# Official fudan-zvg/SETR ADE20K 512x512 configs (ViT-L/16, 150 classes, aux heads included). Not built by medseg:
# every head's unused conv_seg; the conv biases before BatchNorm (folded into it); MLA's unused class token and its
# position row.
_OFFICIAL_L16 = {
    "SETR-Naive-L16": OfficialCount(305_669_296, 150, 3, 512, not_built=307_800 + 1_024,
                                    source="fudan-zvg/SETR SETR_Naive_512x512_160k_ade20k"),
    "SETR-PUP-L16": OfficialCount(318_307_292, 150, 3, 512, not_built=384_750 + 2_048,
                                  source="fudan-zvg/SETR SETR_PUP_512x512_160k_ade20k"),
    "SETR-MLA-L16": OfficialCount(310_568_836, 150, 3, 512, not_built=384_750 + 2_048,
                                  source="fudan-zvg/SETR SETR_MLA_512x512_160k_ade20k"),
}
_ENCODER_TEXT = {"B16": "ViT-B/16", "L16": "ViT-L/16", "S": "ViT-S/16 (decoder widths halved)"}


def _register(decoder: str, encoder: str) -> None:
    name = f"SETR-{_DECODER_NAMES[decoder]}-{encoder}"

    def build(num_classes: int, img_size: int = 512, in_channels: int = 1, **overrides) -> SETR:
        check_options(name, overrides, constructor_options(SETR) - {"decoder"})
        config = dict(_ENCODERS[encoder], decoder=decoder)
        config.update(overrides)
        return SETR(num_classes, img_size, in_channels, **config)

    build.__name__ = "build_" + name.lower().replace("-", "_")
    build.__doc__ = f"{name}: SETR with a {_ENCODER_TEXT[encoder]} encoder and the {_DECODER_NAMES[decoder]} decoder."
    register_model(name, family="setr", default_img_size=512, published=encoder != "S", img_size_multiple=16,
                   official=_OFFICIAL_L16.get(name),
                   description=f"SETR, {_ENCODER_TEXT[encoder]} encoder + {_DECODER_NAMES[decoder]} decoder")(build)


for _encoder in _ENCODERS:
    for _decoder in _DECODER_NAMES:
        _register(_decoder, _encoder)


# ----------------------------------------------------------------------------------------------------------------
# Official checkpoints (fudan-zvg/SETR, mmseg layout) and ImageNet ViT weights (timm)
# ----------------------------------------------------------------------------------------------------------------
def _head_rules(official: str, ours: str, decoder: str, main: bool) -> list[tuple[str, str | None]]:
    """Key rules for one official ``VisionTransformerUpHead`` (``official`` prefix) onto a medseg head."""
    rules: list[tuple[str, str | None]] = [(rf"{official}\.conv_seg\..*", None),  # built by mmseg, never used
                                          (rf"{official}\.norm\.(.*)", rf"{ours}.norm.\1")]
    if decoder == "pup" and main:
        rules += [(rf"{official}\.conv_([0-3])\.weight", rf"{ours}.convs.\1.0.weight"),
                  (rf"{official}\.syncbn_fc_([0-3])\.(.*)", rf"{ours}.convs.\1.1.\2"),
                  (rf"{official}\.conv_4\.(.*)", rf"{ours}.classifier.\1")]
    else:
        rules += [(rf"{official}\.conv_0\.weight", rf"{ours}.conv.0.weight"),
                  (rf"{official}\.syncbn_fc_0\.(.*)", rf"{ours}.conv.1.\1"),
                  (rf"{official}\.conv_1\.(.*)", rf"{ours}.classifier.\1")]
    return rules


def _official_rules(model: SETR) -> list[tuple[str, str | None]]:
    """``(regex, replacement)`` rules from the official SETR state_dict keys to ``model``'s."""
    rules: list[tuple[str, str | None]] = [
        (r"backbone\.cls_token", "encoder.cls_token" if model.encoder.cls_token is not None else None),
        (r"backbone\.pos_embed", "encoder.pos_embed"),
        (r"backbone\.patch_embed\.proj\.(weight|bias)", r"encoder.patch_embed.\1"),
        (r"backbone\.blocks\.(\d+)\.(.*)", r"encoder.layers.\1.\2"),
    ]
    decoder = model.decoder_name
    if decoder == "mla":
        rules += [
            (r"backbone\.norm_([0-3])\.(.*)", r"decode_head.norms.\1.\2"),
            (r"decode_head\.conv_seg\..*", None),
            (r"decode_head\.cls\.(.*)", r"decode_head.classifier.\1"),
            (r"auxiliary_head\.(\d+)\.conv_seg\..*", None),
            (r"auxiliary_head\.(\d+)\.aux\.weight", r"aux_heads.\1.weight"),
        ]
        for level in range(4):  # official p2 (shallowest) .. p5 (deepest) = medseg stream 0 .. 3
            rules += [
                (rf"backbone\.mla\.mla_p{level + 2}_1x1\.(.*)", rf"decode_head.lateral.{level}.\1"),
                (rf"backbone\.mla\.mla_p{level + 2}\.(.*)", rf"decode_head.smooth.{level}.\1"),
                (rf"decode_head\.mlahead\.head{level + 2}\.([01])\.(.*)", rf"decode_head.heads.{level}.0.\1.\2"),
                (rf"decode_head\.mlahead\.head{level + 2}\.3\.(.*)", rf"decode_head.heads.{level}.1.0.\1"),
                (rf"decode_head\.mlahead\.head{level + 2}\.4\.(.*)", rf"decode_head.heads.{level}.1.1.\1"),
            ]
        return rules
    rules += _head_rules("decode_head", "decode_head", decoder, main=True)
    for index in range(len(model.aux_heads)):
        rules += _head_rules(rf"auxiliary_head\.{index}", f"aux_heads.{index}", decoder, main=False)
    return rules


def _fold_conv_biases(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fold the bias of each official ``conv_i`` into the BatchNorm ``syncbn_fc_i`` that follows it.

    ``BN(conv(x) + b)`` with running mean ``m`` equals ``BN'(conv(x))`` with running mean ``m - b``: exact in eval
    mode, and in training mode BatchNorm subtracts the batch mean, which removes any constant bias anyway.
    """
    state = dict(state)
    for key in [k for k in state if re.fullmatch(r".*\.conv_\d+\.bias", k)]:
        norm = re.sub(r"conv_(\d+)\.bias$", r"syncbn_fc_\1.running_mean", key)
        if norm in state:
            state[norm] = state[norm] - state.pop(key)
    return state


def from_official(state_dict: dict[str, torch.Tensor], model: SETR) -> dict[str, torch.Tensor] | None:
    """An official SETR (mmseg) state_dict in ``model``'s keys, or None if it does not look official.

    Biased convs before a BatchNorm are folded into the BN's running mean; every head's unused ``conv_seg`` is
    dropped; without a class token (MLA) the position embedding's class row is dropped.
    """
    if "backbone.pos_embed" not in state_dict:
        return None
    renamed, _ = rename_keys(_fold_conv_biases(state_dict), _official_rules(model))
    if model.encoder.cls_token is None and "encoder.pos_embed" in renamed:
        table = renamed["encoder.pos_embed"]
        if table.shape[1] == model.encoder.pos_embed.shape[1] + 1:
            renamed["encoder.pos_embed"] = table[:, 1:]
    return renamed


def _npz_to_timm(arrays: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The Google ViT npz layout (read by timm's ``_load_weights``) in timm's ``VisionTransformer`` keys."""
    if "embedding/kernel" not in arrays:
        return arrays
    out = {"patch_embed.proj.weight": arrays["embedding/kernel"].permute(3, 2, 0, 1),  # HWIO -> OIHW
           "patch_embed.proj.bias": arrays["embedding/bias"]}
    if "cls" in arrays:
        out["cls_token"] = arrays["cls"]
    out["pos_embed"] = arrays["Transformer/posembed_input/pos_embedding"]
    index = 0
    while f"Transformer/encoderblock_{index}/LayerNorm_0/scale" in arrays:
        there = f"Transformer/encoderblock_{index}/"
        here = f"blocks.{index}."
        attention = there + "MultiHeadDotProductAttention_1/"
        dim = arrays[there + "LayerNorm_0/scale"].shape[0]
        out[here + "attn.qkv.weight"] = torch.cat(
            [arrays[attention + f"{n}/kernel"].reshape(dim, dim).T for n in ("query", "key", "value")])
        out[here + "attn.qkv.bias"] = torch.cat(
            [arrays[attention + f"{n}/bias"].reshape(-1) for n in ("query", "key", "value")])
        out[here + "attn.proj.weight"] = arrays[attention + "out/kernel"].reshape(dim, dim).T
        out[here + "attn.proj.bias"] = arrays[attention + "out/bias"]
        for norm, name in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
            out[here + f"{norm}.weight"] = arrays[there + f"{name}/scale"]
            out[here + f"{norm}.bias"] = arrays[there + f"{name}/bias"]
        for fc, dense in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
            out[here + f"mlp.{fc}.weight"] = arrays[there + f"MlpBlock_3/{dense}/kernel"].T
            out[here + f"mlp.{fc}.bias"] = arrays[there + f"MlpBlock_3/{dense}/bias"]
        index += 1
    used = {"embedding/kernel", "embedding/bias", "cls", "Transformer/posembed_input/pos_embedding"}
    used |= {key for key in arrays if key.startswith("Transformer/encoderblock_")}
    out.update({key: value for key, value in arrays.items() if key not in used})  # head, encoder_norm: unexpected
    return {key: value.contiguous().float() for key, value in out.items()}


def _fit_position_embedding(table: torch.Tensor, encoder: ViTEncoder) -> torch.Tensor:
    """A file's ``(1, [1 +] g*g, C)`` position embedding for ``encoder``: class row kept if the encoder has a class
    token (its own initial row if the file has none), dropped otherwise; the grid resized to the encoder's."""
    has_cls = math.isqrt(table.shape[1]) ** 2 != table.shape[1]
    patches = table[:, 1:] if has_cls else table
    if encoder.cls_token is None:
        prefix = table[:, :0]
    else:
        prefix = table[:, :1] if has_cls else encoder.pos_embed.detach()[:, :1]
    return torch.cat([prefix, resize_position_grid(patches, (encoder.grid, encoder.grid))], dim=1)


def load_vit_imagenet(model: SETR, path) -> PretrainedReport:
    """ImageNet ViT weights (timm ``vit_base_patch16_*`` / ``vit_large_patch16_*``, ``.pth`` or Google ``.npz``)
    into the SETR encoder, as the official SETR does (``load_pretrained`` with ``pos_embed_interp``).

    * class token: copied (Naive/PUP). MLA has none; the file's is unexpected.
    * position embedding ``(1, 1 + g*g, C)``: the class row is kept (Naive/PUP) or dropped (MLA); the ``g x g`` grid
      is resized bilinearly (``align_corners=False``, as SETR) to the model's ``img_size / 16`` grid.
    * patch kernel ``(C, 3, 16, 16)``: summed over RGB for 1-channel CT (exactly the RGB network on the grey
      image repeated to three channels).
    * the file's final ``norm`` and classifier ``head`` are unexpected: SETR's backbone has neither (each decoder
      normalises its taps with its own LayerNorm, which stays at its initialisation, as do the decoders).
    * a deeper file (ViT-B/16 into a 4-layer test model) leaves its extra blocks unexpected; a wider one is an error.
    """
    report = PretrainedReport(source=Path(path).name, family="setr")
    state = _npz_to_timm(read_weights(path, "timm ViT checkpoint"))
    state = {key[len("backbone."):] if key.startswith("backbone.") else key: value for key, value in state.items()}
    rules = [(r"cls_token", "encoder.cls_token" if model.encoder.cls_token is not None else None),
             (r"pos_embed", "encoder.pos_embed"),
             (r"patch_embed\.proj\.(weight|bias)", r"encoder.patch_embed.\1")]
    rules += [(rf"blocks\.({index})\.(.*)", r"encoder.layers.\1.\2") for index in range(len(model.encoder.layers))]
    renamed, report.unexpected = rename_keys(state, rules)
    encoder = model.encoder
    table = renamed.get("encoder.pos_embed")
    if table is not None and table.ndim == 3 and table.shape[-1] == encoder.pos_embed.shape[-1]:
        renamed["encoder.pos_embed"] = _fit_position_embedding(table, encoder)
        if renamed["encoder.pos_embed"].shape != table.shape:
            report.resized.append(f"encoder.pos_embed: {tuple(table.shape)} -> "
                                  f"{tuple(renamed['encoder.pos_embed'].shape)} (grid resized bilinearly"
                                  f"{'' if encoder.cls_token is not None else '; class row dropped'})")
    adapt_first_kernel(renamed, "encoder.patch_embed.weight", encoder.patch_embed.in_channels, report)
    copy_weights(model, renamed, report, prefix="encoder.", what="timm ViT checkpoint")
    return report


register_official_converter("setr", from_official)
register_pretrained_loader("setr", load_vit_imagenet)
