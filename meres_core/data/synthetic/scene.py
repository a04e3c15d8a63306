"""Rendering: flat coloured shapes on a textured background, drawn back to front, with depth.

A scene depends only on (seed, image_id, appearance, same_colour_neighbours): `render_scene` rebuilds it.

Appearances: `muted` (meres-synth 1.2's scenes: grey-ish textured backgrounds, shapes of
circumradius 6-17% of the shorter side), `varied`, domain randomization of what the
sentence does not name: backgrounds of any hue and brightness, plain or hard-striped as well as
textured, smaller shapes (4-17%), and sometimes no sensor noise; a quarter of its scenes keep the
muted background; and `shaded` (1.4): `varied`, with each shape painted in another shade of its
colour name (darker, lighter, duller, a few degrees of hue), as lighting and cameras shift colours.
`same_colour_neighbours` (1.7): the share of shapes placed next to another that take its colour, so
that small, partly hidden shapes sit on objects of their own colour (where the category sentences of
the demo model miss most); 0 draws the scenes of 1.6.
Colours and shapes keep their names' meaning: a background colour always stays at least
BACKGROUND_CONTRAST (RGB distance) from every colour a shape of the scene is painted in.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass, field
from functools import cached_property
from typing import Optional

import cv2
import numpy as np

from .vocabulary import CATEGORIES, COLORS

MIN_VISIBLE = 0.35  # every drawn shape keeps at least this fraction visible
APPEARANCES = ("muted", "varied", "shaded")
RADIUS_RANGE = {"muted": (0.06, 0.17), "varied": (0.04, 0.17), "shaded": (0.04, 0.17)}  # circumradius / shorter side
BACKGROUND_CONTRAST = 90.0
VARIED_MUTED_SHARE = 0.25  # varied scenes that keep the muted background
# `shaded`: hue shift (of 1), saturation and value factors of a shape's paint against its name's colour.
# Hue +-6 degrees: orange sits 30 degrees from red and 22 from yellow, so neighbours' shades never meet.
SHADE_HUE = 6 / 360
SHADE_SATURATION = (0.75, 1.15)
# Lightness is the name of white and black; dark yellow and dark orange turn olive and brown.
SHADE_VALUE = {"white": (0.92, 1.04), "black": (0.3, 2.0), "yellow": (0.85, 1.1), "orange": (0.78, 1.1)}
SHADE_VALUE_CHROMATIC = (0.65, 1.15)


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
    background: str = "muted"  # muted | plain | stripes | texture (the latter three: `varied` only)



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


def _background(rng: np.random.Generator, height: int, width: int, colors: Optional[np.ndarray] = None) -> np.ndarray:
    """Two-colour texture: gradient, stripes, checkerboard or smooth blotches (float HxWx3).

    `colors` (2, 3) RGB; None: two muted grey-ish ones."""
    if colors is None:
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


def _contrasting_color(rng: np.random.Generator, avoid: np.ndarray, blend_with: Optional[np.ndarray] = None
                       ) -> Optional[np.ndarray]:
    """An RGB colour of any hue, grey to fairly saturated, dark to bright, at least BACKGROUND_CONTRAST
    from every row of `avoid` (N, 3), and so is every blend of it with `blend_with` (textures
    interpolate between their two colours); None when 50 draws found none."""
    for _ in range(50):
        rgb = np.array(colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0, 0.8), rng.uniform(0.1, 1.0))) * 255
        blends = rgb[None] if blend_with is None else np.linspace(rgb, blend_with, 9)
        if np.linalg.norm(blends[:, None] - avoid[None], axis=2).min() >= BACKGROUND_CONTRAST:
            return rgb.astype(np.float32)
    return None


def _varied_background(rng: np.random.Generator, height: int, width: int, avoid: np.ndarray
                       ) -> tuple[str, np.ndarray]:
    """A `varied` scene's background: (style, float HxWx3), plain, hard stripes or a texture, in colours
    clear of the shapes' colours `avoid` (N, 3); the muted texture for VARIED_MUTED_SHARE of scenes."""
    if rng.random() < VARIED_MUTED_SHARE:
        return "muted", _background(rng, height, width)
    style = ("plain", "stripes", "texture")[int(rng.integers(3))]
    first = _contrasting_color(rng, avoid)
    second = None if first is None else _contrasting_color(rng, avoid, first if style == "texture" else None)
    if second is None:  # no colour clear of this palette
        return "muted", _background(rng, height, width)
    if style == "plain":
        return style, np.broadcast_to(first, (height, width, 3)).copy()
    if style == "stripes":  # hard edges, at full resolution
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        angle = rng.uniform(0, np.pi)
        along = xx * np.cos(angle) + yy * np.sin(angle)
        second_stripe = np.floor(along / (rng.uniform(0.015, 0.075) * width)) % 2 == 1
        return style, np.where(second_stripe[..., None], second, first).astype(np.float32)
    return style, _background(rng, height, width, np.stack([first, second]))


