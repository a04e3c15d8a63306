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


def segmentation_bce(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """logits (B, 1, h, w) upsampled to the mask (B, H, W), as LAVT computes its loss."""
    logits = F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return F.binary_cross_entropy_with_logits(logits, mask.float())


def pixel_contrastive(relevance_cls: torch.Tensor, tau: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Eq. 3 on the [CLS] row s (B, N): -log sigma(s/tau) on Z+, -log(1 - sigma(s/tau)) on Z-.

    Averaged over all pixels of the batch.
    """
    return F.binary_cross_entropy_with_logits(relevance_cls / tau, positives.float())
