"""Transformer building blocks shared by the extractor, the enhancer and the decoder."""
from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """Pre-norm feed-forward; callers add the residual (Eq. 8, 9)."""

    def __init__(self, dim: int, ratio: float = 4.0):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, int(dim * ratio)), nn.GELU(),
                                 nn.Linear(int(dim * ratio), dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Attention(nn.Module):
    """Pre-norm multi-head attention (cross or self); callers add the residual.

    `key_padding_mask` / `attn_mask` are boolean with True = may NOT attend, as in
    `nn.MultiheadAttention`. `attn_mask` is (B, L, S) and expanded over heads here.
    """

    def __init__(self, dim: int, num_heads: int, kv_dim: int | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(kv_dim or dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, kdim=kv_dim, vdim=kv_dim, batch_first=True)

    def forward(self, query: torch.Tensor, kv: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        q = self.norm_q(query)
        kv = q if kv is None else self.norm_kv(kv)
        if attn_mask is not None:
            attn_mask = attn_mask.repeat_interleave(self.num_heads, dim=0)  # (B*h, L, S)
        out, _ = self.attn(q, kv, kv, key_padding_mask=key_padding_mask, attn_mask=attn_mask, need_weights=False)
        return out


class CrossAttentionBlock(nn.Module):
    """x <- x + Attn(x, kv); x <- x + MLP(x)."""

    def __init__(self, dim: int, num_heads: int, kv_dim: int | None = None, mlp_ratio: float = 4.0):
        super().__init__()
        self.attn = Attention(dim, num_heads, kv_dim)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(x, kv, key_padding_mask=key_padding_mask)
        return x + self.mlp(x)
