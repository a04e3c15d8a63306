"""Where the answers go wrong, sentence by sentence, on a synthetic REFER dataset (meres-synth or the
held-out renderer's scenes):

    python -m training.diagnose --checkpoint demo --data-root runs/heldout_scenes [--images N] [--out FILE]

`training.evaluate` says how often the grasp point is on target per kind; this says what happened
otherwise. Each sentence's answer, through the deployed `Segmenter` (the node's call), is one of
OUTCOMES: a present target answered "not found", or a grasp point that landed on the landmark a
relational sentence names ("the circle left of the red square" on the square), on another object of
the target's shape (the group is found, the member is wrong: "the second circle" on the third
circle), of its colour, on another object or on background; an absent sentence rejected or found.
Centroid-on-target rates are broken down per kind by the target's category, colour, area (bins of
AREA_BIN px), the scene's object count and, for spatial sentences, their wording (an edge, a side of a
landmark, nearest a landmark), and the presence score of every answer is kept.
"""
from __future__ import annotations

import argparse
import json
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np

from meres_core.data.refer import decode_segmentation, load_refs
from meres_core.data.synthetic.vocabulary import COLOR_WORDS, NOUNS
from meres_core.inference import Segmenter
from meres_core.metrics import centroid_on_target
from meres_core.model.landmark_phrase import NEAREST, SIDE_OF, landmark_phrase

from .scenes import load_scenes, scene_arguments

OUTCOMES = ("on target", "not found", "landmark", "same shape", "same colour", "other object", "background",
            "rejected", "found absent")
AREA_BIN = 3000  # px: the held-out diagnosis of stage 10 split small targets at 3000
# A spatial sentence names an edge ("the leftmost circle", "the circle nearest the left edge") or a
# landmark (meres_core.model.landmark_phrase): a side of it or nearness.


# The landmark's words: meres-synth's nouns and colour words (the held-out renderer says the category names).
_COLOUR_OF_WORD = {word: name for name, words in COLOR_WORDS.items() for word in words}
_CATEGORY_OF_NOUN = sorted(((noun, category) for category, nouns in NOUNS.items() if category for noun in nouns),
                           key=lambda pair: -len(pair[0]))  # "love heart" before "heart"


def landmark_name(sentence: str) -> Optional[tuple[Optional[str], Optional[str]]]:
    """(category, colour) of the object a relational sentence places its target by (None: unsaid); None when
    the sentence names no landmark."""
    tail = landmark_phrase(sentence)
    if tail is None:
        return None
    colour = next((_COLOUR_OF_WORD[word] for word in tail.split() if word in _COLOUR_OF_WORD), None)
    category = next((category for noun, category in _CATEGORY_OF_NOUN if re.search(rf"\b{noun}\b", tail)), None)
    return (category, colour) if category or colour else None


def spatial_wording(sentence: str) -> str:
    """'nearest', 'side of' (a landmark) or 'edge' for a spatial sentence (meres-synth and held-out wordings)."""
    if NEAREST.search(sentence):
        return "nearest"
    return "side of" if SIDE_OF.search(sentence) else "edge"


BREAKDOWNS: dict[str, Callable[[dict], object]] = {
    "spatial wording": lambda row: spatial_wording(row["sentence"]) if row["kind"] == "spatial" else "-",
    "category": lambda row: row["category"],
    "colour": lambda row: row["colour"],
    "area_bin": lambda row: min(row["area"] // AREA_BIN, 6),  # 6: 18000 px and more
    "objects": lambda row: row["objects"],
}


def outcome(found: bool, centroid: Optional[tuple[float, float]], target: Optional[dict],
            annotations: list[dict], masks: dict[int, np.ndarray], landmark: Optional[int] = None) -> str:
    """One answer's outcome (OUTCOMES). target: the referred annotation, None for an absent sentence;
    annotations: the image's; masks: annotation id -> bool mask; landmark: the id of the object the
    sentence places its target by ("the circle left of the red square"), if any. A grasp point on two
    overlapping objects counts for the first that is drawn on it."""
    if target is None:
        return "found absent" if found else "rejected"
    if not found:
        return "not found"
    if centroid_on_target(centroid, masks[target["id"]]):
        return "on target"
    x, y = int(round(centroid[0])), int(round(centroid[1]))
    for ann in annotations:
        mask = masks[ann["id"]]
        if ann["id"] != target["id"] and 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] and mask[y, x]:
            if ann["id"] == landmark:
                return "landmark"
            if ann["category_id"] == target["category_id"]:
                return "same shape"
            return "same colour" if ann.get("color") == target.get("color") else "other object"
    return "background"


