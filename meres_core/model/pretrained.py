"""Where pretrained encoder weights come from, and what happens when they cannot be had.

Sources: the model hub (timm / Hugging Face), its local cache, or local files and folders
named in the config. Whether the hub is contacted at all is decided once per process
(`hub_offline`): `HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE`, else one quick connection
attempt to the hub. Offline, every load reads local files and the cache only, so a robot
without internet builds the `paper` preset in seconds instead of minutes of per-model
retries.

A load that fails is `unavailable`: an error where pretrained weights are required
(training: a random Swin fine-tuned at lr 3e-5 would only show weeks later, in the
numbers), else a loud warning and random init (inference from a preset, a model whose
weights then come from a checkpoint). Random init on purpose is a config value
(`vision.pretrained: null`, `text.pretrained: false`), never a fallback.
"""
from __future__ import annotations

import functools
import logging
import socket
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import huggingface_hub
from huggingface_hub import constants as hub_constants
from timm.models import get_pretrained_cfg

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
# What a timm hub repository (or a copy of one) holds, in timm's order of preference.
TIMM_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class PretrainedWeightsUnavailable(RuntimeError):
    """Pretrained weights named in the config could not be loaded where they are required."""


@functools.cache
def hub_offline() -> bool:
    """True when the model hub is not to be contacted; decided once per process."""
    if hub_constants.HF_HUB_OFFLINE:
        return True
    endpoint = urlparse(hub_constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        log.warning("model hub %s unreachable (%s): pretrained weights come from local files and the hub cache "
                    "only in this process", hub_constants.ENDPOINT, exc)
        return True
    return False


def cached_timm_weights(name: str) -> Optional[str]:
    """The hub-cache file of timm model `name`'s pretrained weights, or None when not cached."""
    pretrained = get_pretrained_cfg(name)
    repo = pretrained.hf_hub_id if pretrained else None
    for filename in TIMM_WEIGHT_FILES if repo else ():
        path = huggingface_hub.try_to_load_from_cache(repo, filename)
        if isinstance(path, str):
            return path
    return None


def timm_weights_overlay(name: str, source: str) -> dict:
    """timm `pretrained_cfg_overlay` for weights from `source`: "timm" (hub, or its cache offline),
    a local file, or a local folder holding one of TIMM_WEIGHT_FILES (timm's "local-dir" source)."""
    if source != "timm":
        return dict(source="local-dir", file=source) if Path(source).is_dir() else dict(file=source)
    if not hub_offline():
        return {}
    cached = cached_timm_weights(name)
    if cached is None:
        raise PretrainedWeightsUnavailable(f"offline and {name} weights are not in the hub cache")
    return dict(file=cached)


def unavailable(what: str, reason: Exception, required: bool, config_hint: str) -> None:
    """Raise (required) or warn loudly that `what` starts from random weights."""
    if required:
        raise PretrainedWeightsUnavailable(
            f"{what}: pretrained weights unavailable ({type(reason).__name__}: {reason}). Point the config at a "
            f"local file or folder (README 'Without internet'), or set {config_hint} to train from random "
            f"weights on purpose") from reason
    log.warning("%s: pretrained weights unavailable (%s: %s); USING RANDOM WEIGHTS, predictions mean nothing "
                "until the model is trained or loaded from a checkpoint", what, type(reason).__name__, reason)
