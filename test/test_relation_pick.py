"""model.relation_pick: "the circle left of the star" picks among the candidates by a landmark (model/relation_pick.py)."""
import math

import pytest
import torch

from meres_core.config import load_config
from meres_core.model.candidate_rank import gain_loss, ranks_by_position
from meres_core.model.coordinates import cell_centres
from meres_core.model.meres import MERES
from meres_core.model.landmark_phrase import landmark_phrase, landmark_rows
from meres_core.model.relation_pick import (RELATION_GAIN, RELATIONS, SCALE, RelationPick, relation_gain_loss,
                                            relation_ids, relation_indicators, relation_loss)

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
    """A pick whose sentence says `relation`, on a map with an object left (cols 1-4), the landmark
    (cols 10-13, what the landmark phrase's map marks) and an object right of it (cols 16-19), nearer."""
    pick = RelationPick(text_dim=4)
    with torch.no_grad():
        pick.relation.bias.copy_(torch.tensor([20.0 if r == relation else 0.0 for r in RELATIONS]))
        pick.gain.bias.fill_(gain)
    candidates = torch.full((1, 1, H, W), -6.0)
    centre_logits = torch.full((1, 1, H, W), -6.0)
    landmark_logits = torch.full((1, 1, H, W), -10.0)
    for cols in ((1, 5), (10, 14), (16, 20)):
        candidates[0, 0, 6:10, cols[0]:cols[1]] = 4.0
        centre_logits[0, 0, 8, cols[0] + 2] = 3.0
    landmark_logits[0, 0, 6:10, 10:14] = 10.0
    text, valid = torch.ones(1, 2, 4), torch.ones(1, 2, dtype=torch.bool)
    return pick, (candidates, centre_logits, landmark_logits, torch.tensor([True]), text, valid)


@pytest.mark.parametrize("relation, raised", [("left", (1, 5)), ("right", (16, 20)), ("nearest", (16, 20))])
def test_pick_raises_the_named_candidate_and_lowers_the_others_and_the_landmark(relation, raised):
    pick, inputs = _three_objects(relation)
    prior, (relation_logits, gain) = pick(*inputs)
    prior = prior[0, 0]
    for cols in ((1, 5), (10, 14), (16, 20)):
        expected = SCALE if cols == raised else -SCALE  # the landmark's own pixels are lowered too
        assert torch.allclose(prior[6:10, cols[0]:cols[1]], torch.full((4, 4), expected), atol=1e-3), cols
    assert prior[0:5].abs().max() == 0  # off the candidates
    assert relation_logits.shape == (1, len(RELATIONS)) and gain.item() == pytest.approx(1.0)


def test_zero_gain_no_landmark_phrase_or_a_lone_candidate_leaves_the_mask_alone():
    pick, inputs = _three_objects("left", gain=0.0)
    assert pick(*inputs)[0].abs().max() == 0
    pick, (candidates, centre_logits, landmark_logits, named, text, valid) = _three_objects("left")
    assert pick(candidates, centre_logits, landmark_logits, ~named, text, valid)[0].abs().max() == 0
    candidates[..., 9:] = -6.0  # only the left object is left
    assert pick(candidates, centre_logits, landmark_logits, named, text, valid)[0].abs().max() == 0


@pytest.mark.parametrize("sentence, phrase", [
    ("the circle left of the red square", "the red square"),
    ("the blue star nearest the green heart", "the green heart"),
    ("The mug next to the laptop.", "the laptop"),
    ("the cup to the right of the plate", "the plate"),
    ("the triangle closest to the left edge", None),  # an edge, not an object
    ("the leftmost circle", None),
    ("the second star from the left", None),
    ("the circle left of the", None),
])
def test_landmark_phrase_is_the_object_after_the_relation_words(sentence, phrase):
    assert landmark_phrase(sentence) == phrase


def test_landmark_rows_share_one_row_per_phrase_and_image():
    sentences = ["the circle left of the square", "the star above the square", "the square",
                 "the circle nearest the heart", "the red circle"]
    rows = landmark_rows(sentences)  # one image: "the square" is a sentence already
    assert rows.sentences == sentences + ["the heart"] and rows.batch == 5
    assert rows.landmark_index.tolist() == [2, 2, -1, 5, -1, -1] and rows.source.tolist() == [0, 1, 2, 3, 4, 3]
    rows = landmark_rows(sentences[:2] + sentences[:1], images=["a", "b", "b"], known=[True, True, False])
    assert rows.sentences[3:] == ["the square", "the square"]  # one per image; the third's landmark is unknown
    assert rows.landmark_index.tolist() == [3, 4, -1, -1, -1] and rows.source.tolist() == [0, 1, 2, 0, 1]


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


def _relation_cfg(**extra):
    return load_config("tiny", overrides={"model": {"candidate_rank_prior": True, "candidate_centres": True,
                                                   "candidate_rank_pick": True, "relation_pick": True, **extra}})


