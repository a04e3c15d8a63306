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
    synth/refs(synth).p            list of REFER ref dicts; sentences carry a `kind`
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
import sys
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
from pycocotools import mask as mask_utils

VERSION = "1.1"
DATASET = "synth"
SPLITS = ("train", "val", "test")
KINDS = ("category", "attribute", "spatial", "ordinal", "size", "absent")

CATEGORIES = ("circle", "square", "triangle", "star", "hexagon", "heart", "cross")
CATEGORY_IDS = {name: i + 1 for i, name in enumerate(CATEGORIES)}
NOUNS = {
    "circle": ("circle", "disk", "disc", "round shape"),
    "square": ("square", "box", "block", "square shape"),
    "triangle": ("triangle", "triangular shape", "wedge"),
    "star": ("star", "star shape", "five-pointed star"),
    "hexagon": ("hexagon", "hex", "six-sided shape"),
    "heart": ("heart", "heart shape", "love heart"),
    "cross": ("cross", "plus sign", "plus shape"),
    None: ("shape", "object", "item", "one"),
}
COLORS = {
    "red": (215, 35, 35),
    "green": (40, 165, 60),
    "blue": (40, 75, 215),
    "yellow": (240, 215, 45),
    "purple": (135, 50, 175),
    "orange": (245, 135, 25),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
COLOR_WORDS = {name: (name,) for name in COLORS} | {"purple": ("purple", "violet")}

# Image-space direction -> (axis, sign): the extreme in that direction has the
# smallest sign * coordinate.
DIRECTIONS = {"left": (0, 1), "right": (0, -1), "top": (1, 1), "bottom": (1, -1)}
RELATIONS = {"left": "left", "right": "right", "above": "top", "below": "bottom"}

PLAIN = ("the {np}", "{np}", "the {np} in the image", "the {np} in the scene")
POSTPOSED = ("the {noun} that is {color}", "the {color} colored {noun}", "the {noun} colored {color}",
             "the {noun} in {color}")
EXTREME = {
    "left": ("the leftmost {np}", "the {np} on the far left", "the {np} furthest to the left", "the left-most {np}"),
    "right": ("the rightmost {np}", "the {np} on the far right", "the {np} furthest to the right",
              "the right-most {np}"),
    "top": ("the topmost {np}", "the highest {np}", "the {np} at the very top", "the uppermost {np}"),
    "bottom": ("the bottommost {np}", "the lowest {np}", "the {np} at the very bottom", "the lowermost {np}"),
}
RELATION_WORDS = {
    "left": ("left of", "to the left of", "on the left of"),
    "right": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over", "higher than"),
    "below": ("below", "under", "beneath", "lower than"),
    "nearest": ("closest to", "nearest to", "nearest"),
}
RELATION_TEMPLATES = ("the {np} {rel} the {lm}", "the {np} that is {rel} the {lm}", "the {np} located {rel} the {lm}")
ORDINAL_WORDS = (("first", "1st"), ("second", "2nd"), ("third", "3rd"), ("fourth", "4th"))
ORDINAL_TEMPLATES = ("the {ord} {np} from the {dir}", "the {ord} {np} counting from the {dir}",
                     "counting from the {dir}, the {ord} {np}", "the {np} that is {ord} from the {dir}")
SIZE_TEMPLATES = {
    ("big", True): ("the bigger {np}", "the larger {np}", "the big {np}", "the {np} that is bigger"),
    ("small", True): ("the smaller {np}", "the little {np}", "the small {np}", "the {np} that is smaller"),
    ("big", False): ("the biggest {np}", "the largest {np}", "the {np} that is the biggest"),
    ("small", False): ("the smallest {np}", "the tiniest {np}", "the {np} that is the smallest"),
}
VERBS = ("pick up", "grab", "take", "point to", "find", "segment", "show me", "hand me")

# Noisy images gain nothing from LZ77 matching: RLE at level 1 is the fastest and about the smallest,
# and a fixed AVG row filter (where OpenCV exposes it) saves the adaptive filter search.
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):
    PNG_PARAMS += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_AVG]

