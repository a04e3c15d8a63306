"""Eq. 1-9 of the visual expression extractor against direct re-computation."""
import math

import pytest
import torch
import torch.nn.functional as F

from meres_core.config import ExtractorConfig, load_config
from meres_core.model.expression_extractor import VisualExpressionExtractor, num_selected
from meres_core.model.losses import downsample_mask, pixel_contrastive

B, T, N, D = 2, 5, 20, 8


@pytest.fixture
def inputs():
    torch.manual_seed(0)
    pixels = torch.randn(B, N, D)
    tokens = torch.randn(B, T, D)
    valid = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)  # sample 1 has 2 padding tokens
    return pixels, tokens, valid


def extractor(**kw):
    torch.manual_seed(1)
    return VisualExpressionExtractor(ExtractorConfig(**kw), D, num_heads=2)


def test_k_is_a_ratio_of_pixels():
    assert num_selected(0.30, 225) == 68  # paper preset at 480: F4 is 15x15
    assert num_selected(0.30, 4) == 2
    assert num_selected(0.001, 10) == 1


def test_relevance_is_cosine_similarity(inputs):
    pixels, tokens, valid = inputs
    ext = extractor()
    out = ext(pixels, tokens, valid)
    x, y = ext.phi_v(pixels), ext.phi_l(tokens)  # Eq. 1
    expected = F.cosine_similarity(y[:, :, None], x[:, None], dim=-1)  # Eq. 2
    torch.testing.assert_close(out.relevance, expected, atol=1e-5, rtol=1e-5)


def test_topk_mask_selects_k_best_and_ignores_padding(inputs):
    pixels, tokens, valid = inputs
    out = extractor()(pixels, tokens, valid)
    k = num_selected(0.30, N)
    for b in range(B):
        for t in range(T):
            chosen = out.selected[b, t]
            if not valid[b, t]:
                assert not chosen.any(), "padding tokens select no pixel"
                assert not out.valid[b, t]
                continue
            assert chosen.sum() == k
            best = set(out.relevance[b, t].topk(k).indices.tolist())
            assert set(chosen.nonzero()[:, 0].tolist()) == best


def recompute_f_a(ext, pixels, tokens, valid, temperature=1.0, divide_by_k=True):
    """Eq. 5-7 written out loop by loop (`temperature`, `divide_by_k`: the non-literal readings)."""
    x = F.normalize(ext.phi_v(pixels), dim=-1)
    y = F.normalize(ext.phi_l(tokens), dim=-1)
    k = num_selected(ext.cfg.topk_ratio, N)
    f_a = torch.zeros(B, T, D)
    s_norms = torch.zeros(B, T, N)
    for b in range(B):
        for t in range(T):
            if not valid[b, t]:
                continue
            s = y[b, t] @ x[b].T
            idx = s.topk(k).indices
            m = torch.full((N,), -math.inf)
            m[idx] = 0.0  # Eq. 5
            s_norm = torch.softmax((s + m) / temperature, dim=0)  # Eq. 6
            s_norms[b, t] = s_norm
            f_a[b, t] = (s_norm[:, None] * pixels[b]).sum(0) / (k if divide_by_k else 1)  # Eq. 7
    return f_a, s_norms


def test_eq7_aggregation_matches_direct_computation(inputs):
    pixels, tokens, valid = inputs
    ext = extractor(refinement=False, relationship=False)  # Q^_v = F_a
    out = ext(pixels, tokens, valid)
    f_a, s_norms = recompute_f_a(ext, pixels, tokens, valid)
    torch.testing.assert_close(out.tokens, f_a, atol=1e-5, rtol=1e-4)
    # S_norm sums to one over the selected pixels only, zero elsewhere
    for b in range(B):
        for t in range(T):
            if valid[b, t]:
                assert s_norms[b, t][out.selected[b, t]].sum().item() == pytest.approx(1.0, abs=1e-5)
                assert s_norms[b, t][~out.selected[b, t]].abs().max() == 0


def test_eq6_temperature_and_eq7_without_1_over_k_are_switches(inputs):
    """Literal by default; a temperature on Eq. 6 sharpens S_norm, and dropping the 1/K of Eq. 7
    leaves F_a a weighted average of the selected pixels (S_norm already sums to one)."""
    pixels, tokens, valid = inputs
    assert ExtractorConfig().softmax_temperature is None and ExtractorConfig().divide_by_k
    ext = extractor(refinement=False, relationship=False, softmax_temperature=0.05, divide_by_k=False)
    out = ext(pixels, tokens, valid)
    f_a, s_norms = recompute_f_a(ext, pixels, tokens, valid, temperature=0.05, divide_by_k=False)
    torch.testing.assert_close(out.tokens, f_a, atol=1e-5, rtol=1e-4)
    literal = extractor(refinement=False, relationship=False)(pixels, tokens, valid)
    _, literal_s_norms = recompute_f_a(ext, pixels, tokens, valid)
    assert s_norms[valid].max(-1).values.mean() > literal_s_norms[valid].max(-1).values.mean() + 0.1
    assert out.tokens[valid].norm(dim=-1).mean() > 2 * literal.tokens[valid].norm(dim=-1).mean()
    with pytest.raises(ValueError, match="softmax_temperature must be > 0"):
        load_config("tiny", overrides={"model": {"extractor": {"softmax_temperature": 0.0}}})


