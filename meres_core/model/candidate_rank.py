"""Sentence-conditioned candidate ranking, a deviation from the paper behind `ModelConfig.candidate_rank_prior`.

"The second circle from the left" needs the circles counted. The position prior (position_prior.py)
has a plane over the image and a step about the candidates' centroid: it can pick the leftmost
candidate but not the second, and ordinal sentences stayed at ~44% centroid on target through
three training stages (324k sentences on a GPU among them) while every other kind moved.
Here the candidates are counted: the decoder's mask (p > 0.5) is split into connected
components, each component gets its rank from each side by its centroid (0 = first from the
left / right / top / bottom, as the datasets order targets), and

    logit += sum_{side, k < MAX_RANK} w_{side,k} [the pixel's component is k-th from side]

with the 4 x MAX_RANK weights a linear function of the mean-pooled sentence features (plus, with
`hidden` > 0, an MLP of them: see CandidateRankPrior; with `pick`, a distribution over (side,
ordinal) pairs: see RankPick). The
ranks are not differentiated (as the position prior's centroid): they say which candidate is
which; the weights learn which one the sentence names. Zero-initialized, so a warm-started
model starts unchanged. Components are found by propagating the largest pixel index through
3x3 neighbourhoods (max pooling), a fixed number of times: no data-dependent control flow, so
the model still exports to ONNX and compiles. With `candidate_centres` the candidates are the peaks
of a centre heatmap instead (instance_centres.py): components merge objects that touch.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .coordinates import cell_centres
from .encoders import sentence_mean
from .instance_centres import centre_peaks, nearest_peak

SIDES = ("left", "right", "top", "bottom")
MAX_RANK = 4  # "first" .. "fourth", the ordinals of meres-synth and the held-out scenes
MAX_CANDIDATES = 8  # components ranked per mask, the heaviest ones
# A component lighter than this share of the heaviest one is a speck of the mask, not a candidate.
MIN_MASS_RATIO = 0.2
SCALE = 10.0  # as position_prior.SCALE: an Adam step moves the weights SCALE times as far
# gain_loss's target for sentences that rank by position: 20 logits, about what stage 15 learned for ordinal
# sentences through the mask loss alone (the mask loss barely moves it once the pick decides).
RANKING_GAIN = 2.0
# Propagation rounds, as a share of the map's longer side: a component wider than this splits. Objects
# of the synthetic scenes span at most about a quarter of the image; each round is one max pool.
PROPAGATION_SHARE = 0.5


def component_labels(keep: torch.Tensor, steps: int) -> torch.Tensor:
    """keep (B, h, w) bool -> (B, h, w) float labels: 1 + the largest flat index of the pixel's
    8-connected component (0 off the mask), after `steps` rounds of propagation (enough for
    components up to `steps` pixels across)."""
    h, w = keep.shape[-2:]
    index = torch.arange(1, h * w + 1, device=keep.device, dtype=torch.float32).view(1, h, w)
    on = keep.float()[:, None]  # (B, 1, h, w)
    labels = index[None] * on
    for _ in range(steps):
        labels = F.max_pool2d(labels, 3, stride=1, padding=1) * on
    return labels[:, 0]


def candidate_ranks(logits: torch.Tensor) -> torch.Tensor:
    """logits (B, 1, h, w) -> (B, 4, h, w) long: rank of each pixel's component from each of SIDES
    among the mask's candidates, -1 off the candidates."""
    b, _, h, w = logits.shape
    p = torch.sigmoid(logits.detach().float())[:, 0]  # (B, h, w)
    keep = p > 0.5
    labels = component_labels(keep, steps=max(1, int(PROPAGATION_SHARE * max(h, w)))).long().flatten(1)  # (B, N), 0 = background
    weight = (p * keep).flatten(1)  # (B, N)
    ys, xs = cell_centres(h, p), cell_centres(w, p)
    grid_x, grid_y = xs.expand(h, w).flatten(), ys[:, None].expand(h, w).flatten()  # (N,)
    slots = h * w + 1  # one per possible label
    mass = weight.new_zeros(b, slots).scatter_add_(1, labels, weight)  # (B, slots)
    sum_x = weight.new_zeros(b, slots).scatter_add_(1, labels, weight * grid_x)
    sum_y = weight.new_zeros(b, slots).scatter_add_(1, labels, weight * grid_y)
    mass[:, 0] = 0.0  # the background is no candidate
    centre = torch.stack([sum_x, sum_y], -1) / mass.clamp_min(1e-6)[..., None]  # (B, slots, 2)
    heaviest = mass.max(1, keepdim=True).values  # (B, 1)
    is_candidate = (mass >= MIN_MASS_RATIO * heaviest) & (mass > 0)  # (B, slots)

    top = mass.topk(min(MAX_CANDIDATES, slots), dim=1).indices  # (B, R)
    top_valid = torch.gather(is_candidate, 1, top)  # (B, R)
    top_centre = torch.gather(centre, 1, top[..., None].expand(-1, -1, 2))  # (B, R, 2)
    own_centre = torch.gather(centre, 1, labels[..., None].expand(-1, -1, 2))  # (B, N, 2)
    own_valid = torch.gather(is_candidate, 1, labels)  # (B, N)
    return side_ranks(own_centre, own_valid, top_centre, top_valid).view(b, len(SIDES), h, w)


