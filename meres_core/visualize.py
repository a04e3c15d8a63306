"""Overlay drawing shared by the CLI, the ROS debug image, the demo and training logs."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

# Distinct RGB colours for successive expressions.
PALETTE = [(255, 64, 64), (64, 200, 255), (255, 220, 0), (160, 255, 80), (255, 120, 255), (255, 160, 40)]
FONT = cv2.FONT_HERSHEY_SIMPLEX
LABEL_TEXT_RGB = (255, 255, 255)
LABEL_BACKGROUND_RGB = (0, 0, 0)
LABEL_PAD = 4  # pixels around the text inside its box


def draw_overlay(rgb: np.ndarray, results: Sequence, alpha: float = 0.5) -> np.ndarray:
    """Blend each found result's mask in its colour, with its bbox, centroid and a caption.

    `results` are objects with .mask, .found, .bbox, .centroid, .expression, .score
    (a `SegmentationResult`). Captions are stacked top-left, one per result, white on an
    opaque box with a swatch of the result's colour, so they stay readable on any scene
    and never overlap each other. Returns a new RGB uint8 image.
    """
    out = rgb.copy()
    for i, result in enumerate(results):
        color = PALETTE[i % len(PALETTE)]
        if result.found:
            blend = (out[result.mask] * (1 - alpha) + np.array(color) * alpha).astype(np.uint8)
            out[result.mask] = blend
    for i, result in enumerate(results):
        if result.found:
            color = PALETTE[i % len(PALETTE)]
            x0, y0, x1, y1 = result.bbox
            cv2.rectangle(out, (x0, y0), (x1, y1), color, 2)
            u, v = (int(round(c)) for c in result.centroid)
            cv2.drawMarker(out, (u, v), (255, 255, 255), cv2.MARKER_CROSS, 14, 3)
            cv2.drawMarker(out, (u, v), color, cv2.MARKER_CROSS, 12, 1)
    scale = float(np.clip(out.shape[1] / 1100, 0.35, 1.0))  # ~0.58 at 640 px wide
    top = LABEL_PAD
    for i, result in enumerate(results):
        sentence = result.expression if len(result.expression) <= 56 else result.expression[:53] + "..."
        text = f"{sentence} ({result.score:.2f})" if result.found else f"{sentence}: not found"
        top = _caption(out, text, top, PALETTE[i % len(PALETTE)], scale) + 2
    return out


def _caption(out: np.ndarray, text: str, top: int, color: tuple[int, int, int], scale: float) -> int:
    """One caption line at row `top`; returns the row below its box."""
    (width, height), baseline = cv2.getTextSize(text, FONT, scale, 1)
    swatch = height
    box_bottom = top + height + baseline + 2 * LABEL_PAD
    cv2.rectangle(out, (LABEL_PAD, top), (LABEL_PAD + swatch + width + 3 * LABEL_PAD, box_bottom),
                  LABEL_BACKGROUND_RGB, -1)
    cv2.rectangle(out, (2 * LABEL_PAD, top + LABEL_PAD), (2 * LABEL_PAD + swatch, top + LABEL_PAD + height), color, -1)
    cv2.putText(out, text, (3 * LABEL_PAD + swatch, top + LABEL_PAD + height), FONT, scale, LABEL_TEXT_RGB, 1,
                cv2.LINE_AA)
    return box_bottom
