"""SETR (Zheng et al., CVPR 2021): a plain ViT encoder with the Naive, PUP and MLA decoders.

Encoder: ViT with 16x16 patches (a strided conv), a learned position embedding for the ``(img_size/16)^2`` patch grid
of the size the model is built for (no class token) and pre-norm transformer layers (multi-head self-attention with
qkv bias, GELU MLP). An input of another size (still a multiple of 16) gets the position embedding resized
bilinearly, as SETR does when it fine-tunes at a new resolution. Each decoder normalises the layer outputs it taps
with its own LayerNorm (the encoder has no final norm), as in the official code.

Decoders (``C`` = hidden size, ``N`` = number of classes, features at ``H/16`` unless said):
    Naive: LayerNorm -> 1x1 conv (C->256) + BN + ReLU -> 1x1 conv (256->N) -> bilinear x16.
    PUP:   LayerNorm -> 4 x [3x3 conv (->256) + BN + ReLU], bilinear x2 after each of the first three, then
           1x1 conv (256->N) and a last bilinear x2 (H/16 -> H).
    MLA:   taps four layers at the quarter points of the encoder (6/12/18/24 of ViT-L, 3/6/9/12 of ViT-B); each:
           LayerNorm -> 1x1 conv (C->256) + BN + ReLU; top-down aggregation (deepest first, each stream adds the one
           above it); 3x3 conv (256->256) + BN + ReLU; 2 x [3x3 conv (->128) + BN + ReLU]; bilinear x4. The four
           128-channel maps are concatenated, classified with a 3x3 conv (512->N) and upsampled x4.

Auxiliary heads (training only; the official configs, loss weight 0.4 each, main 1.0):
    Naive: naive-style heads (LayerNorm, 1x1 conv 256 + BN + ReLU, 1x1 conv) on layers 3/6/9 of ViT-B, 10/15/20 of
           ViT-L and the quarter points of other depths.
    PUP:   the same heads on layers 3/6/9/12 of ViT-B (quarter points), 10/15/20/24 of ViT-L.
    MLA:   a 1x1 conv (256->N) on each of the four aggregated MLA streams.
In training mode the model returns ``(main, aux1, ..., auxK)``, all ``(B, N, H, W)``; ``aux_loss_weights`` holds
``(1.0, 0.4, ..., 0.4)``. Build with ``aux_heads=False`` to drop them (then training returns the main logits only).

Variants (parameters with 1 input channel, 9 classes, at 512 px, aux heads included; the 224-px counts are
0.64M (B16) / 0.85M (L16) smaller because of the position embedding):
    ``SETR-{Naive,PUP,MLA}-B16``  ViT-B/16 (768 wide, 12 layers, 12 heads), published size
    ``SETR-{Naive,PUP,MLA}-L16``  ViT-L/16 (1024 wide, 24 layers, 16 heads), the paper's main encoder
    ``SETR-{Naive,PUP,MLA}-S``    ViT-S/16 (384 wide, 12 layers, 6 heads) with decoder widths halved; not published,
                                  for tests and CPU demos
Exact counts are in the zoo table (``medseg models``) and pinned in ``tests/test_zoo_models.py``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import ConfigError
from medseg.models.registry import register_model

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


class Attention(nn.Module):
    """Multi-head self-attention on ``(B, L, C)`` tokens (qkv projection with bias)."""

    def __init__(self, dim: int, num_heads: int, attn_dropout: float = 0.0, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"model: SETR hidden_size {dim} is not a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, C)`` -> ``(B, L, C)``."""
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, L, C/heads)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(batch, length, dim)
        return self.proj_drop(self.proj(out))


