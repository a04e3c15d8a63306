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
from meres_core.config import merge, parse_overrides


def export(checkpoint: str | Path, out: str | Path, half: bool, metadata: dict | None = None,
           presence_threshold: float | None = None, overrides: dict | None = None) -> Path:
    overrides = overrides or {}
    if presence_threshold is not None:  # calibrated on the val split (training.evaluate prints it)
        overrides = merge(overrides, {"inference": {"presence_threshold": presence_threshold}})
    model, cfg, trained_metadata = build_from_checkpoint(checkpoint, overrides=overrides)
    return save_checkpoint(out, model, cfg, {**trained_metadata, **(metadata or {})}, half=half)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--half", action="store_true", help="store weights as fp16 (half the size)")
    parser.add_argument("--presence-threshold", type=float,
                        help="the deployed presence threshold (default: the checkpoint's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change the checkpoint's config, e.g. inference.mask_threshold=0.4 (compared on val "
                             "with training.evaluate --set first); the weights stay as trained")
    args = parser.parse_args(argv)
    path = export(args.checkpoint, args.out, args.half, presence_threshold=args.presence_threshold,
                  overrides=parse_overrides(args.set))
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
