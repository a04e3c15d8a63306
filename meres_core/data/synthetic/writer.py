"""Synthetic referring scenes written in the real REFER format.

Every image holds 3-7 flat coloured shapes on a textured background, drawn back
to front so that later shapes occlude earlier ones. Each sentence is built from a
structured query (a base description such as "red circle" plus an optional
qualifier: extreme, relation, ordinal or size) that is resolved against the
visible centroids and areas of the scene, and it is kept only when it selects
exactly its target: expressions are true and unambiguous by construction.

Layout under `out_dir` (readable by `meres_core.data.refer.ReferDataset` with
`dataset="synth", split_by="synth"`):

    images/synth_000001.png        RGB
    synth/instances.json           COCO: polygons for half the objects, RLE for the rest
    synth/refs(synth).p            list of REFER ref dicts; sentences carry a `kind`, and those with
                                   an extreme, ordinal or relation qualifier the `ranked_ann_ids` it
                                   ranks, and those with a relation the `landmark_ann_id` it names
                                   and the `relation` (left, right, above, below, nearest)
    depth/synth_000001.png         uint16 millimetres (optional)
    camera_info.json               pinhole intrinsics of the depth images (optional)
    meta.json                      seed, options and counts per split and kind

Annotations of an image are listed in draw order (back to front) and carry an
extra `color` key. A scene depends only on (seed, image_id): `render_scene`
rebuilds it, which the tests use to compare decoded masks with what was drawn.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pickle
import re
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from .expressions import _describe, _sentence
from .scene import APPEARANCES, _render, _scene_rng, camera_info
from .vocabulary import CATEGORY_IDS, KINDS

VERSION = "1.7"  # 1.2: sentences with a positional qualifier carry `ranked_ann_ids`; 1.3: `appearance`; 1.4: `shaded`;
# 1.5: "nearest the <side> edge" wordings of the extremes, "the only <name>"; 1.6: relation sentences carry
# `ranked_ann_ids` (every member of their base), `landmark_ann_id` and `relation` (scenes and words as 1.5);
# 1.7: `same_colour_neighbours` (at 0, its default, the scenes and words of 1.6)
DATASET = "synth"
SPLITS = ("train", "val", "test")

# Noisy images gain nothing from LZ77 matching: RLE at level 1 is the fastest and about the smallest,
# and a fixed AVG row filter (where OpenCV exposes it) saves the adaptive filter search.
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):
    PNG_PARAMS += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_AVG]


def image_file_name(image_id: int) -> str:
    return f"synth_{image_id:06d}.png"


def _segmentation(visible: np.ndarray, as_polygon: bool):
    """COCO segmentation of a mask: polygons when asked and representable, else compressed RLE."""
    if as_polygon:
        contours, hierarchy = cv2.findContours(visible.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        has_hole = hierarchy is not None and np.any(hierarchy[0, :, 3] >= 0)
        # Contour points are pixel indices; +0.5 puts them on pixel centres in COCO's continuous
        # coordinates, which halves the boundary pixels lost by the round trip. frPyObjects reads a
        # 4-number list as a box, so fragments of fewer than 3 points are dropped.
        polygons = [(c.reshape(-1) + 0.5).tolist() for c in contours if len(c) >= 3]
        if polygons and not has_hole:
            return polygons
    rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _split_sizes(n: int, fractions: tuple[float, ...]) -> list[int]:
    """Largest-remainder rounding; every non-empty split gets at least one image when n allows."""
    raw = np.asarray(fractions, float) / sum(fractions) * n
    sizes = np.floor(raw).astype(int)
    for i in np.argsort(sizes - raw)[: n - sizes.sum()]:
        sizes[i] += 1
    for i in np.flatnonzero((sizes == 0) & (np.asarray(fractions) > 0)):
        donor = int(np.argmax(sizes))
        if sizes[donor] > 1:
            sizes[donor] -= 1
            sizes[i] += 1
    return sizes.tolist()


@dataclass(frozen=True)
class _Job:
    out_dir: Path
    seed: int
    image_id: int
    height: int
    width: int
    depth: bool
    absent_rate: float
    sentences_per_object: int
    appearance: str
    same_colour_neighbours: float


def _build_image(job: _Job) -> tuple[list[dict], list]:
    """Render, write and describe one image. Ids are left to the caller, so workers stay independent."""
    rng = _scene_rng(job.seed, job.image_id)
    scene = _render(rng, job.height, job.width, job.depth, job.appearance, job.same_colour_neighbours)
    name = image_file_name(job.image_id)
    cv2.imwrite(str(job.out_dir / "images" / name), cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR), PNG_PARAMS)
    if job.depth:
        cv2.imwrite(str(job.out_dir / "depth" / name), scene.depth, PNG_PARAMS)
    annotations = []
    for t, shape in enumerate(scene.shapes):
        rle = mask_utils.encode(np.asfortranarray(shape.visible.astype(np.uint8)))
        annotations.append({
            "image_id": job.image_id, "category_id": CATEGORY_IDS[shape.category],
            "segmentation": _segmentation(shape.visible, as_polygon=t % 2 == 0),
            "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(),
            "iscrowd": 0, "color": shape.color,
        })
    refs = _describe(rng, scene, job.height, job.width, job.absent_rate, job.sentences_per_object)
    return annotations, refs


def generate(out_dir, num_images: int, seed: int = 0, height: int = 480, width: int = 640, depth: bool = True,
             split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), absent_fraction: float = 0.08,
             sentences_per_object: int = 3, appearance: str = "muted", same_colour_neighbours: float = 0.0,
             workers: int = 1) -> dict:
    """Write `num_images` synthetic scenes under `out_dir` and return the meta dict.

    The output depends only on the arguments other than `workers` (processes used to render).
    """
    if num_images < 1:
        raise ValueError("num_images must be >= 1")
    if len(split_fractions) != 3 or min(split_fractions) < 0 or sum(split_fractions) <= 0:
        raise ValueError("split_fractions must be three non-negative numbers (train, val, test)")
    if not 0.0 <= absent_fraction <= 0.5:
        raise ValueError("absent_fraction must be in [0, 0.5]")
    if sentences_per_object < 1:
        raise ValueError("sentences_per_object must be >= 1")
    if appearance not in APPEARANCES:
        raise ValueError(f"appearance must be one of {APPEARANCES}, got {appearance!r}")
    if not 0.0 <= same_colour_neighbours <= 1.0:
        raise ValueError("same_colour_neighbours must be in [0, 1]")
    out = Path(out_dir)
    for sub in ("images", DATASET) + (("depth",) if depth else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)

    order = np.random.default_rng(seed).permutation(num_images)
    split_of = np.repeat(np.arange(3), _split_sizes(num_images, split_fractions))[np.argsort(order)]
    # Absent sentences per object sentence, so that absent / all == absent_fraction on average.
    absent_rate = absent_fraction / (1 - absent_fraction)
    jobs = [_Job(out, seed, i + 1, height, width, depth, absent_rate, sentences_per_object,
                 appearance, same_colour_neighbours) for i in range(num_images)]
    images, annotations, refs = [], [], []
    counts = {"images": Counter(), "refs": Counter(), "sentences": Counter(), "kinds": Counter()}
    n_sentences = 0
    with ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(workers))
            results = pool.imap(_build_image, jobs, chunksize=4)
        else:
            results = map(_build_image, jobs)
        for job, (image_annotations, image_refs) in zip(jobs, results):
            split = SPLITS[split_of[job.image_id - 1]]
            name = image_file_name(job.image_id)
            images.append({"id": job.image_id, "file_name": name, "height": height, "width": width})
            counts["images"][split] += 1
            ann_ids = []
            for ann in image_annotations:
                ann_ids.append(len(annotations) + 1)
                annotations.append({"id": ann_ids[-1], **ann})
            for target, category, sentences in image_refs:
                ann_id = ann_ids[target] if target >= 0 else -1
                first, n_sentences = n_sentences + 1, n_sentences + len(sentences)
                ref = {
                    "ref_id": len(refs) + 1, "ann_id": ann_id, "image_id": job.image_id,
                    "category_id": CATEGORY_IDS[category], "split": split,
                    "sentences": [_sentence(raw, first + k, kind, None if ranked is None else [ann_ids[i] for i in ranked],
                                            *((None, None) if related is None else (ann_ids[related[0]], related[1])))
                                  for k, (raw, kind, ranked, related) in enumerate(sentences)],
                    # REFER names a ref's file after image and annotation; loaders use instances.json instead.
                    "file_name": name if ann_id == -1 else f"{Path(name).stem}_{ann_id}.png",
                }
                ref["sent_ids"] = [s["sent_id"] for s in ref["sentences"]]
                if ann_id == -1:
                    ref["no_target"] = True  # gRefCOCO convention: the expected mask is empty
                refs.append(ref)
                counts["refs"][split] += 1
                counts["sentences"][split] += len(sentences)
                counts["kinds"].update(kind for _, kind, *_ in sentences)

    instances = {
        "info": {"description": "MERES synthetic referring scenes", "version": VERSION},
        "images": images, "annotations": annotations,
        "categories": [{"id": i, "name": n, "supercategory": "shape"} for n, i in CATEGORY_IDS.items()],
    }
    (out / DATASET / "instances.json").write_text(json.dumps(instances))
    with open(out / DATASET / f"refs({DATASET}).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)  # the protocol of the distributed refs(unc).p files
    if depth:
        (out / "camera_info.json").write_text(json.dumps(camera_info(height, width), indent=1))
    meta = {
        "generator": "meres-synth", "version": VERSION, "seed": seed, "num_images": num_images,
        "height": height, "width": width, "depth": depth, "split_fractions": list(split_fractions),
        "absent_fraction": absent_fraction, "sentences_per_object": sentences_per_object, "appearance": appearance,
        "same_colour_neighbours": same_colour_neighbours,
        "annotations": len(annotations), "images": {s: counts["images"][s] for s in SPLITS},
        "refs": {s: counts["refs"][s] for s in SPLITS}, "sentences": {s: counts["sentences"][s] for s in SPLITS},
        "kinds": {k: counts["kinds"][k] for k in KINDS},
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError("size must be HEIGHTxWIDTH, e.g. 480x640")
    return int(match[1]), int(match[2])


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="meres-synth", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--images", type=int, required=True, help="number of images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=_size, default=(480, 640), help="HEIGHTxWIDTH (default 480x640)")
    parser.add_argument("--no-depth", action="store_true", help="skip depth images and camera_info.json")
    parser.add_argument("--absent-fraction", type=float, default=0.08)
    parser.add_argument("--sentences-per-object", type=int, default=3)
    parser.add_argument("--appearance", choices=APPEARANCES, default="muted",
                        help="muted: meres-synth 1.2's scenes; varied: backgrounds of any colour and style, smaller shapes")
    parser.add_argument("--same-colour-neighbours", type=float, default=0.0,
                        help="share of shapes placed next to another that take its colour (default 0)")
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8),
                        help="rendering processes (default: CPU count, at most 8); output does not depend on it")
    parser.add_argument("--splits", type=lambda s: tuple(float(x) for x in s.split(",")), default=(0.8, 0.1, 0.1),
                        help="train,val,test fractions (default 0.8,0.1,0.1)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    meta = generate(args.out, args.images, seed=args.seed, height=args.size[0], width=args.size[1],
                    depth=not args.no_depth, split_fractions=args.splits, absent_fraction=args.absent_fraction,
                    sentences_per_object=args.sentences_per_object, appearance=args.appearance,
                    same_colour_neighbours=args.same_colour_neighbours, workers=args.workers)
    n_sent = sum(meta["sentences"].values())
    splits = " / ".join(f"{s} {meta['images'].get(s, 0)}" for s in SPLITS)
    print(f"meres-synth: {args.images} images ({splits}), {sum(meta['refs'].values())} refs, {n_sent} sentences "
          f"({meta['kinds'].get('absent', 0) / max(n_sent, 1):.1%} absent) in {args.out} "
          f"[{time.perf_counter() - start:.1f} s]")


if __name__ == "__main__":
    main()
