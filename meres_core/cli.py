"""`meres-segment`: run MERES on one image and one or more sentences.

Prints one JSON object per expression and writes an overlay PNG. Exit code 2 on bad
input (missing files, unreadable image, empty text, unusable checkpoint).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import cv2

from .checkpoint import CheckpointError
from .model_source import ModelSource, add_decision_arguments, add_model_arguments, decision_settings, with_settings
from .visualize import draw_overlay

USAGE_ERROR = 2


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="meres-segment", description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True, help="input image (any format OpenCV reads)")
    parser.add_argument("--text", action="append", required=True, help="referring expression (repeatable)")
    parser.add_argument("--out", help="overlay PNG to write")
    add_model_arguments(parser)
    add_decision_arguments(parser)
    return parser.parse_args(argv)


def fail(message: str) -> int:
    print(f"meres-segment: error: {message}", file=sys.stderr)
    return USAGE_ERROR


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    texts = [t.strip() for t in args.text]
    if any(not t for t in texts):
        return fail("--text must not be empty")
    if not Path(args.image).is_file():
        return fail(f"image not found: {args.image}")
    bgr = cv2.imread(args.image, cv2.IMREAD_COLOR)
    if bgr is None:
        return fail(f"cannot read image (unsupported or corrupt file): {args.image}")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    try:
        segmenter = ModelSource.from_args(args).load()
        decision = with_settings(segmenter.decision, **decision_settings(args))
    except (CheckpointError, ValueError, OSError) as exc:
        return fail(str(exc))
    results = segmenter.segment(rgb, texts, decision)
    for result in results:
        print(json.dumps(result.summary()))
    if args.out:
        overlay = draw_overlay(rgb, results)
        if not cv2.imwrite(args.out, cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR)):
            return fail(f"cannot write overlay to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
