"""Overlay drawing shared by the CLI, the ROS debug image, the demo and training logs."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

# Distinct RGB colours for successive expressions.
PALETTE = [(255, 64, 64), (64, 200, 255), (255, 220, 0), (160, 255, 80), (255, 120, 255), (255, 160, 40)]


def draw_overlay(rgb: np.ndarray, results: Sequence, alpha: float = 0.5) -> np.ndarray:
    """Blend each found result's mask in its colour, with its bbox, centroid and label.

    `results` are objects with .mask, .found, .bbox, .centroid, .expression, .score
    (a `SegmentationResult`). Returns a new RGB uint8 image.
    """
    out = rgb.copy()
    for i, result in enumerate(results):
        color = PALETTE[i % len(PALETTE)]
        if result.found:
            blend = (out[result.mask] * (1 - alpha) + np.array(color) * alpha).astype(np.uint8)
            out[result.mask] = blend
    for i, result in enumerate(results):
        color = PALETTE[i % len(PALETTE)]
        label = f"{result.expression[:40]} ({result.score:.2f})" if result.found else f"{result.expression[:40]}: not found"
        if result.found:
            x0, y0, x1, y1 = result.bbox
            cv2.rectangle(out, (x0, y0), (x1, y1), color, 2)
            u, v = (int(round(c)) for c in result.centroid)
            cv2.drawMarker(out, (u, v), (255, 255, 255), cv2.MARKER_CROSS, 14, 3)
            cv2.drawMarker(out, (u, v), color, cv2.MARKER_CROSS, 12, 1)
        y = 18 + 18 * i
        cv2.putText(out, label, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, label, (6, y), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1, cv2.LINE_AA)
    return out
