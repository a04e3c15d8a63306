"""The model's fast paths (issue 11) compute what the plain paths compute, and are in use.

No timings: each test checks the structure a fix put in place (which kernels run, what runs
once per image), so it fails on the code without that fix.
"""
import copy

import numpy as np
import pytest
import torch
from torch.profiler import profile
from torch.utils.flop_counter import FlopCounterMode

from meres_core.config import load_config
from meres_core.inference import Segmenter
from meres_core.model.attention import Attention
from meres_core.model.encoders import set_fused_window_attention
from meres_core.model.meres import MERES


def test_attention_equals_nn_multihead_attention_with_both_masks():
    torch.manual_seed(0)
    attention = Attention(32, 4, kv_dim=24).eval()
    query, kv = torch.randn(3, 50, 32), torch.randn(3, 7, 24)
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[1, 4:] = True
    blocked = torch.rand(3, 50, 7) > 0.6
    blocked[..., 0] = False
    ours = attention(query, kv, key_padding_mask=padding, attn_mask=blocked)
    q, k = attention.norm_q(query), attention.norm_kv(kv)
    reference, _ = attention.attn(q, k, k, key_padding_mask=padding, attn_mask=blocked.repeat_interleave(4, 0),
                                  need_weights=False)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_attention_projects_with_matmuls_not_a_weight_copied_per_position():
    # nn.MultiheadAttention(batch_first=True) projected (L, B, E) views, which under autocast ran as
    # a bmm against the weight expanded L times. Ours: plain linear layers, then the fused kernel.
    attention = Attention(32, 4, kv_dim=24).eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16), profile() as log:
        attention(torch.randn(2, 400, 32), torch.randn(2, 7, 24))
    ops = {event.key for event in log.key_averages()}
    assert "aten::bmm" not in ops, sorted(ops)


def tiny_model(**model):
    torch.manual_seed(0)
    cfg = load_config("tiny", overrides={"model": model} if model else None)
    return MERES(cfg.model).eval()


@pytest.mark.parametrize("guidance", ["le", "enhanced_le_all_pixels", "enhanced_le_ve"])
def test_one_image_for_k_sentences_equals_each_sentence_alone(guidance):
    model = tiny_model(coord_features=True, guidance=guidance)
    ids, attention = model.tokenize(["the red circle", "the blue square on the right of the picture", "x"])
    with torch.inference_mode():
        text, valid = model.encode_text(ids, attention)
        features = model.encode_image(torch.randn(1, 3, 64, 64))
        together = model.decode(features, text, valid).logits
        copied = model.decode([f.expand(3, -1, -1, -1) for f in features], text, valid).logits  # batch B images
        alone = torch.cat([model.decode(features, text[i:i + 1], valid[i:i + 1]).logits for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together, copied, atol=1e-5, rtol=1e-5)


def test_an_extra_sentence_costs_only_the_sentence_dependent_work():
    # The image-side work (F4 projection, the encoder-feature half of each fusion convolution, pixel
    # keys / values) runs once per image: the second sentence adds much less than the first costs.
    model = tiny_model(coord_features=True)
    ids, attention = model.tokenize(["the red circle", "the blue square"])
    with torch.inference_mode():
        text, valid = model.encode_text(ids, attention)
        features = model.encode_image(torch.randn(1, 3, 64, 64))
        flops = []
        for k in (1, 2):
            with FlopCounterMode(display=False) as counter:
                model.decode(features, text[:k], valid[:k])
            flops.append(counter.get_total_flops())
    assert flops[1] - flops[0] < 0.75 * flops[0], flops  # expanded features: exactly 2x


def test_swin_window_attention_is_fused_and_equals_timms_default():
    model = tiny_model()
    backbone = model.vision.backbone
    from timm.models.swin_transformer import WindowAttention

    windows = [m for m in backbone.modules() if isinstance(m, WindowAttention)]
    assert windows and all(m.fused_attn for m in windows)
    images = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        fused = model.encode_image(images)
        set_fused_window_attention(backbone, False)
        unfused = model.encode_image(images)
    for a, b in zip(fused, unfused):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_bf16_on_cpu_stores_bf16_weights_on_a_copy(tiny_cfg):
    model = tiny_model()
    before = copy.deepcopy(model.state_dict())
    segmenter = Segmenter(model, tiny_cfg, device="cpu", precision="bf16")
    assert all(p.dtype == torch.bfloat16 for p in segmenter.model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the caller's model is untouched
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    fp32 = Segmenter(model, tiny_cfg, device="cpu", precision="fp32")
    image = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    a, b = fp32.segment(image, "the red circle")[0], segmenter.segment(image, "the red circle")[0]
    np.testing.assert_allclose(a.probability, b.probability, atol=0.03)
