"""Normalized coordinate maps (CoordConv), a deviation from the paper behind `ModelConfig.coord_features`.

Swin has only relative position inside its windows, so after the last stage no feature says
where in the image a pixel is, and "the leftmost", "the second from the left" or "left of"
cannot be resolved. Referring-segmentation work since Hu et al. (2016) and CMSA / BRINet
concatenates normalized x, y maps to the visual features before fusion; MERES, LAVT and
CGFormer do not, so the switch is off in `paper` and on in `demo`.
"""
from __future__ import annotations

import torch

COORD_CHANNELS = 2  # x, y


def cell_centres(n: int, like: torch.Tensor) -> torch.Tensor:
    """(n,) centres of n cells along one axis, in [-1, 1] (left/top = -1), on `like`'s device and dtype."""
    return (torch.arange(n, device=like.device, dtype=like.dtype) + 0.5) / n * 2 - 1


def append_coordinates(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C + 2, H, W): x then y of each cell centre, in [-1, 1] (left/top = -1)."""
    b, _, h, w = x.shape
    ys, xs = cell_centres(h, x), cell_centres(w, x)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each
    coords = torch.stack([grid_x, grid_y])[None].expand(b, -1, -1, -1)  # (B, 2, H, W)
    return torch.cat([x, coords], dim=1)
