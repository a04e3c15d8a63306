"""Self-describing checkpoints: weights + model config + metadata in one file.

Loaded with `torch.load(weights_only=True)` (no code execution) and saved atomically
(temporary file in the same directory, fsync, rename). A frozen pretrained text encoder
is not stored: it is rebuilt from its source named in the config (keeps the shipped demo
checkpoint small), and its weights' presence is checked on load.
"""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from .config import MeresConfig, config_from_dict, config_to_dict, override, validate

FORMAT = "meres-checkpoint"
VERSION = 1
BUNDLED = {"demo": Path(__file__).parent / "weights" / "meres_demo.pt"}


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used, with the reason in the message."""


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """`demo` -> the bundled demo checkpoint; anything else is a path."""
    return BUNDLED.get(str(name_or_path), Path(name_or_path))


def frozen_prefixes(cfg: MeresConfig) -> list[str]:
    text = cfg.model.text
    return ["text.model."] if text.freeze and text.pretrained else []


def save_checkpoint(path: str | Path, model: torch.nn.Module, cfg: MeresConfig, metadata: dict[str, Any] | None = None,
                    training_state: dict[str, Any] | None = None, half: bool = False) -> Path:
    """Write atomically. `training_state` (optimizer, scheduler, RNG, step) enables resume."""
    path = Path(path)
    skip = frozen_prefixes(cfg)
    weights = {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().clone()
        for k, v in model.state_dict().items()
        if not any(k.startswith(p) for p in skip)
    }
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": config_to_dict(cfg),
        "metadata": dict(metadata or {}),
        "excluded_prefixes": skip,
        "model": weights,
    }
    if training_state is not None:
        payload["training_state"] = training_state
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a checkpoint is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint; every failure is a `CheckpointError` naming the problem."""
    path = resolve_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is an empty file: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" in str(exc).lower():  # weights_only refused a class / function reference
            raise CheckpointError(f"checkpoint {path} holds Python objects beyond tensors and plain data; "
                                  "refusing to load it (weights_only)") from None
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated (unpickling failed)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a MERES checkpoint (no '{FORMAT}' header); "
                              "was it saved by meres_core.checkpoint.save_checkpoint?")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint version {payload.get('version')!r} (expected {VERSION})")
    for key in ("config", "model", "metadata"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"{path}: checkpoint field {key!r} is missing or malformed")
    try:
        payload["config"] = config_from_dict(payload["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid model config in checkpoint: {exc}") from None
    return payload


def load_weights(model: torch.nn.Module, payload: dict[str, Any], path: str | Path = "checkpoint") -> None:
    """Copy checkpoint weights into `model`, reporting missing / unexpected / mismatched keys."""
    weights: dict[str, torch.Tensor] = payload["model"]
    expected = model.state_dict()
    skip = tuple(payload.get("excluded_prefixes", []))
    missing = [k for k in expected if k not in weights and not (skip and k.startswith(skip))]
    unexpected = [k for k in weights if k not in expected]
    mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                  for k, v in weights.items() if k in expected and v.shape != expected[k].shape]
    problems = []
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches, e.g. {'; '.join(mismatched[:3])}")
    if missing:
        problems.append(f"{len(missing)} missing tensors, e.g. {', '.join(missing[:3])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors, e.g. {', '.join(unexpected[:3])}")
    if problems:
        raise CheckpointError(f"{path} does not match the model built from its config: " + "; ".join(problems))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in weights.items()}, strict=False)


def build_from_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                          overrides: dict[str, Any] | None = None):
    """-> (model in eval mode, config, metadata). `overrides`: nested changes to the checkpoint's
    MeresConfig (`--set` pairs, config.parse_overrides), applied before the model is built."""
    from .model.meres import MERES

    payload = load_checkpoint(path, map_location)
    cfg: MeresConfig = payload["config"]
    if overrides:
        cfg = validate(override(cfg, overrides))
    model = MERES(cfg.model)
    load_weights(model, payload, resolve_checkpoint(path))
    return model.eval(), cfg, payload["metadata"]
