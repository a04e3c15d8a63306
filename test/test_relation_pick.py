"""model.relation_pick: "the circle left of the star" picks among the candidates by a landmark (model/relation_pick.py)."""
import math

import pytest
import torch

from meres_core.config import load_config
from meres_core.model.candidate_rank import gain_loss, ranks_by_position
from meres_core.model.coordinates import cell_centres
from meres_core.model.meres import MERES
from meres_core.model.relation_pick import (RELATION_GAIN, RELATIONS, SCALE, RelationPick, landmark_loss,
                                            relation_gain_loss, relation_ids, relation_indicators, relation_loss)

H, W = 16, 24
NAN = float("nan")


def _at(row: int, col: int) -> list[float]:
    """x, y in [-1, 1] of the centre of cell (row, col) of an H x W map."""
    return [cell_centres(W, torch.zeros(1))[col].item(), cell_centres(H, torch.zeros(1))[row].item()]


def test_indicators_name_the_candidates_each_relation_holds_for():
    centres = torch.tensor([[[-0.5, 0.1], [0.4, 0.3], [0.2, -0.6], [0.01, 0.0], [0.9, 0.9]]])
    eligible = torch.tensor([[True, True, True, False, False]])  # the 4th is the landmark, the 5th no peak
    ind = relation_indicators(centres, eligible, torch.tensor([[0.0, 0.0]]))[0]
    by_name = {name: ind[i].tolist() for i, name in enumerate(RELATIONS)}
    assert by_name == {"left": [1, 0, 0, 0, 0], "right": [0, 1, 1, 0, 0], "above": [0, 0, 1, 0, 0],
                       "below": [1, 1, 0, 0, 0], "nearest": [0, 1, 0, 0, 0]}


def _three_objects(relation: str, gain: float = 1.0) -> tuple[RelationPick, tuple]:
    """A pick whose sentence says `relation` and whose landmark head reads `fine` channel 0, on a map with
    an object left (cols 1-4), the landmark (cols 10-13) and an object right of it (cols 16-19), nearer."""
    pick = RelationPick(text_dim=4, dim=1)
    with torch.no_grad():
        pick.relation.bias.copy_(torch.tensor([20.0 if r == relation else 0.0 for r in RELATIONS]))
        pick.gain.bias.fill_(gain)
        first, last = pick.landmark.net[0], pick.landmark.net[-1]
        first.weight.zero_()
        first.weight[0, 0, 1, 1] = 1.0  # identity
        first.bias.zero_()
        last.weight.fill_(1.0)
        last.bias.fill_(-5.0)
    candidates = torch.full((1, 1, H, W), -6.0)
    centre_logits = torch.full((1, 1, H, W), -6.0)
    fine = torch.zeros(1, 1, H, W)
    for cols in ((1, 5), (10, 14), (16, 20)):
        candidates[0, 0, 6:10, cols[0]:cols[1]] = 4.0
        centre_logits[0, 0, 8, cols[0] + 2] = 3.0
    fine[0, 0, 6:10, 10:14] = 10.0  # the landmark
    text, valid = torch.ones(1, 2, 4), torch.ones(1, 2, dtype=torch.bool)
    return pick, (candidates, centre_logits, fine, text, valid)


@pytest.mark.parametrize("relation, raised", [("left", (1, 5)), ("right", (16, 20)), ("nearest", (16, 20))])
def test_pick_raises_the_named_candidate_and_lowers_the_others_and_the_landmark(relation, raised):
    pick, inputs = _three_objects(relation)
    prior, (landmark_logits, relation_logits, gain) = pick(*inputs)
    prior = prior[0, 0]
    for cols in ((1, 5), (10, 14), (16, 20)):
        expected = SCALE if cols == raised else -SCALE  # the landmark's own pixels are lowered too
        assert torch.allclose(prior[6:10, cols[0]:cols[1]], torch.full((4, 4), expected), atol=1e-3), cols
    assert prior[0:5].abs().max() == 0  # off the candidates
    assert (landmark_logits[0, 0, 6:10, 10:14] > 0).all() and (landmark_logits[0, 0, :6] < 0).all()
    assert relation_logits.shape == (1, len(RELATIONS)) and gain.item() == pytest.approx(1.0)


def test_zero_gain_or_a_lone_candidate_leaves_the_mask_alone():
    pick, inputs = _three_objects("left", gain=0.0)
    assert pick(*inputs)[0].abs().max() == 0
    pick, (candidates, centre_logits, fine, text, valid) = _three_objects("left")
    candidates[..., 9:] = -6.0  # only the left object is left
    assert pick(candidates, centre_logits, fine, text, valid)[0].abs().max() == 0


def _ground_truth():
    """The centroids of a relation sentence's base (three objects) and its landmark; a sentence with no landmark."""
    ranked = torch.full((2, 8, 2), NAN)
    ranked[0, :3] = torch.tensor([_at(8, 3), _at(8, 18), _at(8, 11)])
    ranked[1, :3] = ranked[0, :3]
    landmark = torch.tensor([_at(8, 11), [NAN, NAN]])
    return ranked, landmark


def test_relation_loss_is_cross_entropy_on_the_named_relation():
    named = relation_ids(["left", ""])
    assert named.tolist() == [RELATIONS.index("left"), -1]
    logits = torch.zeros(2, len(RELATIONS))
    logits[:, RELATIONS.index("left")] = 20.0
    assert relation_loss(logits, named) < 1e-3
    logits = torch.zeros(2, len(RELATIONS))
    logits[:, RELATIONS.index("nearest")] = 20.0  # the words said "left", whatever else holds in the scene
    assert relation_loss(logits, named) > 10.0
    assert relation_loss(torch.zeros(2, len(RELATIONS)), named).item() == pytest.approx(math.log(len(RELATIONS)))
    assert relation_loss(logits, named[1:]) == 0  # no relation named: no loss
    with pytest.raises(ValueError):
        relation_ids(["beside"])


