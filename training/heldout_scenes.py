"""Held-out referring scenes for evaluation only, drawn by code that shares nothing with meres-synth.

`meres-synth` (meres_core/data/synthetic/) draws the training scenes. A model that only learned
its textures, shades and sentence templates scores well on its own test split and fails elsewhere;
this renderer is the "elsewhere". It imports nothing from meres-synth and differs on purpose:
Pillow's ImageDraw instead of OpenCV, its own upright outlines (no rotation jitter), plain / linear
gradient / striped backgrounds over wide hue and brightness ranges, other RGB shades of the same
colour names, flat fills without noise or blur, objects that never touch, and plainer wording.
Each object is drawn once, as a mask (4x supersampled, each pixel by majority); the image takes
its flat colour on exactly those pixels, so image and annotation cannot disagree.
Only the vocabulary is shared, because the model must know the words: the seven category names
and eight colour names.

    python -m training.heldout_scenes --out DIR --images 400 [--seed 1] [--size 480x640]

writes the REFER layout meres-synth writes, every ref in split "test":

    DIR/images/heldout_000001.png   RGB
    DIR/synth/instances.json        COCO; compressed RLE masks; a `color` name per annotation
    DIR/synth/refs(synth).p         REFER refs (pickle protocol 2); each sentence has a `kind`
    DIR/meta.json                   generator, seed, counts per kind

so that `python -m training.evaluate --checkpoint demo --split test --data-root DIR
--dataset synth --split-by synth` scores a checkpoint on it. Every sentence is checked against
the drawn masks: a present one selects exactly its target with a clear margin, an absent one
("the black circle" when there is no black circle) matches no object. Output depends only on
(seed, images, size).
"""
from __future__ import annotations

import argparse
import colorsys
import json
import math
import pickle
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

GENERATOR = "training.heldout_scenes"
DATASET = "synth"  # folder and split_by name: ReferDataset(root, "synth", "synth", "test") reads it
SPLIT = "test"
KINDS = ("category", "attribute", "spatial", "ordinal", "size", "absent")

# The words the model was trained on; ids in meres-synth's order so per-category filters agree.
CATEGORIES = ("circle", "square", "triangle", "star", "hexagon", "heart", "cross")
CATEGORY_IDS = {name: i + 1 for i, name in enumerate(CATEGORIES)}
# Shades of each colour name, none equal to meres-synth's single value per name.
SHADES = {
    "red": ((200, 20, 40), (230, 60, 50), (170, 15, 25)),
    "green": ((30, 135, 45), (90, 195, 75), (25, 155, 75)),
    "blue": ((25, 55, 185), (65, 110, 240), (15, 35, 140)),
    "yellow": ((250, 230, 70), (225, 195, 15), (255, 240, 120)),
    "purple": ((115, 35, 155), (160, 75, 200), (95, 25, 120)),
    "orange": ((250, 115, 15), (235, 155, 45), (215, 100, 10)),
    "white": ((255, 255, 255), (232, 234, 228), (240, 240, 252)),
    "black": ((8, 8, 8), (45, 42, 40), (30, 32, 45)),
}
COLORS = tuple(SHADES)

# Outline geometry, as multiples of an object's integer `scale` in pixels (the test recomputes
# areas from these). Sizes differ per category so that equal scales do not mean equal areas.
SQUARE_HALF_SIDE = 0.88
TRIANGLE_RADIUS = 1.25  # equilateral, circumradius, apex up
HEXAGON_RADIUS = 1.05  # flat top and bottom
STAR_RADIUS, STAR_INNER = 1.25, 0.5  # five points; inner vertices at STAR_INNER of the outer radius
CROSS_HALF_WIDTH = 0.32  # arms as long as the scale
HEART_SIDE = 1.15  # a square on its corner with a half-disc on each upper edge

SCENE_OBJECTS = (3, 6)  # inclusive
SCALE_RANGE = (0.05, 0.115)  # of the shorter image side
GAP = 0.015  # of the width: empty space between object boxes, and between a box and the border
MIN_CONTRAST = 80.0  # RGB distance between a fill and 90% of the background pixels under it
POSITION_MARGIN = 0.05  # of the width: target vs nearest rival centroid, for side and order words
SIZE_RATIO = 1.4  # target area vs runner-up area for size words
PLACEMENT_TRIES = 200
SUPERSAMPLE = 4  # masks are drawn at this many times the resolution, then each pixel takes the majority
SENTENCES_PER_KIND = 1  # per image; a kind a scene cannot offer is made up in the next scenes
MAX_PER_KIND = 3  # per image, so that making up does not crowd one scene with one kind

