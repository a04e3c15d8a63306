"""Overlay captions: readable (white on an opaque box) and one separate line per result."""
import numpy as np

from meres_core.inference import SegmentationResult
from meres_core.visualize import LABEL_TEXT_RGB, draw_overlay


def result(text: str, found: bool) -> SegmentationResult:
    mask = np.zeros((480, 640), bool)
    mask[200:260, 300:380] = found
    return SegmentationResult(text, found, 0.9 if found else 0.0, mask, mask.astype(np.float32),
                              (300, 200, 379, 259) if found else None, (339.5, 229.5) if found else None)


GLYPH_GAP = 3  # blank rows within one line of text: OpenCV 5 draws the dot of an "i" apart from its stem


def text_bands(image: np.ndarray, columns: slice) -> list[tuple[int, int]]:
    """Row ranges holding caption text (pure white pixels) in `columns`."""
    rows = np.flatnonzero((image[:, columns] == LABEL_TEXT_RGB).all(-1).any(1))
    bands, start = [], rows[0]
    for previous, row in zip(rows, rows[1:]):
        if row > previous + 1 + GLYPH_GAP:
            bands.append((start, previous))
            start = row
    return bands + [(start, rows[-1])]


def test_captions_are_stacked_on_opaque_boxes_over_a_busy_scene():
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 200, (480, 640, 3), dtype=np.uint8)  # busy, never pure white
    results = [result("the green triangle furthest to the right of the star", True),
               result("the second purple heart from the left", False)]
    out = draw_overlay(scene, results)
    bands = text_bands(out, slice(0, 300))
    assert len(bands) == 2, bands  # two captions, one band each: not drawn over each other
    for top, bottom in bands:
        box = out[top: bottom + 1, 30:300]
        text = (box == LABEL_TEXT_RGB).all(-1)
        assert text.mean() > 0.03  # letters are there (OpenCV 5: 5% of the box pure white, 4.x more)
        rest = box[~text]
        grey = (rest.max(-1) == rest.min(-1)).mean()  # black box and anti-aliased white: grey levels
        assert grey > 0.98, grey  # on an opaque box, not on the scene's colour noise
