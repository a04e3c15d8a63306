"""Presets build, shapes are right, every ablation switch runs forward and backward."""
import pytest
import torch

from meres_core.config import available_presets, load_config
from meres_core.model.meres import MERES, count_parameters

ABLATIONS = [
    {"guidance": "le"},
    {"guidance": "enhanced_le"},
    {"guidance": "ve"},
    {"guidance": "enhanced_le_all_pixels"},
    {"extractor": {"selection": "none"}},
    {"extractor": {"selection": "sigmoid"}},
    {"extractor": {"use_global_cue": False}},
    {"extractor": {"use_local_cue": False}},
    {"extractor": {"refinement": False}},
    {"extractor": {"relationship": False}},
    {"extractor": {"topk_mask_in_norm": False}},
    {"contrastive_loss": False},
]


def forward_backward(model, size, sentences=("the red circle left of the square", "star")):
    ids, attn = model.tokenize(list(sentences))
    images = torch.randn(len(sentences), 3, size, size)
    out = model(images, ids, attn)
    masks = (torch.rand(len(sentences), size, size) > 0.7).float()
    losses = model.compute_loss(out, masks)
    losses["loss"].backward()
    return out, losses


def test_presets_are_listed():
    assert {"paper", "paper_clip", "demo", "tiny"} <= set(available_presets())


def test_dice_term_is_a_config_switch():
    cfg = load_config("tiny", overrides={"model": {"dice_weight": 0.5}})
    torch.manual_seed(0)
    _, losses = forward_backward(MERES(cfg.model), cfg.model.vision.img_size)
    torch.testing.assert_close(losses["loss"], losses["bce"] + 0.5 * losses["dice"] + 0.1 * losses["contrastive"])


def test_unknown_config_key_is_rejected():
    with pytest.raises(ValueError, match="unknown ModelConfig keys: bogus"):
        load_config("tiny", overrides={"model": {"bogus": 1}})


def test_tiny_shapes_and_losses(tiny_model, tiny_cfg):
    out, losses = forward_backward(tiny_model, tiny_cfg.model.vision.img_size)
    s = tiny_cfg.model.vision.img_size
    assert out.logits.shape == (2, 1, s // 4, s // 4)
    assert out.relevance.shape[0] == 2 and out.relevance.shape[2] == (s // 32) ** 2
    assert set(losses) == {"loss", "bce", "contrastive"}
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("override", ABLATIONS, ids=lambda o: str(o))
def test_ablation_switch_forward_backward(override):
    cfg = load_config("tiny", overrides={"model": override})
    torch.manual_seed(0)
    model = MERES(cfg.model)
    out, losses = forward_backward(model, cfg.model.vision.img_size)
    assert torch.isfinite(losses["loss"])
    assert ("contrastive" in losses) == (model.uses_ve and cfg.model.contrastive_loss)
    trained = [p for n, p in model.named_parameters() if n.startswith("decoder") and p.grad is not None]
    assert trained, "gradients reach the decoder"


def test_demo_preset_builds_with_pretrained_minilm():
    cfg = load_config("demo")
    model = MERES(cfg.model)
    counts = count_parameters(model)
    assert counts["text"] > 22_000_000  # all-MiniLM-L6-v2 has 22.7M parameters
    assert not any(p.requires_grad for p in model.text.model.parameters()), "demo freezes the text encoder"
    # pretrained weights, not random: a real embedding separates related from unrelated words
    ids, attn = model.tokenize(["red circle", "crimson disc", "tax declaration form"])
    with torch.no_grad():
        text, _ = model.encode_text(ids, attn)
    cls = torch.nn.functional.normalize(text[:, 0], dim=-1)
    assert cls[0] @ cls[1] > cls[0] @ cls[2]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["paper", "paper_clip"])
def test_paper_presets_at_480(preset):
    cfg = load_config(preset, overrides={"model": {"vision": {"pretrained": None}, "text": {"pretrained": False}}})
    model = MERES(cfg.model).eval()
    assert model.vision.channels == [128, 256, 512, 1024]  # Swin-B
    ids, attn = model.tokenize(["the man in the red shirt on the left"])
    with torch.no_grad():
        feats = model.encode_image(torch.randn(1, 3, 480, 480))
        assert [tuple(f.shape[-2:]) for f in feats] == [(120, 120), (60, 60), (30, 30), (15, 15)]
        out = model.decode(feats, *model.encode_text(ids, attn))
    assert out.logits.shape == (1, 1, 120, 120)
    assert out.relevance.shape == (1, ids.shape[1], 225)
