"""Evaluate a checkpoint: `python -m training.evaluate --checkpoint CKPT --split val [...]`.

Metrics (paper Sec. 4.1 / App. C): oIoU, mIoU, P@0.5/0.7/0.9 (IoU >= threshold), at the
original image resolution by default (prediction upsampled to the image, as CGFormer and
ReLA report) or at the 480x480 / model input resolution (`--resolution input`, LAVT's
convention: the ground truth resized to the input). The output names the convention.

Writes `<out>/metrics.json` (overall, per sentence kind, found-accuracy) and
`<out>/pr_curve.png` (pixel precision-recall, AUC-PR, paper Fig. 4), and prints a table
in the layout of the paper's Table 1. Data options default to those the checkpoint was
trained with (its metadata).

`predict` is the one prediction loop; train.py's periodic validation calls
`evaluate_model` too.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from meres_core.checkpoint import build_from_checkpoint, resolve_checkpoint
from meres_core.config import MeresConfig, parse_overrides
from meres_core.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from meres_core.device import autocast, precision_name, select_device, select_dtype
from meres_core.inference import Segmenter
from meres_core.metrics import PixelPR, SegmentationMetrics, calibrate_presence, format_table
from meres_core.model.meres import MERES, MeresOutput
from meres_core.visualize import draw_overlay

from .config import DataConfig
from .data import make_dataset, make_eval_loader

log = logging.getLogger("training.evaluate")

# The presence calibration keeps at least this share of present targets found (issue 8's floor).
PRESENT_FOUND_FLOOR = 0.95
GT_OUTLINE_RGB = (255, 255, 255)  # ground-truth contour on overlays; predictions use the overlay palette


def forward_one_image_each(model: MERES, images: torch.Tensor, sentences: list[str]) -> MeresOutput:
    """MERES on B images (B, 3, H, W) and their B sentences, with the landmark phrases they name as rows
    after them (MERES.landmark_rows): the first B rows of the output are the sentences'."""
    rows = model.landmark_rows(sentences, range(len(sentences)))
    input_ids, attention_mask = model.tokenize(rows.sentences)
    return model(images, input_ids, attention_mask, rows.source.to(images.device), rows.landmark_index.to(images.device))


@torch.inference_mode()
def predict(model: MERES, loader: DataLoader, device: torch.device, resolution: str,
            dtype: torch.dtype = torch.float32) -> Iterator[tuple[dict, list[np.ndarray], list[np.ndarray]]]:
    """Yield (batch, probabilities, targets) per batch; float32 / bool arrays at `resolution`.

    `original` needs a dataset built with keep_original=True. `dtype`: from meres_core.device.select_dtype.
    """
    model.eval()
    for batch in loader:
        if batch is None:  # every sample of the batch was broken
            continue
        with autocast(dtype, device):
            logits = forward_one_image_each(model, batch["image"].to(device), batch["sentence"]).logits
        logits = logits[: len(batch["sentence"])].float()
        if resolution == "original":
            targets = list(batch["orig_mask"])
        else:
            targets = list(batch["mask"].bool().numpy())
        probabilities = [
            torch.sigmoid(F.interpolate(logits[i: i + 1], size=target.shape, mode="bilinear",
                                        align_corners=False))[0, 0].cpu().numpy()
            for i, target in enumerate(targets)
        ]
        yield batch, probabilities, targets


