"""Export a training checkpoint for deployment: weights, model config and metadata only.

    python -m training.export --checkpoint runs/demo_synth/best.pt --out meres_core/weights/meres_demo.pt --half

Drops the optimizer / scheduler / RNG state (`training_state`) and, with `--half`, stores
floating-point weights as fp16 (they are cast back to the model's dtype on load). The
training config stays in the metadata, so the export still says how it was made.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from meres_core.checkpoint import build_from_checkpoint, save_checkpoint
from meres_core.config import validate


def export(checkpoint: str | Path, out: str | Path, half: bool, metadata: dict | None = None,
           presence_threshold: float | None = None, located_peak_logit: float | None = None) -> Path:
    model, cfg, trained_metadata = build_from_checkpoint(checkpoint)
    if presence_threshold is not None:  # calibrated on the val split (training.evaluate prints it)
        cfg.inference.presence_threshold = presence_threshold
    if located_peak_logit is not None:  # chosen on the val split; no weights change, the loaded model applies it
        cfg.model.located_peak_logit = located_peak_logit
        validate(cfg)
    return save_checkpoint(out, model, cfg, {**trained_metadata, **(metadata or {})}, half=half)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--half", action="store_true", help="store weights as fp16 (half the size)")
    parser.add_argument("--presence-threshold", type=float,
                        help="the deployed presence threshold (default: the checkpoint's)")
    parser.add_argument("--located-peak-logit", type=float,
                        help="model.located_peak_logit of the deployed model (model/no_target.py; default: the checkpoint's)")
    args = parser.parse_args(argv)
    path = export(args.checkpoint, args.out, args.half, presence_threshold=args.presence_threshold,
                  located_peak_logit=args.located_peak_logit)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
