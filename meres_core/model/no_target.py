"""No-target head, a deviation from the paper behind `ModelConfig.no_target_head`.

"There is no red mug" is half the product, but a mask-only model answers it from the mask:
on the demo model (stage 3, held-out scenes) no score computed from the probability map told
absent from present targets (ROC-AUC: mean probability over the mask 0.59, peak 0.61, area
0.66). ReLA (GRES, CVPR 2023) adds a no-target classifier beside the mask; here it is folded
into the mask itself:

    logits += log sigmoid(t),    t = MLP([pool(coarse), pool(fine), sentence])

so a confident "absent" (sigmoid(t) -> 0) empties the mask and a confident "present" leaves it
as it was; every consumer of the probability map (Segmenter's presence score, evaluation, the
ONNX and compiled backends) needs nothing new. `pool` is the mean under the (detached) mask
probability and the max over the image of the decoder's first and last guided maps: what was
segmented and the best match anywhere; `sentence` the mean-pooled language features (what was
asked). Trained with BCE against "the target mask is not empty" (weight `no_target_weight`)
besides the mask losses. The last layer starts at weight 0 and bias INIT_BIAS, so a warm
start begins with logits shifted by log sigmoid(4) = -0.018: as before.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INIT_BIAS = 4.0


def pool(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x (B, C, h, w), weight (B, 1, H, W) >= 0 -> (B, 2C): weighted mean and max over the map."""
    weight = F.interpolate(weight, size=x.shape[-2:], mode="bilinear", align_corners=False).flatten(2)  # (B, 1, hw)
    weight = weight / weight.sum(-1, keepdim=True).clamp(min=1e-6)
    x = x.flatten(2)  # (B, C, hw)
    return torch.cat([(x * weight).sum(-1), x.amax(-1)], dim=1)


class NoTargetHead(nn.Module):
    def __init__(self, coarse_dim: int, fine_dim: int, text_dim: int, hidden: int = 128):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * (coarse_dim + fine_dim) + text_dim, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.constant_(self.mlp[-1].bias, INIT_BIAS)

    def forward(self, logits: torch.Tensor, coarse: torch.Tensor, fine: torch.Tensor, text: torch.Tensor,
                text_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """logits (B, 1, h, w); decoder maps coarse / fine (1 or B, C, h_i, w_i); text (B, T, D_t), text_valid (B, T)
        -> gated logits (B, 1, h, w) and the target logit t (B,)."""
        b = logits.shape[0]
        where = torch.sigmoid(logits.detach().float())  # (B, 1, h, w)
        valid = text_valid[..., None].to(text.dtype)
        sentence = (text * valid).sum(1) / valid.sum(1).clamp(min=1)  # (B, D_t), mean pooling
        inputs = [pool(coarse.float().expand(b, -1, -1, -1), where), pool(fine.float().expand(b, -1, -1, -1), where),
                  sentence.float()]
        target = self.mlp(torch.cat(inputs, dim=1).to(self.mlp[0].weight.dtype))[:, 0].float()  # t (B,)
        return logits + F.logsigmoid(target)[:, None, None, None].to(logits.dtype), target