SIDES = ("left", "right", "top", "bottom")
ORDINALS = ("first", "second", "third", "fourth")

CATEGORY_TEMPLATES = ("the {np}", "a {np}", "the only {np}", "the {np} in the picture")
ATTRIBUTE_TEMPLATES = ("the {np}", "a {np}", "the {np} in the picture")
SPATIAL_TEMPLATES = {
    "left": ("the {np} on the far left", "the leftmost {np}", "the {np} furthest left",
             "the {np} closest to the left edge"),
    "right": ("the {np} on the far right", "the rightmost {np}", "the {np} furthest right",
              "the {np} closest to the right edge"),
    "top": ("the top {np}", "the highest {np}", "the {np} nearest the top", "the {np} closest to the top edge"),
    "bottom": ("the lowest {np}", "the bottom {np}", "the {np} nearest the bottom",
               "the {np} closest to the bottom edge"),
}
ORDINAL_TEMPLATES = ("the {ordinal} {np} from the {side}", "the {np} {ordinal} from the {side}",
                     "the {ordinal} {np} when counting from the {side}")
SIZE_TEMPLATES = {  # superlatives always; the positive and comparative only when there are two
    ("big", "any"): ("the biggest {np}", "the largest {np}"),
    ("big", "two"): ("the large {np}", "the bigger {np}", "the big {np}"),
    ("small", "any"): ("the smallest {np}", "the tiniest {np}"),
    ("small", "two"): ("the small {np}", "the smaller {np}", "the little {np}"),
}
ABSENT_TYPES = ("shape_missing", "color_present_shape_missing", "shape_present_color_missing",
                "combination_missing")


# ---------------------------------------------------------------------------- drawing


Outline = list[tuple[str, list[tuple[float, float]]]]  # [(ImageDraw method, points)]; their union is the shape


def outline_parts(category: str, cx: float, cy: float, scale: float) -> Outline:
    """The shape with its centroid at (cx, cy), in continuous pixel coordinates (pixel i spans i +- 0.5).

    Parts are ("polygon", vertices) or ("ellipse", [top-left, bottom-right of its box]). Edges
    parallel to the image axes lie on pixel borders (half sizes of n + 0.5 about an integer
    centre): squares and crosses are then drawn exactly, not a pixel row bigger or smaller.
    """
    if category == "circle":
        return [("ellipse", [(cx - scale, cy - scale), (cx + scale, cy + scale)])]
    if category == "square":
        half = round(SQUARE_HALF_SIDE * scale) + 0.5
        return [("polygon", _rectangle(cx, cy, half, half))]
    if category == "cross":  # a bar across and a bar down
        half_length, half_width = round(scale) + 0.5, round(CROSS_HALF_WIDTH * scale) + 0.5
        return [("polygon", _rectangle(cx, cy, half_length, half_width)),
                ("polygon", _rectangle(cx, cy, half_width, half_length))]
    if category == "triangle":
        angles = -math.pi / 2 + 2 * math.pi / 3 * np.arange(3)  # the centroid of an equilateral is its centre
        return [("polygon", _ring(cx, cy, np.full(3, TRIANGLE_RADIUS * scale), angles))]
    if category == "hexagon":
        return [("polygon", _ring(cx, cy, np.full(6, HEXAGON_RADIUS * scale), math.pi / 3 * np.arange(6)))]
    if category == "star":
        radii = STAR_RADIUS * scale * np.where(np.arange(10) % 2, STAR_INNER, 1.0)
        return [("polygon", _ring(cx, cy, radii, -math.pi / 2 + math.pi / 5 * np.arange(10)))]
    if category == "heart":
        return [("polygon", _heart(cx, cy, HEART_SIDE * scale))]
    raise ValueError(f"unknown category {category!r}")


def _rectangle(cx: float, cy: float, half_width: float, half_height: float) -> list[tuple[float, float]]:
    return [(cx - half_width, cy - half_height), (cx + half_width, cy - half_height),
            (cx + half_width, cy + half_height), (cx - half_width, cy + half_height)]


