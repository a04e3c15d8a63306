"""Sentence-conditioned position prior, a deviation from the paper behind `ModelConfig.sentence_position_prior`.

The coordinate maps (coordinates.py) let the decoder know where a pixel is, but a from-scratch
demo model still ignored "left" and "right": the masks for "the leftmost circle" and "the
rightmost circle" overlapped with IoU 0.89 on held-out scenes (training/word_probe.py) while
colour words moved them completely. Dynamic filters generated from the sentence and applied
to coordinate maps (Margffoy-Tuay et al., ECCV 2018; text-to-pixel kernels as in CRIS) give
the logits a direct, sentence-dependent slope over the image: logit += a x + b y + c with
(a, b, c) a linear function of the mean-pooled sentence features (the pooling the MiniLM
sentence encoder was trained with). Zero-initialized, so a warm-started model starts unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from .coordinates import cell_centres


# (a, b, c) = SCALE * Linear(sentence): an Adam step moves the slopes SCALE times as far. Unscaled,
# 300 steps at the demo recipe's lr 5e-4 left them at |a| < 0.3, too small to change a mask.
SCALE = 10.0


class SentencePositionPrior(nn.Module):
    def __init__(self, text_dim: int):
        super().__init__()
        self.proj = nn.Linear(text_dim, 3)  # (a, b, c): x slope, y slope, offset
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, logits: torch.Tensor, text: torch.Tensor, text_valid: torch.Tensor) -> torch.Tensor:
        """logits (B, 1, h, w); text (B, T, D_t) language features, text_valid (B, T) -> logits + prior."""
        valid = text_valid[..., None].to(text.dtype)
        sentence = (text * valid).sum(1) / valid.sum(1).clamp(min=1)  # (B, D_t), mean pooling
        a, b, c = (SCALE * self.proj(sentence)).to(logits.dtype).unbind(-1)  # (B,) each
        h, w = logits.shape[-2:]
        ys, xs = cell_centres(h, logits), cell_centres(w, logits)
        prior = a[:, None, None] * xs[None, None, :] + b[:, None, None] * ys[None, :, None] + c[:, None, None]
        return logits + prior[:, None]  # (B, 1, h, w)
