"""Building blocks shared by several architectures: multi-head self-attention, the transformer MLP and a pre-norm
transformer layer on ``(B, L, C)`` tokens.

Module names follow timm's ViT (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``), which is
also the layout of the official SETR backbone and of ImageNet ViT checkpoints, so their weights map key for key.
Used by SETR's encoder and DS-TransUNet's interactive fusion. (TransUNet keeps its own block: its parameter names are
those of its reference implementation.) Stochastic depth is :class:`DropPath`, the same draws as timm's and MONAI's
(written here so that building a model does not import MONAI, which takes seconds).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import ConfigError

__all__ = ["Attention", "DropPath", "Mlp", "TransformerLayer"]


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a whole sample's residual branch with probability ``drop_prob`` and scale
    the kept ones by ``1 / (1 - drop_prob)``; the identity in eval mode.

    The same computation and random draws as ``timm.layers.DropPath`` and ``monai.networks.layers.DropPath``
    (one ``bernoulli_`` of shape ``(B, 1, ..., 1)``), so training runs reproduce theirs.
    """

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob <= 1.0:
            raise ConfigError(f"drop_path: must be between 0 and 1, got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
        if keep_prob > 0.0:
            mask.div_(keep_prob)
        return x * mask


class Attention(nn.Module):
    """Multi-head self-attention: ``(B, L, dim)`` -> ``(B, L, dim)``.

    Args:
        dim: token width.
        num_heads: attention heads.
        head_dim: width per head; default ``dim // num_heads``. The attention width ``num_heads * head_dim`` may
            differ from ``dim`` (DS-TransUNet's fusion keeps it small); the output projection maps it back.
        qkv_bias: bias on the query/key/value projection.
        attn_dropout: dropout on the attention weights (training only).
        dropout: dropout after the output projection.
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None, qkv_bias: bool = True,
                 attn_dropout: float = 0.0, dropout: float = 0.0):
        super().__init__()
        if head_dim is None:
            if dim % num_heads:
                raise ConfigError(f"model: attention width {dim} is not a multiple of num_heads {num_heads}")
            head_dim = dim // num_heads
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(dim, 3 * num_heads * head_dim, bias=qkv_bias)
        self.proj = nn.Linear(num_heads * head_dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, L, head_dim)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_dropout if self.training else 0.0)
        out = out.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)
        return self.proj_drop(self.proj(out))


class Mlp(nn.Module):
    """Linear -> GELU -> dropout -> linear -> dropout: ``(B, L, dim)`` -> ``(B, L, dim)``."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer: ``x + MSA(LN(x))`` then ``x + MLP(LN(x))`` on ``(B, L, dim)`` tokens.

    Args:
        dim, num_heads, mlp_dim: width, heads and MLP width.
        head_dim, qkv_bias, attn_dropout, dropout: see :class:`Attention` (``dropout`` also in the MLP).
        norm_eps: LayerNorm epsilon (1e-6 in ViT/SETR, PyTorch's 1e-5 in DS-TransUNet).
        drop_path: stochastic-depth rate of both residual branches.
    """

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, head_dim: int | None = None, qkv_bias: bool = True,
                 dropout: float = 0.0, attn_dropout: float = 0.0, norm_eps: float = 1e-6, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, head_dim, qkv_bias, attn_dropout, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_dim, dropout)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))
