"""Backends section: the image path exported to ONNX under onnxruntime, and compiled by AOTInductor,
against eager PyTorch on the same inputs.

    python -m bench.backends [--quick] [--out FILE]

  demo     the shipped demo model: ONNX export, and the compiled package at the Segmenter's default
           precision (compiled now, or loaded from the cache: `compiled_now`); masks of each backend
           against eager through the `Segmenter` on meres-synth scenes (IoU); the image path timed side
           by side (1 and 4 sentences, cached text features as inputs): onnxruntime fp32 vs eager fp32,
           compiled vs eager at the default precision
  paper    (full run only) the onnxruntime timing for `paper`@480 with random weights
  auto_first_start  (full run only, CPU) backend `auto` with an empty cache: the demo model called
           AUTO_RATE_HZ times a second (a node at its default max_rate) until the background compilation
           has landed and served AUTO_COMPILED_CALLS calls; each call's time before, during and after it,
           then auto (compiled by now) and an eager Segmenter of the same weights side by side
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from meres_core.metrics import mask_iou

from .common import fixture_samples, interleaved, machine, ratio, section_main, target


def image_path_times(segmenter, onnx_path: Path, rounds: int, device: str, compiled=None) -> dict:
    """eager (fp32, and the default precision) vs onnxruntime, and vs `compiled` (a Segmenter of the
    compiled backend at the default precision) when given, on one frame's pixels and cached text."""
    import torch

    from meres_core.data.transforms import preprocess_image
    from meres_core.device import autocast, precision_name
    from meres_core.export_onnx import ImagePath, OnnxImagePath
    from meres_core.inference import Segmenter

    from .model import SENTENCES, frame

    model = segmenter.model
    session = OnnxImagePath(onnx_path, model, segmenter.device)
    default = Segmenter(model, segmenter.cfg, device=device)  # the config's precision (auto)
    eager, eager_default = ImagePath(model), ImagePath(default.model)
    pixels = preprocess_image(frame(3), model.cfg.vision.img_size)[None].to(device)
    candidates = {}
    for k in (1, 4):
        rows = model.landmark_rows(SENTENCES[:k])
        text, valid = segmenter._text_features(rows.sentences)
        landmarks = rows.landmark_index.to(device)
        candidates[f"eager_fp32_k{k}"] = lambda t=text, v=valid, i=landmarks: eager(pixels, t, v, i)
        candidates[f"onnxruntime_k{k}"] = lambda t=text, v=valid, i=landmarks: session(pixels, t, v, i)

        def default_precision(t=text, v=valid, i=landmarks):
            with autocast(default.dtype, default.device):
                eager_default(pixels, t, v, i)

        precision = precision_name(default.dtype)
        candidates[f"eager_{precision}_k{k}"] = default_precision
        if compiled is not None:
            candidates[f"compiled_{precision}_k{k}"] = (
                lambda t=text, v=valid, i=landmarks: compiled._image_path(pixels, t, v, i))
    with torch.inference_mode():
        times = interleaved(candidates, rounds=rounds, device=device)
    out = {"times": times, "providers": session.session.get_providers(),
           "onnxruntime_over_eager_k1": round(ratio(times, "onnxruntime_k1", "eager_fp32_k1"), 3),
           "onnxruntime_over_eager_k4": round(ratio(times, "onnxruntime_k4", "eager_fp32_k4"), 3)}
    if compiled is not None:
        out.update({f"compiled_over_eager_{precision}_k{k}": round(
            ratio(times, f"compiled_{precision}_k{k}", f"eager_{precision}_k{k}"), 3) for k in (1, 4)})
    return out


def demo(quick: bool, device: str, folder: Path) -> dict:
    import onnxruntime

    from meres_core.checkpoint import build_from_checkpoint
    from meres_core.device import precision_name
    from meres_core.export_onnx import export
    from meres_core.inference import Decision, Segmenter

    model, cfg, metadata = build_from_checkpoint("demo")
    start = time.perf_counter()
    compiled = Segmenter(model, cfg, metadata, device=device, backend="compiled")  # the default precision
    compile_s = time.perf_counter() - start
    default = Segmenter(model, cfg, metadata, device=device)
    start = time.perf_counter()
    path = export(model, folder / "meres_demo.onnx", {"source": "checkpoint demo"})
    export_s = time.perf_counter() - start
    eager = Segmenter(model, cfg, metadata, device=device, precision="fp32")
    onnx = Segmenter(model, cfg, metadata, device=device, precision="fp32", backend="onnx", onnx_path=path)
    decision = Decision.from_config(cfg.inference)
    ious, compiled_ious, max_abs = [], [], 0.0
    samples = fixture_samples(folder / "scenes", images=4 if quick else 12)
    for image, texts in samples:
        for a, b in zip(eager.segment(image, texts, decision), onnx.segment(image, texts, decision)):
            ious.append(mask_iou(a.mask, b.mask))
            max_abs = max(max_abs, float(np.abs(a.probability - b.probability).max()))
        for a, b in zip(default.segment(image, texts, decision), compiled.segment(image, texts, decision)):
            compiled_ious.append(mask_iou(a.mask, b.mask))
    return {"checkpoint": "demo", "onnxruntime": onnxruntime.__version__, "export_s": round(export_s, 1),
            "onnx_bytes": path.stat().st_size, "scenes": len(samples), "sentences": len(ious),
            "mean_mask_iou": round(float(np.mean(ious)), 4), "min_mask_iou": round(float(np.min(ious)), 4),
            "max_abs_probability_difference": float(f"{max_abs:.3g}"),
            "compiled": {"precision": precision_name(compiled.dtype), "compiled_now": compiled._image_path.compiled_now,
                         "build_s": round(compile_s, 1), "mean_mask_iou": round(float(np.mean(compiled_ious)), 4),
                         "min_mask_iou": round(float(np.min(compiled_ious)), 4)},
            **image_path_times(eager, path, 10 if quick else 30, device, compiled)}


