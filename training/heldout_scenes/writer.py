"""Writing: images, COCO instances, refs pickle and meta in the REFER layout; the command line."""
from __future__ import annotations

import argparse
import json
import pickle
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .drawing import DrawnObject, _image_rng, _render
from .sentences import Description, _choose, _sentence, wording
from .vocabulary import ABSENT_TYPES, CATEGORY_IDS, KINDS

GENERATOR = "training.heldout_scenes"
VERSION = 2  # 2: spatial sentences also relate the target to a landmark ("the circle next to the red square")
DATASET = "synth"  # folder and split_by name: ReferDataset(root, "synth", "synth", "test") reads it
SPLIT = "test"


def image_file_name(image_id: int) -> str:
    return f"heldout_{image_id:06d}.png"


def _annotation(obj: DrawnObject, ann_id: int, image_id: int) -> dict:
    rle = mask_utils.encode(np.asfortranarray(obj.mask.astype(np.uint8)))
    return {
        "id": ann_id, "image_id": image_id, "category_id": CATEGORY_IDS[obj.category],
        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
        "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0,
        "color": obj.color,
    }


def generate(out_dir, num_images: int, seed: int = 0, height: int = 480, width: int = 640) -> dict:
    """Write `num_images` held-out scenes under `out_dir`; return the meta dict."""
    if num_images < 1:
        raise ValueError("num_images must be >= 1")
    if min(height, width) < 96:
        raise ValueError("images must be at least 96 pixels on each side to hold 3-6 objects")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / DATASET).mkdir(parents=True, exist_ok=True)
    images, annotations, refs = [], [], []
    counts = {"kinds": Counter(), "absent_types": Counter(), "backgrounds": Counter()}
    owed: Counter = Counter()
    sent_id = 0
    for image_id in range(1, num_images + 1):
        rng = _image_rng(seed, image_id)
        scene = _render(rng, height, width)
        name = image_file_name(image_id)
        Image.fromarray(scene.image).save(out / "images" / name, compress_level=1)
        images.append({"id": image_id, "file_name": name, "height": height, "width": width})
        counts["backgrounds"][scene.background_style] += 1
        ann_ids = []
        for obj in scene.objects:
            ann_ids.append(len(annotations) + 1)
            annotations.append(_annotation(obj, ann_ids[-1], image_id))

        # One ref per described object, holding all its sentences; one ref per absent sentence.
        sentences_by_ref: dict[int, list[tuple[Description, str]]] = {}
        for target, description in _choose(rng, scene.objects, width, owed):
            key = target if target >= 0 else -1 - len(sentences_by_ref)  # absent refs never merge
            sentences_by_ref.setdefault(key, []).append((description, wording(rng, description)))
        for key, described in sentences_by_ref.items():
            sentences = []
            for description, raw in described:
                sent_id += 1
                sentences.append(_sentence(raw, sent_id, description.kind))
                counts["kinds"][description.kind] += 1
                if description.absent_type:
                    counts["absent_types"][description.absent_type] += 1
            ann_id = ann_ids[key] if key >= 0 else -1
            category = scene.objects[key].category if key >= 0 else described[0][0].category
            ref = {"ref_id": len(refs) + 1, "ann_id": ann_id, "image_id": image_id,
                   "category_id": CATEGORY_IDS[category], "split": SPLIT, "sentences": sentences,
                   "sent_ids": [s["sent_id"] for s in sentences],
                   "file_name": name if ann_id == -1 else f"{Path(name).stem}_{ann_id}.png"}
            if ann_id == -1:
                ref["no_target"] = True  # the expected mask is empty
            refs.append(ref)

    instances = {
        "info": {"description": "held-out referring scenes (evaluation only)", "generator": GENERATOR},
        "images": images, "annotations": annotations,
        "categories": [{"id": i, "name": n, "supercategory": "shape"} for n, i in CATEGORY_IDS.items()],
    }
    (out / DATASET / "instances.json").write_text(json.dumps(instances))
    with open(out / DATASET / f"refs({DATASET}).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)  # the protocol of the distributed REFER files
    meta = {
        "generator": GENERATOR, "version": VERSION, "seed": seed, "num_images": num_images, "height": height, "width": width,
        "split": SPLIT, "annotations": len(annotations), "refs": len(refs), "sentences": sent_id,
        "kinds": {k: counts["kinds"][k] for k in KINDS},
        "absent_types": {t: counts["absent_types"][t] for t in ABSENT_TYPES},
        "backgrounds": dict(sorted(counts["backgrounds"].items())),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError("size must be HEIGHTxWIDTH, e.g. 480x640")
    return int(match[1]), int(match[2])


def main(argv: Optional[list[str]] = None) -> None:
    description = sys.modules[__package__].__doc__.splitlines()[0]  # the package's docstring
    parser = argparse.ArgumentParser(prog="python -m training.heldout_scenes", description=description)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--images", type=int, required=True, help="number of images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=_size, default=(480, 640), help="HEIGHTxWIDTH (default 480x640)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    meta = generate(args.out, args.images, seed=args.seed, height=args.size[0], width=args.size[1])
    kinds = ", ".join(f"{k} {n}" for k, n in meta["kinds"].items())
    print(f"heldout_scenes: {args.images} images, {meta['refs']} refs, {meta['sentences']} sentences ({kinds}) "
          f"in {args.out} [{time.perf_counter() - start:.1f} s]")
