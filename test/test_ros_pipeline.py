"""The ROS-free pieces shared by node, replay and demo: expression parsing, the problem log, the slots."""
import re
import threading
import time
from pathlib import Path

import pytest
import yaml
from rclpy.parameter import Parameter

from meres_ros import health
from meres_ros.interface import PARAMETERS, parameter_problem
from meres_ros.pipeline import MAX_EXPRESSION_CHARS, parse_expressions
from meres_ros.streams import FramePacer, LatchedCopies, LatestSlot, ProblemLog, StampBuffer


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


def test_problem_log_throttles_per_kind_of_problem():
    class logger:
        lines = []

    problems = ProblemLog(logger.lines.append, period_s=60.0)
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


def test_shipped_yaml_names_every_declared_parameter():
    """Each parameter is set in config/meres.yaml, or shown commented out when its default is "unset"."""
    text = (Path(__file__).resolve().parents[1] / "config" / "meres.yaml").read_text()
    shipped = yaml.safe_load(text)["/**"]["ros__parameters"]
    commented = set(re.findall(r"^\s*#\s*(\w+):", text, re.MULTILINE))
    unset = {name for name, (default, _) in PARAMETERS.items()
             if isinstance(default, Parameter.Type) and name != "expressions"}  # expressions: [] in the file
    assert unset == {"mask_threshold", "presence_threshold", "ambiguity_ratio"}, \
        "only the decision settings default to the model's own"
    assert set(shipped) == set(PARAMETERS) - unset
    assert unset <= commented


def test_stamp_pairing_waits_for_a_late_partner():
    """Color at t: the depth frame at t - 33 ms is there, the one at t arrives 50 ms later; pair with t."""
    buffer = StampBuffer(10)
    t = 5_000_000_000
    buffer.add(Stamped(t - 33_000_000))
    threading.Timer(0.05, buffer.add, args=(late := Stamped(t),)).start()
    assert buffer.wait_for_partner(t, tolerance_ns=50_000_000, timeout_s=30.0, live_window_ns=10**9) is late
    # A partner that never comes: the nearest within tolerance once the wait is over.
    assert buffer.wait_for_partner(t + 40_000_000, 50_000_000, 0.05, 10**9) is late
    # A silent stream (newest stamp far behind) is not waited for.
    started = time.monotonic()
    assert buffer.wait_for_partner(t + 5 * 10**9, 50_000_000, 30.0, live_window_ns=10**9) is None
    assert time.monotonic() - started < 20.0


def test_latched_copy_of_a_live_sentence_is_recognized_in_either_order():
    copies = LatchedCopies(live_first_window_s=60.0, history_first_window_s=60.0)
    assert copies.take_history("the red mug")  # published before the node started: take it
    # A latched publisher's message on both subscriptions, history first or live first: taken once.
    assert not copies.take_live("the red mug")
    assert copies.take_live("the laptop") and not copies.take_history("the laptop")
    # The same text published again (volatile) is a new message, a new request.
    assert copies.take_live("the red mug")
    # A replayed history sentence does not swallow a later live one once another was taken in between.
    assert copies.take_history("the cup") and copies.take_live("the bowl") and copies.take_live("the cup")
    # Outside the windows nothing is a copy.
    expired = LatchedCopies(live_first_window_s=0.0, history_first_window_s=0.0)
    assert expired.take_live("the red mug") and expired.take_history("the red mug")
    assert expired.take_live("the red mug")


def test_latched_copies_with_the_publishers_stamp_are_recognized_however_late():
    # Windows of 0 s: only the (text, source stamp) pair decides, as on Iron and later.
    copies = LatchedCopies(live_first_window_s=0.0, history_first_window_s=0.0)
    assert copies.take_history("the red mug", stamp=100)
    assert not copies.take_live("the red mug", stamp=100)  # its live copy, seconds later on a busy executor
    assert copies.take_live("the red mug", stamp=200)  # the same text published again: a new request
    assert not copies.take_history("the red mug", stamp=200)
    assert not copies.take_history("the red mug", stamp=100)  # replayed by a re-created history subscription
    assert copies.take_live("the cup", stamp=100)  # another publisher's sentence with the same stamp
    for stamp in range(300, 300 + LatchedCopies.REMEMBERED_PUBLISHES):  # memory is bounded
        assert copies.take_live("the bowl", stamp=stamp)
    assert copies.take_history("the red mug", stamp=100)


def test_parameter_problems_name_the_parameter():
    assert "image_reliability" in parameter_problem("image_reliability", "reliabel", {})
    assert "precision" in parameter_problem("precision", "half", {})
    assert "device" in parameter_problem("device", "gpu", {})
    assert "depth_min" in parameter_problem("depth_max", 0.5, {"depth_min": 2.0})
    assert "depth_max" in parameter_problem("depth_min", 11.0, {"depth_max": 10.0})
    assert parameter_problem("depth_min", 0.2, {"depth_max": 10.0}) is None
    assert parameter_problem("precision", "bf16", {}) is None
    assert "backend" in parameter_problem("backend", "tensorrt", {})
    assert parameter_problem("backend", "compiled", {}) is None and parameter_problem("backend", "", {}) is None


