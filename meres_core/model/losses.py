"""Losses: BCE on the segmentation map (Sec. 3.3) and the pixel contrastive loss (Eq. 3)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def downsample_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Z+ at F4 resolution: a cell is positive when at least half of its area is target.

    mask (B, H, W) in {0, 1} -> (B, h, w) in {0, 1}. Area averaging then >= 0.5 keeps
    thin objects from vanishing less often than nearest sampling would.
    """
    area = F.adaptive_avg_pool2d(mask[:, None].float(), size)[:, 0]
    return (area >= 0.5).float()


def upsample_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 1, h, w) -> (B, H, W): losses are computed at the mask's resolution, as in LAVT."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)[:, 0]


def segmentation_bce(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The paper's loss (Sec. 3.3). logits (B, H, W) at the mask resolution."""
    return F.binary_cross_entropy_with_logits(logits, mask.float())


def dice(logits: torch.Tensor, mask: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per sample, averaged (Mask2Former's mask loss beside BCE).

    Not in the paper (weight 0 in `paper`): it counters the small-object imbalance that
    makes a from-scratch model predict all background for long (the `demo` preset).
    An empty target gives a loss that falls as the prediction empties.
    """
    prob = torch.sigmoid(logits).flatten(1)
    target = mask.flatten(1).float()
    inter = (prob * target).sum(1)
    return (1 - (2 * inter + eps) / (prob.sum(1) + target.sum(1) + eps)).mean()


def pixel_contrastive(relevance_cls: torch.Tensor, tau: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Eq. 3 on the [CLS] row s (B, N): -log sigma(s/tau) on Z+, -log(1 - sigma(s/tau)) on Z-.

    Averaged over all pixels of the batch.
    """
    return F.binary_cross_entropy_with_logits(relevance_cls / tau, positives.float())


def target_bce(target_logit: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The no-target head's loss (model/no_target.py): t (B,) against "the mask is not empty"."""
    present = mask.flatten(1).amax(1) > 0
    return F.binary_cross_entropy_with_logits(target_logit.float(), present.float())