def input_rgb(image: torch.Tensor) -> np.ndarray:
    """A normalized model input (3, S, S) back to RGB uint8, for overlays at input resolution."""
    rgb = image.permute(1, 2, 0).cpu().numpy() * IMAGENET_STD + IMAGENET_MEAN
    return (np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


def overlay(rgb: np.ndarray, result, target: np.ndarray) -> np.ndarray:
    """The deployed overlay (predicted mask, box, label) plus the ground-truth contour."""
    out = draw_overlay(rgb, [result])
    contours, _ = cv2.findContours(target.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return cv2.drawContours(out, contours, -1, GT_OUTLINE_RGB, 1)


@dataclass
class EvalResult:
    summary: dict
    pr: Optional[PixelPR] = None
    overlays: list[np.ndarray] = field(default_factory=list)


def evaluate_model(model: MERES, cfg: MeresConfig, loader: DataLoader, device: torch.device, resolution: str,
                   precision: str = "fp32", overlays: int = 0, pr_curve: bool = False,
                   progress: bool = True) -> EvalResult:
    """Metrics over `loader`; `found` is decided exactly as the deployed Segmenter decides it.

    found-accuracy: on no-target ("absent") sentences, the fraction reported not found;
    on the others, the fraction reported found. `precision` follows meres_core.device's
    policy (fp16 without CUDA runs fp32, with a warning); the summary names what ran.
    Samples the dataset skipped as broken are counted (`skipped`) and logged; an official
    split raises on them instead (make_dataset(..., evaluation=True)).
    """
    dtype = select_dtype(precision, device)
    segmenter = Segmenter(model, cfg, device=str(device))
    metrics = SegmentationMetrics()
    pr = PixelPR() if pr_curve else None
    found_correct = {"absent": [0, 0], "present": [0, 0]}  # [correct, total]
    scores, has_target = [], []  # for the presence-threshold calibration
    images: list[np.ndarray] = []
    batches = predict(model, loader, device, resolution, dtype)
    bar = tqdm(batches, total=len(loader), desc="evaluate", disable=None if progress else True)  # None: terminals only
    for batch, probabilities, targets in bar:
        for i, (probability, target) in enumerate(zip(probabilities, targets)):
            result = segmenter.decide(batch["sentence"][i], probability)
            metrics.update(result.mask, target, batch["kind"][i], found=result.found, centroid=result.centroid)
            if pr is not None:
                pr.update(probability, target)
            group = "absent" if bool(batch["no_target"][i]) else "present"
            found_correct[group][0] += int(result.found != (group == "absent"))
            found_correct[group][1] += 1
            scores.append(result.score)
            has_target.append(group == "present")
            if len(images) < overlays and group == "present":
                rgb = batch["orig_image"][i] if resolution == "original" else input_rgb(batch["image"][i])
                images.append(overlay(rgb, result, target))
    summary = metrics.summary()
    summary["samples"] = sum(found_correct[group][1] for group in found_correct)
    summary["skipped"] = len(loader.dataset) - summary["samples"]
    if summary["skipped"]:
        log.warning("evaluation scored %d of %d samples: %d skipped as broken (see the dataset's log lines)",
                    summary["samples"], len(loader.dataset), summary["skipped"])
    summary["resolution"] = resolution
    summary["precision"] = precision_name(dtype)
    summary["found_accuracy"] = {group: (correct / total if total else None)
                                 for group, (correct, total) in found_correct.items()}
    summary["found_counts"] = {group: total for group, (_, total) in found_correct.items()}
    summary["presence_threshold"] = segmenter.decision.presence_threshold
    if found_correct["absent"][1] and found_correct["present"][1]:
        summary["presence_calibration"] = calibrate_presence(scores, has_target,
                                                             mask_threshold=segmenter.decision.mask_threshold,
                                                             min_present_found=PRESENT_FOUND_FLOOR)
    if pr is not None:
        summary["auc_pr"] = pr.auc()
    return EvalResult(summary, pr, images)


# ------------------------------------------------------------------------------ CLI


def data_config(args: argparse.Namespace, metadata: dict) -> DataConfig:
    """Command-line data options over the ones recorded in the checkpoint at training time."""
    trained = dict(metadata.get("train_config", {}).get("data", {}))
    trained.pop("synthetic", None)  # evaluation never generates data
    data = DataConfig(**{k: v for k, v in trained.items() if k in DataConfig.__dataclass_fields__})
    for option in ("root", "dataset", "split_by", "image_root"):
        value = getattr(args, option)
        if value is not None:
            setattr(data, option, value)
    return data


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="checkpoint file, or 'demo'")
    parser.add_argument("--split", default="val")
    parser.add_argument("--data-root", dest="root", help="default: the checkpoint's training data root")
    parser.add_argument("--dataset", help="refcoco | refcoco+ | refcocog | synth (default: as trained)")
    parser.add_argument("--split-by", dest="split_by", help="unc | umd | google | synth (default: as trained)")
    parser.add_argument("--image-root", dest="image_root")
    parser.add_argument("--categories", nargs="+", help="evaluate only refs of these categories (Table 2 subsets)")
    parser.add_argument("--resolution", choices=["original", "input"], default="original",
                        help="original image size (default) or the model input size (LAVT's convention)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--limit", type=int, help="first N samples only")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32",
                        help="fp16 needs CUDA; elsewhere fp32 runs (with a warning) and the report says so")
    parser.add_argument("--out", help="output folder (default: runs/eval/<checkpoint>_<dataset>_<split>_<resolution>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change the checkpoint's config before the model is built, e.g. "
                             "inference.mask_threshold=0.4 (training.export --set ships the choice)")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    device = select_device(args.device)
    model, cfg, metadata = build_from_checkpoint(args.checkpoint, map_location=device, overrides=parse_overrides(args.set))
    model.to(device)
    data = data_config(args, metadata)
    dataset = make_dataset(data, args.split, cfg.model.vision.img_size, keep_original=args.resolution == "original",
                           limit=args.limit, categories=args.categories, evaluation=True)
    loader = make_eval_loader(dataset, args.batch_size, args.num_workers)
    result = evaluate_model(model, cfg, loader, device, args.resolution, args.precision, pr_curve=True)

    checkpoint = resolve_checkpoint(args.checkpoint)
    out = Path(args.out or f"runs/eval/{checkpoint.stem}_{data.dataset}_{args.split}_{args.resolution}")
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "checkpoint": str(checkpoint), "dataset": data.dataset, "split_by": data.split_by, "split": args.split,
        "preset": cfg.preset, **({"set": args.set} if args.set else {}), **result.summary,
    }
    (out / "metrics.json").write_text(json.dumps(json_safe(report), indent=1))
    result.pr.plot(out / "pr_curve.png", label=cfg.preset)
    print(table1(cfg, f"{data.dataset} {args.split}", report))
    print()
    print(format_table({"all": report, **{f"kind {k}": v for k, v in report["by_kind"].items()}}))
    found = report["found_accuracy"]
    print(f"\nresolution: {args.resolution} ({'original image size' if args.resolution == 'original' else 'model input'})"
          f"; AUC-PR {report['auc_pr']:.4f}; found-accuracy: absent {_fmt(found['absent'])} "
          f"({report['found_counts']['absent']}), present {_fmt(found['present'])} at presence threshold "
          f"{report['presence_threshold']}; written to {out}")
    calibration = report.get("presence_calibration")
    if calibration:
        print(f"best presence threshold on this split: {calibration['threshold']} (absent rejected "
              f"{_fmt(calibration['absent_rejected'])}, present found {_fmt(calibration['present_found'])}); "
              f"set it with `python -m training.export --presence-threshold`")
    return report


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def json_safe(value):
    """NaN (a metric undefined on an empty subset) -> null, so the JSON is standard."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def table1(cfg: MeresConfig, column: str, summary: dict) -> str:
    """The paper's Table 1 layout: metric blocks (mIoU, oIoU) x method, encoders, dataset split."""
    header = ["", "Method", "Vision Encoder", "Language Encoder", column]
    rows = [[metric, f"MERES ({cfg.preset})", cfg.model.vision.name, cfg.model.text.name,
             "-" if summary[metric] is None or math.isnan(summary[metric]) else f"{100 * summary[metric]:.2f}"]
            for metric in ("mIoU", "oIoU")]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows])


if __name__ == "__main__":
    main()
