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
later start with the same key loads it. The key hashes the weights and the model's source code, so
neither a retrained checkpoint nor upgraded code runs an old package.

Packages run through `aoti_loader`, which releases the GIL during each call where torch's loader
holds it (its extension is built once per machine beside the packages).

Backend `auto` (BackgroundCompile, the commands' and the node's default) gets the compiled speed
without the first start's wait: it runs the cached package when there is one; otherwise it serves
eager PyTorch and, once the process has served COMPILE_AFTER_CALLS calls (a long-running node or
replay, not a one-image command), compiles the package in a child process at the lowest CPU
priority and switches to it when it lands. A failed compilation (no C++ compiler) leaves eager
serving and a `.failed` note beside the package, so later starts do not try again. A package is
not faster everywhere (the `paper` preset's ran 8% slower than eager bf16 on a 2-core AMX CPU), so
`auto` first alternates the two on TRIAL_CALLS real calls each and keeps the package only when its
median is lower; a slower one leaves a `.slower` note, and later starts neither load nor compile it.

    python -m meres_core.compiled SOURCE_CHECKPOINT --precision bf16 --out PACKAGE   # the child
"""
from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from . import aoti_loader
from .cache import cache_root
from .device import autocast
from .export_onnx import ImagePath, example_inputs, landmark_index_or_none
from .model.meres import MERES

log = logging.getLogger(__name__)

# Calls served eagerly before `auto` starts its background compilation: a node at a few frames per
# second gets there in seconds; a command that segments one image never pays for a compilation.
COMPILE_AFTER_CALLS = 50
# Calls of each path that `auto` times, alternating, before it keeps the package or eager (after one
# untimed call each: the first call of a path pays its one-off set-up).
TRIAL_CALLS = 8
# What gets compiled: the model code and the export around it. A package compiled from other code (an
# upgrade, a local edit) computes what that code computed, so the key hashes these sources.
COMPILED_SOURCES = (Path(__file__).parent / "model", Path(__file__), Path(__file__).parent / "export_onnx.py",
                    Path(__file__).parent / "device.py")


# Packages the cache keeps: every model, code version, precision and machine has its own (~20 MB for the demo
# model), so each upgrade or retrained checkpoint adds one; beyond this many the least recently used go.
KEEP_PACKAGES = 6
# A scratch folder or handed-over checkpoint older than this was left by a compilation that was killed.
LEFTOVER_AGE_S = 3600.0
# What belongs to a package besides it: its compiler log, lock, and failed / slower notes.
PACKAGE_NOTES = (".log", ".lock", ".failed", ".slower")


def source_digest() -> str:
    digest = hashlib.sha256()
    for path in COMPILED_SOURCES:
        for file in sorted(path.glob("*.py")) if path.is_dir() else [path]:
            digest.update(file.name.encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def cache_dir() -> Path:
    return cache_root() / "compiled"


class _PrecisionImagePath(nn.Module):
    """ImagePath under the Segmenter's autocast, fp32 logits out: what the eager backend computes."""

    def __init__(self, model: MERES, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.path = ImagePath(model)
        self.dtype, self.device = dtype, device

    def forward(self, pixels: torch.Tensor, text: torch.Tensor, text_valid: torch.Tensor,
                landmark_index: torch.Tensor) -> torch.Tensor:
        with autocast(self.dtype, self.device):
            return self.path(pixels, text, text_valid, landmark_index).float()


def package_key(model: MERES, dtype: torch.dtype, device: torch.device) -> str:
    """Weights, model config, code, precision, device, torch version and CPU instruction set: one package each.
    The config counts because some of it is no weight (the extractor's top-k share, the input size)."""
    digest = hashlib.sha256()
    digest.update(json.dumps(dataclasses.asdict(model.cfg), sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    if device.type == "cpu":  # the vector ISA Inductor compiles for, and the matrix units oneDNN may use
        capability = (torch.backends.cpu.get_cpu_capability(), torch.cpu._is_amx_tile_supported(),
                      torch.cpu._is_avx512_bf16_supported())
    else:
        capability = torch.cuda.get_device_name(device)
    for part in (source_digest(), dtype, device.type, torch.__version__, platform.machine(), capability):
        digest.update(str(part).encode())
    return digest.hexdigest()[:20]


def compile_package(model: MERES, dtype: torch.dtype, device: torch.device, path: str | Path) -> Path:
    """Export and compile the image path of `model` (weights already in `dtype` or fp32, on `device`) to `path`."""
    path = Path(path)
    if device.type == "cpu":  # no C++ compiler: fail now, not after a minute of export and code generation
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
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
            "pixels": None, "text": {0: sentences, 1: tokens}, "text_valid": {0: sentences, 1: tokens},
            "landmark_index": {0: sentences}})
    # Write beside the target and rename: a process starting meanwhile never loads half a package.
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        partial = Path(scratch) / path.name
        torch._inductor.aoti_compile_and_package(program, package_path=str(partial),
                                                 inductor_configs={"freezing": True})
        os.replace(partial, path)
    log.info("compiled the image path (%s) to %s in %.0f s", str(dtype).removeprefix("torch."), path,
             time.perf_counter() - start)
    prune_cache(path.parent)
    return path


def load_cached(path: Path) -> Callable:
    """The package at `path`, marked as used now (its mtime: what prune_cache keeps)."""
    try:
        os.utime(path)
    except OSError:
        pass  # a read-only cache still serves
    return aoti_loader.load_package(path)


def prune_cache(directory: Path, keep: int = KEEP_PACKAGES) -> list[Path]:
    """Remove all but the `keep` most recently used packages in `directory` (with their notes), and what killed
    compilations left behind (scratch folders, handed-over checkpoints older than LEFTOVER_AGE_S); -> what went."""
    def used(path: Path) -> float:  # another process may remove a file meanwhile: never an error here
        try:
            return path.stat().st_mtime
        except OSError:
            return math.inf

    packages = sorted(directory.glob("image_path_*.pt2"), key=used, reverse=True)
    stale = [p for package in packages[keep:] for p in (package, *map(package.with_suffix, PACKAGE_NOTES))]
    cutoff = time.time() - LEFTOVER_AGE_S
    stale += [p for p in (*directory.glob("tmp*"), *directory.glob(".source-*.pt")) if used(p) < cutoff]
    removed = []
    for path in stale:
        try:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
        except OSError as error:  # another user's file, a read-only cache: the cache works regardless
            log.debug("could not remove %s from the package cache: %s", path, error)
    if removed:
        log.info("package cache %s: removed %d files and folders (least recently used beyond %d packages, leftovers "
                 "of killed compilations)", directory, len(removed), keep)
    return removed


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
        if device.type == "cpu":  # once per machine, as the package: ~30 s
            aoti_loader.build()
        self._runner = load_cached(self.path)

    def __call__(self, pixels: torch.Tensor, text: torch.Tensor, text_valid: torch.Tensor,
                 landmark_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self._runner(pixels, text, text_valid, landmark_index_or_none(text, landmark_index))


class BackgroundCompile:
    """Backend `auto` on CPU: the compiled image path of `model` once it is in the cache, eager until then.

    `runner()` is asked once per call: the package's runner when loaded, else None (run eager). The
    compilation runs in a child process (`python -m meres_core.compiled`), so neither the GIL nor the
    OpenMP pool of the serving process is shared with the compiler; the child runs at nice 19 and
    exits when this process does.
    """

    def __init__(self, model: MERES, cfg, dtype: torch.dtype, device: torch.device,
                 directory: str | Path | None = None, compile_after_calls: int = COMPILE_AFTER_CALLS):
        self.path = Path(directory or cache_dir()) / f"image_path_{package_key(model, dtype, device)}.pt2"
        self.failed_note = self.path.with_suffix(".failed")
        self._model, self._cfg, self._dtype = model, cfg, dtype
        self._compile_after_calls = compile_after_calls
        self._calls = 0
        self._process: Optional[subprocess.Popen] = None
        # Why this process compiles nothing (more): a failed compilation, now or on an earlier start, an unwritable cache.
        self.slower_note = self.path.with_suffix(".slower")
        self._gave_up = (f"compiling failed on an earlier start: {self.failed_note}" if self.failed_note.is_file()
                         else f"compiled was slower here: {self.slower_note.read_text().strip()}"
                         if self.slower_note.is_file() else "")
        self._started = 0.0
        self._loader_tried = False
        self._source: Optional[Path] = None  # the weights handed to the child
        self._runner: Optional[Callable] = None
        # Seconds per call of each path while they are compared (None: decided, or no package yet).
        self._trial: Optional[dict[bool, list[float]]] = None
        if self.path.is_file() and not self.slower_note.is_file():
            self._use(self._load())

    @property
    def state(self) -> str:
        """What serves now, for /diagnostics and logs."""
        if self._runner is not None:
            return "compiled" if self._trial is None else "compiled (timing it against torch)"
        if self._gave_up:
            return f"torch ({self._gave_up})"
        if self._process is not None:
            return "torch (compiling in the background)"
        return "torch (compiles after %d calls)" % self._compile_after_calls

    def runner(self) -> Optional[Callable]:
        self._calls += 1
        if self._process is None:
            if self._calls >= self._compile_after_calls and self._child_has_work() and not self._gave_up:
                try:
                    self._start()
                except OSError as error:  # serving goes on: the compilation is an optimization
                    self._gave_up = f"no compilation: {type(error).__name__}: {error}"
                    log.warning("backend auto: could not start compiling the image path (%s); eager PyTorch keeps "
                                "serving. Set MERES_CACHE_DIR to a writable folder", error)
        elif self._process.poll() is not None:
            self._finish()
        if self._runner is not None and self._trial is not None:  # alternate: the path with fewer timed calls runs next
            return self._runner if len(self._trial[True]) <= len(self._trial[False]) else None
        return self._runner

    def _child_has_work(self) -> bool:
        """No package yet; or one kept after its timing (not during it: a compiler beside the trial would
        skew it) that torch's loader runs, holding the GIL, while the GIL-releasing loader is not built
        (tried once per process; the child builds it after any package)."""
        if self._runner is None:
            return True
        return self._trial is None and not aoti_loader.library().is_file() and not self._loader_tried

    def record(self, compiled: bool, seconds: float) -> None:
        """The image path's time on a call that `runner()` routed (compiled or eager); ends the trial once
        both have TRIAL_CALLS timed calls, keeping the faster by median."""
        if self._trial is None:
            return
        self._trial[compiled].append(seconds)
        if min(map(len, self._trial.values())) <= TRIAL_CALLS:
            return
        compiled_ms, eager_ms = (1000 * statistics.median(self._trial[c][1:]) for c in (True, False))
        self._trial = None
        if compiled_ms < eager_ms:
            log.info("backend auto: the compiled image path is faster here (%.1f vs %.1f ms median); it serves",
                     compiled_ms, eager_ms)
            return
        verdict = f"{compiled_ms:.1f} vs {eager_ms:.1f} ms eager per call (median of {TRIAL_CALLS})"
        self._runner, self._gave_up = None, f"compiled was slower here: {verdict}"
        try:
            self.slower_note.write_text(verdict + "\n")
        except OSError:
            pass  # this process has decided; a later one times it again
        log.warning("backend auto: the compiled image path was slower than eager PyTorch here (%s); eager serves, "
                    "and later starts skip the package (remove %s to time it again)", verdict, self.slower_note)

    def wait(self, timeout: float) -> Optional[Callable]:
        """Block until a started compilation ends (tests, benchmarks); -> the runner, None if none landed."""
        if self._process is not None:
            self._process.wait(timeout)
            self._finish()
        return self._runner

    def _use(self, runner: Optional[Callable]) -> None:
        """Serve `runner` (a loaded package), timing it against eager first."""
        self._runner = runner
        self._trial = {True: [], False: []} if runner is not None else None

    def _load(self) -> Optional[Callable]:
        """The cached package's runner; a package that does not load is removed (compiled again later)."""
        try:
            return load_cached(self.path)
        except Exception as error:  # noqa: BLE001 - whatever a damaged file raises, eager can serve
            log.warning("backend auto: could not load %s (%s: %s); removed it, eager PyTorch serves and compiles "
                        "it again", self.path, type(error).__name__, error)
            self.path.unlink(missing_ok=True)
            return None

    def _start(self) -> None:
        from .checkpoint import save_checkpoint

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, source = tempfile.mkstemp(prefix=".source-", suffix=".pt", dir=self.path.parent)
        os.close(fd)
        self._source = Path(source)  # the child deletes it once loaded; _finish, if it died before
        self._loader_tried = True
        save_checkpoint(source, self._model, self._cfg)
        package_root = str(Path(__file__).resolve().parent.parent)  # meres_core importable in the child
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (package_root, os.environ.get("PYTHONPATH"))))}
        command = [sys.executable, "-m", "meres_core.compiled", source, "--out", str(self.path),
                   "--precision", str(self._dtype).removeprefix("torch."), "--parent", str(os.getpid())]
        with open(self.path.with_suffix(".log"), "wb") as log_file:
            self._process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
        self._started = time.perf_counter()
        if self._runner is not None:
            log.info("backend auto: building the GIL-releasing package loader in the background (pid %d, nice 19) "
                     "into %s; the package serves meanwhile", self._process.pid, aoti_loader.build_directory())
            return
        log.info("backend auto: compiling the image path in the background (pid %d, nice 19) after %d eager calls; "
                 "eager PyTorch serves until it lands in %s", self._process.pid, self._calls, self.path)

    def _finish(self) -> None:
        code, self._process = self._process.returncode, None
        self._source.unlink(missing_ok=True)
        if code == 0 and self.path.is_file():
            loader_only = self._runner is not None
            self._use(self._load())
            if self._runner is None:
                self._gave_up = "the package compiled here did not load"
                return
            gil = "released" if isinstance(self._runner, aoti_loader.GilFreePackage) else "held"
            if loader_only:
                log.info("backend auto: the package runs with the GIL %s (loader built in the background in %.0f s)",
                         gil, time.perf_counter() - self._started)
                return
            log.info("backend auto: switched to the compiled image path (compiled in the background in %.0f s; "
                     "GIL %s while it runs)", time.perf_counter() - self._started, gil)
            return
        self._gave_up = f"compiling failed: exit code {code}"  # one try per process, whatever ended it
        log_file = self.path.with_suffix(".log")
        log_tail = log_file.read_text(errors="replace").strip().splitlines()[-3:] if log_file.is_file() else []
        retry = (f"it needs a C++ compiler (g++); remove {self.failed_note} to try again on the next start"
                 if self.failed_note.is_file() else "the next start tries again")
        log.warning("backend auto: compiling the image path failed (exit code %s: %s); eager PyTorch keeps serving; %s",
                    code, " | ".join(log_tail), retry)


