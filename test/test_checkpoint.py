"""Checkpoint round trip and one clear error per kind of bad file."""
import os

import numpy as np
import pytest
import torch

from meres_core.checkpoint import CheckpointError, build_from_checkpoint, load_checkpoint, save_checkpoint
from meres_core.config import load_config
from meres_core.inference import Segmenter
from meres_core.model.meres import MERES


@pytest.fixture
def saved(tmp_path, tiny_model, tiny_cfg):
    return save_checkpoint(tmp_path / "model.pt", tiny_model, tiny_cfg, {"step": 7, "metrics": {"mIoU": 0.5}})


def test_round_trip_gives_identical_predictions(saved, tiny_model, tiny_cfg, scene):
    model, cfg, metadata = build_from_checkpoint(saved)
    assert metadata == {"step": 7, "metrics": {"mIoU": 0.5}}
    assert cfg == tiny_cfg
    a = Segmenter(tiny_model, tiny_cfg, device="cpu", precision="fp32").segment(scene, "red circle")[0]
    b = Segmenter(model, cfg, device="cpu", precision="fp32").segment(scene, "red circle")[0]
    np.testing.assert_array_equal(a.probability, b.probability)


def test_half_storage_round_trip(tmp_path, tiny_model, tiny_cfg):
    path = save_checkpoint(tmp_path / "half.pt", tiny_model, tiny_cfg, half=True)
    model, _, _ = build_from_checkpoint(path)
    for (name, a), b in zip(tiny_model.state_dict().items(), model.state_dict().values()):
        assert b.dtype == a.dtype, name
        torch.testing.assert_close(a.float(), b.float(), atol=2e-3, rtol=1e-3)


def test_frozen_pretrained_text_encoder_is_not_stored(tmp_path):
    cfg = load_config("demo")
    path = save_checkpoint(tmp_path / "demo.pt", MERES(cfg.model), cfg)
    payload = load_checkpoint(path)
    assert not any(k.startswith("text.model.") for k in payload["model"])
    build_from_checkpoint(path)  # rebuilt from the package, so it still loads


def test_save_is_atomic(tmp_path, tiny_model, tiny_cfg, monkeypatch):
    path = save_checkpoint(tmp_path / "model.pt", tiny_model, tiny_cfg, {"step": 1})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, tiny_model, tiny_cfg, {"step": 2})
    assert load_checkpoint(path)["metadata"] == {"step": 1}, "old file intact"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"], "no temp files left"


def test_missing_and_empty(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file"):
        load_checkpoint(tmp_path / "empty.pt")


def test_truncated(saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(saved)


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_code_execution_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"format": "meres-checkpoint", "payload": Exploit()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refusing"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


def test_foreign_file(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a MERES checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_shape_mismatch_names_tensors(saved):
    payload = torch.load(saved, weights_only=True)
    payload["model"]["decoder.head.weight"] = torch.zeros(3, 3, 1, 1)
    torch.save(payload, saved)
    with pytest.raises(CheckpointError, match=r"shape mismatches, e.g. decoder.head.weight"):
        build_from_checkpoint(saved)


def test_invalid_config(saved):
    payload = torch.load(saved, weights_only=True)
    payload["config"]["model"]["guidance"] = "telepathy"
    torch.save(payload, saved)
    with pytest.raises(CheckpointError, match="invalid model config.*guidance"):
        load_checkpoint(saved)
