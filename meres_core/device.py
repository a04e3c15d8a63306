"""Device, dtype and autocast policy: one place for the Segmenter, evaluation and training.

Precision names: `auto` (fp16 on CUDA, fp32 elsewhere), `fp16`, `bf16`, `fp32`. fp16 runs
on CUDA only; asked for elsewhere it falls back to fp32 with a warning (CPU fp16 kernels
are slow or missing), so a robot or an evaluation configured for a GPU still runs on a CPU.
bf16 is the reduced-precision CPU option. Reports name the precision that actually ran
(`precision_name`).
"""
from __future__ import annotations

import contextlib
import logging

import torch

log = logging.getLogger(__name__)

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def select_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return resolved


def select_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype for `precision` on `device` (see the module docstring)."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if precision == "fp16" and device.type != "cuda":
        log.warning("precision fp16 needs CUDA; using fp32 on %s (bf16 is the reduced CPU option)", device)
        return torch.float32
    return DTYPES[precision]


def precision_name(dtype: torch.dtype) -> str:
    return next(name for name, d in DTYPES.items() if d == dtype)


def autocast(dtype: torch.dtype, device: torch.device):
    """Mixed precision for `dtype` (from select_dtype); fp32 runs without autocast."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
