"""Minimal pairs: does the mask follow the one word that changes?

    python -m training.word_probe --checkpoint demo --data-root runs/heldout_scenes [--split test] [--images 200]

For each scene of a synthetic REFER dataset (meres-synth or training/heldout_scenes/, whose
instances.json carry category, colour and box of every object) two sentences that differ in one
qualifier are segmented on the same image, each naming its own object:
  left/right      "the leftmost {shape}" / "the rightmost {shape}"   (two or more of that shape)
  bigger/smaller  "the bigger {shape}" / "the smaller {shape}"       (exactly two, areas 1.5x apart)
  colour          "the {colour} {shape}" / "the {other colour} {shape}"
  shape           "the {shape}" / "the {other shape}"                 (one of each)
Per pair kind: `mask_iou`, the mean IoU between the two sentences' masks (1.0: the word changes
nothing, the model does not read it; distinct objects give 0 when read), `both_on_target`, the
share of pairs whose two centroids each lie on their own object, and `swapped`, each on the other's.
A model that reads colour but not position shows colour's mask_iou near 0 and left/right's near 1.
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from meres_core.data.refer import decode_segmentation
from meres_core.inference import Segmenter
from meres_core.metrics import centroid_on_target, mask_iou

from .scenes import load_scenes, scene_arguments

PAIR_KINDS = ("left/right", "bigger/smaller", "colour", "shape")
AREA_RATIO = 1.5  # "bigger" needs an unambiguous answer


@dataclass(frozen=True)
class SceneObject:
    ann_id: int
    category: str
    colour: Optional[str]
    center_x: float
    area: float


@dataclass(frozen=True)
class Pair:
    kind: str
    sentences: tuple[str, str]
    targets: tuple[int, int]  # ann ids


def scene_pairs(objects: list[SceneObject]) -> list[Pair]:
    """At most one pair of each kind for one scene, from its objects."""
    by_shape: dict[str, list[SceneObject]] = defaultdict(list)
    for o in objects:
        by_shape[o.category].append(o)
    pairs = []
    for shape, group in sorted(by_shape.items()):
        if len(group) >= 2 and not any(p.kind == "left/right" for p in pairs):
            ordered = sorted(group, key=lambda o: o.center_x)
            pairs.append(Pair("left/right", (f"the leftmost {shape}", f"the rightmost {shape}"),
                              (ordered[0].ann_id, ordered[-1].ann_id)))
        if len(group) == 2 and not any(p.kind == "bigger/smaller" for p in pairs):
            small, big = sorted(group, key=lambda o: o.area)
            if big.area >= AREA_RATIO * small.area:
                pairs.append(Pair("bigger/smaller", (f"the bigger {shape}", f"the smaller {shape}"),
                                  (big.ann_id, small.ann_id)))
        colours = {o.colour for o in group}
        if len(group) == 2 and len(colours) == 2 and None not in colours and not any(p.kind == "colour" for p in pairs):
            a, b = group
            pairs.append(Pair("colour", (f"the {a.colour} {shape}", f"the {b.colour} {shape}"), (a.ann_id, b.ann_id)))
    single = [group[0] for _, group in sorted(by_shape.items()) if len(group) == 1]
    if len(single) >= 2:
        a, b = single[:2]
        pairs.append(Pair("shape", (f"the {a.category}", f"the {b.category}"), (a.ann_id, b.ann_id)))
    return pairs


class PairScores:
    """Accumulates the three numbers per pair kind."""

    def __init__(self):
        self.rows: dict[str, list[tuple[float, bool, bool]]] = defaultdict(list)

    def add(self, kind: str, masks: tuple[np.ndarray, np.ndarray],
            centroids: tuple[Optional[tuple[float, float]], Optional[tuple[float, float]]],
            targets: tuple[np.ndarray, np.ndarray]) -> None:
        on_own = all(centroid_on_target(c, t) for c, t in zip(centroids, targets))
        on_other = all(centroid_on_target(c, t) for c, t in zip(centroids, targets[::-1]))
        self.rows[kind].append((mask_iou(*masks), on_own, on_other))

    def summary(self) -> dict:
        out = {}
        for kind in PAIR_KINDS:
            rows = self.rows.get(kind, [])
            if rows:
                iou, own, other = (np.asarray(column, float) for column in zip(*rows))
                out[kind] = {"pairs": len(rows), "mask_iou": round(float(iou.mean()), 4),
                             "both_on_target": round(float(own.mean()), 4), "swapped": round(float(other.mean()), 4)}
        return out


def scene_objects(annotations: list[dict], category_names: dict[int, str]) -> list[SceneObject]:
    """The objects of one image from its instances.json annotations."""
    return [SceneObject(a["id"], category_names[a["category_id"]], a.get("color"), a["bbox"][0] + a["bbox"][2] / 2,
                        a["area"]) for a in annotations]


def probe(segmenter: Segmenter, root: Path, split: Optional[str] = "test", images: Optional[int] = None) -> dict:
    scores = PairScores()
    scenes, names = load_scenes(root, split)
    for info, anns in scenes[:images]:
        h, w = info["height"], info["width"]
        pairs = scene_pairs(scene_objects(anns, names))
        if not pairs:
            continue
        bgr = cv2.imread(str(root / "images" / info["file_name"]), cv2.IMREAD_COLOR)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        masks = {a["id"]: decode_segmentation(a["segmentation"], h, w) for a in anns}
        results = segmenter.segment(rgb, [s for p in pairs for s in p.sentences])
        for i, pair in enumerate(pairs):
            a, b = results[2 * i], results[2 * i + 1]
            scores.add(pair.kind, (a.mask, b.mask), (a.centroid, b.centroid),
                       (masks[pair.targets[0]], masks[pair.targets[1]]))
    return scores.summary()


def main(argv=None) -> dict:
    parser = scene_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--out", type=Path, help="write the summary as JSON here")
    args = parser.parse_args(argv)
    segmenter = Segmenter.from_checkpoint(args.checkpoint, precision=args.precision)
    summary = probe(segmenter, args.data_root, None if args.split == "all" else args.split, args.images)
    print(f"{'pair':16s} {'pairs':>6s} {'mask IoU':>9s} {'both on target':>15s} {'swapped':>8s}")
    for kind, row in summary.items():
        print(f"{kind:16s} {row['pairs']:6d} {row['mask_iou']:9.3f} {row['both_on_target']:15.3f} {row['swapped']:8.3f}")
    if args.out:
        args.out.write_text(json.dumps({"checkpoint": args.checkpoint, "data_root": str(args.data_root),
                                        "split": args.split, "pairs": summary}, indent=2))
    return summary


if __name__ == "__main__":
    main()
