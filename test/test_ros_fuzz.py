"""Over a thousand malformed messages at a real meres_node: it stays up, says what was wrong, and
then answers valid frames correctly."""
import os
import random
import time

import numpy as np
import pytest
import rclpy
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header, String

from meres_core.inference import Segmenter
from meres_ros.client import MeresClient, NodeProcess
from meres_ros.conversions import numpy_to_image

HEIGHT, WIDTH = 96, 128
K = [110.0, 0.0, 63.5, 0.0, 100.0, 47.5, 0.0, 0.0, 1.0]


def scene() -> np.ndarray:
    import cv2

    img = np.full((HEIGHT, WIDTH, 3), 30, np.uint8)
    cv2.circle(img, (32, 48), 18, (220, 30, 30), -1)
    return img


def bad_images(rng: random.Random) -> dict[str, Image]:
    """Color images whose header and data disagree, by the reason the node must give."""
    good = numpy_to_image(scene(), "rgb8")

    def variant(**fields):
        msg = Image(height=good.height, width=good.width, encoding=good.encoding, step=good.step, data=good.data)
        for name, value in fields.items():
            setattr(msg, name, value)
        return msg

    junk_encoding = "".join(rng.choice("abcxyz0123456789_") for _ in range(rng.randint(0, 12)))
    return {
        "unsupported encoding": rng.choice([
            variant(encoding=junk_encoding),
            variant(encoding=rng.choice(["yuv422", "jpeg", "bayer_rggb8", "8UC3", "64FC1"]))]),
        "is a depth encoding": variant(encoding=rng.choice(["16UC1", "32FC1"])),
        # rgb8 data announced as rgba8 (lying), or a step shorter than a row
        "smaller than width x bytes per pixel": rng.choice([
            variant(encoding="rgba8"), variant(step=rng.randint(1, WIDTH * 3 - 1))]),
        "data has": rng.choice([
            variant(step=WIDTH * 3 + rng.randint(1, 64)), variant(data=bytes(rng.randint(0, 1000)))]),
        "empty image": rng.choice([variant(height=0), variant(width=0)]),
        "side limit": variant(width=rng.randint(20_000, 2**31 - 1), step=0),
        "byte limit": variant(height=15_000, width=15_000, encoding="rgba8", step=60_000),
    }


def odd_expressions() -> list[str]:
    """Sentences the node must take without trouble (the empty one clears the target)."""
    return [
        "",
        "x" * 10_000,
        "der rote Becher links vom Laptop — ☕ 红色的杯子 كوب أحمر",
        "e\u0301\u0301\u0301 combining marks \U0001F600",
        "\x07\x1b[31m control characters",
    ]


def camera_info(k=K, width=WIDTH, height=HEIGHT) -> CameraInfo:
    return CameraInfo(width=width, height=height, k=list(k))


def without_interfaces(folder) -> str:
    """A PYTHONPATH on which meres_ros_interfaces fails to import, as on a machine that never built it."""
    shadow = folder / "meres_ros_interfaces"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('meres_ros_interfaces hidden by the test')\n")
    return os.pathsep.join(p for p in [str(folder), os.environ.get("PYTHONPATH", "")] if p)


