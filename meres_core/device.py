"""Device, dtype and autocast policy: one place for the Segmenter, evaluation and training.

Precision names: `auto` (fp16 on CUDA; bf16 on a CPU with bf16 units (AMX or AVX512-BF16),
where it is faster than fp32 with the same masks; fp32 elsewhere), `fp16`, `bf16`, `fp32`. fp16 runs
on CUDA only; asked for elsewhere it falls back to fp32 with a warning (CPU fp16 kernels
are slow or missing), so a robot or an evaluation configured for a GPU still runs on a CPU.
bf16 is the reduced-precision CPU option. Reports name the precision that actually ran
(`precision_name`).
"""
from __future__ import annotations

import contextlib
import logging
import threading
from typing import Callable, TypeVar

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def select_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return resolved


def cpu_has_bf16_units() -> bool:
    """Whether this CPU computes bf16 natively (AMX tiles or AVX512-BF16): bf16 autocast is faster there;
    elsewhere it is emulated and slower than fp32."""
    try:
        return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch without these probes
        return False


def select_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The compute dtype for `precision` on `device` (see the module docstring)."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16_units() else torch.float32
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


def set_cpu_threads(threads: int = 0) -> int:
    """Size torch's intra-op pool for this process: `threads`, or for 0 leave it as it is (torch's
    default: one per physical core, or OMP_NUM_THREADS). Returns the count in effect."""
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0: automatic), got {threads}")
    if threads and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def in_passing_thread(call: Callable[[], T]) -> T:
    """`call()` in a thread that ends when it returns (its exceptions re-raised here).

    For loading a model in a process whose inference runs in another thread (meres_node's worker):
    libgomp keeps an OpenMP pool for every thread that has run a parallel region, and while the
    pools hold more threads than there are cores, each parallel region wakes its threads from sleep
    instead of finding them spinning. Measured here (2 cores, demo model, bf16, 2 threads): 38 ms a
    frame in the thread that loaded it or after the loading thread ended, 62-68 ms while it lived on.
    """
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:  # handed to the caller
            outcome["error"] = error

    thread = threading.Thread(target=run, name="meres_load", daemon=True)  # daemon: Ctrl-C during a compile exits
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
