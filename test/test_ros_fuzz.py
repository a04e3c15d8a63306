"""Ten thousand malformed messages over every topic a real meres_node subscribes to, dropouts of each
input and a restarting expression publisher: the node stays up, says what was wrong, and then answers
valid frames correctly.

The fuzz seed is printed (shown with a failure); MERES_FUZZ_SEED=<seed> replays that run,
MERES_FUZZ_MESSAGES=<n> changes how many random malformed messages are sent (default 10,000).
"""
import math
import os
import random
import time

import numpy as np
import pytest
import rclpy
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header, String

from diagnostic_msgs.msg import DiagnosticStatus

from meres_core.inference import Decision, Segmenter
from meres_ros.client import MeresClient, NodeProcess
from meres_ros.conversions import numpy_to_image
from meres_ros.interface import EXPRESSION_HISTORY_QOS, EXPRESSION_QOS

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


ENCODINGS = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16UC1", "32FC1", "yuv422", "8UC3", "", "jpeg"]
ODD_NUMBERS = [0, 1, 3, 7, 2**31 - 1, 2**32 - 1, 100_000]  # uint32 fields: nothing negative goes over the wire
ODD_FLOATS = [0.0, -1.0, 1e-300, 1e300, math.nan, math.inf, -math.inf, 500.0]


def random_image(rng: random.Random) -> Image:
    """An image header and data that disagree in a random way (or, rarely, agree)."""
    width, height = rng.choice([WIDTH, 1, 0, rng.randint(1, 300), rng.choice(ODD_NUMBERS)]), \
        rng.choice([HEIGHT, 1, 0, rng.randint(1, 300), rng.choice(ODD_NUMBERS)])
    msg = Image(width=min(width, 2**32 - 1), height=min(height, 2**32 - 1), encoding=rng.choice(ENCODINGS),
                is_bigendian=rng.randint(0, 1))
    msg.step = min(rng.choice([width * 3, width, width * 2, width * 4, rng.randint(0, 5000), rng.choice(ODD_NUMBERS)]),
                   2**32 - 1)
    msg.data = rng.randbytes(rng.choice([0, 1, 17, WIDTH * HEIGHT, WIDTH * HEIGHT * 3, rng.randint(0, 50_000)]))
    return msg


def random_camera_info(rng: random.Random) -> CameraInfo:
    msg = CameraInfo(width=rng.choice([WIDTH, 0, 640, rng.choice(ODD_NUMBERS)]) % 2**32,
                     height=rng.choice([HEIGHT, 0, 480, rng.choice(ODD_NUMBERS)]) % 2**32,
                     distortion_model=rng.choice(["plumb_bob", "rational_polynomial", "equidistant", "", "x" * 50]))
    msg.k = [rng.choice([*ODD_FLOATS, rng.uniform(-1000, 1000)]) for _ in range(9)]
    msg.d = [rng.choice([*ODD_FLOATS, rng.uniform(-1, 1)]) for _ in range(rng.choice([0, 3, 4, 5, 8, 14, 100]))]
    msg.p = [rng.choice([*ODD_FLOATS, rng.uniform(-1000, 1000)]) for _ in range(12)]
    return msg


def random_expression(rng: random.Random) -> str:
    alphabet = "ab ;\t\n\x00\x07é红🙂\u202e\ud7ff"
    return rng.choice([
        "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))),
        ";" * rng.randint(1, 500),
        "x" * rng.randint(1000, 50_000),
        "; ".join("thing" for _ in range(rng.randint(9, 300))),
    ])


def camera_info(k=K, width=WIDTH, height=HEIGHT) -> CameraInfo:
    return CameraInfo(width=width, height=height, k=list(k))


def without_interfaces(folder) -> str:
    """A PYTHONPATH on which meres_ros_interfaces fails to import, as on a machine that never built it."""
    shadow = folder / "meres_ros_interfaces"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('meres_ros_interfaces hidden by the test')\n")
    return os.pathsep.join(p for p in [str(folder), os.environ.get("PYTHONPATH", "")] if p)