def centre_candidate_ranks(logits: torch.Tensor, centre_logits: torch.Tensor) -> torch.Tensor:
    """As candidate_ranks, with the candidates the peaks of centre_logits (B, 1, h, w) on the mask
    (instance_centres.py): each mask pixel belongs to the nearest peak."""
    b, _, h, w = logits.shape
    keep = (torch.sigmoid(logits.detach().float()) > 0.5)[:, 0]  # (B, h, w)
    centres, valid = centre_peaks(centre_logits, keep)  # (B, K, 2), (B, K)
    nearest = nearest_peak(centres, valid, h, w)  # (B, N)
    own_centre = torch.gather(centres, 1, nearest[..., None].expand(-1, -1, 2))  # (B, N, 2)
    own_valid = keep.flatten(1) & valid.any(1, keepdim=True)
    return side_ranks(own_centre, own_valid, centres, valid).view(b, len(SIDES), h, w)


def side_ranks(own_centre: torch.Tensor, own_valid: torch.Tensor, centres: torch.Tensor,
               valid: torch.Tensor) -> torch.Tensor:
    """own_centre (B, N, 2) each pixel's candidate centre, own_valid (B, N); centres (B, R, 2) of the
    candidates, valid (B, R) -> (B, 4, N): the rank of the pixel's candidate from each of SIDES, -1 off them."""
    before = own_centre[:, :, None, :] - centres[:, None, :, :]  # (B, N, R, 2): > 0 where r lies left / above
    valid = valid[:, None, :]
    ranks = torch.stack([((before[..., 0] > 0) & valid).sum(-1),  # from the left
                         ((before[..., 0] < 0) & valid).sum(-1),  # from the right
                         ((before[..., 1] > 0) & valid).sum(-1),  # from the top
                         ((before[..., 1] < 0) & valid).sum(-1)], 1)  # (B, 4, N)
    return torch.where(own_valid[:, None], ranks, torch.full_like(ranks, -1))


