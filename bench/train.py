"""Train section: training throughput per preset (samples/s).

Runs the trainer's own step (forward, losses, backward, clipping, AdamW, scheduler) on
batches of synthetic scenes generated into a temporary folder, and times the data
loading separately:
  - step_samples_per_s: optimizer steps on batches already in memory (median step),
  - loader_samples_per_s: reading, decoding and resizing samples (one process),
  - end_to_end_samples_per_s: both, serially (the num_workers=0 bound).

    python -m bench.train [--presets tiny demo] [--batch-size 8] [--steps 5] [--threads 1] [--precision bf16]
        [--sentences-per-image 1 4]   (side by side: one image per sentence vs runs of 4 sentences per image)
    (on a GPU, e.g. --device cuda --precision bf16 --batch-size 64 / 256: the demo recipe's step was
    host-bound at batch 64, README "Demo model")
    (in `python -m bench`: tiny and demo, 5 steps; --quick: tiny, 2 steps)
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from meres_core.data.synthetic import generate
from training.config import load_train_config
from training.train import Runtime, Trainer

from .common import machine

SYNTHETIC_IMAGES = 12  # enough sentences for a few batches of 8


def bench_preset(preset: str, data_root: Path, batch_size: int, steps: int, device: torch.device,
                 precision: str = "fp32", sentences_per_image: int = 1) -> dict:
    cfg = load_train_config(None, {
        "preset": preset, "batch_size": batch_size, "device": device.type, "precision": precision,
        "data": {"root": str(data_root), "dataset": "synth", "split_by": "synth", "val_split": "train",
                 "num_workers": 0, "sentences_per_image": sentences_per_image},
        "optim": {"lr": 1.0e-4, "clip_grad_norm": 1.0},
        "out_dir": str(data_root / f"run_{preset}"),
    })
    trainer = Trainer(cfg, Runtime(rank=0, world_size=1, device=device), progress_bar=False)
    trainer.model.train()
    loader = iter(trainer.loader)

    start = time.perf_counter()
    batches = [next(loader) for _ in range(steps + 1)]
    loading = (time.perf_counter() - start) / (steps + 1)

    trainer.train_step([batches[0]])  # warm-up: allocator, first-call overheads
    times = []
    for batch in batches[1:]:
        start = time.perf_counter()
        trainer.train_step([batch])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    step = statistics.median(times)
    return {
        "preset": preset, "img_size": trainer.model_cfg.model.vision.img_size, "batch_size": batch_size,
        "precision": precision, "sentences_per_image": sentences_per_image,
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "step_ms": round(step * 1000, 1),
        "step_samples_per_s": round(batch_size / step, 2),
        "loader_samples_per_s": round(batch_size / loading, 2),
        "end_to_end_samples_per_s": round(batch_size / (step + loading), 2),
    }


def measure(presets: list[str], batch_size: int, steps: int, device: torch.device,
            precision: str = "fp32", sentences_per_image: tuple[int, ...] = (1,)) -> list[dict]:
    images = max(SYNTHETIC_IMAGES, batch_size * (steps + 1) // 3 + 1)  # an epoch holds each scene's 3-7 objects once
    with tempfile.TemporaryDirectory(prefix="meres_bench_train_") as tmp:
        generate(tmp, images, seed=0, depth=False, split_fractions=(1.0, 0.0, 0.0))
        return [bench_preset(p, Path(tmp), batch_size, steps, device, precision, k)
                for p in presets for k in sentences_per_image]


def run(quick: bool, device: str = "cpu") -> dict:
    presets, steps = (["tiny"], 2) if quick else (["tiny", "demo"], 5)
    results = measure(presets, 8, steps, torch.device(device))
    return {"targets": {}, "measurements": {"device": device, "threads": torch.get_num_threads(), "results": results}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "demo"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per preset (median reported)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sentences-per-image", type=int, nargs="+", default=[1],
                        help="data.sentences_per_image values to compare (each a divisor of the batch)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="autocast as in training (fp16: CUDA only)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = measure(args.presets, args.batch_size, args.steps, torch.device(args.device), args.precision,
                      tuple(args.sentences_per_image))
    print(json.dumps({"device": args.device, "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "machine": machine(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