def _ring(cx: float, cy: float, radii: np.ndarray, angles: np.ndarray) -> list[tuple[float, float]]:
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for r, a in zip(radii, angles)]


def _heart(cx: float, cy: float, side: float) -> list[tuple[float, float]]:
    """A square of `side` standing on a corner, with a half-disc of diameter `side` on each upper edge.

    One outline: from the bottom corner up to the right corner, around the right half-circle to
    the top corner, around the left one to the left corner. Area side^2 (1 + pi / 4). The
    half-discs lift the centroid above the square's centre; the square is shifted down by that
    amount so that the centroid lands on (cx, cy).
    """
    half_diagonal = side / math.sqrt(2)
    # Centroid height of one half-disc above the square's centre: edge midpoint at half_diagonal / 2,
    # plus the half-disc's own centroid 2 side / (3 pi) out along the edge's 45-degree normal.
    half_disc_rise = half_diagonal / 2 + 2 * side / (3 * math.pi) / math.sqrt(2)
    half_disc_area = math.pi * side ** 2 / 8
    rise = 2 * half_disc_area * half_disc_rise / (side ** 2 + 2 * half_disc_area)
    sx, sy = cx, cy + rise  # the square's centre
    # Image y points down: the right edge's half-circle runs from the right corner (+45 degrees
    # about its midpoint) outwards (-45) to the top corner (-135); the left one from -45 to -225.
    steps = np.linspace(0, -math.pi, 33)  # 32 chords per half-circle: under 0.2% short of its area
    radii = np.full(len(steps), side / 2)
    right = _ring(sx + half_diagonal / 2, sy - half_diagonal / 2, radii, math.pi / 4 + steps)
    left = _ring(sx - half_diagonal / 2, sy - half_diagonal / 2, radii, -math.pi / 4 + steps)
    return [(sx, sy + half_diagonal)] + right + left[1:]


def parts_box(parts: Outline) -> tuple[int, int, int, int]:
    """Inclusive box (x0, y0, x1, y1) of the pixels the outline reaches into."""
    points = np.array([point for _, part in parts for point in part])  # (P, 2)
    x0, y0 = np.floor(points.min(0) + 0.5).astype(int)
    x1, y1 = np.floor(points.max(0) + 0.5).astype(int)
    return int(x0), int(y0), int(x1), int(y1)


def draw_mask(parts: Outline, height: int, width: int) -> np.ndarray:
    """bool (H, W): the pixels the outline covers at least half of.

    Drawn with ImageDraw on an 'L' canvas over the outline's box at SUPERSAMPLE x the resolution:
    at 1x Pillow truncates coordinates and fills every pixel its outline touches, which grows
    small shapes by several percent and eats star tips.
    """
    x0, y0, x1, y1 = parts_box(parts)
    k = SUPERSAMPLE
    canvas = Image.new("L", ((x1 - x0 + 1) * k, (y1 - y0 + 1) * k), 0)
    draw = ImageDraw.Draw(canvas)
    for method, points in parts:
        # Fine pixel j of pixel x0 has its centre at x0 - 0.5 + (j + 0.5) / k.
        fine = [(round((x - x0 + 0.5) * k - 0.5), round((y - y0 + 0.5) * k - 0.5)) for x, y in points]
        getattr(draw, method)(fine, fill=255)
    fine_mask = np.asarray(canvas).reshape(y1 - y0 + 1, k, x1 - x0 + 1, k)  # (h, k, w, k)
    mask = np.zeros((height, width), bool)
    mask[y0:y1 + 1, x0:x1 + 1] = fine_mask.mean(axis=(1, 3)) >= 127.5
    return mask


@dataclass
class DrawnObject:
    category: str
    color: str  # the colour name sentences use
    rgb: tuple[int, int, int]  # the shade it is filled with
    center: tuple[int, int]  # (x, y) where the outline's centroid was put
    scale: int  # pixels; outline sizes are multiples of it
    parts: Outline = field(repr=False)
    mask: np.ndarray = field(repr=False)  # bool (H, W)

    @cached_property
    def area(self) -> int:
        return int(self.mask.sum())

    @cached_property
    def centroid(self) -> tuple[float, float]:
        """(x, y) of the drawn pixels, what positions in sentences are judged by."""
        ys, xs = np.nonzero(self.mask)
        return float(xs.mean()), float(ys.mean())


