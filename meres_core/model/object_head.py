"""Auxiliary object-category head, a training-only deviation from the paper behind `ModelConfig.object_classes`.

The referring loss supervises one object per sentence, so a vision encoder trained from scratch
learns shape slowly: the demo model put 64% of its mask on other objects for "the circle" with
one circle in view, while it found colours. A per-pixel category map of every object in the
image (from the same instances.json, background 0) supervises all pixels of all objects at each
step, a semantic FPN-style head (Kirillov et al. 2019, 1x1 projections of F2..F4 summed at
stride 8) as in multi-task segmentation. Inference never runs it; `paper` has it off.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ObjectCategoryHead(nn.Module):
    def __init__(self, encoder_channels: list[int], num_classes: int):
        super().__init__()
        self.proj = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in encoder_channels[1:])  # F2, F3, F4

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """[F1..F4] -> class logits (B, K, H_2, W_2) at F2's stride."""
        size = features[1].shape[-2:]
        logits = self.proj[0](features[1])
        for proj, feature in zip(self.proj[1:], features[2:]):
            logits = logits + F.interpolate(proj(feature), size=size, mode="bilinear", align_corners=False)
        return logits


def object_category_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (B, K, h, w) logits upsampled to the (B, H, W) label map (long, 0 = background)."""
    logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits.float(), labels)
