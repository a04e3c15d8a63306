"""Candidate centres, a deviation from the paper behind `ModelConfig.candidate_centres`.

The candidate rank prior (candidate_rank.py) counts the candidates of "the second circle from
the left" as the connected components of the decoder's mask. Objects that touch or occlude each
other merge into one component: on meres-synth the ground-truth masks of the objects an ordinal
sentence ranks split into the right number of components for only 21% of sentences at the
decoder's 56 x 56 (27% at full resolution), so counting components caps ordinal sentences near
40% however good the mask. Eroding the mask before labelling and growing the labels back moved
that to 29% and centroid on target not at all (stage 9, 150 val sentences).

Here the candidates are instances, found as CenterNet (Zhou et al., 2019) finds objects: a small
head on the decoder's last guided map predicts a heatmap with a peak at the centroid of every
object the sentence's qualifier ranks (its candidates; the target itself when there is no
qualifier), trained with CenterNet's penalty-reduced focal loss against Gaussians about the
visible-mask centroids (the points meres-synth orders objects by). Peaks are the cells that are
the maximum of their 3 x 3 neighbourhood, above PEAK_THRESHOLD and on the decoder's mask; each
mask pixel belongs to the nearest peak. All of it is fixed-shape tensor work (max pooling, top-k,
gathers), so the model still exports to ONNX and compiles.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .coordinates import cell_centres

MAX_CENTRES = 8  # peaks kept per map, as candidate_rank.MAX_CANDIDATES components
PEAK_THRESHOLD = 0.3  # CenterNet's detection threshold on its heatmaps
SIGMA_CELLS = 1.5  # the Gaussians' width in heatmap cells (56 x 56 for the demo model: ~6 px at 224)
PRIOR_PROBABILITY = 0.1  # the head's initial output, as CenterNet's bias init -2.19
FOCAL_ALPHA, FOCAL_BETA = 2.0, 4.0  # CenterNet's


class MapHead(nn.Module):
    """fine (B, C, h, w) the decoder's last guided map -> one logit map (B, 1, h, w), starting near
    PRIOR_PROBABILITY: the centre heatmap."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(dim, 1, 1))
        nn.init.constant_(self.net[-1].bias, -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY))

    def forward(self, fine: torch.Tensor) -> torch.Tensor:
        return self.net(fine)


def centre_peaks(centre_logits: torch.Tensor, on: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """centre_logits (B, 1, h, w); on (B, h, w) bool, where peaks may lie -> the MAX_CENTRES strongest
    peaks' centres (B, K, 2) as x, y in [-1, 1] and whether each is a peak (B, K)."""
    b, _, h, w = centre_logits.shape
    p = torch.sigmoid(centre_logits.detach().float())
    is_peak = (p == F.max_pool2d(p, 3, stride=1, padding=1))[:, 0] & (p[:, 0] > PEAK_THRESHOLD) & on
    score = torch.where(is_peak, p[:, 0], torch.zeros_like(p[:, 0])).flatten(1)  # (B, N)
    value, index = score.topk(min(MAX_CENTRES, h * w), dim=1)  # (B, K)
    xs, ys = cell_centres(w, p), cell_centres(h, p)
    centres = torch.stack([xs[index % w], ys[torch.div(index, w, rounding_mode="floor")]], -1)  # (B, K, 2)
    return centres, value > 0


def cell_of(centres: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """centres (..., 2) x, y in [-1, 1] -> (row, col), each (...) float: the cell of an h x w map each lies in."""
    col = ((centres[..., 0] + 1) / 2 * w).floor().clamp(0, w - 1)
    row = ((centres[..., 1] + 1) / 2 * h).floor().clamp(0, h - 1)
    return row, col


def nearest_peak(centres: torch.Tensor, valid: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """centres (B, K, 2) of the peaks, valid (B, K) -> (B, h * w) long: each cell's nearest valid peak."""
    ys, xs = cell_centres(h, centres), cell_centres(w, centres)
    grid = torch.stack([xs.expand(h, w).flatten(), ys[:, None].expand(h, w).flatten()], -1)  # (N, 2)
    distance = ((grid[None, :, None, :] - centres[:, None, :, :]) ** 2).sum(-1)  # (B, N, K), squared
    return distance.masked_fill(~valid[:, None], float("inf")).argmin(-1)


def centre_heatmap(centres: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """centres (B, M, 2) x, y in [-1, 1], NaN rows for none -> CenterNet's target (B, 1, h, w): a
    Gaussian about the cell of each centre, 1 on that cell, the maximum where they overlap."""
    valid = ~centres.isnan().any(-1)  # (B, M)
    centres = torch.nan_to_num(centres)
    row, col = cell_of(centres, h, w)  # (B, M) each
    grid_y = torch.arange(h, device=centres.device, dtype=centres.dtype)
    grid_x = torch.arange(w, device=centres.device, dtype=centres.dtype)
    d2 = (grid_y[None, None, :, None] - row[..., None, None]) ** 2 + (grid_x[None, None, None, :] - col[..., None, None]) ** 2
    gauss = torch.exp(-d2 / (2 * SIGMA_CELLS ** 2)) * valid[..., None, None]  # (B, M, h, w)
    return gauss.amax(1, keepdim=True) if centres.shape[1] else gauss.new_zeros(centres.shape[0], 1, h, w)


def centre_focal_loss(centre_logits: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss of centre_logits (B, 1, h, w) against the Gaussians about
    `centres` (B, M, 2), normalized by the number of centres (at least 1)."""
    logits = centre_logits.float()
    target = centre_heatmap(centres.float(), *logits.shape[-2:])
    p = torch.sigmoid(logits)
    positive = target == 1
    pos = -((1 - p) ** FOCAL_ALPHA) * F.logsigmoid(logits)
    neg = -((1 - target) ** FOCAL_BETA) * p ** FOCAL_ALPHA * F.logsigmoid(-logits)
    loss = torch.where(positive, pos, neg).sum()
    return loss / positive.sum().clamp_min(1)
