"""From a mask and a registered depth image to a 3D point in the camera frame.

Depth images are noisy exactly where a grasp point matters: object borders mix
foreground and background, and holes read as 0 or NaN. The object's depth is
therefore the median of the valid depths inside the mask after eroding it
away from the border (falling back to the whole mask when the object is too
thin to survive erosion).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np


@dataclass(frozen=True)
class DepthRange:
    min_m: float = 0.1
    max_m: float = 10.0


# sensor_msgs/CameraInfo distortion models that OpenCV inverts, with their coefficient counts
# (k1 k2 p1 p2 k3, then k4 k5 k6): the same order in CameraInfo.d and in OpenCV.
DISTORTION_MODELS = {"plumb_bob": 5, "rational_polynomial": 8}


@dataclass(frozen=True)
class PinholeCamera:
    """A CameraInfo's intrinsics: the pinhole (fx, fy, cx, cy) and the lens distortion to undo.

    For a raw (unrectified) image the intrinsics are K and the distortion D; for a
    rectified image they are the left 3x3 of P and there is no distortion left.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int = 0  # 0: unknown, not checked against images
    height: int = 0
    distortion: tuple[float, ...] = ()  # OpenCV order; empty or all zero: none

    def __post_init__(self):
        values = (self.fx, self.fy, self.cx, self.cy, *self.distortion)
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"camera intrinsics must be finite, got fx={self.fx} fy={self.fy} cx={self.cx} cy={self.cy} "
                             f"d={list(self.distortion)}")
        if self.fx <= 0.0 or self.fy <= 0.0:
            raise ValueError(f"focal lengths must be positive, got fx={self.fx} fy={self.fy} (uncalibrated camera?)")

    @classmethod
    def from_camera_info(cls, msg, rectified: bool = False) -> "PinholeCamera":
        """`rectified`: the image is rectified (image_rect): P's intrinsics, D ignored."""
        size = dict(width=int(msg.width), height=int(msg.height))
        if rectified:
            p = list(msg.p)
            if len(p) != 12:
                raise ValueError(f"CameraInfo.p must have 12 entries, got {len(p)}")
            return cls(fx=float(p[0]), fy=float(p[5]), cx=float(p[2]), cy=float(p[6]), **size)
        k = list(msg.k)
        if len(k) != 9:
            raise ValueError(f"CameraInfo.k must have 9 entries, got {len(k)}")
        d = tuple(float(c) for c in msg.d)
        if any(c != 0.0 for c in d):
            expected = DISTORTION_MODELS.get(msg.distortion_model)
            if expected is None:
                raise ValueError(f"distortion model {msg.distortion_model!r} is not supported (only "
                                 f"{', '.join(DISTORTION_MODELS)}); rectify the image and set rectified:=true")
            if len(d) != expected:
                raise ValueError(f"{msg.distortion_model} needs {expected} distortion coefficients, CameraInfo.d has {len(d)}")
        else:
            d = ()
        return cls(fx=float(k[0]), fy=float(k[4]), cx=float(k[2]), cy=float(k[5]), distortion=d, **size)

    def check_matches(self, height: int, width: int) -> None:
        if self.width and self.height and (self.width, self.height) != (width, height):
            raise ValueError(f"CameraInfo is for {self.width}x{self.height} images, the image is {width}x{height}")

    def rays(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Pixels (u, v) (arrays of N) -> (N, 2) rays (x / z, y / z) through them, lens distortion undone."""
        u, v = np.asarray(u, np.float64).ravel(), np.asarray(v, np.float64).ravel()
        if not self.distortion:
            return np.stack([(u - self.cx) / self.fx, (v - self.cy) / self.fy], axis=1)
        k = np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])
        # OpenCV inverts the distortion iteratively; iterate to convergence, not its default 5 steps.
        # (OpenCV 4 names the call with criteria undistortPointsIter; OpenCV 5 folded it into undistortPoints.)
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)
        undistort = getattr(cv2, "undistortPointsIter", cv2.undistortPoints)
        identity = np.eye(3)  # R: no rectification; P: output normalized coordinates
        rays = undistort(np.stack([u, v], axis=1)[:, None, :], k, np.array(self.distortion), R=identity, P=identity,
                         criteria=criteria)
        return rays[:, 0, :]

    def normalized(self, u: float, v: float) -> tuple[float, float]:
        """Pixel (u, v) -> the ray (x / z, y / z) through it, lens distortion undone."""
        x, y = self.rays(np.array([u]), np.array([v]))[0]
        return float(x), float(y)

    def deproject(self, u: float, v: float, depth_m: float) -> tuple[float, float, float]:
        """Pixel (u, v) at depth z (m, along the optical axis) -> (x, y, z) in the optical frame (REP 103: x right, y down, z forward)."""
        x, y = self.normalized(u, v)
        return (x * depth_m, y * depth_m, depth_m)

    def deproject_pixels(self, u: np.ndarray, v: np.ndarray, depth_m: np.ndarray) -> np.ndarray:
        """Pixels (u, v) at depths z (arrays of N) -> (N, 3) points (x, y, z) in the optical frame."""
        depth_m = np.asarray(depth_m, np.float64).ravel()
        return np.column_stack([self.rays(u, v) * depth_m[:, None], depth_m])


def depth_to_meters(depth: np.ndarray, depth_scale: float) -> np.ndarray:
    """uint16 depth (x depth_scale, e.g. 0.001 for mm) or float depth in m -> float32 m; invalid (0, NaN, inf) -> NaN."""
    if depth.ndim != 2:
        raise ValueError(f"depth must be a single-channel (H, W) image, got shape {depth.shape}")
    if np.issubdtype(depth.dtype, np.integer):
        if not (math.isfinite(depth_scale) and depth_scale > 0.0):
            raise ValueError(f"depth_scale must be positive, got {depth_scale}")
        meters = depth.astype(np.float32) * np.float32(depth_scale)
    else:
        meters = depth.astype(np.float32, copy=True)
    meters[~np.isfinite(meters) | (meters <= 0.0)] = np.nan
    return meters


def depth_samples(depth_m: np.ndarray, mask: np.ndarray, depth_range: DepthRange = DepthRange(),
                  erosion_px: int = 2, min_valid_pixels: int = 5) -> Optional[np.ndarray]:
    """The valid depths (m) inside `mask` eroded by `erosion_px` (the whole mask when too few survive
    erosion); None when fewer than `min_valid_pixels` are valid either way."""
    if depth_m.shape != mask.shape:
        raise ValueError(f"depth {depth_m.shape[1]}x{depth_m.shape[0]} does not match mask {mask.shape[1]}x{mask.shape[0]} "
                         "(depth must be registered to the color image)")
    mask = mask.astype(bool)
    valid = valid_depth(depth_m, depth_range)
    candidates = []
    if erosion_px > 0:
        kernel = np.ones((2 * erosion_px + 1, 2 * erosion_px + 1), np.uint8)
        candidates.append(cv2.erode(mask.astype(np.uint8), kernel).astype(bool))
    candidates.append(mask)
    for region in candidates:
        values = depth_m[region & valid]
        if values.size >= min_valid_pixels:
            return values
    return None


def valid_depth(depth_m: np.ndarray, depth_range: DepthRange) -> np.ndarray:
    return np.isfinite(depth_m) & (depth_m >= depth_range.min_m) & (depth_m <= depth_range.max_m)


def robust_depth(depth_m: np.ndarray, mask: np.ndarray, depth_range: DepthRange = DepthRange(),
                 erosion_px: int = 2, min_valid_pixels: int = 5) -> Optional[float]:
    """Median depth (m) of the valid pixels in `mask`, None when fewer than `min_valid_pixels` are valid."""
    values = depth_samples(depth_m, mask, depth_range, erosion_px, min_valid_pixels)
    return None if values is None else float(np.median(values))


# The extent of a part spans these percentiles of its points along each axis: a few stray depth
# pixels (mixed edges, a background pixel inside the mask) cannot stretch it.
EXTENT_PERCENTILES = (5.0, 95.0)


def surface_extent(depth_m: np.ndarray, mask: np.ndarray, camera: PinholeCamera,
                   depth_range: DepthRange = DepthRange(), min_valid_pixels: int = 5,
                   offset: tuple[int, int] = (0, 0)) -> Optional[tuple[float, float, float]]:
    """Size (m) along x, y, z of the optical frame of the visible surface under `mask`.

    Every valid depth pixel of the mask is deprojected; each axis' extent is the span between
    the EXTENT_PERCENTILES of the points' coordinates: 90% of the points, so slightly under the
    full size of an evenly covered object, and not the object's hidden back. None when fewer
    than `min_valid_pixels` pixels have a valid depth. `offset`: (x, y) of depth_m / mask's top-left
    pixel in the camera image, when they are a window of it.
    """
    v, u = np.nonzero(mask.astype(bool) & valid_depth(depth_m, depth_range))
    if u.size < min_valid_pixels:
        return None
    points = camera.deproject_pixels(u + offset[0], v + offset[1], depth_m[v, u])
    low, high = np.percentile(points, EXTENT_PERCENTILES, axis=0)
    return tuple(float(x) for x in high - low)


def principal_axis(mask: np.ndarray) -> tuple[float, float]:
    """Direction of a mask's greatest spread, from its second moments: (angle, ratio).

    angle: radians from +u towards +v (image axes, v down), in (-pi/2, pi/2]; a parallel
    gripper closes across it. ratio: sqrt(minor / major second moment) in [0, 1]: 0 for a
    line, 1 for a disc or a square, where the angle says nothing (it is 0 then).
    """
    moments = cv2.moments(mask.astype(np.uint8), binaryImage=True)
    if moments["m00"] == 0:
        raise ValueError("principal_axis of an empty mask")
    mu20, mu02, mu11 = moments["mu20"], moments["mu02"], moments["mu11"]
    angle = 0.5 * math.atan2(2.0 * mu11, mu20 - mu02)
    if angle <= -math.pi / 2 + 1e-9:  # the same axis as +pi/2 (rounding in mu11 can land on either)
        angle += math.pi
    half_difference = math.hypot((mu20 - mu02) / 2.0, mu11)
    major, minor = (mu20 + mu02) / 2.0 + half_difference, (mu20 + mu02) / 2.0 - half_difference
    ratio = math.sqrt(max(minor, 0.0) / major) if major > 0 else 1.0
    return angle, ratio
