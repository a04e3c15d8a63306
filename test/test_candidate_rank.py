"""model.candidate_rank_prior: a weight per (side, rank) of the pixel's candidate (model/candidate_rank.py)."""
import pytest
import torch
import torch.nn.functional as F

from meres_core.config import load_config
from meres_core.data.transforms import preprocess_image
from meres_core.model.losses import upsample_logits
from meres_core.model.meres import MERES
from meres_core.model.candidate_rank import (MAX_RANK, RANKING_GAIN, SCALE, SIDES, CandidateRankPrior,
                                              candidate_ranks, gain_loss, pair_loss)
from meres_core.model.position_prior import SentencePositionPrior


def test_ranks_count_the_candidates_from_each_side():
    logits = torch.full((1, 1, 10, 16), -6.0)
    logits[0, 0, 1:3, 1:3] = 4.0  # A: left, top
    logits[0, 0, 6:8, 5:7] = 4.0  # B
    logits[0, 0, 2:5, 11:14] = 4.0  # C: right, an L-shape of one component
    logits[0, 0, 4, 11:13] = -6.0
    logits[0, 0, 9, 15] = 0.5  # a speck: 1 pixel at p 0.62 against C's 7 pixels, under MIN_MASS_RATIO
    ranks = candidate_ranks(logits)[0]  # (4, h, w)
    left, right, top, bottom = (SIDES.index(s) for s in ("left", "right", "top", "bottom"))
    for (row, col), expected in {(1, 1): (0, 2, 0, 2), (7, 6): (1, 1, 2, 0), (3, 12): (2, 0, 1, 1)}.items():
        assert tuple(ranks[[left, right, top, bottom], row, col].tolist()) == expected, (row, col)
    assert (ranks[:, 2:4, 11:14] == ranks[:, 3:4, 12:13]).all()  # the whole L is one candidate
    assert (ranks[:, 9, 15] == -1).all() and (ranks[:, 0, 8] == -1).all()  # speck and background


def test_the_prior_adds_its_weight_on_the_named_candidate_only():
    prior = CandidateRankPrior(text_dim=3)
    logits = torch.full((1, 1, 4, 12), -6.0)
    for column in (1, 5, 9):
        logits[0, 0, 1:3, column:column + 2] = 4.0
    bias = torch.zeros(len(SIDES), MAX_RANK)
    bias[SIDES.index("left"), 1] = 3.0  # "the second from the left"
    with torch.no_grad():
        prior.proj.bias.copy_(bias.flatten() / SCALE)
    out = prior(logits, torch.randn(1, 2, 3), torch.ones(1, 2, dtype=torch.bool))[0][0, 0]
    expected = torch.zeros(4, 12)
    expected[1:3, 5:7] = 3.0
    assert torch.allclose(out, expected, atol=1e-5)


def test_warm_start_from_a_model_without_it_keeps_the_function(warm_started):
    cfg = load_config("tiny", overrides={"model": {"candidate_rank_prior": True}})
    old, new, inputs = warm_started(cfg, ["the second circle from the left", "the third square from the top"])
    assert all((p == 0).all() for p in new.candidate_rank.parameters())
    with torch.no_grad():
        assert torch.allclose(new(*inputs).logits, old(*inputs).logits, atol=1e-5)


def _scenes(n: int, generator: torch.Generator):
    """n frozen masks of 3 or 4 equal blobs at random columns and rows; sentence i % 3 names the
    second from the left, the second from the right or the third from the left."""
    logits = torch.full((n, 1, 12, 24), -6.0)
    target = torch.zeros(n, 1, 12, 24)
    for i in range(n):
        count = 3 + int(torch.randint(2, (1,), generator=generator))
        columns = (torch.randperm(7, generator=generator)[:count] * 3 + 1).sort().values  # 2 apart at least
        rows = torch.randint(0, 10, (count,), generator=generator)
        for column, row in zip(columns.tolist(), rows.tolist()):
            logits[i, 0, row:row + 2, column:column + 2] = 4.0
        pick = (1, count - 2, 2)[i % 3]
        target[i, 0, rows[pick]:rows[pick] + 2, columns[pick]:columns[pick] + 2] = 1.0
    return logits, target


