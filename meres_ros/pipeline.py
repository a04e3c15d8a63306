"""The frame -> targets step shared by the node, `meres-replay` and `meres-demo`.

Everything here is ROS-free: numpy in, plain data out. The node turns a
`Target` into messages, replay and the demo turn it into files and lines.
"""
from __future__ import annotations

import gc
import math
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from meres_core.visualize import draw_overlay
from meres_ros.conversions import image_to_depth
from meres_ros.geometry import (
    DepthRange,
    PinholeCamera,
    depth_samples,
    depth_to_meters,
    principal_axis,
    surface_extent,
)

if TYPE_CHECKING:  # meres_core pulls in torch: imported when a model is loaded, not before
    from meres_core.inference import Decision, SegmentationResult, Segmenter

EXPRESSION_SEPARATOR = ";"
# A sentence longer than this is not a referring expression but a pasted document;
# the text encoder would only read its first tokens anyway.
MAX_EXPRESSION_CHARS = 1000


def parse_expressions(text: str, max_expressions: int = 8) -> list[str]:
    """'the red mug; the laptop' -> ['the red mug', 'the laptop'] (empty pieces dropped).

    Raises ValueError for text with no expression in it (whitespace only) and
    for more than `max_expressions` expressions, which would make one frame's
    batch unboundedly large.
    """
    expressions = [part.strip()[:MAX_EXPRESSION_CHARS] for part in text.split(EXPRESSION_SEPARATOR)]
    expressions = [e for e in expressions if e]
    if not expressions and text:
        raise ValueError(f"no expression in {text[:40]!r} (only separators and whitespace); "
                         "publish an empty string to clear the target")
    if len(expressions) > max_expressions:
        raise ValueError(f"{len(expressions)} expressions in one message, at most {max_expressions} (parameter max_expressions)")
    return expressions


def release_memory() -> None:
    """Give a dropped model's memory back (the caching allocator keeps GPU memory otherwise)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class DepthSettings:
    scale: float = 0.001  # metres per unit of an integer depth image (0.001: millimetres)
    depth_range: DepthRange = DepthRange()
    erosion_px: int = 2


@dataclass
class Target:
    """One expression on one frame: the model's answer plus where it is in 3D."""

    segmentation: "SegmentationResult"
    # Of the target part (segmentation.part), for a grasp planner; None / 0 where unknown.
    axis_angle: Optional[float] = None  # radians in the image, geometry.principal_axis
    axis_ratio: Optional[float] = None  # minor / major spread; near 1 the angle says little
    depth_m: Optional[float] = None  # robust object depth; None: no valid depth or camera
    point_3d: Optional[tuple[float, float, float]] = None  # metres, camera optical frame
    extent_m: Optional[tuple[float, float, float]] = None  # visible surface's size along x, y, z (m)
    depth_std_m: Optional[float] = None  # spread of the depths depth_m is the median of
    depth_pixel_count: int = 0  # how many there were
    lost: bool = False  # tracking.TargetTracker: no 3D point for a while (node only)

    @property
    def expression(self) -> str:
        return self.segmentation.expression

    @property
    def found(self) -> bool:
        return bool(self.segmentation.found)

    @property
    def score(self) -> float:
        return float(self.segmentation.score)

    @property
    def mask(self) -> np.ndarray:
        """Boolean (H, W); all False when the target is absent."""
        if self.found:
            return self.segmentation.mask
        return np.zeros_like(self.segmentation.mask, dtype=bool)

    @property
    def bbox(self) -> Optional[tuple[int, int, int, int]]:
        return self.segmentation.bbox if self.found else None

    @property
    def pixel_centroid(self) -> Optional[tuple[float, float]]:
        return self.segmentation.centroid if self.found else None

    @property
    def ambiguous(self) -> bool:
        return self.segmentation.ambiguous

    @property
    def candidates(self) -> list:
        """meres_core.inference.Candidate per separated part of comparable mass, most probable first."""
        return self.segmentation.candidates


@dataclass
class Frame:
    """A frame's inputs in numpy form; depth and camera are optional and already checked against `rgb`."""

    rgb: np.ndarray
    depth_m: Optional[np.ndarray] = None
    camera: Optional[PinholeCamera] = None


def prepare_depth(rgb_shape: Sequence[int], depth: np.ndarray, scale: float) -> np.ndarray:
    """Raw depth array -> metres, checked to be registered to the color image."""
    meters = depth_to_meters(depth, scale)
    if meters.shape != tuple(rgb_shape[:2]):
        raise ValueError(f"depth is {meters.shape[1]}x{meters.shape[0]} but color is {rgb_shape[1]}x{rgb_shape[0]}: "
                         "depth must be registered to the color image")
    return meters


