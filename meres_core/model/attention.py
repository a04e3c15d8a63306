"""Transformer building blocks shared by the extractor, the enhancer and the decoder."""
from __future__ import annotations

import torch
import torch.nn.functional as F
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
    `nn.MultiheadAttention`. `attn_mask` is (B, L, S), one mask for all heads.

    The parameters are those of an `nn.MultiheadAttention` (`self.attn`, so checkpoints keep
    their keys), but the forward is ours: batch-first projections on contiguous (B, L, E)
    tensors and `F.scaled_dot_product_attention`. `nn.MultiheadAttention(batch_first=True)`
    transposes its inputs to (L, B, E) views, and under autocast (bf16 / fp16) `F.linear` on
    such a view runs as a bmm against the weight copied once per query position ((L, E, E):
    14,400 copies of a 64x64 weight in the decoder's stride-4 stage), which made the decoder
    the slow part of a reduced-precision forward on CPU.
    """

    def __init__(self, dim: int, num_heads: int, kv_dim: int | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(kv_dim or dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, kdim=kv_dim, vdim=kv_dim, batch_first=True)

    def _projections(self) -> tuple[torch.Tensor, ...]:
        attn = self.attn
        if attn._qkv_same_embed_dim:
            w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
        else:
            w_q, w_k, w_v = attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight
        b_q, b_k, b_v = attn.in_proj_bias.chunk(3)
        return w_q, w_k, w_v, b_q, b_k, b_v

    def forward(self, query: torch.Tensor, kv: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        q = self.norm_q(query)
        kv = q if kv is None else self.norm_kv(kv)
        w_q, w_k, w_v, b_q, b_k, b_v = self._projections()
        b, length, dim = q.shape
        heads = self.num_heads
        q = F.linear(q, w_q, b_q)
        k, v = F.linear(kv, w_k, b_k), F.linear(kv, w_v, b_v)
        batch = max(b, k.shape[0])  # one image's pixels (batch 1) may serve every sentence's queries

        def split(x: torch.Tensor) -> torch.Tensor:  # (B, L, E) -> (B, heads, L, E / heads)
            return x.unflatten(-1, (heads, -1)).transpose(1, 2).expand(batch, -1, -1, -1)

        blocked = None
        if key_padding_mask is not None:
            blocked = key_padding_mask[:, None, None, :]  # (B, 1, 1, S)
        if attn_mask is not None:
            blocked = attn_mask[:, None] if blocked is None else blocked | attn_mask[:, None]  # (B, 1, L, S)
        out = F.scaled_dot_product_attention(split(q), split(k), split(v),
                                             attn_mask=None if blocked is None else ~blocked)
        out = out.transpose(1, 2).reshape(batch, length, dim)
        return self.attn.out_proj(out)


class CrossAttentionBlock(nn.Module):
    """x <- x + Attn(x, kv); x <- x + MLP(x)."""

    def __init__(self, dim: int, num_heads: int, kv_dim: int | None = None, mlp_ratio: float = 4.0):
        super().__init__()
        self.attn = Attention(dim, num_heads, kv_dim)
        self.mlp = MLP(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(x, kv, key_padding_mask=key_padding_mask)
        return x + self.mlp(x)
