"""Inference benchmark: parameter counts and forward latency per preset, JSON on stdout.

Also measures, side by side in one run, what the Segmenter's design buys:
  - batching 4 sentences on one frame vs 4 separate calls,
  - a cached sentence vs a fresh one (language encoder skipped).
Random weights (no downloads): latency does not depend on the weights.

    python bench/bench_inference.py [--presets tiny demo paper] [--repeats 5] [--device cpu]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # paper presets: no hub retries, random weights

from meres_core.config import load_config
from meres_core.inference import Segmenter
from meres_core.model.meres import MERES, count_parameters

SENTENCES = ["the red mug left of the laptop", "the blue bowl", "the second star from the left",
             "the smaller green circle near the top"]


def timed(fn, repeats: int) -> float:
    """Median wall time in ms after one warm-up call."""
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(samples), 2)


def bench_preset(name: str, repeats: int, device: str, precision: str) -> dict:
    offline = {"vision": {"pretrained": None}, "text": {"pretrained": False}} if name.startswith("paper") else {}
    cfg = load_config(name, overrides={"model": offline})
    torch.manual_seed(0)
    model = MERES(cfg.model)
    segmenter = Segmenter(model, cfg, device=device, precision=precision)
    size = cfg.model.vision.img_size
    image = (np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8)

    def fresh_sentence():
        segmenter._text_cache.clear()
        segmenter.segment(image, SENTENCES[0])

    one = timed(lambda: segmenter.segment(image, SENTENCES[0]), repeats)
    batched = timed(lambda: segmenter.segment(image, SENTENCES), repeats)
    separate = timed(lambda: [segmenter.segment(image, s) for s in SENTENCES], repeats)
    uncached = timed(fresh_sentence, repeats)
    return {
        "preset": name,
        "input_size": size,
        "parameters": count_parameters(model),
        "latency_ms_one_sentence": one,
        "latency_ms_4_sentences_batched": batched,
        "latency_ms_4_sentences_separate": separate,
        "batching_speedup": round(separate / batched, 2),
        "latency_ms_uncached_sentence": uncached,
        "text_cache_speedup": round(uncached / one, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "demo", "paper"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "device": args.device, "precision": args.precision},
        "presets": [bench_preset(p, args.repeats, args.device, args.precision) for p in args.presets],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
