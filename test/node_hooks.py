"""meres_node with test hooks, in the node's own process: `python test/node_hooks.py --ros-args ...`.

The node and the model are the real ones; the environment asks for one of these on top:
  MERES_TEST_HUMBLE=1         run as on Humble: rclpy's Node has no add_post_set_parameters_callback
  MERES_TEST_FAULTS=oom,nan,ok,raise
                              the model's image encoder fails on its first calls, one per entry:
                              CUDA out of memory, NaN output, a RuntimeError; `ok` runs normally;
                              the calls after the list run normally
  MERES_TEST_GATE=<folder>    the model's call N writes N to <folder>/started and waits until
                              <folder>/released holds a number >= N (a frame held in flight)
  MERES_TEST_RED_ORACLE=1     the model runs, then its probability map is replaced by 0.9 where the image
                              is red and 0 elsewhere: a model that knows "the red disc", so that a scene
                              with two identical red discs fits the sentence twice (everything after the
                              probability map, Segmenter.decide included, is the real code)
  MERES_TEST_COUNT_IMAGES=<file>
                              each Image message the node builds for its outputs appends its encoding
                              to <file>, one line per message
"""
import os
import sys
import time
from collections import deque
from pathlib import Path


def remove_post_set_callback() -> None:
    from rclpy.node import Node

    del Node.add_post_set_parameters_callback
    print("node_hooks: Humble API: Node.add_post_set_parameters_callback removed", flush=True)


def inject_faults(faults: str) -> None:
    import torch

    from meres_core.model.meres import MERES

    pending = deque(faults.split(","))
    real = MERES.encode_image

    def encode_image(self, images):
        fault = pending.popleft() if pending else "ok"
        if fault == "oom":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")
        if fault == "raise":
            raise RuntimeError("injected model failure")
        if fault == "nan":
            return real(self, images * float("nan"))
        return real(self, images)

    MERES.encode_image = encode_image


def gate(folder: Path) -> None:
    from meres_core.inference import Segmenter

    real = Segmenter.segment
    calls = 0

    def segment(self, *args, **kwargs):
        nonlocal calls
        calls += 1
        (folder / "started").write_text(str(calls))
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            released = (folder / "released").read_text() if (folder / "released").exists() else ""
            if released.strip() and int(released) >= calls:
                break
            time.sleep(0.02)
        return real(self, *args, **kwargs)

    Segmenter.segment = segment


def red_oracle() -> None:
    from dataclasses import replace

    import numpy as np

    from meres_core.inference import Segmenter

    real = Segmenter.segment

    def segment(self, image, expressions, decision=None):
        results = real(self, image, expressions, decision)
        red = (image[..., 0] > 150) & (image[..., 1] < 100) & (image[..., 2] < 100)
        probability = red.astype(np.float32) * np.float32(0.9)
        return [replace(self.decide(r.expression, probability, decision), timings_ms=r.timings_ms) for r in results]

    Segmenter.segment = segment


def count_images(file: Path) -> None:
    import meres_ros.node

    real = meres_ros.node.numpy_to_image

    def numpy_to_image(array, encoding, *args, **kwargs):
        with open(file, "a") as out:
            out.write(encoding + "\n")
        return real(array, encoding, *args, **kwargs)

    meres_ros.node.numpy_to_image = numpy_to_image


if __name__ == "__main__":
    if os.environ.get("MERES_TEST_HUMBLE"):
        remove_post_set_callback()
    if os.environ.get("MERES_TEST_FAULTS"):
        inject_faults(os.environ["MERES_TEST_FAULTS"])
    if os.environ.get("MERES_TEST_RED_ORACLE"):
        red_oracle()
    if os.environ.get("MERES_TEST_GATE"):
        gate(Path(os.environ["MERES_TEST_GATE"]))
    if os.environ.get("MERES_TEST_COUNT_IMAGES"):
        count_images(Path(os.environ["MERES_TEST_COUNT_IMAGES"]))
    from meres_ros.node import main

    sys.exit(main())
