"""Coordinate maps (model.coord_features): values, and a switch that changes the computation."""
import torch

from meres_core.config import load_config
from meres_core.model.coordinates import append_coordinates
from meres_core.model.meres import MERES


def test_coordinates_are_cell_centres_in_minus_one_to_one():
    out = append_coordinates(torch.zeros(2, 3, 2, 4))
    assert out.shape == (2, 5, 2, 4)
    assert torch.allclose(out[0, 3, 0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))  # x, left to right
    assert torch.allclose(out[1, 4, :, 0], torch.tensor([-0.5, 0.5]))  # y, top to bottom
    assert torch.equal(out[:, :3], torch.zeros(2, 3, 2, 4))


def test_switch_makes_the_output_depend_on_where_things_are():
    """Zero visual features carry no position: without coordinates the centre of the map is
    nearly flat (only zero padding marks the borders, and bilinear upsampling carries a trace
    of it inwards); with them the decoder can tell left from right."""
    spreads = {}
    for switch in (False, True):
        cfg = load_config("tiny", overrides={"model": {"coord_features": switch, "vision": {"img_size": 256}}})
        torch.manual_seed(0)
        model = MERES(cfg.model).eval()
        size = cfg.model.vision.img_size
        features = [torch.zeros(1, c, size // s, size // s) for c, s in zip(model.vision.channels, (4, 8, 16, 32))]
        ids, attention = model.tokenize(["the leftmost shape"])
        with torch.no_grad():
            text, valid = model.encode_text(ids, attention)
            logits = model.decode(features, text, valid).logits[0, 0]  # (h, w) at stride 4
        centre = logits[16:-16, 16:-16]  # out of reach of the padding at every stage
        spreads[switch] = float(centre.max() - centre.min())
    assert spreads[True] > 20 * spreads[False], spreads
