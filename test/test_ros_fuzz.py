"""Over a thousand malformed messages at a real meres_node: it stays up, says what was wrong, and
then answers valid frames correctly."""
import os
import random

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


def bad_images(rng: random.Random):
    """(description, Image) pairs whose header or data is inconsistent."""
    good = numpy_to_image(scene(), "rgb8")

    def variant(**fields):
        msg = Image(height=good.height, width=good.width, encoding=good.encoding, step=good.step, data=good.data)
        for name, value in fields.items():
            setattr(msg, name, value)
        return msg

    junk_encoding = "".join(rng.choice("abcxyz0123456789_") for _ in range(rng.randint(0, 12)))
    return [
        variant(encoding=junk_encoding),
        variant(encoding=rng.choice(["yuv422", "jpeg", "bayer_rggb8", "8UC3", "64FC1"])),
        variant(encoding=rng.choice(["mono16", "32FC1", "rgba8"])),  # lying: the data is rgb8
        variant(encoding="16UC1"),  # a depth image on the color topic
        variant(step=rng.randint(1, WIDTH * 3 - 1)),
        variant(step=WIDTH * 3 + rng.randint(1, 64)),  # data too short for that step
        variant(data=bytes(rng.randint(0, 1000))),
        variant(height=0) if rng.random() < 0.5 else variant(width=0),
        variant(width=rng.randint(20_000, 2**31 - 1), step=0),
        variant(height=15_000, width=15_000, encoding="rgba8", step=60_000),
    ]


def bad_expressions(rng: random.Random) -> list[str]:
    return [
        "",
        " \t\n ",
        "x" * 10_000,
        "der rote Becher links vom Laptop — ☕ 红色的杯子 كوب أحمر",
        "e\u0301\u0301\u0301 combining marks \U0001F600",
        "; ; ;",
        ";".join(f"thing {i}" for i in range(rng.randint(9, 200))),  # more than max_expressions
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
            raw_images = client.image_pub
            try:
                assert client.wait_for_node(90), process.log()
                for _ in range(15):
                    for text in bad_expressions(rng):
                        sentences.publish(String(data=text))
                        sent += 1
                        client.spin(0.02)  # the node keeps only the latest sentence: let each one arrive
                client.set_expression("the red disc")

                valid_depth = np.full((HEIGHT, WIDTH), 1200, np.uint16)
                for _ in range(90):  # checked in the callbacks: a burst is fine
                    for msg in bad_images(rng):
                        msg.header = client.next_header("camera")
                        raw_images.publish(msg)
                    bad_k = rng.choice([[0.0] + K[1:], K[:4] + [0.0] + K[5:], [float("nan")] + K[1:]])
                    client.camera_info_pub.publish(camera_info(k=bad_k))
                    client.depth_pub.publish(numpy_to_image(scene(), "rgb8", client.next_header("camera")))
                    client.publish_frame(scene(), header=Header(frame_id="camera"))  # stamp 0: a bag restarted
                    sent += 10 + 3
                    client.spin(0.01)
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
                assert sent >= 1000
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