MIN_VISIBLE = 0.35  # every drawn shape keeps at least this fraction visible
MIN_TARGET_VISIBLE = 0.6  # a target may be at most 40% occluded
MARGIN = 0.05  # of the image side: centroids closer than this are "ambiguous"
SIZE_RATIO = 1.35  # "the biggest" must beat the runner-up by this ratio of unoccluded areas
VISIBLE_SIZE_RATIO = 1.15  # ... and by this one of visible areas, so occlusion cannot flip it
NEAREST_RATIO = 1.3  # "closest to" must beat the runner-up by this distance ratio


@dataclass
class Shape:
    """A drawn shape. Measured properties are cached: read them once placement is final."""

    category: str
    color: str
    center: tuple[float, float]  # where it was drawn
    box: tuple[slice, slice]  # rows, columns that hold the whole shape
    full: np.ndarray = field(repr=False)  # bool HxW, before occlusion
    visible: np.ndarray = field(repr=False)  # bool HxW, what the image shows

    @cached_property
    def full_area(self) -> int:
        return int(self.full[self.box].sum())

    @cached_property
    def area(self) -> int:
        return int(self.visible[self.box].sum())

    @property
    def visible_fraction(self) -> float:
        return self.area / self.full_area

    @cached_property
    def centroid(self) -> tuple[float, float]:
        ys, xs = np.nonzero(self.visible[self.box])
        return float(xs.mean() + self.box[1].start), float(ys.mean() + self.box[0].start)


@dataclass
class Scene:
    image: np.ndarray  # uint8 HxWx3 RGB
    shapes: list[Shape]  # draw order, back to front
    depth: Optional[np.ndarray] = None  # uint16 HxW millimetres


@dataclass(frozen=True)
class Query:
    """A description resolved against a scene: base set plus an optional qualifier."""

    kind: str
    category: Optional[str]
    color: Optional[str]
    # ("extreme", dir) | ("relation", rel, landmark index) | ("ordinal", dir, rank) | ("size", "big"/"small")
    qualifier: tuple = ()


# ---------------------------------------------------------------------------- rendering


def camera_info(height: int, width: int) -> dict:
    """Pinhole intrinsics shared by all depth images (a ~70 degree horizontal FOV)."""
    f = round(0.7 * width, 3)
    return {"width": width, "height": height, "fx": f, "fy": f, "cx": (width - 1) / 2, "cy": (height - 1) / 2}