class TransformerLayer(nn.Module):
    """Pre-norm ViT layer: ``x + MSA(LN(x))`` then ``x + MLP(LN(x))`` on ``(B, L, C)`` tokens."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, dropout: float = 0.0, attn_dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, attn_dropout, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim), nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTEncoder(nn.Module):
    """ViT encoder returning every layer's output.

    Args:
        in_channels: image channels.
        img_size: square input size the position embedding is built for.
        patch_size: patch size (16).
        hidden_size, num_layers, num_heads, mlp_dim: transformer width, depth, heads and MLP width.
        dropout: dropout after the position embedding, in the MLPs and after attention.
        attn_dropout: dropout on the attention weights.
    """

    def __init__(self, in_channels: int, img_size: int, patch_size: int = 16, hidden_size: int = 768,
                 num_layers: int = 12, num_heads: int = 12, mlp_dim: int = 3072, dropout: float = 0.0,
                 attn_dropout: float = 0.0):
        super().__init__()
        self.patch_size = patch_size
        self.grid = img_size // patch_size
        self.patch_embed = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid, hidden_size))
        self.pos_drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            [TransformerLayer(hidden_size, num_heads, mlp_dim, dropout, attn_dropout) for _ in range(num_layers)]
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """ViT initialisation: truncated normal (std 0.02) for the position embedding and linear weights."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.layers.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """The ``(1, h*w, C)`` position embedding for a ``grid = (h, w)`` patch grid (resized if needed)."""
        if grid == (self.grid, self.grid):
            return self.pos_embed
        channels = self.pos_embed.shape[-1]
        table = self.pos_embed.reshape(1, self.grid, self.grid, channels).permute(0, 3, 1, 2)
        table = F.interpolate(table, size=grid, mode="bilinear", align_corners=False)
        return table.flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """``(B, in_channels, H, W)`` -> (the ``(B, H/16 * W/16, C)`` output of every layer, ``(H/16, W/16)``)."""
        height, width = x.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"SETR input {height}x{width} is not a multiple of the patch size {self.patch_size}")
        grid = (height // self.patch_size, width // self.patch_size)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, h*w, C)
        tokens = self.pos_drop(tokens + self.position_embedding(grid))
        outputs = []
        for layer in self.layers:
            tokens = layer(tokens)
            outputs.append(tokens)
        return outputs, grid


class NaiveHead(nn.Module):
    """LayerNorm -> 1x1 conv + BN + ReLU -> 1x1 conv: ``(B, h*w, C)`` tokens -> ``(B, N, h, w)`` logits."""

    def __init__(self, hidden_size: int, num_classes: int, channels: int = 256):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, eps=1e-6)
        self.conv = _conv_bn_relu(hidden_size, channels, 1)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return self.classifier(self.conv(_tokens_to_map(self.norm(tokens), grid)))


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
    four aggregated ``(B, mla_channels, h, w)`` streams (the inputs of the auxiliary heads).
    """

    def __init__(self, hidden_size: int, num_classes: int, mla_channels: int = 256, head_channels: int = 128):
        super().__init__()
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
        upsampled = [F.interpolate(head(stream), scale_factor=4, mode="bilinear", align_corners=False)
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
    """

    def __init__(self, num_classes: int, img_size: int = 512, in_channels: int = 1, decoder: str = "pup",
                 hidden_size: int = 768, num_layers: int = 12, num_heads: int = 12, mlp_dim: int = 3072,
                 decoder_channels: int = 256, mla_head_channels: int = 128, mla_layers: tuple[int, ...] | None = None,
                 aux_heads: bool = True, aux_layers: tuple[int, ...] | None = None, dropout: float = 0.0,
                 attn_dropout: float = 0.0):
        super().__init__()
        if decoder not in ("naive", "pup", "mla"):
            raise ConfigError(f"model: SETR decoder must be 'naive', 'pup' or 'mla', got {decoder!r}")
        self.decoder_name = decoder
        self.encoder = ViTEncoder(in_channels, img_size, 16, hidden_size, num_layers, num_heads, mlp_dim, dropout,
                                  attn_dropout)
        quarters = tuple(math.ceil(num_layers * q / 4) for q in (1, 2, 3, 4))
        self.mla_layers = tuple(mla_layers or quarters)
        if len(self.mla_layers) != 4:
            raise ConfigError(f"model: SETR-MLA taps exactly 4 layers, got mla_layers={list(self.mla_layers)}")
        if decoder == "naive":
            self.decode_head = NaiveHead(hidden_size, num_classes, decoder_channels)
        elif decoder == "pup":
            self.decode_head = PUPHead(hidden_size, num_classes, decoder_channels)
        else:
            self.decode_head = MLAHead(hidden_size, num_classes, decoder_channels, mla_head_channels)

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
            self.aux_heads = nn.ModuleList(
                [NaiveHead(hidden_size, num_classes, decoder_channels) for _ in self.aux_layers]
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
_ENCODER_TEXT = {"B16": "ViT-B/16", "L16": "ViT-L/16", "S": "ViT-S/16 (decoder widths halved)"}


def _register(decoder: str, encoder: str) -> None:
    name = f"SETR-{_DECODER_NAMES[decoder]}-{encoder}"

    def build(num_classes: int, img_size: int = 512, in_channels: int = 1, **overrides) -> SETR:
        config = dict(_ENCODERS[encoder], decoder=decoder)
        config.update(overrides)
        return SETR(num_classes, img_size, in_channels, **config)

    build.__name__ = "build_" + name.lower().replace("-", "_")
    build.__doc__ = f"{name}: SETR with a {_ENCODER_TEXT[encoder]} encoder and the {_DECODER_NAMES[decoder]} decoder."
    register_model(name, family="setr", default_img_size=512, published=encoder != "S", img_size_multiple=16,
                   description=f"SETR, {_ENCODER_TEXT[encoder]} encoder + {_DECODER_NAMES[decoder]} decoder")(build)


for _encoder in _ENCODERS:
    for _decoder in _DECODER_NAMES:
        _register(_decoder, _encoder)
