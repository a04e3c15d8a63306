"""Landmark relations, a deviation from the paper behind `ModelConfig.relation_pick`.

"The circle left of the star" and "the circle nearest the red square" place the target by another
object. Stage 17 found the target of 81% of "side of" but only 36% of "nearest" sentences on
meres-synth, and about half of its misses landed on the landmark itself: nothing told the model which
noun phrase is the landmark, and its candidates covered every circle for only 14 of 123 "nearest"
sentences. MAttNet (Yu et al., CVPR 2018) scores a candidate by its relation to a context object;
here, as the rank pick does for ordinals (candidate_rank.RankPick):

  - the candidates are the centre heatmap's peaks on the decoder's mask (instance_centres.py); with
    meres-synth 1.6's `ranked_ann_ids` the decoder learns to cover every object of the base ("every
    circle") for relation sentences, as it does for extremes;
  - the landmark is the model's own mask of the landmark phrase ("the red square"), segmented as one more
    sentence of the batch on the same image (landmark_phrase.py); its centroid is L, and a candidate
    whose centre lies on that mask is the landmark, no candidate;
  - the sentence gives a distribution over the RELATIONS (fitted to the relation it names) and a
    gain, and a candidate matches by the relations it satisfies against L:

        match = sum_r p(r | s) [the candidate satisfies r]          in [0, 1]
        logit += g(s) (2 match - 1)                                on candidates, 0 elsewhere

    "left of": its centre is left of L (meres-synth's relations hold for the target alone among the
    base); "nearest": it is the closest candidate to L. The landmark's own pixels get match 0.
    A sentence without a landmark phrase gets no prior.
Zero-initialized pick and gain, so a warm-started model starts unchanged. Fixed-shape tensor work only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .candidate_rank import SCALE
from .coordinates import cell_centres
from .encoders import sentence_mean
from .instance_centres import cell_of, centre_peaks, nearest_peak
from .position_prior import candidate_centroid

RELATIONS = ("left", "right", "above", "below", "nearest")  # meres-synth's RELATION_WORDS
RELATION_GAIN = 2.0  # relation_gain_loss's target where a sentence names a landmark, as candidate_rank.RANKING_GAIN


def relation_indicators(centres: torch.Tensor, eligible: torch.Tensor, landmark: torch.Tensor) -> torch.Tensor:
    """centres (B, K, 2) x, y in [-1, 1]; eligible (B, K) the candidates that are not the landmark;
    landmark (B, 2) its centroid -> (B, len(RELATIONS), K) float: [candidate k satisfies relation r]."""
    offset = centres - landmark[:, None]  # (B, K, 2)
    distance = offset.pow(2).sum(-1).masked_fill(~eligible, float("inf"))  # (B, K)
    nearest = distance == distance.amin(1, keepdim=True)
    sides = torch.stack([offset[..., 0] < 0, offset[..., 0] > 0, offset[..., 1] < 0, offset[..., 1] > 0], 1)
    return (torch.cat([sides, nearest[:, None]], 1) & eligible[:, None]).float()


class RelationPick(nn.Module):
    def __init__(self, text_dim: int):
        super().__init__()
        self.relation = nn.Linear(text_dim, len(RELATIONS))  # p(r | s)
        self.gain = nn.Linear(text_dim, 1)  # g(s)
        for layer in (self.relation, self.gain):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, candidates: torch.Tensor, centre_logits: torch.Tensor, landmark_logits: torch.Tensor,
                named: torch.Tensor, text: torch.Tensor, text_valid: torch.Tensor
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """candidates (B, 1, h, w) the decoder's logits before the priors; centre_logits (B, 1, h, w);
        landmark_logits (B, 1, h, w) the landmark phrase's decoder logits before the priors, for the sentences
        that name one (`named` (B,) bool); text (B, T, D_t), text_valid (B, T) -> the prior (B, 1, h, w), and
        the relation logits (B, len(RELATIONS)) and gain / SCALE (B,) for the losses."""
        b, _, h, w = candidates.shape
        sentence = sentence_mean(text, text_valid)  # (B, D_t)
        landmark_logits = landmark_logits.detach()  # the phrase's own row learns its mask
        keep = (torch.sigmoid(candidates.detach().float()) > 0.5)[:, 0]  # (B, h, w)
        centres, valid = centre_peaks(centre_logits, keep)  # (B, K, 2), (B, K)
        ys, xs = cell_centres(h, centres), cell_centres(w, centres)
        landmark = torch.stack(candidate_centroid(landmark_logits, xs, ys), -1)  # L (B, 2)
        # A candidate whose centre cell is on the landmark's mask is the landmark.
        row, col = cell_of(centres, h, w)
        cell = (row * w + col).long()  # (B, K)
        on_landmark = landmark_logits[:, 0].flatten(1).gather(1, cell) > 0  # (B, K)
        relation_logits = self.relation(sentence)
        p_relation = torch.softmax(relation_logits.float(), -1)  # (B, R)
        indicators = relation_indicators(centres, valid & ~on_landmark, landmark)  # (B, R, K)
        match = torch.einsum("br,brk->bk", p_relation, indicators)  # (B, K)
        own_match = match.gather(1, nearest_peak(centres, valid, h, w))  # (B, N): each pixel is its nearest peak's
        several = valid.sum(1, keepdim=True) >= 2  # a lone candidate is left alone, as RankPick does
        on_candidate = keep.flatten(1) & several & named[:, None]
        gain = self.gain(sentence).float()[:, 0]  # (B,)
        prior = torch.where(on_candidate, SCALE * gain[:, None] * (2.0 * own_match - 1.0), 0.0)  # (B, N)
        return prior.view(b, 1, h, w).to(candidates.dtype), (relation_logits, gain)


def names_landmark(landmark_centres: torch.Tensor) -> torch.Tensor:
    """landmark_centres (B, 2), NaN for none -> (B,) bool: the sentence places its target by a landmark."""
    return ~torch.isnan(landmark_centres[:, 0])


def relation_ids(names: list[str]) -> torch.Tensor:
    """The relations a batch's sentences name (meres-synth 1.6's `relation`; "" for none) -> (B,) long
    indices into RELATIONS, -1 for none."""
    return torch.tensor([RELATIONS.index(name) if name else -1 for name in names], dtype=torch.long)


def relation_loss(relation_logits: torch.Tensor, relations: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of p(r | s) (B, len(RELATIONS)) against the relation each sentence names (B,), -1 for
    none: the words decide, not the scene (a target left of its landmark is often its nearest object too)."""
    use = relations >= 0
    if not use.any():
        return relation_logits.sum() * 0.0
    return F.cross_entropy(relation_logits[use].float(), relations[use])


def relation_gain_loss(gain: torch.Tensor, landmark_centres: torch.Tensor) -> torch.Tensor:
    """Squared error of the gain / SCALE (B,) against RELATION_GAIN where the sentence names a landmark, 0 elsewhere."""
    return (gain - RELATION_GAIN * names_landmark(landmark_centres).float()).pow(2).mean()