@dataclass
class Scene:
    image: np.ndarray  # uint8 (H, W, 3)
    background: np.ndarray  # uint8 (H, W, 3), before the objects were drawn
    background_style: str
    objects: list[DrawnObject]


def _random_color(rng: np.random.Generator) -> np.ndarray:
    """Any hue, from grey to fairly saturated, from dark to bright: float (3,) RGB 0-255."""
    hue, saturation, value = rng.uniform(0, 1), rng.uniform(0, 0.75), rng.uniform(0.15, 1.0)
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value)) * 255


def paint_background(rng: np.random.Generator, height: int, width: int) -> tuple[str, np.ndarray, list[np.ndarray]]:
    """(style, uint8 (H, W, 3) image, key colours that every object must stand out from)."""
    style = ("plain", "gradient", "striped")[int(rng.integers(3))]
    first, second = _random_color(rng), _random_color(rng)
    if style == "plain":
        return style, np.broadcast_to(first.round().astype(np.uint8), (height, width, 3)).copy(), [first]
    angle = rng.uniform(0, math.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    along = xx * math.cos(angle) + yy * math.sin(angle)  # (H, W) position along the pattern's axis
    if style == "gradient":
        t = (along - along.min()) / (along.max() - along.min())
        image = first + t[..., None] * (second - first)
        return style, image.round().astype(np.uint8), [first, (first + second) / 2, second]
    period = rng.uniform(0.03, 0.15) * width
    second_stripe = (np.floor(along / (period / 2)) % 2).astype(bool)  # hard edges, half the period each
    image = np.where(second_stripe[..., None], second, first)
    return style, image.round().astype(np.uint8), [first, second]


def _contrast(background: np.ndarray, mask: np.ndarray, rgb) -> float:
    """RGB distance that 90% of the background pixels under the mask keep from the fill.

    A percentile, not the mean: on stripes the mean colour under an object can be far from
    its fill while one of the stripes matches it.
    """
    under = background[mask].astype(np.float32)  # (N, 3)
    return float(np.percentile(np.linalg.norm(under - np.asarray(rgb, np.float32), axis=1), 10))


def _boxes_apart(a, b, gap: int) -> bool:
    return a[2] + gap < b[0] or b[2] + gap < a[0] or a[3] + gap < b[1] or b[3] + gap < a[1]


def _place_objects(rng: np.random.Generator, background: np.ndarray, colors: list[str]) -> list[DrawnObject]:
    """3-6 objects from 2-4 categories and 2-3 colours, so that names repeat and qualifiers matter."""
    height, width = background.shape[:2]
    count = int(rng.integers(SCENE_OBJECTS[0], SCENE_OBJECTS[1] + 1))
    categories = [str(c) for c in rng.choice(CATEGORIES, size=int(rng.integers(2, 5)), replace=False)]
    colors = [str(c) for c in rng.choice(colors, size=min(len(colors), int(rng.integers(2, 4))), replace=False)]
    gap = math.ceil(GAP * width)
    objects: list[DrawnObject] = []
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(count):
        category, color = categories[int(rng.integers(len(categories)))], colors[int(rng.integers(len(colors)))]
        rgb = SHADES[color][int(rng.integers(len(SHADES[color])))]
        for _attempt in range(PLACEMENT_TRIES):
            scale = round(rng.uniform(*SCALE_RANGE) * min(height, width))
            center = int(rng.integers(width)), int(rng.integers(height))
            parts = outline_parts(category, *center, scale)
            box = parts_box(parts)
            if box[0] < gap or box[1] < gap or box[2] >= width - gap or box[3] >= height - gap:
                continue
            if not all(_boxes_apart(box, other, gap) for other in boxes):
                continue
            mask = draw_mask(parts, height, width)
            if _contrast(background, mask, rgb) < MIN_CONTRAST:
                continue
            objects.append(DrawnObject(category, color, rgb, center, scale, parts, mask))
            boxes.append(box)
            break
    return objects


def _render(rng: np.random.Generator, height: int, width: int) -> Scene:
    while True:
        style, background, key_colors = paint_background(rng, height, width)
        # Colour names with every shade clear of the background's key colours; the per-object
        # check in _place_objects is the one that counts, this one only avoids hopeless draws.
        usable = [name for name in COLORS
                  if all(np.linalg.norm(np.subtract(shade, key)) >= MIN_CONTRAST
                         for shade in SHADES[name] for key in key_colors)]
        if len(usable) < 2:
            continue
        objects = _place_objects(rng, background, usable)
        if len(objects) >= SCENE_OBJECTS[0]:
            break
    image = background.copy()
    for obj in objects:
        image[obj.mask] = obj.rgb  # flat fill of exactly the annotated pixels: objects never overlap
    return Scene(image, background, style, objects)


def _image_rng(seed: int, image_id: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(image_id,)))


