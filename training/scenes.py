"""The scenes of a synthetic REFER dataset (meres-synth or training/heldout_scenes/) as the per-scene
tools (word_probe.py, diagnose.py) read them, and their shared command-line options."""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Optional

from meres_core.data.refer import load_refs


def scene_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--checkpoint, --data-root, --split, --images, --precision."""
    parser.add_argument("--checkpoint", required=True, help="checkpoint file, or 'demo'")
    parser.add_argument("--data-root", required=True, type=Path, help="a synthetic REFER dataset (meres-synth, heldout_scenes)")
    parser.add_argument("--split", default="test", help="'all' for every image")
    parser.add_argument("--images", type=int, help="first N images of the split")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    return parser


def load_scenes(root: Path, split: Optional[str]) -> tuple[list[tuple[dict, list[dict]]], dict[int, str]]:
    """(image info, its annotations) of the images of `split` (all images when None), and the category names."""
    instances = json.loads((root / "synth" / "instances.json").read_text())
    image_ids = None
    if split is not None:
        image_ids = {r["image_id"] for r in load_refs(root / "synth" / "refs(synth).p") if r["split"] == split}
    annotations = defaultdict(list)
    for a in instances["annotations"]:
        annotations[a["image_id"]].append(a)
    names = {c["id"]: c["name"] for c in instances["categories"]}
    scenes = [(im, annotations[im["id"]]) for im in instances["images"] if image_ids is None or im["id"] in image_ids]
    return scenes, names