def diagnose(segmenter: Segmenter, root: Path, split: Optional[str] = "test", images: Optional[int] = None
             ) -> list[dict]:
    """One row per sentence of the first `images` images of `split` (None: every image)."""
    scenes, names = load_scenes(root, split)
    refs = defaultdict(list)
    for ref in load_refs(root / "synth" / "refs(synth).p"):
        refs[ref["image_id"]].append(ref)
    rows = []
    for info, annotations in scenes[:images]:
        h, w = info["height"], info["width"]
        by_id = {a["id"]: a for a in annotations}
        masks = {a["id"]: decode_segmentation(a["segmentation"], h, w) for a in annotations}
        asked = [(ref, sentence) for ref in refs[info["id"]] for sentence in ref["sentences"]]
        if not asked:
            continue
        rgb = cv2.cvtColor(cv2.imread(str(root / "images" / info["file_name"]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        results = segmenter.segment(rgb, [sentence["sent"] for _, sentence in asked])
        for (ref, sentence), result in zip(asked, results):
            target = None if ref.get("no_target") else by_id[ref["ann_id"]]
            rows.append({
                "image_id": info["id"], "sentence": sentence["sent"], "kind": sentence["kind"],
                "outcome": outcome(result.found, result.centroid, target, annotations, masks,
                                   _landmark_id(sentence["sent"], annotations, names)),
                "score": round(float(result.score), 4),
                "category": names[target["category_id"]] if target else None,
                "colour": target.get("color") if target else None,
                "area": int(masks[target["id"]].sum()) if target else 0,
                "objects": len(annotations),
            })
    return rows


def _landmark_id(sentence: str, annotations: list[dict], names: dict[int, str]) -> Optional[int]:
    """The annotation a relational sentence names as its landmark (None: no landmark, or not a unique match)."""
    name = landmark_name(sentence)
    if name is None:
        return None
    category, colour = name
    matches = [a["id"] for a in annotations
               if category in (None, names[a["category_id"]]) and colour in (None, a.get("color"))]
    return matches[0] if len(matches) == 1 else None


def summarize(rows: list[dict]) -> dict:
    """Outcome counts per kind, and on-target rates per kind by each of BREAKDOWNS (present sentences)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        counts[row["kind"]][row["outcome"]] += 1
    summary: dict = {"outcomes": {kind: dict(c) for kind, c in sorted(counts.items())}}
    present = [row for row in rows if row["kind"] != "absent"]
    for name, key in BREAKDOWNS.items():
        groups: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
        for row in present:
            cell = groups[row["kind"]][str(key(row))]
            cell[0] += row["outcome"] == "on target"
            cell[1] += 1
        summary[name] = {kind: {group: {"on_target": round(hit / n, 4), "n": n} for group, (hit, n) in sorted(g.items())}
                         for kind, g in sorted(groups.items())}
    return summary


def main(argv=None) -> dict:
    parser = scene_arguments(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]))
    parser.add_argument("--out", type=Path, help="write the summary and every sentence's row as JSON here")
    args = parser.parse_args(argv)
    segmenter = Segmenter.from_checkpoint(args.checkpoint, precision=args.precision)
    rows = diagnose(segmenter, args.data_root, None if args.split == "all" else args.split, args.images)
    summary = summarize(rows)
    print(f"{'kind':10s} " + " ".join(f"{o:>12s}" for o in OUTCOMES))
    for kind, c in summary["outcomes"].items():
        print(f"{kind:10s} " + " ".join(f"{c.get(o, 0):12d}" for o in OUTCOMES))
    for name in BREAKDOWNS:
        print(f"\ncentroid on target by {name}:")
        for kind, groups in summary[name].items():
            print(f"  {kind:10s} " + "  ".join(f"{g}: {v['on_target']:.2f} ({v['n']})" for g, v in groups.items()))
    if args.out:
        args.out.write_text(json.dumps({"checkpoint": args.checkpoint, "data_root": str(args.data_root),
                                        "split": args.split, "summary": summary, "sentences": rows}, indent=1))
    return summary


if __name__ == "__main__":
    main()