def render_scene(seed: int, image_id: int, height: int = 480, width: int = 640) -> Scene:
    """The scene `generate(seed=seed)` draws for `image_id` (sentences not included)."""
    return _render(_image_rng(seed, image_id), height, width)


# ---------------------------------------------------------------------------- sentences


@dataclass(frozen=True)
class Description:
    """What a sentence says: a base set (category and / or colour; None = any) and a qualifier."""

    kind: str
    category: Optional[str] = None
    color: Optional[str] = None
    side: Optional[str] = None  # spatial: the extreme on this side; ordinal: counted from it
    rank: Optional[int] = None  # ordinal: 0 = first
    size: Optional[str] = None  # "big" | "small"
    members: int = 0  # how many objects the base set holds (wording of size: "the bigger" needs two)
    absent_type: Optional[str] = None


def _members(objects: list[DrawnObject], category: Optional[str], color: Optional[str]) -> list[int]:
    return [i for i, o in enumerate(objects)
            if category in (None, o.category) and color in (None, o.color)]


def _from_side(objects: list[DrawnObject], members: list[int], side: str) -> tuple[list[int], np.ndarray]:
    """Members ordered as counted from `side`, and their distances from that side: (M,), ascending."""
    axis = 0 if side in ("left", "right") else 1
    flip = side in ("right", "bottom")  # counted from the far end of the axis
    coordinate = np.array([objects[i].centroid[axis] for i in members])
    distance = -coordinate if flip else coordinate
    order = np.argsort(distance, kind="stable")
    return [members[i] for i in order], distance[order]


def present_candidates(objects: list[DrawnObject], width: int) -> dict[str, list[tuple[int, Description]]]:
    """Every (target, description) that picks exactly one object with a clear margin, by kind."""
    margin = POSITION_MARGIN * width
    found: dict[str, list[tuple[int, Description]]] = {kind: [] for kind in KINDS if kind != "absent"}
    bases = {(category, color) for o in objects
             for category in (None, o.category) for color in (None, o.color)}
    for category, color in sorted(bases, key=str):
        members = _members(objects, category, color)
        if len(members) == 1:  # the name alone picks it; a qualifier would add nothing
            kind = "category" if color is None else "attribute"
            found[kind].append((members[0], Description(kind, category, color, members=1)))
            continue
        for side in SIDES:
            ordered, distance = _from_side(objects, members, side)
            gaps = np.diff(distance)  # (M-1,) >= 0: to the next member counted from `side`
            for rank, target in enumerate(ordered[:len(ORDINALS)]):
                clear_before = rank == 0 or gaps[rank - 1] >= margin
                clear_after = rank == len(ordered) - 1 or gaps[rank] >= margin
                if not (clear_before and clear_after):
                    continue
                if rank == 0:
                    found["spatial"].append((target, Description("spatial", category, color, side=side,
                                                                 members=len(members))))
                found["ordinal"].append((target, Description("ordinal", category, color, side=side, rank=rank,
                                                             members=len(members))))
        by_area = sorted(members, key=lambda i: objects[i].area, reverse=True)
        areas = [objects[i].area for i in by_area]
        if areas[0] >= SIZE_RATIO * areas[1]:
            found["size"].append((by_area[0], Description("size", category, color, size="big",
                                                          members=len(members))))
        if areas[-2] >= SIZE_RATIO * areas[-1]:
            found["size"].append((by_area[-1], Description("size", category, color, size="small",
                                                           members=len(members))))
    return found