def _exit_with_parent(parent: int) -> None:
    """The child's watchdog: a compilation nobody will load is not worth the CPU."""
    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, name="parent_watchdog", daemon=True).start()


def _compile_source(source: Path, dtype: torch.dtype, out: Path) -> None:
    """Compile the checkpoint `source` (deleted once loaded) to the package `out`; a failure leaves a `.failed` note."""
    from .checkpoint import build_from_checkpoint

    try:
        model, _, _ = build_from_checkpoint(source)
    finally:
        source.unlink(missing_ok=True)
    try:
        compile_package(model.to(dtype), dtype, torch.device("cpu"), out)
    except Exception as error:  # noqa: BLE001 - the compiler's failures are many: note any, so no start retries
        out.with_suffix(".failed").write_text(f"{type(error).__name__}: {error}\n")
        raise


def main(argv=None) -> int:
    """Compile SOURCE's image path to --out, then build the GIL-releasing loader: the child process of BackgroundCompile."""
    parser = argparse.ArgumentParser(prog="python -m meres_core.compiled", description=main.__doc__)
    parser.add_argument("source", help="checkpoint of the model to compile (deleted once loaded)")
    parser.add_argument("--out", required=True, help="the package file")
    parser.add_argument("--precision", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--parent", type=int, help="exit when this process is gone")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.parent:
        _exit_with_parent(args.parent)
    os.nice(19)
    out = Path(args.out)
    with open(out.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process compiling the same package: wait for it
        if out.is_file():  # compiled meanwhile, or the parent wants only the loader
            Path(args.source).unlink(missing_ok=True)
        else:
            _compile_source(Path(args.source), getattr(torch, args.precision), out)
    aoti_loader.build()
    return 0


if __name__ == "__main__":
    sys.exit(main())
