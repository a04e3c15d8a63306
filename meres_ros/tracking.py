"""Steadier 3D targets across frames: exponential smoothing, reset on a new sentence, "target lost".

A grasp planner or a visual servo on a moving camera sees the per-frame 3D centroid jitter
by the depth noise of a few pixels. With `smoothing` s in (0, 1) each new point p moves the
target to s * previous + (1 - s) * p, in the camera's optical frame (no tf here: a camera
moving fast makes the target lag). A frame without a 3D point holds the last target; after
`lost_after` such frames in a row the target is lost and forgotten, so a new sighting starts
fresh instead of being averaged with an old place. A new sentence (request id) starts over.

rclpy-free: the node feeds it one observation per expression and frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

Point = tuple[float, float, float]


@dataclass(frozen=True)
class TrackState:
    point: Optional[Point]  # smoothed (or, with smoothing 0, this frame's) target in metres; None: none to give
    lost: bool  # not seen in the last `lost_after` frames, after it had been seen for this sentence


@dataclass
class _Track:
    point: Optional[Point] = None
    missing: int = 0  # frames in a row without a 3D point
    seen: bool = False


class TargetTracker:
    """Per (request id, expression index): the smoothed 3D target and whether it is lost. Not thread-safe:
    one worker feeds it."""

    def __init__(self, smoothing: float = 0.0, lost_after: int = 5):
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        if lost_after < 1:
            raise ValueError(f"lost_after must be >= 1, got {lost_after}")
        self.smoothing = smoothing
        self.lost_after = lost_after
        self._request_id: Optional[int] = None
        self._tracks: dict[int, _Track] = {}

    def update(self, request_id: int, index: int, observed: Optional[Point]) -> TrackState:
        """This frame's 3D point of expression `index` of sentence `request_id` (None: none this frame)."""
        if request_id != self._request_id:  # a new sentence: nothing carries over
            self._request_id, self._tracks = request_id, {}
        track = self._tracks.setdefault(index, _Track())
        if observed is not None:
            if track.point is None or self.smoothing == 0.0:
                track.point = tuple(float(c) for c in observed)
            else:
                s = self.smoothing
                track.point = tuple(s * old + (1.0 - s) * new for old, new in zip(track.point, observed))
            track.missing, track.seen = 0, True
            return TrackState(track.point, lost=False)
        track.missing += 1
        lost = track.seen and track.missing >= self.lost_after
        if lost or self.smoothing == 0.0:
            track.point = None if lost else track.point
            return TrackState(None, lost)
        return TrackState(track.point, lost=False)  # held through a short dropout
