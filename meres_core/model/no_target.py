"""No-target head, a deviation from the paper behind `ModelConfig.no_target_head`.

"There is no red mug" is half the product, but a mask-only model answers it from the mask:
on the demo model (stage 3, held-out scenes) no score computed from the probability map told
absent from present targets (ROC-AUC: mean probability over the mask 0.59, peak 0.61, area
0.66). ReLA (GRES, CVPR 2023) adds a no-target classifier beside the mask; here it is folded
into the mask itself, as the probability that the target exists times that a pixel is it:

    p' = sigmoid(l) sigmoid(t),    t = MLP([pool(coarse), pool(fine), sentence])

and the model's logits are logit(p'). Below sigmoid(t) = 0.5 no pixel stays above the mask
threshold 0.5, so "absent" empties the mask; a confident "present" leaves it as it was. Every
consumer of the probability map (Segmenter's presence score, evaluation, the ONNX and compiled
backends) needs nothing new. (An additive fold, l + log sigmoid(t), was tried first: it leaves
a confident mask standing until t is far below 0, l + log sigmoid(t) ~ l + t, and on 300 held-out
sentences after 300 steps it rejected 42% of the absent ones where sigmoid(t) alone had ROC-AUC
0.92.) `pool` is the mean under the (detached) mask probability and the max over the image of the
decoder's first and last guided maps: what was segmented and the best match anywhere; `sentence`
the mean-pooled language features (what was asked). Trained with BCE against "the target mask is not empty" (weight `no_target_weight`)
besides the mask losses. The last layer starts at weight 0 and bias INIT_BIAS, so a warm
start begins with every probability times sigmoid(6) = 0.9975: as before.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .encoders import sentence_mean

INIT_BIAS = 6.0


def log_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """log sigmoid(x) as -softplus(-x): the ONNX exporter writes F.logsigmoid as Log(Sigmoid(x)), -inf below x ~ -100."""
    return -F.softplus(-x)


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
        sentence = sentence_mean(text, text_valid)  # (B, D_t)
        inputs = [pool(coarse.float().expand(b, -1, -1, -1), where), pool(fine.float().expand(b, -1, -1, -1), where),
                  sentence.float()]
        target = self.mlp(torch.cat(inputs, dim=1).to(self.mlp[0].weight.dtype))[:, 0].float()  # t (B,)
        l, t = logits.float(), target[:, None, None, None]
        # logit(p') = log p' - log(1 - p'), with 1 - p' = sigmoid(-l) + sigmoid(l) sigmoid(-t): stable in log space.
        log_p = log_sigmoid(l) + log_sigmoid(t)
        log_not_p = torch.logaddexp(log_sigmoid(-l), log_sigmoid(l) + log_sigmoid(-t))
        return (log_p - log_not_p).to(logits.dtype), target