class InputError(ValueError):
    """Unusable input, with the kind of input it was ("depth", "camera_info", ...) for the logs."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


def depth_and_camera(rgb_shape: Sequence[int], depth_msg, camera_info_msg, scale: float,
                     rectified: bool = False) -> tuple[np.ndarray, PinholeCamera]:
    """A depth Image and a CameraInfo matched to a color frame -> (depth in metres, camera), checked against it."""
    try:
        camera = PinholeCamera.from_camera_info(camera_info_msg, rectified)
        camera.check_matches(*rgb_shape[:2])
    except ValueError as error:
        raise InputError("camera_info", str(error)) from None
    try:
        return prepare_depth(rgb_shape, image_to_depth(depth_msg), scale), camera
    except ValueError as error:
        raise InputError("depth", str(error)) from None


class ModelOutputError(RuntimeError):
    """The model ran but its output is unusable (NaN / inf probabilities)."""


def segment_frame(segmenter: "Segmenter", frame: Frame, expressions: Sequence[str],
                  depth_settings: DepthSettings = DepthSettings(), decision: Optional["Decision"] = None) -> list[Target]:
    """All expressions in one batched `segment` call, then 3D where depth and camera allow.

    Raises ModelOutputError when the model's output is not finite: thresholding NaN
    would quietly answer "not found" where the truth is "the model is broken".
    """
    results = segmenter.segment(frame.rgb, list(expressions), decision)
    for result in results:
        if not np.isfinite(result.probability).all():
            raise ModelOutputError(f"non-finite model output for {result.expression[:40]!r} "
                                   f"({int((~np.isfinite(result.probability)).sum())} NaN / inf pixels)")
    targets = [Target(result) for result in results]
    for target in targets:
        centroid = target.pixel_centroid
        if centroid is None:
            continue
        # The part's box, widened by the erosion radius: every pixel the part's geometry reads is inside, so
        # the window gives the full image's answers at a fraction of the cost (a 640x480 frame per step).
        rows, cols = part_window(target.bbox, target.segmentation.part.shape, depth_settings.erosion_px + 1)
        part = target.segmentation.part[rows, cols]
        target.axis_angle, target.axis_ratio = principal_axis(part)  # central moments: the window's own origin
        if frame.depth_m is None or frame.camera is None:
            continue
        # Depth of the same connected part the centroid comes from, not of the whole mask.
        depth_m = frame.depth_m[rows, cols]
        depths = depth_samples(depth_m, part, depth_settings.depth_range, depth_settings.erosion_px)
        if depths is None:
            continue
        target.depth_m = float(np.median(depths))
        target.depth_std_m, target.depth_pixel_count = float(np.std(depths)), int(depths.size)
        target.point_3d = frame.camera.deproject(centroid[0], centroid[1], target.depth_m)
        target.extent_m = surface_extent(depth_m, part, frame.camera, depth_settings.depth_range,
                                         offset=(cols.start, rows.start))
    return targets


def part_window(bbox: tuple[int, int, int, int], shape: Sequence[int], margin: int) -> tuple[slice, slice]:
    """(rows, cols) of the inclusive box `bbox` = (x0, y0, x1, y1) widened by `margin`, within an image of `shape`."""
    x0, y0, x1, y1 = bbox
    return (slice(max(y0 - margin, 0), min(y1 + margin + 1, shape[0])),
            slice(max(x0 - margin, 0), min(x1 + margin + 1, shape[1])))


# What a result message carries as its mask: the whole image's, the bbox's window of it, or none.
MASK_MODES = ("full", "cropped", "none")


def mask_window(target: Target, mode: str) -> tuple[np.ndarray, int, int]:
    """The mask a result carries under `mode` (MASK_MODES): uint8 0 / 255, and the input-image pixel
    of its top-left corner. "cropped" keeps the bbox's window (of the whole mask: another part that
    reaches into the box stays in it); absent targets and "none" carry a 0 x 0 mask."""
    empty = np.zeros((0, 0), np.uint8), 0, 0
    if mode == "none" or (mode == "cropped" and target.bbox is None):
        return empty
    mask = target.mask.astype(np.uint8) * 255
    if mode == "full":
        return mask, 0, 0
    x0, y0, x1, y1 = target.bbox
    return np.ascontiguousarray(mask[y0:y1 + 1, x0:x1 + 1]), x0, y0


def inference_ms(targets: Sequence[Target]) -> float:
    """Model time of one frame's batch (every result of a batch reports the same call)."""
    return max((float(t.segmentation.timings_ms.get("total", 0.0)) for t in targets), default=0.0)


def render_overlay(rgb: np.ndarray, targets: Sequence[Target]) -> np.ndarray:
    """RGB debug image: each found target's mask tinted, with its box, centroid and caption."""
    return draw_overlay(rgb, [target.segmentation for target in targets])


def _finite_or_none(value: Optional[float]) -> Optional[float]:
    return None if value is None or not math.isfinite(value) else float(value)


def target_to_dict(target: Target) -> dict:
    """JSON-ready summary of a target (no mask: masks go to PNG files)."""
    return {
        "expression": target.expression,
        "found": target.found,
        "score": round(target.score, 4),
        "bbox": list(target.bbox) if target.bbox is not None else None,
        "centroid_px": [round(c, 2) for c in target.pixel_centroid] if target.pixel_centroid is not None else None,
        "ambiguous": target.ambiguous,
        "candidates": [c.summary() for c in target.candidates],
        "depth_m": _finite_or_none(target.depth_m),
        "centroid_3d_m": [round(c, 4) for c in target.point_3d] if target.point_3d is not None else None,
        "extent_m": [round(c, 4) for c in target.extent_m] if target.extent_m is not None else None,
        "depth_std_m": _finite_or_none(target.depth_std_m),
        "depth_pixel_count": target.depth_pixel_count,
        "axis_angle_rad": _finite_or_none(target.axis_angle),
        "axis_ratio": _finite_or_none(target.axis_ratio),
        "timings_ms": {k: round(float(v), 2) for k, v in target.segmentation.timings_ms.items()},
    }
