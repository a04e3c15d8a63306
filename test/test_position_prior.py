"""model.sentence_position_prior: a sentence-dependent slope over the logits (model/position_prior.py)."""
import torch

from meres_core.config import load_config
from meres_core.model.position_prior import SCALE, STEP_WIDTH, SentencePositionPrior

SENTENCES = ["the leftmost circle", "the rightmost circle"]


def with_prior():
    return load_config("tiny", overrides={"model": {"sentence_position_prior": True}})


def test_warm_start_from_a_model_without_it_keeps_the_function_until_it_learns(warm_started):
    old, new, inputs = warm_started(with_prior(), SENTENCES)
    with torch.no_grad():
        expected = old(*inputs).logits
        assert torch.allclose(new(*inputs).logits, expected, atol=1e-5)
        new.position_prior.proj.weight.normal_()
        changed = new(*inputs).logits
    assert not torch.allclose(changed, expected, atol=1e-3)
    assert not torch.allclose(changed[0] - expected[0], changed[1] - expected[1], atol=1e-3)  # per sentence


def test_the_prior_is_a_plane_over_the_image_and_about_the_candidates():
    prior = SentencePositionPrior(text_dim=4)
    text, valid = torch.randn(1, 3, 4), torch.ones(1, 3, dtype=torch.bool)
    xs = torch.tensor([-0.75, -0.25, 0.25, 0.75])
    with torch.no_grad():
        prior.proj.bias.copy_(torch.tensor([2.0, 0.0, 0.0, 0.0, 0.5]) / SCALE)  # a = 2, c = 0.5
    out = prior(torch.zeros(1, 1, 2, 4), text, valid)[0, 0]
    assert torch.allclose(out, (2 * xs + 0.5).expand(2, 4))
    # a' = 4 about the candidates: the mask keeps the two left columns, centroid x_c = -0.5.
    logits = torch.tensor([[5.0, 5.0, -5.0, -5.0]]).expand(2, 4)[None, None]
    with torch.no_grad():
        prior.proj.bias.copy_(torch.tensor([0.0, 0.0, 4.0, 0.0, 0.0]) / SCALE)
    out = prior(logits, text, valid)[0, 0]
    step = 4 * torch.tanh((xs + 0.5) / STEP_WIDTH)
    assert torch.allclose(out - logits[0, 0], step.expand(2, 4), atol=1e-3)


def test_it_learns_left_from_right_where_the_rest_of_the_model_cannot_tell_them_apart():
    """Two sentences, one image: "left" wants the left half, "right" the right half. With everything
    but the prior frozen, only the prior can separate them, and it does."""
    torch.manual_seed(0)
    text = torch.randn(2, 5, 8)
    valid = torch.ones(2, 5, dtype=torch.bool)
    prior = SentencePositionPrior(text_dim=8)
    target = torch.zeros(2, 1, 6, 8)
    target[0, ..., :4], target[1, ..., 4:] = 1.0, 1.0
    optimizer = torch.optim.Adam(prior.parameters(), lr=0.05)
    for _ in range(200):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(prior(torch.zeros(2, 1, 6, 8), text, valid), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits = prior(torch.zeros(2, 1, 6, 8), text, valid)
    assert ((logits > 0).float() == target).all()


def test_about_the_candidates_it_cuts_the_leftmost_of_two_where_a_plane_over_the_image_cannot():
    """Two equal blobs anywhere (both may lie on one side); "left" wants the leftmost, "right" the
    rightmost. Only the prior learns (the rest of the model frozen to a mask of both blobs). A plane
    over the image ranks the blobs but puts one cut for every scene; about the candidates' centroid
    the cut falls between the two blobs of each scene."""
    generator = torch.Generator().manual_seed(0)

    def scenes(n):
        logits = torch.full((n, 1, 8, 16), -6.0)
        target = torch.zeros(n, 1, 8, 16)
        for i in range(n):
            columns = torch.randperm(14, generator=generator)[:2] + 1
            for column in columns:
                logits[i, 0, 3:5, column] = 4.0
            pick = columns.min() if i % 2 == 0 else columns.max()  # even: "left", odd: "right"
            target[i, 0, 3:5, pick] = 1.0
        return logits, target

    text = torch.zeros(2, 1, 2)
    text[0, 0, 0] = text[1, 0, 1] = 1.0
    valid = torch.ones(2, 1, dtype=torch.bool)

    def exact_masks(image_plane_only: bool) -> float:
        torch.manual_seed(0)
        prior = SentencePositionPrior(text_dim=2)
        optimizer = torch.optim.Adam(prior.parameters(), lr=0.05)
        for _ in range(300):
            logits, target = scenes(32)
            out = prior(logits, text.repeat(16, 1, 1), valid.repeat(16, 1))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(out, target, pos_weight=torch.tensor(20.0))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if image_plane_only:
                with torch.no_grad():
                    prior.proj.weight[2:4].zero_()
                    prior.proj.bias[2:4].zero_()
        logits, target = scenes(200)
        with torch.no_grad():
            masks = prior(logits, text.repeat(100, 1, 1), valid.repeat(100, 1)) > 0
        return (masks == target.bool()).flatten(1).all(1).float().mean().item()

    plane, about_candidates = exact_masks(True), exact_masks(False)
    assert about_candidates > 0.95 and plane < 0.8, (plane, about_candidates)