def _place_shapes(rng: np.random.Generator, height: int, width: int,
                  radius_range: tuple[float, float], same_colour_neighbours: float = 0.0) -> list[Shape]:
    """Sample 3-7 shapes from small category/colour palettes so that distractors repeat; a shape placed
    next to another takes its colour with probability `same_colour_neighbours`."""
    n = int(rng.integers(3, 8))
    cats = rng.choice(CATEGORIES, size=int(rng.integers(2, min(n, 4) + 1)), replace=False)
    colors = rng.choice(list(COLORS), size=int(rng.integers(2, 6)), replace=False)
    side = min(height, width)
    shapes: list[Shape] = []
    for _ in range(n):
        category, color = str(rng.choice(cats)), str(rng.choice(colors))
        for _attempt in range(30):
            r = rng.uniform(*radius_range) * side
            color_here = color
            if shapes and rng.random() < 0.35:  # next to an existing shape, to get some occlusion
                neighbour = shapes[int(rng.integers(len(shapes)))]
                ax, ay = neighbour.center
                if same_colour_neighbours > 0 and rng.random() < same_colour_neighbours:  # no draw at 0: 1.6's scenes
                    color_here = neighbour.color
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
                shapes.append(Shape(category, color_here, (cx, cy), box, full, full.copy()))
                break
    return shapes


def _shade(rng: np.random.Generator, color: str) -> np.ndarray:
    """`shaded`: another RGB shade of the colour name (float (3,)), see SHADE_*."""
    hue, saturation, value = colorsys.rgb_to_hsv(*(np.asarray(COLORS[color]) / 255.0))
    hue = (hue + rng.uniform(-SHADE_HUE, SHADE_HUE)) % 1.0
    saturation = min(saturation * rng.uniform(*SHADE_SATURATION), 1.0)
    value = min(value * rng.uniform(*SHADE_VALUE.get(color, SHADE_VALUE_CHROMATIC)), 1.0)
    return np.array(colorsys.hsv_to_rgb(hue, saturation, value), np.float32) * 255


def _paint(rng: np.random.Generator, canvas: np.ndarray, shape: Shape, shade: Optional[np.ndarray] = None) -> None:
    """Fill a shape with its jittered colour (or `shade`, jittered per channel) and a soft linear shading."""
    region, inside = canvas[shape.box], shape.full[shape.box]
    if shade is None:
        # Mostly brightness jitter: per-channel jitter would tint white and black shapes.
        base = np.asarray(COLORS[shape.color], np.float32) + np.float32(rng.uniform(-15, 15)) + rng.uniform(-4, 4, 3)
    else:
        base = shade + rng.uniform(-4, 4, 3)
    gx, gy = rng.normal(size=2) * rng.uniform(0, 30) / max(inside.shape)
    ys, xs = np.nonzero(inside)
    gradient = (xs - xs.mean()) * gx + (ys - ys.mean()) * gy
    region[ys, xs] = base + gradient[:, None].astype(np.float32)


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


def _render(rng: np.random.Generator, height: int, width: int, depth: bool, appearance: str = "muted",
            same_colour_neighbours: float = 0.0) -> Scene:
    if appearance not in APPEARANCES:
        raise ValueError(f"appearance must be one of {APPEARANCES}, got {appearance!r}")
    if not 0.0 <= same_colour_neighbours <= 1.0:
        raise ValueError(f"same_colour_neighbours must be in [0, 1], got {same_colour_neighbours}")
    shapes = _place_shapes(rng, height, width, RADIUS_RANGE[appearance], same_colour_neighbours)
    shades = [_shade(rng, s.color) for s in shapes] if appearance == "shaded" else [None] * len(shapes)
    if appearance == "muted":
        background, canvas = "muted", _background(rng, height, width)
    else:
        avoid = np.array([COLORS[s.color] if c is None else c for s, c in zip(shapes, shades)], np.float32)
        background, canvas = _varied_background(rng, height, width, avoid)
    for shape, shade in zip(shapes, shades):
        _paint(rng, canvas, shape, shade)
    # Luminance-only sensor noise, slightly blurred as by demosaicing; it halves the PNG size.
    noise = rng.standard_normal((height, width, 1), dtype=np.float32)  # drawn before its level, as in 1.2
    canvas += noise * np.float32(rng.uniform(2, 8) if appearance == "muted" else rng.uniform(0, 8))
    canvas = cv2.GaussianBlur(canvas, (3, 3), rng.uniform(0.3, 0.9))
    image = np.clip(canvas, 0, 255).astype(np.uint8)
    return Scene(image, shapes, _depth(rng, shapes, height, width) if depth else None, background)


def _scene_rng(seed: int, image_id: int) -> np.random.Generator:
    return np.random.default_rng([seed, image_id])


def render_scene(seed: int, image_id: int, height: int = 480, width: int = 640, depth: bool = True,
                 appearance: str = "muted", same_colour_neighbours: float = 0.0) -> Scene:
    """The scene `generate(seed=seed, appearance=appearance, same_colour_neighbours=...)` writes for
    `image_id` (expressions not included)."""
    return _render(_scene_rng(seed, image_id), height, width, depth, appearance, same_colour_neighbours)
