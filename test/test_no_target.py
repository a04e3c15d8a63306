"""model.no_target_head: a no-target classifier folded into the logits (model/no_target.py)."""
import math

import torch
import torch.nn.functional as F

from meres_core.config import load_config
from meres_core.data.transforms import preprocess_image
from meres_core.model.losses import dice, segmentation_bce, target_bce
from meres_core.model.meres import MERES
from meres_core.model.no_target import INIT_BIAS, NoTargetHead

SENTENCES = ["the red circle", "the blue heart"]


def with_head():
    return load_config("tiny", overrides={"model": {"no_target_head": True}})


def test_warm_start_from_a_model_without_it_keeps_the_function_up_to_a_constant_factor_until_it_learns(warm_started):
    old, new, inputs = warm_started(with_head(), SENTENCES)
    with torch.no_grad():
        expected = old(*inputs).logits
        out = new(*inputs)
        gated = torch.sigmoid(expected.double()) * torch.sigmoid(torch.tensor(INIT_BIAS, dtype=torch.double))
        assert torch.allclose(out.logits.double(), torch.logit(gated), atol=1e-4)
        assert torch.allclose(out.target_logit, torch.full((2,), INIT_BIAS))
        new.no_target.mlp[-1].weight.normal_()
        changed = new(*inputs)
    assert not torch.allclose(changed.target_logit[0], changed.target_logit[1], atol=1e-3)  # per sentence


def test_its_loss_counts_only_when_configured(tiny_cfg, scene):
    torch.manual_seed(0)
    image = preprocess_image(scene, tiny_cfg.model.vision.img_size)[None].expand(2, -1, -1, -1)
    masks = torch.zeros(2, 64, 64)
    masks[0, 10:20, 10:20] = 1  # sentence 0 present, sentence 1 absent
    plain = MERES(tiny_cfg.model)
    ids, attention = plain.tokenize(SENTENCES)
    assert "no_target" not in plain.compute_loss(plain(image, ids, attention), masks)
    model = MERES(with_head().model)
    out = model(image, ids, attention)
    losses = model.compute_loss(out, masks)
    expected = F.binary_cross_entropy_with_logits(out.target_logit, torch.tensor([1.0, 0.0]))
    assert torch.allclose(losses["no_target"], expected)
    mask_terms = losses["bce"] + model.cfg.contrastive_weight * losses["contrastive"]  # tiny: no Dice
    assert torch.allclose(losses["loss"], mask_terms + model.cfg.no_target_weight * losses["no_target"], atol=1e-6)
    assert math.isclose(float(target_bce(torch.tensor([20.0, -20.0]), masks)), 0.0, abs_tol=1e-6)


def test_it_empties_the_mask_of_an_absent_target_where_the_mask_cannot_tell():
    """Every scene has one confident blob; the sentence names a colour (one-hot), the blob's decoder
    features carry its colour. The target is present only when the two agree, and the mask is the
    same either way: only the head can answer "not here", and after training it does, while
    present targets keep their mask."""
    generator = torch.Generator().manual_seed(0)

    def scenes(n):
        logits = torch.full((n, 1, 8, 8), -6.0)
        logits[:, 0, 2:5, 3:6] = 4.0
        blob_colour = torch.randint(0, 3, (n,), generator=generator)
        asked = torch.randint(0, 3, (n,), generator=generator)
        fine = torch.zeros(n, 3, 8, 8)
        fine[torch.arange(n), blob_colour, 2:5, 3:6] = 1.0
        text = F.one_hot(asked, 3).float()[:, None]  # (n, 1, 3)
        target = (logits > 0).float() * (blob_colour == asked).float()[:, None, None, None]
        return logits, fine, text, target

    torch.manual_seed(0)
    head = NoTargetHead(coarse_dim=2, fine_dim=3, text_dim=3, hidden=32)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.01)
    valid = torch.ones(64, 1, dtype=torch.bool)
    for _ in range(400):
        logits, fine, text, target = scenes(64)
        gated, t = head(logits, torch.zeros(64, 2, 1, 1), fine, text, valid)
        loss = segmentation_bce(gated, target) + dice(gated, target) + target_bce(t, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    logits, fine, text, target = scenes(256)
    with torch.no_grad():
        gated, _ = head(logits, torch.zeros(256, 2, 1, 1), fine, text, torch.ones(256, 1, dtype=torch.bool))
    found = (gated > 0).flatten(1).any(1)
    present = target.flatten(1).any(1)
    assert (logits > 0).flatten(1).any(1).all()  # without the head every sentence is "found"
    assert (found == present).float().mean() > 0.97
    assert ((gated > 0) == (target > 0))[present].all()  # present targets keep their mask