def _outline(category: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Polygon (N, 2) of a shape of circumradius ~r, rotated by `angle` radians."""
    if category == "circle":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    elif category in ("square", "triangle", "hexagon"):
        n = {"square": 4, "triangle": 3, "hexagon": 6}[category]
        t = -np.pi / 2 + np.pi / n * (category == "square") + 2 * np.pi * np.arange(n) / n
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    elif category == "star":
        t = -np.pi / 2 + np.pi * np.arange(10) / 5
        rad = np.where(np.arange(10) % 2, 0.45, 1.0)
        pts = np.stack([rad * np.cos(t), rad * np.sin(t)], 1)
    elif category == "heart":
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        pts = np.stack([x, y - 2.5], 1) / 16  # centred, within the unit circle
    elif category == "cross":
        a = 0.33
        pts = np.array([(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a),
                        (-1, -a), (-a, -a)])
    else:
        raise ValueError(f"unknown category {category!r}")
    c, s = np.cos(angle), np.sin(angle)
    return pts @ np.array([[c, s], [-s, c]]) * r + (cx, cy)


def _fill(poly: np.ndarray, height: int, width: int) -> np.ndarray:
    canvas = np.zeros((height, width), np.uint8)
    # 3 fractional bits: sub-pixel vertices keep small shapes symmetric.
    cv2.fillPoly(canvas, [np.round(poly * 8).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=3)
    return canvas.astype(bool)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Muted two-colour texture: gradient, stripes, checkerboard or smooth blotches (float HxWx3)."""
    gray = rng.uniform(70, 190, 2)
    colors = np.clip(gray[:, None] + rng.uniform(-30, 30, (2, 3)), 0, 255).astype(np.float32)
    # Built at quarter resolution and upsampled: the patterns are smooth, and this is 16x cheaper.
    h, w = height // 4 + 1, width // 4 + 1
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    angle = rng.uniform(0, np.pi)
    along = (np.cos(angle) * xx + np.sin(angle) * yy) / max(h, w)
    pattern = rng.integers(4)
    if pattern == 0:
        t = (along - along.min()) / np.ptp(along)
    elif pattern == 1:
        t = 0.5 + 0.5 * np.tanh(3 * np.sin(2 * np.pi * rng.uniform(4, 16) * along))
    elif pattern == 2:
        cell = rng.uniform(5, 20)
        t = ((xx // cell + yy // cell) % 2) * np.float32(rng.uniform(0.3, 1.0))
    else:
        coarse = rng.random((h // 10 + 2, w // 10 + 2)).astype(np.float32)
        t = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    small = colors[0] + t[..., None] * (colors[1] - colors[0])
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def _place_shapes(rng: np.random.Generator, height: int, width: int) -> list[Shape]:
    """Sample 3-7 shapes from small category/colour palettes so that distractors repeat."""
    n = int(rng.integers(3, 8))
    cats = rng.choice(CATEGORIES, size=int(rng.integers(2, min(n, 4) + 1)), replace=False)
    colors = rng.choice(list(COLORS), size=int(rng.integers(2, 6)), replace=False)
    side = min(height, width)
    shapes: list[Shape] = []
    for _ in range(n):
        category, color = str(rng.choice(cats)), str(rng.choice(colors))
        for _attempt in range(30):
            r = rng.uniform(0.06, 0.17) * side
            if shapes and rng.random() < 0.35:  # next to an existing shape, to get some occlusion
                ax, ay = shapes[int(rng.integers(len(shapes)))].center
                theta, dist = rng.uniform(0, 2 * np.pi), rng.uniform(1.0, 2.0) * r
                cx, cy = ax + dist * np.cos(theta), ay + dist * np.sin(theta)
            else:
                cx, cy = rng.uniform(r, width - r), rng.uniform(r, height - r)
            if not (r <= cx <= width - r and r <= cy <= height - r):
                continue
            poly = _outline(category, cx, cy, r, rng.uniform(-0.45, 0.45))
            full = _fill(poly, height, width)
            if all((s.visible & ~full).sum() >= MIN_VISIBLE * s.full_area for s in shapes):
                for s in shapes:
                    s.visible = s.visible & ~full
                (x0, y0), (x1, y1) = np.floor(poly.min(0)).astype(int), np.ceil(poly.max(0)).astype(int)
                box = slice(max(y0, 0), y1 + 1), slice(max(x0, 0), x1 + 1)
                shapes.append(Shape(category, color, (cx, cy), box, full, full.copy()))
                break
    return shapes


def _paint(rng: np.random.Generator, canvas: np.ndarray, shape: Shape) -> None:
    """Fill a shape with its jittered colour and a soft linear shading."""
    region, inside = canvas[shape.box], shape.full[shape.box]
    # Mostly brightness jitter: per-channel jitter would tint white and black shapes.
    base = np.asarray(COLORS[shape.color], np.float32) + np.float32(rng.uniform(-15, 15)) + rng.uniform(-4, 4, 3)
    gx, gy = rng.normal(size=2) * rng.uniform(0, 30) / max(inside.shape)
    ys, xs = np.nonzero(inside)
    shade = (xs - xs.mean()) * gx + (ys - ys.mean()) * gy
    region[ys, xs] = base + shade[:, None].astype(np.float32)


def _depth(rng: np.random.Generator, shapes: list[Shape], height: int, width: int) -> np.ndarray:
    """Tilted table plane with flat-topped objects; later shapes stand taller so they are nearer."""
    cam = camera_info(height, width)
    tilt, roll = rng.uniform(0.15, 0.7), rng.uniform(-0.15, 0.15)
    normal = np.array([np.sin(roll), np.sin(tilt), np.cos(tilt)])
    center_depth = rng.uniform(600, 1200)
    yy, xx = np.arange(height)[:, None], np.arange(width)[None, :]
    rays = normal[0] * (xx - cam["cx"]) / cam["fx"] + normal[1] * (yy - cam["cy"]) / cam["fy"] + normal[2]
    plane = center_depth * normal[2] / rays
    depth = plane.copy()
    heights = np.cumsum(rng.uniform(10, 35, len(shapes))) + 10
    for shape, h in zip(shapes, heights):
        # Full, not visible masks: drawn back to front, the top shape overwrites what it hides.
        depth[shape.full] = plane[shape.full] - h
    return np.round(depth).astype(np.uint16)


def _render(rng: np.random.Generator, height: int, width: int, depth: bool) -> Scene:
    shapes = _place_shapes(rng, height, width)
    canvas = _background(rng, height, width)
    for shape in shapes:
        _paint(rng, canvas, shape)
    # Luminance-only sensor noise, slightly blurred as by demosaicing; it halves the PNG size.
    canvas += rng.standard_normal((height, width, 1), dtype=np.float32) * np.float32(rng.uniform(2, 8))
    canvas = cv2.GaussianBlur(canvas, (3, 3), rng.uniform(0.3, 0.9))
    image = np.clip(canvas, 0, 255).astype(np.uint8)
    return Scene(image, shapes, _depth(rng, shapes, height, width) if depth else None)


def _scene_rng(seed: int, image_id: int) -> np.random.Generator:
    return np.random.default_rng([seed, image_id])


def render_scene(seed: int, image_id: int, height: int = 480, width: int = 640, depth: bool = True) -> Scene:
    """The scene `generate(seed=seed)` writes for `image_id` (expressions not included)."""
    return _render(_scene_rng(seed, image_id), height, width, depth)


# ---------------------------------------------------------------------------- expressions


def _members(shapes: list[Shape], category: Optional[str], color: Optional[str]) -> list[int]:
    return [i for i, s in enumerate(shapes)
            if (category is None or s.category == category) and (color is None or s.color == color)]


def _short_description(shapes: list[Shape], i: int) -> Optional[tuple[Optional[str], Optional[str]]]:
    """Shortest (category, color) that picks out shape i alone, for use as a landmark."""
    s = shapes[i]
    for category, color in ((s.category, None), (s.category, s.color)):
        if _members(shapes, category, color) == [i]:
            return category, color
    return None


def _queries(shapes: list[Shape], t: int, height: int, width: int) -> list[Query]:
    """Every query that selects exactly shape t."""
    target = shapes[t]
    centroids = np.array([s.centroid for s in shapes])
    margin = MARGIN * np.array([width, height])
    out = []
    if _members(shapes, target.category, None) == [t]:
        out.append(Query("category", target.category, None))
    for category, color in ((target.category, target.color), (None, target.color)):
        if _members(shapes, category, color) == [t]:
            out.append(Query("attribute", category, color))

    bases = {(target.category, None), (target.category, target.color), (None, None), (None, target.color)}
    for category, color in sorted(bases, key=str):
        members = _members(shapes, category, color)
        if len(members) < 2:
            continue
        others = [i for i in members if i != t]
        for direction, (axis, sign) in DIRECTIONS.items():
            key = sign * centroids[:, axis]
            gaps = key[others] - key[t]
            if np.all(gaps >= margin[axis]):
                out.append(Query("spatial", category, color, ("extreme", direction)))
            rank = int((gaps < 0).sum())
            if len(members) >= 3 and rank < len(ORDINAL_WORDS) and np.all(np.abs(gaps) >= margin[axis]):
                out.append(Query("ordinal", category, color, ("ordinal", direction, rank)))
        full = np.array([shapes[i].full_area for i in others])
        visible = np.array([shapes[i].area for i in others])
        if target.full_area >= SIZE_RATIO * full.max() and target.area >= VISIBLE_SIZE_RATIO * visible.max():
            out.append(Query("size", category, color, ("size", "big")))
        if target.full_area * SIZE_RATIO <= full.min() and target.area * VISIBLE_SIZE_RATIO <= visible.min():
            out.append(Query("size", category, color, ("size", "small")))
        out.extend(_relations(shapes, t, members, centroids, margin, category, color))
    return out


def _relations(shapes, t, members, centroids, margin, category, color) -> list[Query]:
    """'the <base> left of / closest to the <landmark>' where the relation singles out t."""
    out = []
    for landmark in range(len(shapes)):
        if landmark == t or _short_description(shapes, landmark) is None:
            continue
        rivals = [i for i in members if i not in (t, landmark)]
        for relation, direction in RELATIONS.items():
            axis, sign = DIRECTIONS[direction]
            offset = sign * (centroids[:, axis] - centroids[landmark, axis])
            # t clearly on that side, every rival clearly not (no centroid in the ambiguous band).
            if offset[t] <= -margin[axis] and all(offset[i] >= 0 for i in rivals):
                out.append(Query("spatial", category, color, ("relation", relation, landmark)))
        dist = np.linalg.norm(centroids - centroids[landmark], axis=1)
        if rivals and all(dist[i] >= NEAREST_RATIO * dist[t] for i in rivals):
            out.append(Query("spatial", category, color, ("relation", "nearest", landmark)))
    return out


def _absent_query(rng: np.random.Generator, shapes: list[Shape]) -> Query:
    """A (category, colour) with no match: a missing category, or a present one in a missing colour.

    Hard negatives: a missing category is named in a colour that is in the scene half the
    time, so neither the colour word nor the shape word alone decides "not here".
    """
    present = {s.category for s in shapes}
    missing_category = [c for c in CATEGORIES if c not in present]
    missing_color = [(c, k) for c in sorted(present) for k in COLORS if not _members(shapes, c, k)]
    if missing_category and (not missing_color or rng.random() < 0.5):
        category = str(rng.choice(missing_category))
        present_colors = sorted({s.color for s in shapes})
        return Query("absent", category, str(rng.choice(present_colors)) if rng.random() < 0.5 else None)
    category, color = missing_color[int(rng.integers(len(missing_color)))]
    return Query("absent", category, color)


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def _noun_phrase(rng: np.random.Generator, category: Optional[str], color: Optional[str]) -> str:
    noun = _pick(rng, NOUNS[category])
    return f"{_pick(rng, COLOR_WORDS[color])} {noun}" if color else noun


def _text(rng: np.random.Generator, query: Query, shapes: list[Shape]) -> str:
    """One wording of `query`, drawn from several templates and synonyms."""
    category, color = query.category, query.color
    np_ = _noun_phrase(rng, category, color)
    qualifier = query.qualifier[0] if query.qualifier else None
    if qualifier is None:
        if color and rng.random() < 0.4:
            text = _pick(rng, POSTPOSED).format(noun=_pick(rng, NOUNS[category]),
                                                  color=_pick(rng, COLOR_WORDS[color]))
        else:
            text = _pick(rng, PLAIN).format(np=np_)
    elif qualifier == "extreme":
        text = _pick(rng, EXTREME[query.qualifier[1]]).format(np=np_)
    elif qualifier == "relation":
        _, relation, landmark = query.qualifier
        lm = _noun_phrase(rng, *_short_description(shapes, landmark))
        text = _pick(rng, RELATION_TEMPLATES).format(np=np_, rel=_pick(rng, RELATION_WORDS[relation]), lm=lm)
    elif qualifier == "ordinal":
        _, direction, rank = query.qualifier
        ordinal = ORDINAL_WORDS[rank][int(rng.random() < 0.2)]
        text = _pick(rng, ORDINAL_TEMPLATES).format(ord=ordinal, np=np_, dir=direction)
    else:
        comparative = len(_members(shapes, category, color)) == 2
        text = _pick(rng, SIZE_TEMPLATES[(query.qualifier[1], comparative)]).format(np=np_)
    if text.startswith("the ") and rng.random() < 0.3:
        text = f"{_pick(rng, VERBS)} {text}"
    return text


def _raw(rng: np.random.Generator, text: str) -> str:
    """Annotator-style casing and punctuation; `sent` normalizes it away as in REFER."""
    if rng.random() < 0.3:
        return text[0].upper() + text[1:] + ("." if rng.random() < 0.5 else "")
    return text


def _sentence(raw: str, sent_id: int, kind: str) -> dict:
    tokens = re.sub(r"[^a-z0-9\- ]", "", raw.lower()).split()
    # Interned so that the pickle is byte-identical whether workers were used or not.
    return {"tokens": tokens, "raw": raw, "sent": " ".join(tokens), "sent_id": sent_id, "kind": sys.intern(kind)}


def _describe(rng: np.random.Generator, scene: Scene, height: int, width: int, absent_rate: float,
              sentences_per_object: int) -> list[tuple[int, str, list[tuple[str, str]]]]:
    """Refs of one scene as (target index or -1, category, [(raw sentence, kind)])."""
    refs = []
    for t, shape in enumerate(scene.shapes):
        if shape.visible_fraction < MIN_TARGET_VISIBLE:
            continue
        by_kind: dict[str, list[Query]] = {}
        for query in _queries(scene.shapes, t, height, width):
            by_kind.setdefault(query.kind, []).append(query)
        kinds = sorted(by_kind)
        # Distinct kinds per object, so that no kind dominates a ref.
        chosen = [kinds[i] for i in rng.permutation(len(kinds))[:sentences_per_object]]
        queries = [by_kind[k][int(rng.integers(len(by_kind[k])))] for k in chosen]
        if queries:
            refs.append((t, shape.category, [(_raw(rng, _text(rng, q, scene.shapes)), q.kind) for q in queries]))
    n_sentences = sum(len(sentences) for *_, sentences in refs)
    for _ in range(int(rng.binomial(n_sentences, min(absent_rate, 1.0)))):
        query = _absent_query(rng, scene.shapes)
        refs.append((-1, query.category, [(_raw(rng, _text(rng, query, scene.shapes)), "absent")]))
    return refs


# ---------------------------------------------------------------------------- writing


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


def _build_image(job: _Job) -> tuple[list[dict], list]:
    """Render, write and describe one image. Ids are left to the caller, so workers stay independent."""
    rng = _scene_rng(job.seed, job.image_id)
    scene = _render(rng, job.height, job.width, job.depth)
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
             sentences_per_object: int = 3, workers: int = 1) -> dict:
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
    out = Path(out_dir)
    for sub in ("images", DATASET) + (("depth",) if depth else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)

    order = np.random.default_rng(seed).permutation(num_images)
    split_of = np.repeat(np.arange(3), _split_sizes(num_images, split_fractions))[np.argsort(order)]
    # Absent sentences per object sentence, so that absent / all == absent_fraction on average.
    absent_rate = absent_fraction / (1 - absent_fraction)
    jobs = [_Job(out, seed, i + 1, height, width, depth, absent_rate, sentences_per_object) for i in range(num_images)]
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
                    "sentences": [_sentence(raw, first + k, kind) for k, (raw, kind) in enumerate(sentences)],
                    # REFER names a ref's file after image and annotation; loaders use instances.json instead.
                    "file_name": name if ann_id == -1 else f"{Path(name).stem}_{ann_id}.png",
                }
                ref["sent_ids"] = [s["sent_id"] for s in ref["sentences"]]
                if ann_id == -1:
                    ref["no_target"] = True  # gRefCOCO convention: the expected mask is empty
                refs.append(ref)
                counts["refs"][split] += 1
                counts["sentences"][split] += len(sentences)
                counts["kinds"].update(kind for _, kind in sentences)

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
        "absent_fraction": absent_fraction, "sentences_per_object": sentences_per_object,
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
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8),
                        help="rendering processes (default: CPU count, at most 8); output does not depend on it")
    parser.add_argument("--splits", type=lambda s: tuple(float(x) for x in s.split(",")), default=(0.8, 0.1, 0.1),
                        help="train,val,test fractions (default 0.8,0.1,0.1)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    meta = generate(args.out, args.images, seed=args.seed, height=args.size[0], width=args.size[1],
                    depth=not args.no_depth, split_fractions=args.splits, absent_fraction=args.absent_fraction,
                    sentences_per_object=args.sentences_per_object, workers=args.workers)
    n_sent = sum(meta["sentences"].values())
    splits = " / ".join(f"{s} {meta['images'].get(s, 0)}" for s in SPLITS)
    print(f"meres-synth: {args.images} images ({splits}), {sum(meta['refs'].values())} refs, {n_sent} sentences "
          f"({meta['kinds'].get('absent', 0) / max(n_sent, 1):.1%} absent) in {args.out} "
          f"[{time.perf_counter() - start:.1f} s]")


if __name__ == "__main__":
    main()