def test_eq8_eq9_residual_structure(inputs):
    pixels, tokens, valid = inputs
    ext = extractor()
    out = ext(pixels, tokens, valid)
    f_a, _ = recompute_f_a(ext, pixels, tokens, valid)
    blocked = ~out.selected & out.valid[..., None]
    f_hat = ext.mca(f_a, pixels, attn_mask=blocked) + f_a  # Eq. 8
    f_r = ext.refine_mlp(f_hat) + f_hat
    q_hat = ext.mhsa(f_r, key_padding_mask=~out.valid) + f_r  # Eq. 9
    q_v = (ext.relation_mlp(q_hat) + q_hat) * out.valid[..., None]
    torch.testing.assert_close(out.tokens, q_v, atol=1e-5, rtol=1e-4)


def test_mca_attends_only_to_selected_pixels(inputs):
    pixels, tokens, valid = inputs
    ext = extractor()
    out = ext(pixels, tokens, valid)
    blocked = (~out.selected & out.valid[..., None]).repeat_interleave(2, 0)  # (B*heads, T, N)
    kv = ext.mca.norm_kv(pixels)
    _, weights = ext.mca.attn(ext.mca.norm_q(out.tokens), kv, kv, attn_mask=blocked, need_weights=True)
    rows = out.valid[..., None].expand_as(out.selected)
    assert weights[~out.selected & rows].abs().max() == 0
    assert (weights[out.selected & rows] > 0).all()


def test_padding_tokens_do_not_change_valid_outputs(inputs):
    pixels, tokens, valid = inputs
    ext = extractor()
    out = ext(pixels, tokens, valid)
    garbage = tokens.clone()
    garbage[1, 3:] = 1e3 * torch.randn(2, D)
    out2 = ext(pixels, garbage, valid)
    torch.testing.assert_close(out.tokens[1, :3], out2.tokens[1, :3], atol=1e-5, rtol=1e-4)
    assert out2.tokens[1, 3:].abs().max() == 0


def test_cue_switches_choose_rows(inputs):
    pixels, tokens, valid = inputs
    only_global = extractor(use_local_cue=False)(pixels, tokens, valid)
    assert only_global.valid[:, 0].all() and not only_global.valid[:, 1:].any()
    only_local = extractor(use_global_cue=False)(pixels, tokens, valid)
    assert not only_local.valid[:, 0].any() and torch.equal(only_local.valid[:, 1:], valid[:, 1:])


def test_selection_variants(inputs):
    pixels, tokens, valid = inputs
    none = extractor(selection="none")(pixels, tokens, valid)
    assert none.selected[valid].all()
    sig = extractor(selection="sigmoid")(pixels, tokens, valid)
    assert (sig.selected.sum(-1)[valid] >= 1).all()
    assert torch.isfinite(sig.tokens).all()


def test_contrastive_loss_is_eq3():
    torch.manual_seed(0)
    s = torch.rand(2, 9) * 2 - 1
    tau = torch.tensor(0.07)
    positive = torch.zeros(2, 9)
    positive[0, :3] = 1
    sig = torch.sigmoid(s / tau)
    manual = torch.where(positive.bool(), -torch.log(sig), -torch.log(1 - sig)).mean()  # Eq. 3
    torch.testing.assert_close(pixel_contrastive(s, tau, positive), manual)


def test_downsampling_rule_is_half_area():
    mask = torch.zeros(1, 8, 8)
    mask[0, :4, :2] = 1  # half of the top-left 4x4 cell
    mask[0, 4:, 4:] = 1  # all of the bottom-right cell
    mask[0, :1, 4:] = 1  # a quarter of the top-right cell
    assert downsample_mask(mask, (2, 2)).tolist() == [[[1.0, 0.0], [0.0, 1.0]]]


def test_gradients_reach_tau_and_projections(inputs):
    pixels, tokens, valid = inputs
    ext = extractor()
    out = ext(pixels, tokens, valid)
    positive = torch.zeros(B, N)
    positive[:, :5] = 1
    loss = pixel_contrastive(out.relevance[:, 0], ext.tau, positive) + out.tokens.pow(2).mean()
    loss.backward()
    for name in ("log_tau", "phi_v.weight", "phi_l.weight"):
        grad = dict(ext.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
