"""model.candidate_centres: the rank prior's candidates as the peaks of a centre heatmap (model/instance_centres.py)."""
import pytest
import torch

from meres_core.config import load_config
from meres_core.data.transforms import preprocess_image
from meres_core.model.candidate_rank import SIDES, candidate_ranks, centre_candidate_ranks
from meres_core.model.coordinates import cell_centres
from meres_core.model.instance_centres import (PEAK_THRESHOLD, MapHead, centre_focal_loss, centre_heatmap,
                                               centre_peaks)
from meres_core.model.meres import MERES


def _at(h: int, w: int, row: int, col: int) -> list[float]:
    """x, y in [-1, 1] of the centre of cell (row, col)."""
    return [cell_centres(w, torch.zeros(1))[col].item(), cell_centres(h, torch.zeros(1))[row].item()]


def test_heatmap_peaks_at_each_centre_and_ignores_padding():
    centres = torch.tensor([[_at(10, 16, 2, 3), _at(10, 16, 7, 12), [float("nan")] * 2]])
    heat = centre_heatmap(centres, 10, 16)[0, 0]
    assert heat[2, 3] == 1 and heat[7, 12] == 1 and (heat == 1).sum() == 2
    assert 0 < heat[2, 4] < 1 and heat[2, 4] == heat[3, 3]  # a Gaussian about the cell
    assert centre_heatmap(torch.full((1, 3, 2), float("nan")), 10, 16).abs().sum() == 0  # absent target: no peak


def test_two_overlapping_objects_are_two_candidates():
    """One connected blob of two overlapping squares: components count one candidate, centres two."""
    logits = torch.full((1, 1, 12, 20), -6.0)
    logits[0, 0, 2:8, 2:8] = 4.0
    logits[0, 0, 4:10, 6:12] = 4.0  # overlaps the first
    centre_logits = torch.full((1, 1, 12, 20), -6.0)
    centre_logits[0, 0, 5, 5] = centre_logits[0, 0, 7, 9] = 3.0
    centre_logits[0, 0, 1, 17] = 3.0  # a peak off the mask is no candidate
    left = SIDES.index("left")
    components = candidate_ranks(logits)[0, left]
    assert components[3, 3] == components[8, 10] == 0  # one component: both "first from the left"
    ranks = centre_candidate_ranks(logits, centre_logits)[0, left]
    assert ranks[3, 3] == 0 and ranks[8, 10] == 1  # each square's own pixels: its own rank
    assert ranks[1, 17] == -1 and ranks[0, 0] == -1  # off the mask
    no_peaks = centre_candidate_ranks(logits, torch.full((1, 1, 12, 20), -6.0))
    assert (no_peaks == -1).all()  # no centre above PEAK_THRESHOLD: the prior adds nothing


def test_peaks_are_local_maxima_above_the_threshold():
    centre_logits = torch.full((1, 1, 6, 6), -6.0)
    centre_logits[0, 0, 1, 1] = 2.0
    centre_logits[0, 0, 1, 2] = 1.0  # beside a higher one: not a peak
    centre_logits[0, 0, 4, 4] = torch.logit(torch.tensor(PEAK_THRESHOLD)) - 0.1  # under the threshold
    centres, valid = centre_peaks(centre_logits, torch.ones(1, 6, 6, dtype=torch.bool))
    assert valid.sum() == 1 and torch.allclose(centres[0, 0], torch.tensor(_at(6, 6, 1, 1)))


