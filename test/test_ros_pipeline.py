"""The ROS-free pieces shared by node, replay and demo: expression parsing, the problem log, the slots."""
import threading

import pytest

from meres_ros.node import LatestSlot, ProblemLog
from meres_ros.pipeline import MAX_EXPRESSION_CHARS, StampBuffer, parse_expressions


def test_parse_expressions():
    assert parse_expressions("the red mug") == ["the red mug"]
    assert parse_expressions(" the red mug ;the laptop; ") == ["the red mug", "the laptop"]
    assert parse_expressions("") == []  # clears the target
    assert parse_expressions("杯子; café") == ["杯子", "café"]
    assert parse_expressions("x" * 10_000) == ["x" * MAX_EXPRESSION_CHARS]
    with pytest.raises(ValueError, match="only separators and whitespace"):
        parse_expressions(" \t; ;")
    with pytest.raises(ValueError, match="at most 3"):
        parse_expressions("a;b;c;d", max_expressions=3)


class RecordingLogger:
    def __init__(self):
        self.lines = []

    def warning(self, text):
        self.lines.append(text)


def test_problem_log_throttles_per_kind_of_problem():
    logger = RecordingLogger()
    problems = ProblemLog(logger, period_s=60.0)
    for width in range(100):
        problems.report("image", f"step {width} is smaller than {width * 3}")
    problems.report("image", "unsupported encoding 'yuv422'")
    problems.report("image", "unsupported encoding 'jpeg'")  # same problem, other value
    problems.report("depth", "step 5 is smaller than 15")  # same text, other kind
    assert logger.lines == ["[image] step 0 is smaller than 0", "[image] unsupported encoding 'yuv422'",
                            "[depth] step 5 is smaller than 15"]
    assert problems.counts == {"image": 102, "depth": 1}
    problems.period_s = 0.0
    problems.report("image", "step 1 is smaller than 3")
    assert logger.lines[-1] == "[image] step 1 is smaller than 3 (99 more like it in the last 0 s)"


def test_latest_slot_keeps_the_newest_and_counts_the_rest():
    slot = LatestSlot()
    for i in range(5):
        slot.put(i)
    assert slot.take(timeout=0.0) == 4 and slot.dropped == 4
    assert slot.take(timeout=0.0) is None
    threading.Timer(0.05, slot.put, args=("late",)).start()
    assert slot.take(timeout=5.0) == "late"


class Stamped:
    def __init__(self, ns):
        self.header = type("H", (), {"stamp": type("T", (), {"sec": ns // 10**9, "nanosec": ns % 10**9})()})()


def test_stamp_buffer_matches_nearest_within_tolerance():
    buffer = StampBuffer(3)
    messages = [Stamped(t) for t in (1_000, 2_000, 3_000, 4_000)]
    for msg in messages:
        buffer.add(msg)
    assert buffer.nearest(3_900, tolerance_ns=200) is messages[3]
    assert buffer.nearest(2_400, tolerance_ns=500) is messages[1]
    assert buffer.nearest(1_000, tolerance_ns=500) is None  # evicted: only the last 3 are kept
    assert buffer.nearest(9_000, tolerance_ns=500) is None
    buffer.clear()
    assert buffer.nearest(4_000, tolerance_ns=0) is None


def test_shipped_yaml_sets_every_declared_parameter():
    from pathlib import Path

    import yaml

    from meres_ros.node import PARAMETERS

    shipped = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "meres.yaml").read_text())
    assert set(shipped["/**"]["ros__parameters"]) == set(PARAMETERS)
