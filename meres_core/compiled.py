"""The image path compiled ahead of time with AOTInductor: the `Segmenter`'s `compiled` backend.

The image path (vision encoder, extractor, decoder; `export_onnx.ImagePath`) is captured
once with `torch.export` (dynamic sentence and token counts), compiled by Inductor with
frozen weights into a native library for this machine, and packaged (`.pt2`). Inductor fuses
the memory-bound passes that eager PyTorch runs one by one (LayerNorm, GELU, residual adds,
window partition copies) and prepacks the weights for oneDNN's matmuls: on the 2-core AMX
CPU the demo model's image path runs about 1.4x faster than eager in bf16 (README,
Performance).

Compiling takes minutes on a small CPU (and a C++ compiler), loading a package takes
milliseconds, so a package is compiled once per model, precision, machine and torch version
and kept in a cache folder (`MERES_CACHE_DIR`, default ~/.cache/meres-ros/compiled); every
later start with the same key loads it. The key hashes the weights, so a retrained checkpoint
never runs an old package.
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from .device import autocast
from .export_onnx import ImagePath, example_inputs
from .model.meres import MERES

log = logging.getLogger(__name__)

FORMAT = 1  # bump when what is compiled changes, so old packages are not loaded


def cache_dir() -> Path:
    return Path(os.environ.get("MERES_CACHE_DIR") or Path.home() / ".cache" / "meres-ros") / "compiled"


class _PrecisionImagePath(nn.Module):
    """ImagePath under the Segmenter's autocast, fp32 logits out: what the eager backend computes."""

    def __init__(self, model: MERES, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.path = ImagePath(model)
        self.dtype, self.device = dtype, device

    def forward(self, pixels: torch.Tensor, text: torch.Tensor, text_valid: torch.Tensor) -> torch.Tensor:
        with autocast(self.dtype, self.device):
            return self.path(pixels, text, text_valid).float()


def package_key(model: MERES, dtype: torch.dtype, device: torch.device) -> str:
    """Weights, precision, device, input size, torch version and CPU instruction set: one package each."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    if device.type == "cpu":  # the vector ISA Inductor compiles for, and the matrix units oneDNN may use
        capability = (torch.backends.cpu.get_cpu_capability(), torch.cpu._is_amx_tile_supported(),
                      torch.cpu._is_avx512_bf16_supported())
    else:
        capability = torch.cuda.get_device_name(device)
    for part in (FORMAT, dtype, device.type, model.cfg.vision.img_size, torch.__version__, platform.machine(), capability):
        digest.update(str(part).encode())
    return digest.hexdigest()[:20]


def compile_package(model: MERES, dtype: torch.dtype, device: torch.device, path: str | Path) -> Path:
    """Export and compile the image path of `model` (weights already in `dtype` or fp32, on `device`) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _PrecisionImagePath(model, dtype, device).eval()
    inputs = tuple(x.to(device) for x in example_inputs(model))
    sentences = torch.export.Dim("sentences", min=1, max=256)
    # min 3: declared from 2 the exporter refuses a guard it adds (tokens != 2); the package still
    # runs 2-token inputs ([CLS] [SEP] of a sentence the tokenizer emptied; test_compiled.py).
    tokens = torch.export.Dim("tokens", min=3, max=1024)
    start = time.perf_counter()
    with torch.inference_mode():
        program = torch.export.export(wrapper, inputs, dynamic_shapes={
            "pixels": None, "text": {0: sentences, 1: tokens}, "text_valid": {0: sentences, 1: tokens}})
    # Write beside the target and rename: a process starting meanwhile never loads half a package.
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        partial = Path(scratch) / path.name
        torch._inductor.aoti_compile_and_package(program, package_path=str(partial),
                                                 inductor_configs={"freezing": True})
        os.replace(partial, path)
    log.info("compiled the image path (%s) to %s in %.0f s", str(dtype).removeprefix("torch."), path,
             time.perf_counter() - start)
    return path


class CompiledImagePath:
    """The compiled image path of `model` at `dtype` on `device`, compiled now or loaded from the cache."""

    def __init__(self, model: MERES, dtype: torch.dtype, device: torch.device, directory: str | Path | None = None):
        self.path = Path(directory or cache_dir()) / f"image_path_{package_key(model, dtype, device)}.pt2"
        self.compiled_now = not self.path.is_file()
        if self.compiled_now:
            log.warning("compiling the image path for this model, precision and machine once (minutes on a small "
                        "CPU; later starts load %s)", self.path)
            try:
                compile_package(model, dtype, device, self.path)
            except Exception as error:  # noqa: BLE001 - the compiler's failures are many; name the usual cause
                raise RuntimeError(f"backend 'compiled' could not compile the image path ({type(error).__name__}: "
                                   f"{error}); it needs a C++ compiler (g++) on CPU. Use backend 'torch'.") from error
        self._runner = torch._inductor.aoti_load_package(str(self.path))

    def __call__(self, pixels: torch.Tensor, text: torch.Tensor, text_valid: torch.Tensor) -> torch.Tensor:
        return self._runner(pixels, text, text_valid)