def absent_candidates(objects: list[DrawnObject]) -> list[Description]:
    """Names that match no object, typed by how close they come to a present one (hard negatives)."""
    categories, colors = {o.category for o in objects}, {o.color for o in objects}
    pairs = {(o.category, o.color) for o in objects}
    found = []
    for category in CATEGORIES:
        if category not in categories:
            found.append(Description("absent", category, absent_type="shape_missing"))
        for color in COLORS:
            if (category, color) in pairs:
                continue
            if category not in categories:
                # Only present colours here: "the red heart" next to red circles is the hard case.
                absent_type = "color_present_shape_missing" if color in colors else None
            elif color not in colors:
                absent_type = "shape_present_color_missing"
            else:
                absent_type = "combination_missing"
            if absent_type:
                found.append(Description("absent", category, color, absent_type=absent_type))
    return found


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _noun_phrase(rng: np.random.Generator, category: Optional[str], color: Optional[str]) -> str:
    noun = category or (_pick(rng, ("one", "shape", "object")) if color else _pick(rng, ("shape", "object")))
    return f"{color} {noun}" if color else noun


def wording(rng: np.random.Generator, description: Description) -> str:
    kind = description.kind
    if kind == "spatial":
        template = _pick(rng, SPATIAL_TEMPLATES[description.side])
    elif kind == "ordinal":
        template = _pick(rng, ORDINAL_TEMPLATES)
    elif kind == "size":
        options = SIZE_TEMPLATES[(description.size, "any")]
        if description.members == 2:
            options += SIZE_TEMPLATES[(description.size, "two")]
        template = _pick(rng, options)
    elif description.color is None:  # category, or an absent category: worded alike, so form tells nothing
        template = _pick(rng, CATEGORY_TEMPLATES)
    else:  # attribute, or an absent colour + shape
        template = _pick(rng, ATTRIBUTE_TEMPLATES)
    text = template.format(np=_noun_phrase(rng, description.category, description.color), side=description.side,
                           ordinal=None if description.rank is None else ORDINALS[description.rank])
    return "an" + text[1:] if text.startswith("a ") and text[2] in "aeiou" else text  # "an orange star"


def _stratum(description: Description):
    """The facet of a kind that should come out evenly: side, rank, big / small, negative type, ..."""
    return {"spatial": description.side, "ordinal": description.rank, "size": description.size,
            "absent": description.absent_type, "attribute": description.category is None}.get(description.kind)


def _choose(rng: np.random.Generator, objects: list[DrawnObject], width: int,
            owed: Counter) -> list[tuple[int, Description]]:
    """SENTENCES_PER_KIND per kind, plus what earlier scenes owed; target -1 = absent.

    `owed` carries over between scenes, so that kinds that few scenes offer (a category seen
    once, a clear size winner) still end up about as frequent as the others. Within a kind a
    stratum is drawn first, then a candidate of it: otherwise "first from the left", always
    available when any rank is, would crowd out "the second ...".
    """
    candidates = present_candidates(objects, width)
    candidates["absent"] = [(-1, description) for description in absent_candidates(objects)]
    chosen = []
    for kind in KINDS:
        strata: dict[object, list[tuple[int, Description]]] = {}
        for candidate in candidates[kind]:
            strata.setdefault(_stratum(candidate[1]), []).append(candidate)
        wanted, taken = SENTENCES_PER_KIND + owed[kind], 0
        while taken < min(wanted, MAX_PER_KIND) and strata:
            key = list(strata)[int(rng.integers(len(strata)))]
            chosen.append(strata[key].pop(int(rng.integers(len(strata[key])))))
            if not strata[key]:
                del strata[key]
            taken += 1
        owed[kind] = wanted - taken
    return chosen


def _sentence(raw: str, sent_id: int, kind: str) -> dict:
    tokens = re.findall(r"[a-z0-9\-]+", raw.lower())
    return {"tokens": tokens, "raw": raw, "sent": " ".join(tokens), "sent_id": sent_id, "kind": kind}


# ---------------------------------------------------------------------------- writing


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
        "generator": GENERATOR, "seed": seed, "num_images": num_images, "height": height, "width": width,
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
    parser = argparse.ArgumentParser(prog="python -m training.heldout_scenes", description=__doc__.splitlines()[0])
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


if __name__ == "__main__":
    main()
