"""Drawing: outlines, masks, backgrounds, placement; `render_scene` rebuilds the scene of an image."""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from PIL import Image, ImageDraw

from .vocabulary import CATEGORIES, COLORS, SHADES

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
PLACEMENT_TRIES = 200
SUPERSAMPLE = 4  # masks are drawn at this many times the resolution, then each pixel takes the majority


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
