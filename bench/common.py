"""What every bench section shares: the machine, targets, timing side by side."""
from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # presets with pretrained weights: random weights, no hub retries


def machine() -> dict:
    """CPU model (/proc/cpuinfo), cores, torch and its threads, and the GPU when one is visible."""
    import torch

    cpu, flags = platform.processor() or platform.machine(), ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        text = cpuinfo.read_text()
        cpu = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), cpu)
        flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    info = {"cpu": cpu, "cores": os.cpu_count(), "amx_bf16": "amx_bf16" in flags.split(),
            "avx512_bf16": "avx512_bf16" in flags.split(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def section_main(run: Callable[[bool, str], dict], description: str, argv=None) -> None:
    """`python -m bench.<section> [--quick] [--device D] [--out FILE]`: one section's JSON on stdout."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    report = json.dumps(run(args.quick, args.device), indent=1)
    if args.out:
        Path(args.out).write_text(report)
    print(report)


def target(value: Optional[float], limit: float, op: str = "<=", note: str = "") -> dict:
    """One target: {"value", "target", "op", "ok"} (+ "note"); a missing value is not ok."""
    checks = {"<=": lambda v: v <= limit, "<": lambda v: v < limit, ">=": lambda v: v >= limit, "==": lambda v: v == limit}
    ok = value is not None and bool(checks[op](value))
    result = {"value": None if value is None else round(float(value), 4), "target": limit, "op": op, "ok": ok}
    if note:
        result["note"] = note
    return result


def sync(device: str = "cpu") -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def interleaved(candidates: dict[str, Callable[[], object]], rounds: int, device: str = "cpu",
                warmup: int = 1) -> dict[str, dict]:
    """Time several callables round-robin (each round runs every one once), so all see the same load.

    Returns name -> {"median_s", "min_s", "samples_s"}. The targets use ratios of the minima
    (`ratio`): on a shared CPU other processes only ever add time, and with 2 OpenMP threads a
    descheduled thread stalls every parallel region, so the fastest round is the one closest to the
    machine's own speed; the medians show how much the load moved.
    """
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
            sync(device)
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            samples[name].append(time.perf_counter() - start)
    return {name: {"median_s": round(statistics.median(s), 5), "min_s": round(min(s), 5),
                   "samples_s": [round(x, 5) for x in s]} for name, s in samples.items()}


def ratio(times: dict[str, dict], numerator: str, denominator: str) -> float:
    """numerator / denominator of their fastest rounds (see `interleaved`)."""
    return times[numerator]["min_s"] / times[denominator]["min_s"]


def best(times: dict[str, dict], name: str) -> float:
    return times[name]["min_s"]


def fixture_samples(folder: Path, images: int = 4, seed: int = 11) -> list[tuple[np.ndarray, list[str]]]:
    """Real scenes for agreement checks: meres-synth test scenes (the fixture the tests evaluate the
    demo model on, training/report_demo.FIXTURE), as (RGB image, its sentences)."""
    import json

    import cv2

    from meres_core.data.synthetic import generate

    generate(folder, images, seed=seed, depth=False, split_fractions=(0.0, 0.0, 1.0))
    refs_file = next(folder.rglob("refs*.p"), None)
    from meres_core.data.refer import load_refs

    refs = load_refs(refs_file)
    by_image: dict[int, list[str]] = {}
    for ref in refs:
        by_image.setdefault(ref["image_id"], []).extend(s["sent"] for s in ref["sentences"])
    instances = json.loads(next(folder.rglob("instances.json")).read_text())
    files = {img["id"]: img["file_name"] for img in instances["images"]}
    samples = []
    for image_id, sentences in sorted(by_image.items()):
        bgr = cv2.imread(str(folder / "images" / files[image_id]))
        samples.append((cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), list(dict.fromkeys(sentences))))
    return samples
