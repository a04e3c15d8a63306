"""Visual expression extractor (Sec. 3.2, Eq. 1-9).

Three steps turn the enhanced linguistic tokens Q^_l and the pixel tokens F_v (= F4)
into visual expression tokens Q^_v, one per linguistic token:
  adaptive selection (Eq. 1-2, 5), semantic refinement (Eq. 6-8), relationship (Eq. 9).
Row 0 of every (B, T, ...) tensor is the global cue ([CLS]); rows 1.. are the local cues.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ExtractorConfig
from .attention import MLP, Attention


@dataclass
class ExtractorOutput:
    tokens: torch.Tensor  # Q^_v (B, T, D)
    valid: torch.Tensor  # (B, T) bool: rows that carry a visual expression token
    relevance: torch.Tensor  # S (B, T, N), cosine similarity in [-1, 1]
    selected: torch.Tensor  # (B, T, N) bool: pixels kept by the selection (M == 0)


def num_selected(ratio: float, num_pixels: int) -> int:
    """K of Eq. 2: the paper's k=30 is a percentage of the N pixels of F4 (Sec. 4.3.6)."""
    return max(1, min(num_pixels, math.ceil(ratio * num_pixels)))


class VisualExpressionExtractor(nn.Module):
    def __init__(self, cfg: ExtractorConfig, dim: int, num_heads: int):
        super().__init__()
        self.cfg = cfg
        self.phi_v = nn.Linear(dim, dim)  # phi^V, Eq. 1
        self.phi_l = nn.Linear(dim, dim)  # phi^L, Eq. 1
        self.log_tau = nn.Parameter(torch.tensor(math.log(cfg.init_temperature)))  # tau of Eq. 3
        if cfg.refinement:
            self.mca = Attention(dim, num_heads)
            self.refine_mlp = MLP(dim, cfg.mlp_ratio)
        if cfg.relationship:
            self.mhsa = Attention(dim, num_heads)
            self.relation_mlp = MLP(dim, cfg.mlp_ratio)

    @property
    def tau(self) -> torch.Tensor:
        return self.log_tau.exp()

    def cue_rows(self, token_valid: torch.Tensor) -> torch.Tensor:
        """Rows used as cues (Table 4b): global = [CLS] row, local = word rows; never padding."""
        rows = torch.zeros_like(token_valid)
        rows[:, 0] = self.cfg.use_global_cue
        rows[:, 1:] = self.cfg.use_local_cue
        return rows & token_valid

    def select(self, relevance: torch.Tensor) -> torch.Tensor:
        """Selected pixels per token, (B, T, N) bool (Eq. 2 top-k, or Table 4a variants)."""
        if self.cfg.selection == "none":
            return torch.ones_like(relevance, dtype=torch.bool)
        if self.cfg.selection == "sigmoid":
            selected = torch.sigmoid(relevance / self.tau) > 0.5
            # Keep each token's best pixel so no row is empty (softmax over nothing is undefined).
            return selected.scatter(-1, relevance.argmax(-1, keepdim=True), True)
        k = num_selected(self.cfg.topk_ratio, relevance.shape[-1])
        index = relevance.topk(k, dim=-1).indices
        return torch.zeros_like(relevance, dtype=torch.bool).scatter(-1, index, True)

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor, token_valid: torch.Tensor) -> ExtractorOutput:
        """pixels F_v (B, N, D); tokens Q^_l (B, T, D); token_valid (B, T) bool."""
        x = F.normalize(self.phi_v(pixels), dim=-1)  # X (B, N, D), Eq. 1
        y = F.normalize(self.phi_l(tokens), dim=-1)  # Y (B, T, D), Eq. 1
        relevance = y @ x.transpose(1, 2)  # S = cos(Y, X) (B, T, N), Eq. 2

        rows = self.cue_rows(token_valid)  # (B, T)
        selected = self.select(relevance.detach()) & rows[..., None]  # S_k (B, T, N), Eq. 2
        # Eq. 5: M = 0 on selected pixels, -inf elsewhere. Unused rows get M = 0 only to
        # keep the softmax finite; their S_norm is zeroed right after.
        mask = torch.zeros_like(relevance).masked_fill(~selected & rows[..., None], float("-inf"))
        logits = relevance + mask if self.cfg.topk_mask_in_norm else relevance
        if self.cfg.softmax_temperature is not None:  # not in the paper: sharpens the cosine scores
            logits = logits / self.cfg.softmax_temperature
        s_norm = torch.softmax(logits, dim=-1) * rows[..., None]  # S_norm (B, T, N), Eq. 6
        f_a = s_norm @ pixels  # (B, T, D): S_norm-weighted sum over pixels, Eq. 7
        if self.cfg.divide_by_k:  # Eq. 7's 1/K as written
            f_a = f_a / selected.sum(-1, keepdim=True).clamp(min=1)  # K per row (fixed for top-k)

        f_r = f_a
        if self.cfg.refinement:
            # MCA attends only to the selected pixels; unused rows attend everywhere (discarded).
            blocked = ~selected & rows[..., None]
            f_hat = self.mca(f_a, pixels, attn_mask=blocked) + f_a  # F^, Eq. 8
            f_r = self.refine_mlp(f_hat) + f_hat  # F_r, Eq. 8
        q_v = f_r
        if self.cfg.relationship:
            q_hat = self.mhsa(f_r, key_padding_mask=~rows) + f_r  # Q^, Eq. 9
            q_v = self.relation_mlp(q_hat) + q_hat  # Q^_v, Eq. 9
        q_v = q_v * rows[..., None]
        return ExtractorOutput(tokens=q_v, valid=rows, relevance=relevance, selected=selected)