def paper(device: str, folder: Path) -> dict:
    import torch

    from meres_core.config import load_config
    from meres_core.export_onnx import export
    from meres_core.inference import Segmenter
    from meres_core.model.meres import MERES

    from .model import RANDOM_WEIGHTS

    cfg = load_config("paper", overrides=RANDOM_WEIGHTS)
    torch.manual_seed(0)
    model = MERES(cfg.model)
    start = time.perf_counter()
    path = export(model, folder / "paper.onnx", {"source": "preset paper seed 0"})
    export_s = time.perf_counter() - start
    eager = Segmenter(model, cfg, device=device, precision="fp32")
    return {"preset": "paper", "export_s": round(export_s, 1), **image_path_times(eager, path, 5, device)}


AUTO_RATE_HZ = 10.0  # meres_node's default max_rate
AUTO_COMPILED_CALLS = 100
AUTO_LIMIT_S = 900.0


def auto_first_start(folder: Path) -> dict:
    """Backend auto's first start (empty cache) at AUTO_RATE_HZ calls a second, one sentence on one frame."""
    import os

    from meres_core.data.synthetic import render_scene
    from meres_core.device import precision_name
    from meres_core.inference import Segmenter

    previous = os.environ.get("MERES_CACHE_DIR")
    os.environ["MERES_CACHE_DIR"] = str(folder / "empty_cache")
    try:
        scene = render_scene(11, 1, 480, 640, depth=False)
        sentence = f"the {scene.shapes[-1].color} {scene.shapes[-1].category}"
        segmenter = Segmenter.from_checkpoint("demo", device="cpu", backend="auto")
        start, calls = time.perf_counter(), []  # (seconds since start, call ms, image path state)
        while time.perf_counter() - start < AUTO_LIMIT_S:
            begin = time.perf_counter()
            ms = segmenter.segment(scene.image, sentence)[0].timings_ms["total"]
            calls.append((begin - start, ms, segmenter.image_path_state))
            if (sum(state == "compiled" for *_, state in calls) >= AUTO_COMPILED_CALLS
                    or calls[-1][2].startswith("torch (compiled was slower")):  # auto timed it and kept eager
                break
            time.sleep(max(0.0, 1.0 / AUTO_RATE_HZ - (time.perf_counter() - begin)))
        # The phases above ran at different moments of a shared machine: once compiled, both side by side.
        eager = Segmenter(segmenter.model, segmenter.cfg, device="cpu", precision=precision_name(segmenter.dtype),
                          backend="torch")
        side_by_side = interleaved({"eager": lambda: eager.segment(scene.image, sentence),
                                    "auto": lambda: segmenter.segment(scene.image, sentence)}, rounds=30)
    finally:
        if previous is None:
            os.environ.pop("MERES_CACHE_DIR", None)
        else:
            os.environ["MERES_CACHE_DIR"] = previous

    def phase(prefix: str) -> dict:
        ms = [m for _, m, state in calls if state.startswith(prefix) and (prefix != "compiled" or state == prefix)]
        return {"calls": len(ms), **({"p50_ms": round(float(np.median(ms)), 1),
                                      "p90_ms": round(float(np.percentile(ms, 90)), 1)} if ms else {})}

    def first(prefix: str):
        return next((round(t, 1) for t, _, state in calls if state.startswith(prefix)), None)

    return {"rate_hz": AUTO_RATE_HZ, "precision": str(segmenter.dtype).removeprefix("torch."),
            "eager_before": phase("torch (compiles after"), "eager_while_compiling": phase("torch (compiling in"),
            "timing_against_eager": phase("compiled (timing"), "compiled": phase("compiled"),
            "compiling_from_s": first("torch (compiling in"),
            "compiled_from_s": first("compiled"), "final_state": calls[-1][2],
            "side_by_side_after": side_by_side, "auto_over_eager_after": round(ratio(side_by_side, "auto", "eager"), 3)}


def _guarded(measure) -> dict:
    try:
        return measure()
    except Exception as exc:  # the demo numbers stand on their own
        return {"error": f"{type(exc).__name__}: {exc}"}


def run(quick: bool, device: str = "cpu") -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_backends_") as tmp:
        measurements = {"machine": machine(), "demo": demo(quick, device, Path(tmp))}
        if not quick:
            measurements["paper"] = _guarded(lambda: paper(device, Path(tmp)))
            if device == "cpu":
                measurements["auto_first_start"] = _guarded(lambda: auto_first_start(Path(tmp)))
    d = measurements["demo"]
    agree = "" if d["mean_mask_iou"] >= 0.98 else f" (masks disagree: mean IoU {d['mean_mask_iou']})"
    targets = {"onnxruntime_over_eager": target(
        d["onnxruntime_over_eager_k1"] if d["mean_mask_iou"] >= 0.98 else None, 1.0,
        note=f"demo model, image path, 1 sentence, fp32 both; masks mean IoU {d['mean_mask_iou']}{agree}")}
    return {"targets": targets, "measurements": measurements}


def main(argv=None) -> None:
    section_main(run, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