def test_fuzz_dropouts_restarts_then_valid_frames(tmp_path):
    """Also the node without its custom messages: standard topics only, ~/result disabled."""
    seed = int(os.environ.get("MERES_FUZZ_SEED", random.randrange(2**31)))
    messages = int(os.environ.get("MERES_FUZZ_MESSAGES", 10_000))
    print(f"fuzz seed {seed}: replay with MERES_FUZZ_SEED={seed}")
    rng = random.Random(seed)
    domain = rng.randint(100, 200)
    env = {"ROS_DOMAIN_ID": str(domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
           "PYTHONPATH": without_interfaces(tmp_path)}
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    parameters = {"preset": "tiny", "seed": 0, "device": "cpu", "precision": "fp32", "max_rate": 0.0,
                  "presence_threshold": 0.0, "problem_log_period": 60.0, "image_timeout": 1.0}
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

                # Random malformed messages on every subscribed topic, as fast as they go.
                topics = [
                    lambda: send_image(random_image(rng)),
                    lambda: client.depth_pub.publish(with_stamp(random_image(rng), client.next_header("camera"))),
                    lambda: client.camera_info_pub.publish(with_stamp(random_camera_info(rng),
                                                                      client.next_header("camera"))),
                    lambda: sentences.publish(String(data=random_expression(rng))),
                ]
                started = time.monotonic()
                for index in range(messages):
                    rng.choice(topics)()
                    sent += 1
                    if index % 200 == 0:
                        client.spin(0.01)
                        assert process.alive(), f"fuzz seed {seed}: node died after {sent} messages\n{process.log()}"
                print(f"fuzz: {messages} random malformed messages in {time.monotonic() - started:.1f} s")
                # The named defects: each must be reported with its reason.
                for _ in range(60):
                    for text in odd_expressions():
                        sentences.publish(String(data=text))
                    for send in callback_cases.values():
                        send()
                    sent += len(odd_expressions()) + len(callback_cases)
                    client.spin(0.01)
                assert sent >= messages
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
                        client.request(scene(), depth=depth, camera_info=info)
                        sent += 3
                        if reason in process.log():
                            break
                assert process.alive(), process.log()

                restart_expression_publisher(context, process)
                dropouts(client, process)

                # Valid input again: correct answers, 3D included.
                client.set_expression("the red disc")
                answer = client.request(scene(), depth=valid_depth, camera_info=camera_info())
                reference = Segmenter.from_preset("tiny", seed=0, device="cpu", precision="fp32")
                expected = reference.segment(scene(), "the red disc",
                                             Decision(reference.decision.mask_threshold, 0.0))[0]
                np.testing.assert_array_equal(answer.mask, expected.mask)
                centroid = wait_for_centroid(client, answer.stamp)
                assert centroid.point.z == pytest.approx(1.2)
                assert centroid.point.x == pytest.approx((expected.centroid[0] - 63.5) * 1.2 / 110.0, abs=1e-4)
            finally:
                client.destroy()
            assert process.alive(), process.log()
            log = process.log()
    finally:
        rclpy.try_shutdown(context=context)

    print(f"fuzz: {sent} messages in all, seed {seed}")
    assert "Traceback" not in log, log
    assert "~/result and ~/results are disabled" in log
    expected_reasons = {
        "[image]": ["unsupported encoding", "is a depth encoding", "step", "data has", "empty image",
                    "side limit", "byte limit"],
        "[expression]": ["only separators and whitespace", "expressions in one message"],
        "[depth]": ["depth must be one of", "registered to the color image", "no valid depth inside the mask"],
        "[camera_info]": ["focal lengths must be positive", "must be finite", "CameraInfo is for 640x480"],
        "[sync]": ["no depth within", "no camera_info within"],
        "[stamp]": ["went back"],
    }
    lines = log.splitlines()
    for kind, reasons in expected_reasons.items():
        for reason in reasons:
            assert any(kind in line and reason in line for line in lines), f"no {kind} warning with {reason!r}:\n{log}"


def with_stamp(msg, header):
    msg.header = header
    return msg


def wait_for_centroid(client: MeresClient, stamp: int, timeout: float = 30.0):
    """Without ~/result (not built here) the client cannot know a 3D point is coming: wait for it."""
    deadline = time.monotonic() + timeout
    while stamp not in client.centroids:
        assert time.monotonic() < deadline, "no ~/centroid for a frame with valid depth"
        client.spin(0.05)
    return client.centroids[stamp]


def restart_expression_publisher(context, process, restarts: int = 6) -> None:
    """An operator process that comes and goes, volatile or latched, each time with a new sentence."""
    for index in range(restarts):
        qos = EXPRESSION_QOS if index % 2 == 0 else EXPRESSION_HISTORY_QOS
        operator = MeresClient(context=context, name=f"operator_{index}", expression_qos=qos, with_results=False)
        try:
            deadline = time.monotonic() + 60
            while operator.expression_pub.get_subscription_count() == 0:  # what `ros2 topic pub` waits for too
                assert time.monotonic() < deadline, process.log()
                operator.spin(0.05)
            operator.set_expression(f"the red disc number {index}")
        finally:
            operator.destroy()
    assert process.alive(), process.log()


def dropouts(client: MeresClient, process) -> None:
    """Depth, then CameraInfo, then the camera itself go silent and come back."""
    client.set_expression("the red disc")
    depth = np.full((HEIGHT, WIDTH), 1200, np.uint16)
    assert answer_in_3d(client, depth, camera_info()).point.z == pytest.approx(1.2)
    # No depth, then no CameraInfo: answers go on, without 3D, and the node says why.
    for missing, frame in (("no depth within", dict(camera_info=camera_info())), ("no camera_info within", dict(depth=depth))):
        deadline = time.monotonic() + 60
        while missing not in process.log():
            assert time.monotonic() < deadline, process.log()
            client.request(scene(), **frame)
    status = client.wait_for_diagnostics(lambda s: s.level == DiagnosticStatus.WARN)  # camera silent (> 1 s)
    assert "no image" in status.message
    assert answer_in_3d(client, depth, camera_info()).point.z == pytest.approx(1.2)  # all back
    # The camera streams again: with image_timeout 1 s, a status published late (a loaded machine) after a
    # single frame would find the camera silent once more.
    client.wait_for_diagnostics(lambda s: s.level == DiagnosticStatus.OK, between=lambda: client.publish_frame(scene()))
    assert process.alive(), process.log()


def answer_in_3d(client: MeresClient, depth, info, tries: int = 20):
    """The first frames after a dropout may be answered before their depth arrives: ask until one is in 3D."""
    for _ in range(tries):
        answer = client.request(scene(), depth=depth, camera_info=info)
        client.spin(0.2)
        if answer.stamp in client.centroids:
            return client.centroids[answer.stamp]
    raise AssertionError(f"no 3D centroid in {tries} frames with valid depth")
