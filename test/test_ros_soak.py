"""Soak: the demo model behind the real node, fed 30 Hz color + depth + CameraInfo for minutes.

Checks: no crash (and a clean exit), node RSS growth under 5 % after warm-up, result age bounded,
every published message answering a frame that was sent. The default suite runs a short soak; the
10-minute one is marked slow:

    MERES_SOAK_SECONDS=600 python -m pytest -m slow -s test/test_ros_soak.py

Figures are printed (-s shows them); the README's Reliability section quotes a run.
"""
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from geometry_msgs.msg import PointStamped
from sensor_msgs.msg import CameraInfo, Image

from meres_core.checkpoint import resolve_checkpoint
from meres_ros.client import MeresClient, NodeProcess
from meres_ros.interface import CENTROID_TOPIC, MASK_TOPIC, NODE_NAME, output_topic
from meres_ros.streams import stamp_ns

WIDTH, HEIGHT = 320, 240
pytestmark = pytest.mark.skipif(not resolve_checkpoint("demo").is_file(), reason="the demo checkpoint is not here")


def scene() -> np.ndarray:
    import cv2

    img = np.full((HEIGHT, WIDTH, 3), 40, np.uint8)
    cv2.circle(img, (90, 120), 40, (220, 30, 30), -1)
    cv2.rectangle(img, (200, 80), (270, 160), (30, 180, 60), -1)
    return img


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def soak(seconds: float, rate_hz: float = 30.0, warmup_s: float = 20.0) -> dict:
    domain = random.randint(100, 200)
    env = {"ROS_DOMAIN_ID": str(domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    parameters = {"checkpoint": "demo", "device": "cpu", "max_rate": 0.0}
    rgb, depth = scene(), np.full((HEIGHT, WIDTH), 900, np.uint16)
    info = CameraInfo(width=WIDTH, height=HEIGHT, k=[300.0, 0.0, 160.0, 0.0, 300.0, 120.0, 0.0, 0.0, 1.0])
    sent: dict[int, float] = {}  # stamp -> monotonic send time
    unmatched, answered, ages = [], [], []
    rss = []
    try:
        with NodeProcess(parameters, env=env) as process:
            client = MeresClient(context=context, with_results=False)

            def check(msg) -> None:
                stamp = stamp_ns(msg.header.stamp)
                if stamp not in sent:
                    unmatched.append(stamp)
                elif isinstance(msg, Image):
                    answered.append(stamp)
                    ages.append(time.monotonic() - sent[stamp])

            client.node.create_subscription(Image, output_topic(NODE_NAME, MASK_TOPIC), check, 50)
            client.node.create_subscription(PointStamped, output_topic(NODE_NAME, CENTROID_TOPIC), check, 50)
            try:
                assert client.wait_for_node(180), process.log()
                client.set_expression("the red circle; the green square")
                period = 1.0 / rate_hz
                started = time.monotonic()
                next_frame, next_sample = started, started + warmup_s
                while time.monotonic() - started < warmup_s + seconds:
                    header = client.publish_frame(rgb, depth, info)
                    sent[stamp_ns(header.stamp)] = time.monotonic()
                    next_frame += period
                    if time.monotonic() >= next_sample:
                        assert process.alive(), process.log()
                        rss.append(rss_kib(process.pid()))
                        next_sample += max(seconds / 20, 1.0)
                    client.spin(max(next_frame - time.monotonic(), 0.0))
                client.spin(2.0)
            finally:
                client.destroy()
            code = process.stop(signal.SIGINT)
            log = process.log()
    finally:
        rclpy.try_shutdown(context=context)
    in_soak = [a for a, t in zip(ages, answered) if sent[t] - min(sent.values()) >= warmup_s] or ages
    figures = {
        "seconds": seconds, "frames_sent": len(sent), "frames_answered": len(answered),
        "input_rate_hz": round(len(sent) / (warmup_s + seconds), 1),
        "answer_rate_hz": round(len(answered) / (warmup_s + seconds), 2),
        "result_age_s_p50": round(float(np.percentile(in_soak, 50)), 3) if in_soak else None,
        "result_age_s_max": round(max(in_soak), 3) if in_soak else None,
        "rss_mib_after_warmup": round(rss[0] / 1024, 1), "rss_mib_end": round(rss[-1] / 1024, 1),
        "rss_growth_pct": round(100.0 * (rss[-1] - rss[0]) / rss[0], 2),
        "unmatched_stamps": len(unmatched), "exit_code": code,
    }
    print(f"soak: {figures}")
    assert code == 0 and "Traceback" not in log, log
    assert not unmatched, f"published for stamps never sent: {unmatched[:5]}"
    assert figures["frames_answered"] > 0
    assert figures["rss_growth_pct"] < 5.0, figures
    # Latest-frame-only: a result is at most one model call old, never a growing backlog.
    assert figures["result_age_s_max"] < 30.0, figures
    return figures


def test_soak_short():
    soak(float(os.environ.get("MERES_SOAK_SHORT_SECONDS", 40)))


@pytest.mark.slow
def test_soak_ten_minutes():
    soak(float(os.environ.get("MERES_SOAK_SECONDS", 600)))
