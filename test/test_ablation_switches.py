"""Every Table 3 / 4 switch changes the computation it names.

Each variant gets the full model's weights (the variant's modules are a subset of the full
model's), so any difference in the output comes from the switch alone. The guidance set G is
caught where it enters the decoder and compared with the tensors that Table 3 says it holds.
"""
import pytest
import torch

from meres_core.config import ExtractorConfig, load_config
from meres_core.model.expression_extractor import VisualExpressionExtractor
from meres_core.model.losses import downsample_mask, pixel_contrastive
from meres_core.model.meres import MERES

SENTENCES = ["the red circle left of the square", "star"]

EXTRACTOR_SWITCHES = [
    {"selection": "none"},
    {"selection": "sigmoid"},
    {"use_global_cue": False},
    {"use_local_cue": False},
    {"refinement": False},
    {"relationship": False},
    {"topk_mask_in_norm": False},
    {"softmax_temperature": 0.1},
    {"divide_by_k": False},
]


def build(override=None, seed=0):
    # 96 px: F4 is 3x3, so top-k (K = 3 of 9) differs from "no selection" and from the sigmoid rule
    cfg = load_config("tiny", overrides={"model": {"vision": {"img_size": 96}, **(override or {})}})
    torch.manual_seed(seed)
    return MERES(cfg.model).eval()


@pytest.fixture(scope="module")
def full():
    return build()


@pytest.fixture(scope="module")
def inputs(full):
    torch.manual_seed(5)
    ids, attention = full.tokenize(SENTENCES)
    return torch.randn(len(SENTENCES), 3, 96, 96), ids, attention


def with_full_weights(variant: MERES, full: MERES) -> MERES:
    result = variant.load_state_dict(full.state_dict(), strict=False)
    assert not result.missing_keys, "a variant has no parameters of its own"
    return variant


@torch.no_grad()
def run(model: MERES, inputs):
    """-> (output, G, G's padding) with G as the decoder received it."""
    caught = {}
    hook = model.decoder.register_forward_hook(lambda m, args, out: caught.update(g=args[1], pad=args[2]))
    try:
        out = model(*inputs)
    finally:
        hook.remove()
    return out, caught["g"], caught["pad"]


@torch.no_grad()
def parts(full: MERES, inputs):
    """The full model's Q_l, F_v, Q^_l and validity, computed step by step."""
    images, ids, attention = inputs
    text, valid = full.encode_text(ids, attention)
    q_l = full.text_proj(text)
    pixels = full.pixel_proj(full.encode_image(images)[-1].flatten(2).transpose(1, 2))
    q_hat_l = q_l
    for block in full.enhancer:
        q_hat_l = block(q_hat_l, pixels)
    return q_l, pixels, q_hat_l * valid[..., None], valid


def close(a, b):
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("guidance", ["le", "enhanced_le", "ve", "enhanced_le_all_pixels", "enhanced_le_ve"])
def test_table3_guidance_set_holds_the_named_tokens(full, inputs, guidance):
    model = with_full_weights(build({"guidance": guidance}), full)
    out, g, pad = run(model, inputs)
    q_l, pixels, q_hat_l, valid = parts(full, inputs)
    with torch.no_grad():
        ve = full.extractor(pixels, q_hat_l, valid)
    expected = {
        "le": (q_l, ~valid),
        "enhanced_le": (q_hat_l, ~valid),
        "ve": (ve.tokens, ~ve.valid),
        "enhanced_le_all_pixels": (torch.cat([q_hat_l, pixels], 1),
                                   torch.cat([~valid, torch.zeros_like(pixels[..., 0], dtype=torch.bool)], 1)),
        "enhanced_le_ve": (torch.cat([q_hat_l, ve.tokens], 1), torch.cat([~valid, ~ve.valid], 1)),
    }[guidance]
    close(g, expected[0])
    assert torch.equal(pad, expected[1])
    if guidance != "enhanced_le_ve":
        assert not torch.allclose(out.logits, run(full, inputs)[0].logits, atol=1e-4), "same output as the full model"
    assert (out.relevance is None) == (guidance not in ("ve", "enhanced_le_ve"))


@pytest.mark.parametrize("switch", EXTRACTOR_SWITCHES, ids=lambda s: str(s))
def test_table4_extractor_switch_changes_the_visual_expression_tokens(full, inputs, switch):
    model = with_full_weights(build({"extractor": switch}), full)
    out, g, pad = run(model, inputs)
    _, pixels, q_hat_l, valid = parts(full, inputs)
    t = q_hat_l.shape[1]
    reference = VisualExpressionExtractor(ExtractorConfig(**switch), full.cfg.dim, full.cfg.num_heads).eval()
    reference.load_state_dict(full.extractor.state_dict(), strict=False)
    with torch.no_grad():
        expected, full_ve = reference(pixels, q_hat_l, valid), full.extractor(pixels, q_hat_l, valid)
    close(g[:, t:], expected.tokens)  # G = {Q^_l, Q^_v} with this variant's Q^_v
    assert torch.equal(pad[:, t:], ~expected.valid)
    assert not torch.allclose(g[:, t:], full_ve.tokens, atol=1e-4), "the switch left Q^_v unchanged"
    assert not torch.allclose(out.logits, run(full, inputs)[0].logits, atol=1e-5), "the switch left the output unchanged"


def test_switch_effects_are_the_named_ones(full, inputs):
    _, pixels, q_hat_l, valid = parts(full, inputs)
    k = 3  # ceil(0.30 * 9)

    def extract(**switch):
        model = with_full_weights(build({"extractor": switch}), full)
        with torch.no_grad():
            return model.extractor(pixels, q_hat_l, valid)

    assert (extract().selected.sum(-1)[valid] == k).all()
    assert extract(selection="none").selected[valid].all()
    sigmoid = extract(selection="sigmoid")
    rule = torch.sigmoid(sigmoid.relevance / full.extractor.tau) > 0.5
    assert torch.equal(sigmoid.selected[valid] | rule[valid], sigmoid.selected[valid])
    assert not extract(use_global_cue=False).valid[:, 0].any()
    assert not extract(use_local_cue=False).valid[:, 1:].any()
    assert not hasattr(build({"extractor": {"refinement": False}}).extractor, "mca")
    assert not hasattr(build({"extractor": {"relationship": False}}).extractor, "mhsa")


def test_contrastive_loss_uses_row_0_of_s_and_its_switch(full, inputs):
    images, ids, attention = inputs
    masks = torch.zeros(len(SENTENCES), 96, 96)
    masks[:, :40, :50] = 1
    out = full(images, ids, attention)
    losses = full.compute_loss(out, masks)
    positives = downsample_mask(masks, out.feature_size).flatten(1)
    row0 = pixel_contrastive(out.relevance[:, 0], out.tau, positives)
    close(losses["contrastive"], row0)  # the global token's row s of S (Eq. 3)
    assert not torch.allclose(row0, pixel_contrastive(out.relevance[:, 1], out.tau, positives))
    close(losses["loss"], losses["bce"] + full.cfg.contrastive_weight * row0)

    off = with_full_weights(build({"contrastive_loss": False}), full)
    off_losses = off.compute_loss(off(images, ids, attention), masks)
    assert "contrastive" not in off_losses
    close(off_losses["loss"], losses["bce"])