class RankPick(nn.Module):
    """`ModelConfig.candidate_rank_pick`: "the second circle from the left" names one (side, ordinal)
    pair, so the sentence gives a distribution over the 4 x MAX_RANK pairs, and a candidate matches
    by the pairs it is:

        match = sum_{side, k} p(side, k | s) [the candidate is k-th from side]   in [0, 1]
        logit += g(s) (2 match - 1)                                             on candidates, 0 elsewhere

    A softmax of a linear map of the mean-pooled sentence can put its mass on (left, 1) for "second"
    plus "left", which the additive weights cannot: they add what each word says to every candidate
    that is second from anywhere or anything from the left (stage 13's "the second circle from the
    left" put 9.0 on the first from the left and 6.2 on the second). The gain g(s) lets sentences
    without an ordinal leave the candidates alone; it starts at zero, so a warm start keeps the
    function. A lone candidate is first from every side whatever the sentence says, so it is left
    alone.

    `ModelConfig.candidate_pick_weight` also fits the pairs to the ground truth (pair_loss). Through
    the mask loss alone the signal is weak and ambiguous: stage 14 first tried a product p(side) p(k)
    of two softmaxes without it, and twice (with and without lone candidates) both factors settled on
    one pair for nearly every sentence within 250 steps ("first from the left", then "second from the right").
    Its gain learns only where the pick is on (two or more candidates), so sentences that rank nothing
    but often see several candidates ("the smaller yellow shape") kept whatever gain their words share
    with ordinal ones (stage 15: 14.9 for that one). `ModelConfig.candidate_gain_weight` fits the gain
    to whether the sentence ranks by position (gain_loss). Pulling it to zero on the others alone
    (stage 16) dragged the ordinal sentences' gains from ~21 to ~7 as well, below the rank weights,
    and held-out ordinal fell 92.5 -> 89.5%.
    """

    def __init__(self, text_dim: int):
        super().__init__()
        self.pair = nn.Linear(text_dim, len(SIDES) * MAX_RANK)  # p(side, k | s)
        self.gain = nn.Linear(text_dim, 1)  # g(s)
        for layer in (self.pair, self.gain):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, sentence: torch.Tensor, onehot: torch.Tensor, ranks: torch.Tensor
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """sentence (B, D_t); onehot (B, 4, MAX_RANK, h, w) [rank from side == k]; ranks (B, 4, h, w)
        -> the prior (B, h, w), and the pair logits (B, 4 * MAX_RANK) and gain / SCALE (B,) for the losses."""
        several = ranks[:, 0].flatten(1).amax(1) >= 1  # (B,): a candidate second from the left exists
        on_candidate = ((ranks[:, 0] >= 0) & several[:, None, None]).float()  # (B, h, w)
        pair_logits = self.pair(sentence)
        p_pair = torch.softmax(pair_logits.float(), -1).view(-1, len(SIDES), MAX_RANK)  # p(side, k | s)
        match = torch.einsum("bsk,bskhw->bhw", p_pair, onehot)  # (B, h, w)
        gain = self.gain(sentence).float()[:, 0]  # (B,)
        return SCALE * gain[:, None, None] * (2.0 * match - 1.0) * on_candidate, (pair_logits, gain)


class CandidateRankPrior(nn.Module):
    """`hidden` > 0 (ModelConfig.candidate_rank_hidden): w = linear(s) + MLP(s) of the pooled sentence s.
    A linear map of a mean pool adds what each word says: "second" raises rank 1 from every side and
    "right" the right side's ranks, so "the second from the right" scores the second from the left
    about as high (stage 12's learned weights do exactly this). The MLP can make the side and the
    ordinal count together; its output layer starts at zero, so a warm start keeps the function."""

    def __init__(self, text_dim: int, hidden: int = 0, pick: bool = False):
        super().__init__()
        self.proj = nn.Linear(text_dim, len(SIDES) * MAX_RANK)  # w_{side, k}
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.interaction = None
        if hidden:
            self.interaction = nn.Sequential(nn.Linear(text_dim, hidden), nn.GELU(),
                                             nn.Linear(hidden, len(SIDES) * MAX_RANK))
            nn.init.zeros_(self.interaction[-1].weight)
            nn.init.zeros_(self.interaction[-1].bias)
        self.pick = RankPick(text_dim) if pick else None

    def forward(self, candidates: torch.Tensor, text: torch.Tensor, text_valid: torch.Tensor,
                centre_logits: Optional[torch.Tensor] = None
                ) -> tuple[torch.Tensor, Optional[tuple[torch.Tensor, torch.Tensor]]]:
        """candidates (B, 1, h, w) the decoder's logits; text (B, T, D_t), text_valid (B, T); centre_logits
        (B, 1, h, w) of the centre head, None: components are the candidates -> the prior (B, 1, h, w),
        to be added to the logits, and RankPick's pair logits (B, 4 * MAX_RANK) and gain (B,), None without the pick."""
        b, _, h, w = candidates.shape
        sentence = sentence_mean(text, text_valid)  # (B, D_t)
        weights = self.proj(sentence)
        if self.interaction is not None:
            weights = weights + self.interaction(sentence)
        weights = (SCALE * weights).float().view(b, len(SIDES), MAX_RANK)
        ranks = (candidate_ranks(candidates) if centre_logits is None
                 else centre_candidate_ranks(candidates, centre_logits))  # (B, 4, h, w)
        onehot = (ranks[:, :, None] == torch.arange(MAX_RANK, device=ranks.device)[:, None, None]).float()
        prior = torch.einsum("bsk,bskhw->bhw", weights, onehot)  # (B, h, w)
        pick = None
        if self.pick is not None:
            picked, pick = self.pick(sentence, onehot, ranks)
            prior = prior + picked
        return prior[:, None].to(candidates.dtype), pick