def _exact_masks(module: torch.nn.Module) -> float:
    """Train `module` alone (the rest of a model frozen to the blobs) and return the share of new
    scenes whose mask is exactly the named blob."""
    generator = torch.Generator().manual_seed(0)
    text = torch.eye(3)[:, None, :]  # one feature per sentence
    valid = torch.ones(3, 1, dtype=torch.bool)
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(module.parameters(), lr=0.05)
    for _ in range(150):
        logits, target = _scenes(30, generator)
        out = logits + module(logits, text.repeat(10, 1, 1), valid.repeat(10, 1))[0]
        loss = F.binary_cross_entropy_with_logits(out, target, pos_weight=torch.tensor(20.0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    logits, target = _scenes(150, generator)
    with torch.no_grad():
        masks = logits + module(logits, text.repeat(50, 1, 1), valid.repeat(50, 1))[0] > 0
    return (masks == target.bool()).flatten(1).all(1).float().mean().item()


class _PositionPriorTerm(torch.nn.Module):
    """SentencePositionPrior as an additive term, returned as CandidateRankPrior returns its own."""

    def __init__(self):
        super().__init__()
        self.prior = SentencePositionPrior(text_dim=3)

    def forward(self, logits, text, valid):
        return self.prior(logits, text, valid) - logits, None


def test_it_learns_the_second_from_the_left_where_the_position_prior_cannot():
    ranked, position = _exact_masks(CandidateRankPrior(text_dim=3)), _exact_masks(_PositionPriorTerm())
    assert ranked > 0.95 and position < 0.5, (ranked, position)


def test_candidate_loss_supervises_the_decoders_mask_before_the_priors(tiny_cfg, scene):
    """model.candidate_weight: BCE of the decoder's logits before the priors against what the sentence's
    qualifier ranks; the priors' weights get none of its gradient."""
    torch.manual_seed(0)
    sentences = ["the second circle from the left", "the red circle"]
    image = preprocess_image(scene, tiny_cfg.model.vision.img_size)[None].expand(2, -1, -1, -1)
    masks, ranked = torch.zeros(2, 64, 64), torch.zeros(2, 64, 64)
    masks[0, 10:20, 30:40] = ranked[0, 10:20, 30:40] = ranked[0, 10:20, 5:15] = ranked[0, 40:50, 50:60] = 1
    masks[1, 30:40, 30:40] = ranked[1, 30:40, 30:40] = 1  # no qualifier: the target itself
    with pytest.raises(ValueError, match="needs model.candidate_rank_prior"):
        load_config("tiny", overrides={"model": {"candidate_weight": 1.0}})
    plain = MERES(load_config("tiny", overrides={"model": {"candidate_rank_prior": True}}).model)
    ids, attention = plain.tokenize(sentences)
    assert "candidates" not in plain.compute_loss(plain(image, ids, attention), masks, ranked)

    weight = 0.5
    model = MERES(load_config("tiny", overrides={"model": {"candidate_rank_prior": True,
                                                           "candidate_weight": weight}}).model)
    with torch.no_grad():
        model.candidate_rank.proj.bias.fill_(0.3)
    out = model(image, ids, attention)
    assert not torch.allclose(out.candidate_logits, out.logits)  # the priors come after it
    losses = model.compute_loss(out, masks, ranked)
    expected = F.binary_cross_entropy_with_logits(upsample_logits(out.candidate_logits, (64, 64)), ranked)
    assert torch.allclose(losses["candidates"], expected)
    others = losses["bce"] + model.cfg.contrastive_weight * losses["contrastive"]  # tiny: no Dice
    assert torch.allclose(losses["loss"], others + weight * expected, atol=1e-6)
    losses["candidates"].backward()
    assert model.decoder.head.weight.grad.abs().sum() > 0
    assert all(p.grad is None or not p.grad.any() for p in model.candidate_rank.parameters())


def _side_and_ordinal_scenes(n: int, generator: torch.Generator):
    """n frozen masks of 3-6 equal blobs at random columns and rows, the named blob, and the sentences'
    tokens: a side word (left / right) and an ordinal word (first .. fourth) as one-hot features."""
    logits = torch.full((n, 1, 12, 30), -6.0)
    target = torch.zeros(n, 1, 12, 30)
    text = torch.zeros(n, 2, 2 + MAX_RANK)
    for i in range(n):
        count = 3 + int(torch.randint(4, (1,), generator=generator))
        columns = (torch.randperm(9, generator=generator)[:count] * 3 + 1).sort().values
        rows = torch.randint(0, 10, (count,), generator=generator)
        for column, row in zip(columns.tolist(), rows.tolist()):
            logits[i, 0, row:row + 2, column:column + 2] = 4.0
        side = int(torch.randint(2, (1,), generator=generator))
        ordinal = int(torch.randint(min(MAX_RANK, count), (1,), generator=generator))
        pick = ordinal if side == 0 else count - 1 - ordinal
        target[i, 0, rows[pick]:rows[pick] + 2, columns[pick]:columns[pick] + 2] = 1.0
        text[i, 0, side], text[i, 1, 2 + ordinal] = 1.0, 1.0
    return logits, target, text


def _picks_the_named_blob(prior: CandidateRankPrior) -> float:
    """Train `prior` alone on frozen blobs; the share of new scenes whose most probable pixel is on the named blob."""
    generator = torch.Generator().manual_seed(0)
    valid = torch.ones(1, 2, dtype=torch.bool)
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(prior.parameters(), lr=0.02)
    for _ in range(500):
        logits, target, text = _side_and_ordinal_scenes(32, generator)
        out = logits + prior(logits, text, valid.expand(32, -1))[0]
        loss = F.binary_cross_entropy_with_logits(out, target, pos_weight=torch.tensor(20.0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    logits, target, text = _side_and_ordinal_scenes(300, generator)
    with torch.no_grad():
        out = logits + prior(logits, text, valid.expand(300, -1))[0]
    best = torch.where(logits > 0, out, torch.full_like(out, -1e9)).flatten(1).argmax(1)
    return target.flatten(1).gather(1, best[:, None]).mean().item()


def test_the_hidden_layer_makes_side_and_ordinal_count_together():
    # Mean-pooled word features: linear weights add what "second" says to every side's rank 1 and what
    # "right" says to the right side's ranks; with 3-6 candidates that does not single out the named one.
    linear = _picks_the_named_blob(CandidateRankPrior(2 + MAX_RANK))
    hidden = _picks_the_named_blob(CandidateRankPrior(2 + MAX_RANK, hidden=32))
    assert hidden > 0.95 and linear < 0.85, (linear, hidden)


def test_the_pick_names_one_side_and_one_ordinal():
    # p(side, ordinal): the one pair that "second" and "left" name together.
    picked = _picks_the_named_blob(CandidateRankPrior(2 + MAX_RANK, pick=True))
    assert picked > 0.95, picked


def test_pair_loss_is_the_targets_likelihood_under_the_named_pair():
    # Three objects in a row, the target in the middle: second from the left and from the right.
    masks = torch.zeros(2, 20, 30)
    masks[0, 8:12, 13:17] = 1.0  # centroid (0, 0)
    centres = torch.full((2, 8, 2), float("nan"))
    centres[0, :3] = torch.tensor([[-0.6, 0.5], [0.01, 0.0], [0.6, -0.5]])
    centres[1, :1] = torch.tensor([[0.0, 0.0]])  # a lone object: no ranking to learn, left out
    def loss_for(side: str, k: int) -> float:
        logits = torch.full((2, len(SIDES) * MAX_RANK), -20.0)
        logits[:, SIDES.index(side) * MAX_RANK + k] = 20.0
        return pair_loss(logits, masks, centres).item()
    assert loss_for("left", 1) < 1e-3 and loss_for("right", 1) < 1e-3 and loss_for("bottom", 1) < 1e-3
    assert loss_for("left", 0) > 10 and loss_for("top", 2) > 10


def test_gain_loss_fits_the_gain_to_whether_the_sentence_ranks_by_position():
    centres = torch.full((3, 8, 2), float("nan"))
    centres[0, :3] = torch.tensor([[-0.6, 0.5], [0.0, 0.0], [0.6, -0.5]])  # "the second circle from the left"
    centres[1, :1] = torch.tensor([[0.0, 0.0]])  # "the smaller yellow shape": the target only
    # centres[2]: an absent sentence ranks nothing
    gain = torch.tensor([RANKING_GAIN + 0.5, 2.0, -1.0], requires_grad=True)
    loss = gain_loss(gain, centres)
    assert torch.isclose(loss, torch.tensor((0.5 ** 2 + 2.0 ** 2 + 1.0 ** 2) / 3))
    loss.backward()
    assert gain.grad[0] > 0 and gain.grad[1] > 0 and gain.grad[2] < 0  # each towards its target
    assert gain_loss(torch.full((1,), RANKING_GAIN), centres[:1]).item() == 0.0


def test_gain_weight_adds_the_gain_loss(warm_started):
    with pytest.raises(ValueError, match="candidate_gain_weight"):
        load_config("tiny", overrides={"model": {"candidate_rank_prior": True, "candidate_gain_weight": 1.0}})
    cfg = load_config("tiny", overrides={"model": {"candidate_rank_prior": True, "candidate_rank_pick": True,
                                                   "candidate_gain_weight": 0.5}})
    _, model, inputs = warm_started(cfg, ["the smaller yellow shape", "the second circle from the left"])
    with torch.no_grad():
        model.candidate_rank.pick.gain.bias.fill_(2.0)
    out = model(*inputs)
    masks = torch.zeros(2, 64, 64)
    centres = torch.full((2, 8, 2), float("nan"))
    centres[1, :2] = torch.tensor([[-0.5, 0.0], [0.5, 0.0]])
    losses = model.compute_loss(out, masks, ranked_centres=centres)
    expected = (2.0 ** 2 + (2.0 - RANKING_GAIN) ** 2) / 2  # gain 2 against 0 and against RANKING_GAIN
    assert torch.isclose(losses["pick_gain"], torch.tensor(expected))
    others = losses["bce"] + model.cfg.contrastive_weight * losses["contrastive"]  # tiny: no Dice
    assert torch.isclose(losses["loss"], others + 0.5 * losses["pick_gain"], atol=1e-6)


def test_pick_needs_the_prior_and_starts_as_the_old_model(warm_started):
    with pytest.raises(ValueError, match="candidate_rank_pick needs"):
        load_config("tiny", overrides={"model": {"candidate_rank_pick": True}})
    with pytest.raises(ValueError, match="candidate_pick_weight"):
        load_config("tiny", overrides={"model": {"candidate_rank_prior": True, "candidate_pick_weight": 1.0}})
    cfg = load_config("tiny", overrides={"model": {"candidate_rank_prior": True, "candidate_rank_pick": True}})
    old, new, inputs = warm_started(cfg, ["the second circle from the left", "the third square from the top"])
    assert all((p == 0).all() for p in new.candidate_rank.pick.parameters())
    with torch.no_grad():
        assert torch.allclose(new(*inputs).logits, old(*inputs).logits, atol=1e-5)


def test_hidden_layer_needs_the_prior_and_starts_as_the_linear_prior(warm_started):
    with pytest.raises(ValueError, match="candidate_rank_hidden"):
        load_config("tiny", overrides={"model": {"candidate_rank_hidden": 16}})
    cfg = load_config("tiny", overrides={"model": {"candidate_rank_prior": True, "candidate_rank_hidden": 16}})
    old, new, inputs = warm_started(cfg, ["the second circle from the left", "the third square from the top"])
    assert not (new.candidate_rank.interaction[0].weight == 0).all()
    assert all((p == 0).all() for p in new.candidate_rank.interaction[-1].parameters())
    with torch.no_grad():
        assert torch.allclose(new(*inputs).logits, old(*inputs).logits, atol=1e-5)