def test_model_with_relation_pick_starts_unchanged_and_learns(scene):
    with pytest.raises(ValueError, match="relation_pick needs model.candidate_centres"):
        load_config("tiny", overrides={"model": {"relation_pick": True}})
    cfg = _relation_cfg()
    torch.manual_seed(0)
    model = MERES(cfg.model).eval()  # no dropout: the two forwards must be comparable
    without = MERES(load_config("tiny", overrides={"model": {"candidate_rank_prior": True, "candidate_centres": True,
                                                             "candidate_rank_pick": True}}).model).eval()
    without.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("relation_pick.")})
    assert without.landmark_rows(["the circle left of the square"]).sentences == ["the circle left of the square"]
    from meres_core.data.transforms import preprocess_image

    rows = model.landmark_rows(["the circle left of the square", "the red circle"], images=[0, 1])
    assert rows.sentences[2:] == ["the square"]
    image = preprocess_image(scene, cfg.model.vision.img_size)[None].expand(2, -1, -1, -1)
    out = model(image, *model.tokenize(rows.sentences), rows.source, rows.landmark_index)
    unchanged = without(image, *without.tokenize(rows.sentences), rows.source).logits
    torch.testing.assert_close(out.logits, unchanged)  # zero-initialized
    assert out.relation_logits.shape == (3, len(RELATIONS))
    masks = torch.zeros(3, 64, 64)
    masks[:2, 20:40, 4:20] = 1
    masks[2, 20:40, 28:36] = 1  # the phrase row learns the landmark's mask
    ranked = torch.full((3, 8, 2), NAN)
    ranked[0, :2] = torch.tensor([[-0.6, -0.1], [0.6, -0.1]])
    ranked[1, 0] = torch.tensor([-0.6, -0.1])
    ranked[2, 0] = torch.tensor([0.0, -0.1])
    landmark = torch.tensor([[0.0, -0.1], [NAN, NAN], [NAN, NAN]])
    losses = model.compute_loss(out, masks, masks, ranked, landmark, relation_ids(["left", "", ""]))
    assert {"relation", "relation_gain"} <= set(losses) and "landmark" not in losses
    assert losses["relation_gain"].item() == pytest.approx(RELATION_GAIN ** 2 / 3)
    losses["loss"].backward()
    assert model.relation_pick.relation.weight.grad.abs().sum() > 0 and model.relation_pick.gain.bias.grad != 0


def _acting_relation_model(**overrides) -> MERES:
    """A random tiny model whose peaks, masks and relation pick act on random pixels."""
    torch.manual_seed(0)
    model = MERES(_relation_cfg(**overrides).model).eval()
    with torch.no_grad():
        model.centre_head.net[-1].weight.normal_(0.0, 3.0)
        model.centre_head.net[-1].bias.fill_(1.0)
        model.decoder.head.bias.fill_(2.0)  # a mask over most of the map: peaks to pick among
        model.relation_pick.relation.weight.normal_(0.0, 0.3)
        model.relation_pick.gain.bias.fill_(0.5)
    return model


def test_decode_reads_the_landmark_from_the_phrase_row():
    model = _acting_relation_model()
    pixels = torch.randn(1, 3, 64, 64)
    rows = model.landmark_rows(["the circle left of the square", "the red circle"])
    with torch.no_grad():
        text, valid = model.encode_text(*model.tokenize(rows.sentences))
        features = model.encode_image(pixels)
        out, maps = model._guide(features, text, valid)
        with_phrase = model.decode(features, text, valid, rows.landmark_index).logits
        no_phrase = model.decode(features, text, valid).logits
        centres = model.centre_head(maps[1])

        def prior(landmark_logits):
            return model.relation_pick(out.logits[:1], centres[:1], landmark_logits, torch.tensor([True]),
                                       text[:1], valid[:1])[0]

        from_phrase, from_nothing = prior(out.logits[2:3]), prior(torch.full_like(out.logits[:1], -10.0))
    # The relation prior is the only difference, on the sentence that names a landmark only, and it is the
    # one computed from the phrase row's map.
    torch.testing.assert_close(with_phrase[1:], no_phrase[1:])
    torch.testing.assert_close(with_phrase[:1] - no_phrase[:1], from_phrase)
    assert from_phrase.abs().amax() > 0 and (from_phrase - from_nothing).abs().amax() > 0


def test_onnxruntime_agrees_with_eager_with_relation_pick(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from meres_core.export_onnx import ImagePath, OnnxImagePath, export

    model = _acting_relation_model(coord_features=True)
    pixels = torch.randn(1, 3, 64, 64)
    rows = model.landmark_rows(["the circle left of the square", "the red circle"])
    with torch.no_grad():
        text, valid = model.encode_text(*model.tokenize(rows.sentences))
        eager = ImagePath(model)(pixels, text, valid, rows.landmark_index)
        assert (eager[0] - ImagePath(model)(pixels, text, valid, torch.full((3,), -1))[0]).abs().amax() > 0
    session = OnnxImagePath(export(model, tmp_path / "relations.onnx", {"source": "test"}), model, torch.device("cpu"))
    torch.testing.assert_close(session(pixels, text, valid, rows.landmark_index), eager, atol=1e-4, rtol=1e-4)