def pair_loss(pair_logits: torch.Tensor, masks: torch.Tensor, ranked_centres: torch.Tensor,
              landmark_centres: Optional[torch.Tensor] = None) -> torch.Tensor:
    """-log sum_side p(side, the target's rank from side | s), the target's likelihood under RankPick's
    pair distribution, over sentences whose qualifier ranks two or more objects.

    pair_logits (B, 4 * MAX_RANK); masks (B, H, W) the targets; ranked_centres (B, M, 2) the centroids
    (x, y in [-1, 1], NaN rows for none) of what the qualifier ranks, the target among them."""
    b, h, w = masks.shape
    m = masks.float()
    area = m.flatten(1).sum(1)  # (B,)
    xs, ys = cell_centres(w, m), cell_centres(h, m)
    target = torch.stack([(m.sum(1) * xs).sum(1), (m.sum(2) * ys).sum(1)], -1) / area.clamp_min(1)[:, None]  # (B, 2)
    valid = ~torch.isnan(ranked_centres[..., 0])  # (B, M)
    centres = torch.nan_to_num(ranked_centres.float())
    # The target is the nearest entry (its centroid here differs by the resize only); the others rank it.
    distance = ((target[:, None] - centres) ** 2).sum(-1).masked_fill(~valid, float("inf"))  # (B, M)
    others = valid & (torch.arange(valid.shape[1], device=valid.device) != distance.argmin(1, keepdim=True))
    ranks = side_ranks(target[:, None], valid.new_ones(b, 1), centres, others)[..., 0]  # (B, 4)
    onehot = (ranks[..., None] == torch.arange(MAX_RANK, device=ranks.device)).float()  # (B, 4, MAX_RANK)
    p = torch.softmax(pair_logits.float(), -1).view(b, len(SIDES), MAX_RANK)
    likelihood = (p * onehot).sum((1, 2))  # (B,)
    use = ranks_by_position(ranked_centres, landmark_centres) & (area > 0) & (onehot.sum((1, 2)) > 0)
    if not use.any():
        return pair_logits.sum() * 0.0
    return -torch.log(likelihood[use].clamp_min(1e-6)).mean()


def ranks_by_position(ranked_centres: torch.Tensor, landmark_centres: Optional[torch.Tensor] = None) -> torch.Tensor:
    """ranked_centres (B, M, 2), NaN rows for none; landmark_centres (B, 2), NaN for none -> (B,) bool: the
    qualifier ranks two or more objects by position (an extreme or an ordinal). Other sentences list the
    target alone, absent ones nothing; relation sentences (meres-synth 1.6) list their base too, but place
    the target by a landmark (relation_pick.py), not by a (side, ordinal)."""
    ranks = (~torch.isnan(ranked_centres[..., 0])).sum(1) >= 2
    return ranks if landmark_centres is None else ranks & torch.isnan(landmark_centres[:, 0])


def gain_loss(gain: torch.Tensor, ranked_centres: torch.Tensor,
              landmark_centres: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean squared error of RankPick's gain / SCALE (B,) against RANKING_GAIN where the qualifier ranks two or
    more objects (ranked_centres (B, M, 2), NaN rows for none) and 0 elsewhere: size, relation, colour and absent
    sentences name no (side, ordinal), so the pick stays off for them."""
    return (gain - RANKING_GAIN * ranks_by_position(ranked_centres, landmark_centres).float()).pow(2).mean()