def test_rank_pick_leaves_relation_sentences_to_the_relation_pick():
    """Relation sentences list their base (two or more objects) as extremes do; the rank pick's gain must
    still be pulled to zero on them, and the relation pick's to RELATION_GAIN."""
    ranked, landmark = _ground_truth()
    assert ranks_by_position(ranked).tolist() == [True, True]
    assert ranks_by_position(ranked, landmark).tolist() == [False, True]
    assert gain_loss(torch.zeros(2), ranked, landmark).item() == pytest.approx(2.0 ** 2 / 2)
    assert relation_gain_loss(torch.tensor([RELATION_GAIN, 0.0]), landmark) == 0


def test_landmark_loss_is_bce_on_the_landmark_mask_of_relation_sentences_only():
    _, landmark = _ground_truth()
    masks = torch.zeros(2, 32, 48)
    masks[0, 14:20, 20:28] = 1
    logits = torch.full((2, 1, H, W), -8.0)
    logits[0, 0, 7:10, 10:14] = 8.0
    good = landmark_loss(logits, masks, landmark)
    logits[1] = 8.0  # the sentence without a landmark does not count
    assert landmark_loss(logits, masks, landmark) == good and good < 0.1
    logits[0] = -8.0
    assert landmark_loss(logits, masks, landmark) > 0.2  # 8 logits wrong on the 1/32 of the map it covers


def _relation_cfg(**extra):
    return load_config("tiny", overrides={"model": {"candidate_rank_prior": True, "candidate_centres": True,
                                                   "candidate_rank_pick": True, "relation_pick": True, **extra}})


def test_model_with_relation_pick_starts_unchanged_and_learns(scene):
    with pytest.raises(ValueError, match="relation_pick needs model.candidate_centres"):
        load_config("tiny", overrides={"model": {"relation_pick": True}})
    cfg = _relation_cfg(landmark_weight=0.5)
    torch.manual_seed(0)
    model = MERES(cfg.model).eval()  # no dropout: the two forwards must be comparable
    without = MERES(load_config("tiny", overrides={"model": {"candidate_rank_prior": True, "candidate_centres": True,
                                                             "candidate_rank_pick": True}}).model).eval()
    without.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("relation_pick.")})
    from meres_core.data.transforms import preprocess_image

    sentences = ["the circle left of the square", "the red circle"]
    image = preprocess_image(scene, cfg.model.vision.img_size)[None].expand(2, -1, -1, -1)
    out = model(image, *model.tokenize(sentences))
    torch.testing.assert_close(out.logits, without(image, *without.tokenize(sentences)).logits)  # zero-initialized
    assert out.landmark_logits.shape == out.logits.shape and out.relation_logits.shape == (2, len(RELATIONS))
    masks = torch.zeros(2, 64, 64)
    masks[:, 20:40, 4:20] = 1
    ranked = torch.full((2, 8, 2), NAN)
    ranked[0, :2] = torch.tensor([[-0.6, -0.1], [0.6, -0.1]])
    ranked[1, 0] = torch.tensor([-0.6, -0.1])
    landmark_masks = torch.zeros(2, 64, 64)
    landmark_masks[0, 20:40, 28:36] = 1
    landmark = torch.tensor([[0.0, -0.1], [NAN, NAN]])
    losses = model.compute_loss(out, masks, masks, ranked, landmark_masks, landmark, relation_ids(["left", ""]))
    assert {"landmark", "relation", "relation_gain"} <= set(losses)
    assert losses["relation_gain"].item() == pytest.approx(RELATION_GAIN ** 2 / 2)
    losses["loss"].backward()
    assert model.relation_pick.landmark.net[0].weight.grad.abs().sum() > 0
    assert model.relation_pick.relation.weight.grad.abs().sum() > 0 and model.relation_pick.gain.bias.grad != 0
    assert model.decoder.fuse[-1][0].weight.grad.abs().sum() > 0  # the landmark is learned by the decoder too


def test_onnxruntime_agrees_with_eager_with_relation_pick(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from meres_core.export_onnx import ImagePath, OnnxImagePath, export

    cfg = _relation_cfg(coord_features=True)
    torch.manual_seed(0)
    model = MERES(cfg.model).eval()
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # weights that make the random model's peaks, landmark and pick act
        text, valid = model.encode_text(*model.tokenize(["the circle left of the square", "the red circle"]))
        model.centre_head.net[-1].weight.normal_(0.0, 3.0)
        model.centre_head.net[-1].bias.fill_(1.0)
        model.decoder.head.bias.fill_(2.0)  # a mask over most of the map: peaks to pick among
        model.relation_pick.landmark.net[-1].weight.normal_(0.0, 3.0)
        model.relation_pick.relation.weight.normal_(0.0, 0.3)
        model.relation_pick.gain.bias.fill_(0.5)
        out, maps = model._guide(model.encode_image(pixels), text, valid)
        prior, _ = model.relation_pick(out.logits, model.centre_head(maps[1]), maps[1], text, valid)
        assert prior.abs().amax() > 0  # the pick acts somewhere
        eager = ImagePath(model)(pixels, text, valid)
    session = OnnxImagePath(export(model, tmp_path / "relations.onnx", {"source": "test"}), model, torch.device("cpu"))
    torch.testing.assert_close(session(pixels, text, valid), eager, atol=1e-4, rtol=1e-4)