def test_health_reports_rates_latency_and_levels():
    report = health.Health(image_timeout_s=3600.0, failure_limit=3)
    report.activated()
    for _ in range(10):
        report.received("image")
        report.published(0.040)
    ok = report.report("active", {"model": "m"}, dropped=4)
    assert ok.level == health.OK and ok.values["frames dropped"] == "4" and ok.values["model"] == "m"
    assert ok.values["latency p50 (ms)"] == "40.0" and float(ok.values["image rate (Hz)"]) > 0
    failure = report.failed("OutOfMemoryError", "OutOfMemoryError: CUDA out of memory")
    assert failure.first_of_its_kind and not failure.limit_reached
    assert not report.failed("OutOfMemoryError", "again").first_of_its_kind
    assert report.failed("ModelOutputError", "NaN").limit_reached
    failing = report.report("active", {}, dropped=4)
    assert failing.level == health.ERROR and "NaN" in failing.message and failing.values["last error"] == "NaN"
    report.published(0.05)  # a frame went through: the model works again
    report.image_timeout_s = 0.0
    assert report.report("active", {}, dropped=4).level == health.WARN  # no image "for 0 s"
    assert report.report("unconfigured", {}, dropped=4).level == health.OK


def test_mask_window_per_mask_mode():
    import numpy as np

    from meres_core.inference import SegmentationResult
    from meres_ros.pipeline import Target, mask_window

    mask = np.zeros((20, 30), bool)
    mask[5:8, 10:14] = True  # the target part: bbox (10, 5, 13, 7)
    mask[6, 20] = True  # another part, outside the bbox
    found = Target(SegmentationResult("x", True, 0.9, mask, mask.astype(np.float32), (10, 5, 13, 7), (11.5, 6.0)))
    full, x, y = mask_window(found, "full")
    assert full.shape == (20, 30) and (x, y) == (0, 0) and (full == 255).sum() == 13
    cropped, x, y = mask_window(found, "cropped")
    assert cropped.shape == (3, 4) and (cropped == 255).all() and (x, y) == (10, 5)
    assert mask_window(found, "none")[0].shape == (0, 0)
    absent = Target(SegmentationResult("x", False, 0.1, mask, mask.astype(np.float32), None, None))
    assert mask_window(absent, "cropped") == (pytest.approx(np.zeros((0, 0))), 0, 0)
    assert not mask_window(absent, "full")[0].any()  # an absent target's full mask is all 0


def test_one_shot_requests_wait_for_a_frame_received_after_them():
    from meres_ros.streams import OneShot, OneShotQueue

    queue = OneShotQueue()
    queue.add(OneShot(7, "the red mug", requested_at=10.0))
    queue.add(OneShot(8, "the bowl", requested_at=12.0))
    assert queue.take_due(9.5) == []  # a frame already waiting when they asked
    assert [r.request_id for r in queue.take_due(11.0)] == [7]
    assert queue.take_due(11.5) == []  # taken once
    assert not queue.discard(7) and queue.discard(8)  # 7 was taken by the worker; 8 times out
    assert queue.take_due(100.0) == [] and queue.take_all() == []


def paced(period: float, model: float) -> FramePacer:
    """A pacer that has seen a camera at `period` s (arrivals up to t = 1.0) and a model taking `model` s."""
    pacer = FramePacer()
    for i in range(10):
        pacer.arrived(1.0 - (9 - i) * period)
    for _ in range(5):
        pacer.answered(model)
    return pacer


def test_frame_pacer_waits_for_the_next_frame_only_when_that_answers_fresher():
    """30 Hz camera, 40 ms model, results at most 2 periods (66.7 ms) old."""
    period = 1 / 30
    pacer = paced(period, 0.040)
    assert pacer.period_s() == pytest.approx(period) and pacer.model_s() == pytest.approx(0.040)
    # The newest frame arrived 10 ms ago: 50 ms at its answer, in time.
    assert pacer.wait_s(received_at=1.0, now=1.010, max_age_periods=2.0) == 0.0
    # It arrived 30 ms ago: 70 ms at its answer. The next one is due 3.3 ms from now: wait for it (and some jitter).
    wait = pacer.wait_s(received_at=1.0, now=1.030, max_age_periods=2.0)
    assert period - 0.030 < wait <= 1.25 * period - 0.030 + 1e-9
    assert pacer.wait_s(received_at=1.0, now=1.030, max_age_periods=0.0) == 0.0  # off
    assert pacer.wait_s(received_at=1.0, now=1.030, max_age_periods=3.0) == 0.0  # a looser limit
    # A model slower than the limit: no frame can be in time, so none is skipped (the rate is kept).
    assert paced(period, 0.080).wait_s(received_at=1.0, now=1.030, max_age_periods=2.0) == 0.0
    # The camera stopped (nothing for more than two periods): its last frame is answered.
    assert pacer.wait_s(received_at=1.0, now=1.0 + 3 * period, max_age_periods=2.0) == 0.0
    # Too little history to know the camera or the model: answer.
    assert FramePacer().wait_s(received_at=1.0, now=1.030, max_age_periods=2.0) == 0.0
