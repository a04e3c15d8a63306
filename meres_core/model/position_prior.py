"""Sentence-conditioned position prior, a deviation from the paper behind `ModelConfig.sentence_position_prior`.

The coordinate maps (coordinates.py) let the decoder know where a pixel is, but a from-scratch
demo model still ignored "left" and "right": the masks for "the leftmost circle" and "the
rightmost circle" overlapped with IoU 0.89 on held-out scenes (training/word_probe.py) while
colour words moved them completely. Dynamic filters generated from the sentence and applied
to coordinate maps (Margffoy-Tuay et al., ECCV 2018; text-to-pixel kernels as in CRIS) give
the logits a direct, sentence-dependent slope over the image:

    logit += a x + b y + a' tanh((x - x_c) / s) + b' tanh((y - y_c) / s) + c

with (a, b, a', b', c) a linear function of the mean-pooled sentence features (the pooling the
MiniLM sentence encoder was trained with). (x_c, y_c) is the centroid of the decoder's own mask
for the sentence (its candidates, e.g. every circle): a plane over the whole image only ranks
pixels ("further left is better") and cannot say where the cut between the leftmost circle and
the others lies in this image; a step about the candidates' centroid puts the cut between them
(a step, not a slope: a slope steep enough to separate two near objects would lift the background
far from them above the threshold).
Zero-initialized, so a warm-started model starts unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from .coordinates import cell_centres
from .encoders import sentence_mean


# The coefficients are SCALE * Linear(sentence): an Adam step moves the slopes SCALE times as far.
# Unscaled, 300 steps at the demo recipe's lr 5e-4 left them at |a| < 0.3, too small to change a mask.
SCALE = 10.0
# Width of the step about the candidates' centroid, in the [-1, 1] image coordinates: 2.5% of the
# image's half-width; two objects a cell of F1 apart still land on opposite sides of the step.
STEP_WIDTH = 0.05


def candidate_centroid(logits: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, 1, h, w) -> centroid (x_c, y_c), each (B,), of the pixels the mask keeps.

    Weights: the mask probability where it is above 0.5; pixels below count 1000x less, so an
    empty mask still has a centroid (that of its probabilities) and the wide background of a
    confident mask does not pull it to the image centre. Not differentiated: it says where the
    candidates are, the slopes learn what to do about it.
    """
    p = torch.sigmoid(logits.detach().float())[:, 0]  # (B, h, w)
    weight = torch.where(p > 0.5, p, p * 1e-3)
    weight = weight / weight.sum((1, 2), keepdim=True)
    return (weight.sum(1) * xs.float()).sum(-1), (weight.sum(2) * ys.float()).sum(-1)


class SentencePositionPrior(nn.Module):
    def __init__(self, text_dim: int):
        super().__init__()
        self.proj = nn.Linear(text_dim, 5)  # a, b (image), a', b' (about the candidates), c
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, logits: torch.Tensor, text: torch.Tensor, text_valid: torch.Tensor) -> torch.Tensor:
        """logits (B, 1, h, w); text (B, T, D_t) language features, text_valid (B, T) -> logits + prior."""
        sentence = sentence_mean(text, text_valid)  # (B, D_t)
        a, b, a_c, b_c, c = (SCALE * self.proj(sentence)).float().unbind(-1)  # (B,) each
        h, w = logits.shape[-2:]
        ys, xs = cell_centres(h, logits).float(), cell_centres(w, logits).float()
        x_c, y_c = candidate_centroid(logits, xs, ys)
        along_x = a[:, None] * xs + a_c[:, None] * torch.tanh((xs - x_c[:, None]) / STEP_WIDTH)  # (B, w)
        along_y = b[:, None] * ys + b_c[:, None] * torch.tanh((ys - y_c[:, None]) / STEP_WIDTH)  # (B, h)
        prior = along_x[:, None, :] + along_y[:, :, None] + c[:, None, None]  # (B, h, w)
        return logits + prior[:, None].to(logits.dtype)  # (B, 1, h, w)
