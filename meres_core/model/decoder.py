"""Segmentation decoder (Sec. 3.3).

Stage by stage from F4 up to F1: pixels (query) cross-attend to the guidance set G
(key / value, padding masked), then the map is upsampled, concatenated with the next
encoder feature and fused. A final 1x1 projection gives one logit channel at stride 4.

One image serves many sentences: the features may have batch 1 while the guidance has
batch B (one row per sentence). Whatever depends on the image only runs once: the F4
projection, and the encoder-feature half of each fusion's first convolution (a convolution
of a concatenation is the sum of the convolutions of its parts, so the skip and coordinate
channels are convolved once and broadcast over the sentences instead of being copied B
times into the concatenation).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import CrossAttentionBlock
from .coordinates import COORD_CHANNELS, append_coordinates


def conv_block(in_ch: int, out_ch: int) -> nn.Sequential:
    # GroupNorm instead of LAVT's BatchNorm: results do not depend on the batch, so
    # several expressions batched together equal one-by-one, in training as in inference.
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.GroupNorm(min(8, out_ch), out_ch), nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), nn.GroupNorm(min(8, out_ch), out_ch), nn.ReLU(inplace=True),
    )


class GuidedStage(nn.Module):
    """Pixels of a (B, C, H, W) map attend to the guidance tokens (B, L, D)."""

    def __init__(self, channels: int, guidance_dim: int, num_heads: int):
        super().__init__()
        self.block = CrossAttentionBlock(channels, num_heads, kv_dim=guidance_dim)

    def forward(self, x: torch.Tensor, guidance: torch.Tensor, guidance_pad: torch.Tensor) -> torch.Tensor:
        _, c, h, w = x.shape
        pixels = x.flatten(2).transpose(1, 2)  # (1 or B, HW, C)
        pixels = self.block(pixels, guidance, key_padding_mask=guidance_pad)  # (B, HW, C)
        return pixels.transpose(1, 2).reshape(pixels.shape[0], c, h, w)


def fuse(block: nn.Sequential, x: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
    """`block` (conv_block) on cat([x, shared]), with `shared` (batch 1 or B) convolved once.

    x (B, C_x, H, W) depends on the sentence; shared (1 or B, C_s, H, W) on the image only.
    """
    conv = block[0]
    c_x = x.shape[1]
    out = F.conv2d(x, conv.weight[:, :c_x], padding=conv.padding) + \
        F.conv2d(shared, conv.weight[:, c_x:], padding=conv.padding)
    return block[1:](out)


class SegmentationDecoder(nn.Module):
    def __init__(self, encoder_channels: list[int], dims: list[int], guidance_dim: int, num_heads: int,
                 coord_features: bool = False):
        """encoder_channels: C1..C4; dims: decoder widths for the F4, F3, F2, F1 stages.

        coord_features: x, y maps enter the F4 projection and every fusion (see coordinates.py).
        """
        super().__init__()
        c1, c2, c3, c4 = encoder_channels
        self.coord_features = coord_features
        extra = COORD_CHANNELS if coord_features else 0
        self.input_proj = nn.Sequential(nn.Conv2d(c4 + extra, dims[0], 1), nn.GroupNorm(min(8, dims[0]), dims[0]))
        self.guided = nn.ModuleList(GuidedStage(d, guidance_dim, num_heads) for d in dims)
        skips = [c3, c2, c1]
        self.fuse = nn.ModuleList(conv_block(dims[i] + skips[i] + extra, dims[i + 1]) for i in range(3))
        self.head = nn.Conv2d(dims[-1], 1, 1)  # the final linear projection to one logit

    def _with_coordinates(self, x: torch.Tensor) -> torch.Tensor:
        return append_coordinates(x) if self.coord_features else x

    def forward(self, features: list[torch.Tensor], guidance: torch.Tensor,
                guidance_pad: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """features [F1..F4] (B, C_i, H_i, W_i); guidance (B, L, D); guidance_pad (B, L) True = ignore.

        The features may have batch 1 for B sentences of one image (see the module docstring).
        Returns logits (B, 1, H_1, W_1) and the guided maps of the first and last stage,
        (B, dims[0], H_4, W_4) and (B, dims[-1], H_1, W_1), for the no-target head.
        """
        f1, f2, f3, f4 = features
        x = self.guided[0](self.input_proj(self._with_coordinates(f4)), guidance, guidance_pad)  # stride 32
        coarse = x
        for i, skip in enumerate((f3, f2, f1)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = fuse(self.fuse[i], x, self._with_coordinates(skip))  # = fuse[i](cat([x, skip, (x, y)]))
            x = self.guided[i + 1](x, guidance, guidance_pad)  # strides 16, 8, 4
        return self.head(x), (coarse, x)