def test_fuzz_then_valid_frames(tmp_path):
    """Also the node without its custom messages: standard topics only, ~/result disabled."""
    rng = random.Random(1234)
    domain = rng.randint(100, 200)
    env = {"ROS_DOMAIN_ID": str(domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
           "PYTHONPATH": without_interfaces(tmp_path)}
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    parameters = {"preset": "tiny", "seed": 0, "device": "cpu", "precision": "fp32", "max_rate": 0.0,
                  "presence_threshold": 0.0, "problem_log_period": 60.0}
    sent = 0
    try:
        with NodeProcess(parameters, env=env) as process:
            client = MeresClient(context=context, with_results=False)
            # Deep reliable history, so fuzzed sentences are not overwritten before delivery.
            sentences = client.node.create_publisher(String, "/referring_expression", QoSProfile(
                depth=1000, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL))
            try:
                assert client.wait_for_node(90), process.log()

                def send_image(msg: Image) -> None:
                    msg.header = client.next_header("camera")
                    client.image_pub.publish(msg)

                def stamp_goes_back() -> None:  # a bag that restarted
                    client.publish_frame(scene())
                    client.spin(0.02)
                    client.publish_frame(scene(), header=Header(frame_id="camera"))

                bad_k = {"focal lengths must be positive": [[0.0] + K[1:], K[:4] + [0.0] + K[5:]],
                         "must be finite": [[float("nan")] + K[1:]]}
                callback_cases = {  # reason -> sends one message that has it
                    **{reason: (lambda reason=reason: send_image(bad_images(rng)[reason])) for reason in bad_images(rng)},
                    **{reason: (lambda ks=ks: client.camera_info_pub.publish(camera_info(k=rng.choice(ks))))
                       for reason, ks in bad_k.items()},
                    "depth must be one of": lambda: client.depth_pub.publish(
                        numpy_to_image(scene(), "rgb8", client.next_header("camera"))),
                    "went back": stamp_goes_back,
                    "only separators and whitespace": lambda: sentences.publish(
                        String(data=rng.choice([" \t\n ", "; ; ;"]))),
                    "expressions in one message": lambda: sentences.publish(String(data=";".join(
                        f"thing {i}" for i in range(rng.randint(9, 200))))),
                }

                # The burst: a thousand bad messages and odd but valid sentences, as fast as they go.
                for _ in range(60):
                    for text in odd_expressions():
                        sentences.publish(String(data=text))
                    for send in callback_cases.values():
                        send()
                    sent += len(odd_expressions()) + len(callback_cases)
                    client.spin(0.01)
                assert sent >= 1000
                # The image subscription keeps only the newest frame, so a burst hides most of its
                # messages from the node: resend each defect until the node has named it.
                deadline = time.monotonic() + 60
                pending = dict(callback_cases)
                while pending and time.monotonic() < deadline:
                    log = process.log()
                    pending = {reason: send for reason, send in pending.items() if reason not in log}
                    for send in pending.values():
                        send()
                        client.spin(0.02)
                assert not pending, f"never reported: {sorted(pending)}\n{process.log()}"
                client.set_expression("the red disc")

                valid_depth = np.full((HEIGHT, WIDTH), 1200, np.uint16)
                # Valid color with depth or CameraInfo that only the worker can judge. Their best-effort
                # depth may be lost, so ask until the node has seen and named the problem.
                worker_cases = [
                    (np.full((HEIGHT, WIDTH), np.nan, np.float32), camera_info(), "no valid depth inside the mask"),
                    (np.zeros((HEIGHT, WIDTH), np.uint16), camera_info(), "no valid depth inside the mask"),
                    (np.full((HEIGHT, WIDTH), 65535, np.uint16), camera_info(), "no valid depth inside the mask"),
                    (np.full((HEIGHT // 2, WIDTH // 2), 1200, np.uint16), camera_info(), "registered to the color"),
                    (valid_depth, camera_info(width=640, height=480), "CameraInfo is for 640x480"),
                ]
                for depth, info, reason in worker_cases:
                    for _ in range(10):
                        answer = client.request(scene(), depth=depth, camera_info=info)
                        assert answer.centroid.point.z == 0.0  # pixel centroid: no metric depth from these
                        sent += 3
                        if reason in process.log():
                            break
                assert process.alive(), process.log()

                # Valid input again: correct answers, 3D included.
                client.set_expression("the red disc")
                answer = client.request(scene(), depth=valid_depth, camera_info=camera_info())
                reference = Segmenter.from_preset("tiny", seed=0, device="cpu", precision="fp32")
                reference.presence_threshold = 0.0
                expected = reference.segment(scene(), "the red disc")[0]
                np.testing.assert_array_equal(answer.mask, expected.mask)
                assert answer.centroid.point.z == pytest.approx(1.2)
                assert answer.centroid.point.x == pytest.approx((expected.centroid[0] - 63.5) * 1.2 / 110.0, abs=1e-4)
            finally:
                client.destroy()
            assert process.alive(), process.log()
            log = process.log()
    finally:
        rclpy.try_shutdown(context=context)

    assert "Traceback" not in log, log
    assert "~/result and ~/results are disabled" in log
    expected_reasons = {
        "[image]": ["unsupported encoding", "is a depth encoding", "step", "data has", "empty image",
                    "side limit", "byte limit"],
        "[expression]": ["only separators and whitespace", "expressions in one message"],
        "[depth]": ["depth must be one of", "registered to the color image", "no valid depth inside the mask"],
        "[camera_info]": ["focal lengths must be positive", "must be finite", "CameraInfo is for 640x480"],
        "[stamp]": ["went back"],
    }
    lines = log.splitlines()
    for kind, reasons in expected_reasons.items():
        for reason in reasons:
            assert any(kind in line and reason in line for line in lines), f"no {kind} warning with {reason!r}:\n{log}"