def test_focal_loss_is_centernets_and_learns_the_peaks():
    centres = torch.tensor([[_at(8, 8, 2, 2), [float("nan")] * 2]])
    target = centre_heatmap(centres, 8, 8)
    logits = torch.randn(1, 1, 8, 8)
    p = torch.sigmoid(logits)
    pos = target == 1
    expected = (-(1 - p[pos]) ** 2 * torch.log(p[pos])).sum() + (
        -(1 - target[~pos]) ** 4 * p[~pos] ** 2 * torch.log(1 - p[~pos])).sum()
    assert torch.allclose(centre_focal_loss(logits, centres), expected, rtol=1e-5)

    # a head on features that mark two objects learns a peak at each centre and none elsewhere
    torch.manual_seed(0)
    features = torch.zeros(1, 4, 8, 8)
    features[0, 0, 1:4, 1:4] = 1.0  # object A, centre (2, 2)
    features[0, 1, 4:7, 4:7] = 1.0  # object B, centre (5, 5)
    centres = torch.tensor([[_at(8, 8, 2, 2), _at(8, 8, 5, 5)]])
    head = MapHead(4)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.01)
    for _ in range(400):
        loss = centre_focal_loss(head(features), centres)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    found, valid = centre_peaks(head(features).detach(), torch.ones(1, 8, 8, dtype=torch.bool))
    assert valid.sum() == 2
    assert {tuple(c) for c in found[0, valid[0]].tolist()} == {tuple(_at(8, 8, 2, 2)), tuple(_at(8, 8, 5, 5))}


def test_model_with_centres(tiny_cfg, scene):
    with pytest.raises(ValueError, match="candidate_centres needs model.candidate_rank_prior"):
        load_config("tiny", overrides={"model": {"candidate_centres": True}})
    cfg = load_config("tiny", overrides={"model": {"candidate_rank_prior": True, "candidate_centres": True,
                                                   "centre_weight": 0.5}})
    torch.manual_seed(0)
    model = MERES(cfg.model)
    sentences = ["the second circle from the left", "the red circle"]
    image = preprocess_image(scene, cfg.model.vision.img_size)[None].expand(2, -1, -1, -1)
    out = model(image, *model.tokenize(sentences))
    assert out.centre_logits.shape == out.logits.shape
    masks = torch.zeros(2, 64, 64)
    masks[0, 10:20, 30:40] = masks[1, 30:40, 30:40] = 1
    centres = torch.full((2, 8, 2), float("nan"))
    centres[0, :3] = torch.tensor([[0.1, -0.5], [-0.7, -0.5], [0.7, 0.4]])
    centres[1, 0] = torch.tensor([0.1, 0.1])
    losses = model.compute_loss(out, masks, masks, centres)
    assert torch.allclose(losses["centres"], centre_focal_loss(out.centre_logits, centres))
    others = losses["bce"] + model.cfg.contrastive_weight * losses["contrastive"]  # tiny: no Dice
    assert torch.allclose(losses["loss"], others + 0.5 * losses["centres"], atol=1e-6)
    losses["centres"].backward()
    assert model.centre_head.net[0].weight.grad.abs().sum() > 0
    assert model.decoder.fuse[-1][0].weight.grad.abs().sum() > 0  # the decoder learns where instances are


def test_onnxruntime_agrees_with_eager_with_centres(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from meres_core.export_onnx import ImagePath, OnnxImagePath, export

    cfg = load_config("tiny", overrides={"model": {"coord_features": True, "candidate_rank_prior": True,
                                                   "candidate_centres": True}})
    torch.manual_seed(0)
    model = MERES(cfg.model).eval()
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # weights that make the random model's peaks and prior act
        text, valid = model.encode_text(*model.tokenize(["the second circle from the left", "the red circle"]))
        model.centre_head.net[-1].weight.normal_(0.0, 3.0)
        model.centre_head.net[-1].bias.fill_(1.0)
        model.candidate_rank.proj.weight.normal_(0.0, 0.3)
        out, (_, fine) = model._guide(model.encode_image(pixels), text, valid)
        ranks = centre_candidate_ranks(out.logits, model.centre_head(fine))
        assert (ranks >= 1).any()  # at least two candidates somewhere
        eager = ImagePath(model)(pixels, text, valid)
    session = OnnxImagePath(export(model, tmp_path / "centres.onnx", {"source": "test"}), model, torch.device("cpu"))
    torch.testing.assert_close(session(pixels, text, valid), eager, atol=1e-4, rtol=1e-4)
