"""meres_node as a real process, driven over real topics from this process.

One node serves the output tests (same checkpoint file here and there, so the
masks must be identical); the lifecycle and parameter tests start their own.
Nothing here assumes that a best-effort frame arrives: `MeresClient.request`
resends until answered.
"""
import contextlib
import math
import random
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticStatus
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.srv import GetParameters, SetParameters
from rclpy.parameter import Parameter, parameter_value_to_python
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo
from std_msgs.msg import Header, String

try:  # Iron and later
    from rclpy.event_handler import PublisherEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import PublisherEventCallbacks

from meres_core.checkpoint import save_checkpoint
from meres_core.inference import Decision, Segmenter
from meres_ros.client import MeresClient, NodeProcess, config_file
from meres_ros.conversions import image_to_numpy
from meres_ros.geometry import PinholeCamera
from meres_ros.interface import EXPRESSION_HISTORY_QOS, EXPRESSION_QOS
from meres_ros.streams import stamp_ns

HOOKS = [str(Path(__file__).resolve().parent / "node_hooks.py")]
RELIABLE = QoSProfile(depth=1)  # reliable images, where a test needs every frame it sends to arrive

FX, FY, CX, CY = 110.0, 100.0, 63.5, 47.5


def scene_image() -> np.ndarray:
    import cv2

    img = np.full((96, 128, 3), 30, np.uint8)
    cv2.circle(img, (32, 48), 18, (220, 30, 30), -1)
    cv2.rectangle(img, (80, 30), (112, 66), (30, 60, 220), -1)
    return img


def camera_info() -> CameraInfo:
    return CameraInfo(width=128, height=96, k=[FX, 0.0, CX, 0.0, FY, CY, 0.0, 0.0, 1.0])


@pytest.fixture(scope="module")
def ros_context(monkeypatch_module):
    domain = random.randint(100, 200)
    monkeypatch_module.setenv("ROS_DOMAIN_ID", str(domain))
    monkeypatch_module.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    yield context
    rclpy.try_shutdown(context=context)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    segmenter = Segmenter.from_preset("tiny", seed=0, device="cpu", precision="fp32")
    return save_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.pt", segmenter.model, segmenter.cfg, {"test": True})


def reference_segmentation(checkpoint, rgb, expression, presence_threshold=0.0):
    """What the node must answer: the same checkpoint, in this process, with the node's thresholds."""
    reference = Segmenter.from_checkpoint(checkpoint, device="cpu", precision="fp32")
    decision = Decision(reference.decision.mask_threshold, presence_threshold)
    return reference.segment(rgb, expression, decision)[0]


def node_parameters(checkpoint, **overrides):
    # backend torch, not the default auto: past its 50th frame a node would switch to a compiled package
    # midway through the module (auto is tested in test_compiled.py).
    return {"checkpoint": str(checkpoint), "device": "cpu", "precision": "fp32", "threads": 1, "max_rate": 0.0,
            "presence_threshold": 0.0, "backend": "torch", **overrides}


@pytest.fixture(scope="module")
def node(ros_context, checkpoint):
    with NodeProcess(node_parameters(checkpoint)) as process, \
            connected(process, MeresClient(context=ros_context)) as client:
        yield process, client


@contextlib.contextmanager
def connected(process: NodeProcess, client: MeresClient):
    """`client` once the node is active; destroyed afterwards, when the node must still be alive."""
    try:
        assert client.wait_for_node(90), process.log()
        yield client
    finally:
        client.destroy()
    assert process.alive(), process.log()


def call(client: MeresClient, service_type, name: str, request, timeout: float = 30.0):
    service = client.node.create_client(service_type, name)
    try:
        assert service.wait_for_service(timeout_sec=timeout), f"{name} not available"
        future = service.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            client.spin(0.05)
        assert future.done(), f"{name} did not answer"
        return future.result()
    finally:
        client.node.destroy_client(service)


def lifecycle_state(client: MeresClient, node_name: str) -> int:
    return call(client, GetState, f"/{node_name}/get_state", GetState.Request()).current_state.id


def change_state(client: MeresClient, node_name: str, transition: int) -> bool:
    request = ChangeState.Request(transition=Transition(id=transition))
    return call(client, ChangeState, f"/{node_name}/change_state", request).success


def own_node(name: str, parameters: dict, params_files=()):
    """A node beside the module's shared one: its own name and image topic, so the two do not mix."""
    return NodeProcess(parameters, params_files=params_files, node_name=name, remappings={"image": f"{name}/image"})


def test_header_is_copied_and_mask_equals_segmenter(node, checkpoint):
    _, client = node
    client.set_expression("the red disc")
    rgb = scene_image()
    answer = client.request(rgb)
    assert answer.header.frame_id == "camera_color_optical_frame"
    assert stamp_ns(answer.header.stamp) == answer.stamp
    expected = reference_segmentation(checkpoint, rgb, "the red disc")
    assert answer.mask.shape == rgb.shape[:2]
    np.testing.assert_array_equal(answer.mask, expected.mask if expected.found else np.zeros_like(expected.mask))
    assert answer.result.expression == "the red disc"
    assert answer.result.score == pytest.approx(expected.score, abs=1e-6)
    if expected.found:  # no depth sent: the pixel centroid is in ~/result only
        assert (answer.result.centroid_u, answer.result.centroid_v) == pytest.approx(expected.centroid)
        assert not answer.result.centroid_3d_valid


def test_batched_expressions_answer_each(node, checkpoint):
    _, client = node
    client.set_expression("the blue square;  the red disc ")
    rgb = scene_image()
    answer = client.request(rgb)
    reference = Segmenter.from_checkpoint(checkpoint, device="cpu", precision="fp32")
    expected = reference.segment(rgb, ["the blue square", "the red disc"])
    np.testing.assert_array_equal(answer.mask, expected[0].mask)  # ~/mask: the first expression
    if answer.results is not None:
        assert [r.expression for r in answer.results.results] == ["the blue square", "the red disc"]
        for message, result in zip(answer.results.results, expected):
            np.testing.assert_array_equal(image_to_numpy(message.mask) > 0, result.mask)


def test_centroid_is_deprojected_with_the_robust_depth(node, checkpoint):
    _, client = node
    client.set_expression("the red disc")
    rgb = scene_image()
    depth_mm = np.full(rgb.shape[:2], 1500, np.uint16)
    depth_mm[::7, ::5] = 0  # holes: ignored
    depth_mm[0, :] = 9000  # a far border row: outside the eroded mask or outvoted by the median
    answer = client.request(rgb, depth=depth_mm, camera_info=camera_info())
    expected = reference_segmentation(checkpoint, rgb, "the red disc")
    assert expected.found, "the test scene must give a mask with these weights"
    u, v = expected.centroid
    by_hand = ((u - CX) * 1.5 / FX, (v - CY) * 1.5 / FY, 1.5)
    point = answer.centroid.point
    assert (point.x, point.y, point.z) == pytest.approx(by_hand, abs=1e-4)
    assert by_hand == pytest.approx(PinholeCamera.from_camera_info(camera_info()).deproject(u, v, 1.5))
    if answer.result is not None:
        assert answer.result.centroid_3d_valid and answer.result.depth == pytest.approx(1.5)


def test_burst_of_frames_builds_no_backlog(node):
    _, client = node
    client.set_expression("the red disc")
    client.request(scene_image())  # warm: the node answers
    first_stamp = client.next_header("burst").stamp
    sent = []
    for index in range(100):
        rgb = scene_image()
        rgb[0, 0, 0] = index
        sent.append(stamp_ns(client.publish_frame(rgb, frame_id="burst").stamp))
    answered = []
    quiet_since = time.monotonic()
    deadline = time.monotonic() + 60
    while time.monotonic() - quiet_since < 5.0 and time.monotonic() < deadline:
        client.spin(0.1)
        now_answered = sorted(s for s in client.masks if s >= stamp_ns(first_stamp))
        if now_answered != answered:
            answered, quiet_since = now_answered, time.monotonic()
    assert answered, "the node answered no frame of the burst"
    assert set(answered) <= set(sent)
    # Latest-frame-only: a handful of answers for 100 frames, the last one among the newest frames.
    assert len(answered) < 50
    assert answered[-1] >= sent[-10], f"last answer is frame {sent.index(answered[-1])} of 100"


def test_parameters_from_yaml_then_sigint_exits_cleanly(ros_context, checkpoint, tmp_path):
    overrides = tmp_path / "override.yaml"
    overrides.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "max_rate": 7.5, "presence_threshold": 0.42, "expressions": ["the red disc", "the blue square"],
        "image_reliability": "reliable"}}}))
    # The shipped file, then the test's file, then the checkpoint (NodeProcess's own): later values win.
    parameters = {"checkpoint": str(checkpoint), "device": "cpu"}
    with own_node("meres_yaml", parameters, [config_file("meres.yaml"), overrides]) as process:
        client = MeresClient(context=ros_context, node_name="meres_yaml", image_topic="meres_yaml/image",
                             image_qos=QoSProfile(depth=1))  # reliable
        try:
            assert client.wait_for_node(90), process.log()
            names = ["max_rate", "presence_threshold", "expressions", "image_reliability", "sync_tolerance", "checkpoint"]
            response = call(client, GetParameters, "/meres_yaml/get_parameters", GetParameters.Request(names=names))
            values = {n: parameter_value_to_python(v) for n, v in zip(names, response.values)}
            assert values["max_rate"] == 7.5 and values["presence_threshold"] == 0.42
            assert list(values["expressions"]) == ["the red disc", "the blue square"]
            assert values["image_reliability"] == "reliable"  # a reliable publisher is matched too
            assert values["sync_tolerance"] == 0.015  # from config/meres.yaml
            assert values["checkpoint"] == str(checkpoint)
            # (then the shared node's client's latched /referring_expression replaces them, as it should)
            assert "expressions from parameter expressions: 'the red disc; the blue square'" in process.log()
            answer = client.request(scene_image())  # reliable image QoS end to end
            assert answer.mask.shape == (96, 128)
        finally:
            client.destroy()
        code = process.stop(signal.SIGINT)
        log = process.log()
    assert code == 0, log
    assert "Traceback" not in log and "frames: received" in log


def test_corrupt_checkpoint_fails_configure_then_recovers(ros_context, checkpoint, tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 this is not a checkpoint" * 10)
    name = "meres_lifecycle"
    with own_node(name, node_parameters(corrupt)) as process:
        client = MeresClient(context=ros_context, node_name=name, image_topic=f"{name}/image")
        try:
            assert lifecycle_state(client, name) == State.PRIMARY_STATE_UNCONFIGURED, process.log()
            assert process.alive()
            assert "configure failed" in process.log() and str(corrupt) in process.log()
            request = SetParameters.Request(parameters=[Parameter("checkpoint", value=str(checkpoint)).to_parameter_msg()])
            assert call(client, SetParameters, f"/{name}/set_parameters", request).results[0].successful
            assert change_state(client, name, Transition.TRANSITION_CONFIGURE), process.log()
            assert change_state(client, name, Transition.TRANSITION_ACTIVATE), process.log()
            client.set_expression("the red disc")
            assert client.request(scene_image()).mask.shape == (96, 128)
            # Deactivate and clean up free the model; configure + activate bring it back.
            assert change_state(client, name, Transition.TRANSITION_DEACTIVATE)
            assert change_state(client, name, Transition.TRANSITION_CLEANUP)
            assert lifecycle_state(client, name) == State.PRIMARY_STATE_UNCONFIGURED
            assert change_state(client, name, Transition.TRANSITION_CONFIGURE)
            assert change_state(client, name, Transition.TRANSITION_ACTIVATE)
            assert client.request(scene_image()).mask.shape == (96, 128)
        finally:
            client.destroy()
        assert process.alive(), process.log()


# Issue 9 ---------------------------------------------------------------------------------------


def set_parameter(client: MeresClient, node_name: str, name: str, value):
    request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
    return call(client, SetParameters, f"/{node_name}/set_parameters", request).results[0]


def wait_for_expression(client: MeresClient, expected: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while client.active_expression != expected:
        assert time.monotonic() < deadline, f"the node holds {client.active_expression!r}, not {expected!r}"
        client.spin(0.05)


def wait_until_matched(publisher, timeout: float = 60.0, spin=None) -> None:
    deadline = time.monotonic() + timeout
    while publisher.get_subscription_count() == 0:
        assert time.monotonic() < deadline, "no subscription matched"
        spin(0.05)


def test_expressions_from_any_publisher(ros_context, checkpoint):
    """Default (volatile) publishers, `ros2 topic pub`'s (latched) and a latched sentence from before the node."""
    name, topic = "meres_qos", "/meres_qos/referring_expression"
    early = rclpy.create_node("early_operator", context=ros_context)
    early.create_publisher(String, topic, EXPRESSION_HISTORY_QOS).publish(String(data="the blue square"))
    parameters = node_parameters(checkpoint, image_reliability="reliable")
    with NodeProcess(parameters, node_name=name, remappings={"image": f"{name}/image", "/referring_expression": topic}) \
            as process:
        client = MeresClient(context=ros_context, node_name=name, image_topic=f"{name}/image", image_qos=RELIABLE,
                             expression_topic=f"{name}/unused")
        try:
            assert client.wait_for_node(90), process.log()
            wait_for_expression(client, "the blue square")  # latched before the node started
            assert client.request(scene_image()).result.expression == "the blue square"
            early.destroy_node()
            # With no latched publisher left, the node holds only its volatile subscription: a
            # default-QoS publisher matches it and has nothing to complain about.
            deadline = time.monotonic() + 60
            while client.node.count_subscribers(topic) != 1:
                assert time.monotonic() < deadline, process.log()
                client.spin(0.1)
            incompatible = []
            plain = client.node.create_publisher(String, topic, 10, event_callbacks=PublisherEventCallbacks(
                incompatible_qos=incompatible.append))
            wait_until_matched(plain, spin=client.spin)
            plain.publish(String(data="the red disc"))
            wait_for_expression(client, "the red disc")
            assert not incompatible
            assert client.request(scene_image()).result.expression == "the red disc"
            client.node.destroy_publisher(plain)
            # `ros2 topic pub --once` (reliable, transient local): waits for a match, publishes, exits.
            once = client.node.create_publisher(String, topic, EXPRESSION_HISTORY_QOS)
            wait_until_matched(once, spin=client.spin)
            once.publish(String(data="the blue square; the red disc"))
            client.spin(0.1)
            client.node.destroy_publisher(once)
            wait_for_expression(client, "the blue square; the red disc")
            # A latched publisher that publishes at once, before any discovery: its history reaches the node.
            hasty = rclpy.create_node("hasty_operator", context=ros_context)
            hasty.create_publisher(String, topic, EXPRESSION_HISTORY_QOS).publish(String(data="the red disc"))
            try:
                wait_for_expression(client, "the red disc")
            finally:
                hasty.destroy_node()
            # A volatile sentence after it is not undone by the latched one.
            plain = client.node.create_publisher(String, topic, EXPRESSION_QOS)
            wait_until_matched(plain, spin=client.spin)
            plain.publish(String(data="the blue square"))
            wait_for_expression(client, "the blue square")
            assert client.request(scene_image()).result.expression == "the blue square"
        finally:
            client.destroy()
        assert process.alive(), process.log()
        assert not [line for line in process.log().splitlines() if "incompatible" in line and "expression" in line]


def test_no_result_for_a_replaced_sentence_is_published(ros_context, checkpoint, tmp_path):
    """A frame in flight when the sentence changes is dropped: ~/mask never answers an old sentence late."""
    name = "meres_gate"
    env = {"MERES_TEST_GATE": str(tmp_path)}
    parameters = node_parameters(checkpoint, image_reliability="reliable")
    with NodeProcess(parameters, node_name=name, env=env, program=HOOKS,
                     remappings={"image": f"{name}/image", "/referring_expression": f"/{name}/expression_in"}) \
            as process:
        client = MeresClient(context=ros_context, node_name=name, image_topic=f"{name}/image", image_qos=RELIABLE,
                             expression_topic=f"/{name}/expression_in")
        try:
            assert client.wait_for_node(90), process.log()
            client.set_expression("the red disc")
            in_flight = stamp_ns(client.publish_frame(scene_image()).stamp)
            deadline = time.monotonic() + 60
            while not (tmp_path / "started").exists():  # the model has the frame, and waits
                assert time.monotonic() < deadline, process.log()
                client.spin(0.05)
            client.set_expression("the blue square")
            (tmp_path / "released").write_text("1000000")
            answer = client.request(scene_image())
            assert answer.result.expression == "the blue square"
            # Same reliable publisher, in order: a mask for the old frame would have come first.
            assert in_flight not in client.masks and in_flight not in client.results
            assert answer.stamp > in_flight
        finally:
            client.destroy()
        process.stop()
        assert "dropped for a newer sentence 1" in process.log()


def test_runs_on_the_humble_api(ros_context, checkpoint):
    """Humble's rclpy has no add_post_set_parameters_callback: live parameters still apply, checks still run."""
    name = "meres_humble"
    with NodeProcess(node_parameters(checkpoint), node_name=name, env={"MERES_TEST_HUMBLE": "1"}, program=HOOKS,
                     remappings={"image": f"{name}/image"}) as process:
        client = MeresClient(context=ros_context, node_name=name, image_topic=f"{name}/image")
        try:
            assert client.wait_for_node(90), process.log()
            assert "add_post_set_parameters_callback removed" in process.log()
            client.set_expression("the red disc")
            rgb = scene_image()
            expected = reference_segmentation(checkpoint, rgb, "the red disc")
            np.testing.assert_array_equal(client.request(rgb).mask, expected.mask)
            assert set_parameter(client, name, "mask_threshold", 1.0).successful  # no probability is above 1
            assert not client.request(rgb).mask.any()
            refused = set_parameter(client, name, "depth_min", 50.0)
            assert not refused.successful and "depth_min" in refused.reason
        finally:
            client.destroy()
        assert process.alive(), process.log()


def test_outputs_are_built_only_for_subscribers(ros_context, checkpoint, tmp_path):
    """~/mask, ~/result and ~/results each carry full-size masks: the node builds what something subscribes to."""
    from meres_ros.interface import RESULT_TOPIC, RESULTS_TOPIC, output_topic, result_message_types

    name = "meres_lazy"
    built = tmp_path / "images"  # node_hooks.py: one line per Image message the node builds
    with NodeProcess(node_parameters(checkpoint), node_name=name, env={"MERES_TEST_COUNT_IMAGES": str(built)},
                     program=HOOKS, remappings={"image": f"{name}/image"}) as process:
        client = MeresClient(context=ros_context, node_name=name, image_topic=f"{name}/image",
                             with_results=False)  # ~/mask and ~/centroid
        heard = {RESULT_TOPIC: set(), RESULTS_TOPIC: set()}

        def images_per_frame(until_heard: str | None = None) -> int:
            for _ in range(20):  # frames until the newest subscription is matched, then one more, counted
                answer = client.request(scene_image(), resend_after=30.0)
                if until_heard is None or answer.stamp in heard[until_heard]:
                    break
            else:
                raise AssertionError(f"{until_heard} not heard in 20 frames:\n{process.log()[-2000:]}")
            before = len(built.read_text().splitlines())
            answer = client.request(scene_image(), resend_after=30.0)
            client.spin(0.3)
            assert until_heard is None or answer.stamp in heard[until_heard]
            return len(built.read_text().splitlines()) - before

        try:
            assert client.wait_for_node(90), process.log()
            client.set_expression("the red disc; the blue square")
            assert images_per_frame() == 1  # ~/mask only
            result_type, array_type, _ = result_message_types()
            for topic, message_type, images in ((RESULT_TOPIC, result_type, 2), (RESULTS_TOPIC, array_type, 3)):
                client.node.create_subscription(message_type, output_topic(name, topic),
                                                lambda m, t=topic: heard[t].add(stamp_ns(m.header.stamp)), 10)
                # + the first sentence's mask in ~/result; then ~/results: both sentences' (one shared with ~/result)
                assert images_per_frame(until_heard=topic) == images
        finally:
            client.destroy()
        assert process.alive(), process.log()


def test_centroid_topic_carries_only_metres(node, checkpoint):
    _, client = node
    client.set_expression("the red disc")
    without_depth = client.request(scene_image())
    assert without_depth.result.found and without_depth.centroid is None
    depth = np.full((96, 128), 1500, np.uint16)
    with_depth = client.request(scene_image(), depth=depth, camera_info=camera_info())
    assert with_depth.centroid.point.z == pytest.approx(1.5)
    # One reliable publisher, in order: a pixel centroid for the earlier frame would have arrived first.
    assert without_depth.stamp not in client.centroids
    assert (without_depth.result.centroid_u, without_depth.result.centroid_v) == pytest.approx(
        reference_segmentation(checkpoint, scene_image(), "the red disc").centroid)


@pytest.mark.parametrize("bad, named", [
    ({"image_reliability": "reliabel"}, "image_reliability"),
    ({"precision": "half"}, "precision"),
    ({"backend": "tensorrt"}, "backend"),
    ({"depth_min": 5.0, "depth_max": 2.0}, "depth_min"),
    ({"device": "gpu"}, "device"),
])
def test_bad_startup_parameters_are_refused_by_name(tmp_path, bad, named):
    parameters = {"checkpoint": str(tmp_path / "never_loaded.pt"), **bad}
    process = NodeProcess(parameters).start()
    try:
        code = process.process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        code = None
    log = process.log()
    process.stop()
    assert code == 2, f"the node did not refuse {bad} at startup:\n{log}"
    assert "refusing to start: invalid parameter" in log and named in log, log
    assert "Traceback" not in log and "KeyError" not in log


# Principal point in a corner, so that wherever the (random-weight) mask's centroid falls, it is far
# off-axis and the lens distortion moves it.
LENS_CX, LENS_CY = 10.0, 8.0


def camera_info_with_distortion() -> CameraInfo:
    return CameraInfo(width=128, height=96, distortion_model="plumb_bob", d=[-0.25, 0.08, 0.001, -0.002, 0.0],
                      k=[FX, 0.0, LENS_CX, 0.0, FY, LENS_CY, 0.0, 0.0, 1.0])


def test_depth_is_paired_by_stamp_and_deprojected_through_the_lens(ros_context, checkpoint, tmp_path):
    """The depth frame of the color frame's stamp arrives late; the previous one (33 ms older, within the
    tolerance) is already there and must not be used. Also: the model's own thresholds, frame_id checks."""
    from meres_core.checkpoint import save_checkpoint

    segmenter = Segmenter.from_checkpoint(checkpoint, device="cpu", precision="fp32")
    segmenter.cfg.inference = replace(segmenter.cfg.inference, mask_threshold=0.3, presence_threshold=0.0)
    own_thresholds = save_checkpoint(tmp_path / "thresholds.pt", segmenter.model, segmenter.cfg, {"test": True})
    name = "meres_sync"
    parameters = {"checkpoint": str(own_thresholds), "device": "cpu", "precision": "fp32", "max_rate": 0.0,
                  "image_reliability": "reliable", "sync_tolerance": 0.05, "sync_wait": 2.0}
    with NodeProcess(parameters, node_name=name, remappings={"image": f"{name}/image", "depth": f"{name}/depth",
                                                             "camera_info": f"{name}/camera_info"}) as process:
        client = MeresClient(context=ros_context, node_name=name, image_topic=f"{name}/image",
                             depth_topic=f"{name}/depth", camera_info_topic=f"{name}/camera_info", image_qos=RELIABLE)
        try:
            assert client.wait_for_node(90), process.log()
            client.set_expression("the red disc")
            rgb = scene_image()
            frame_id = "camera_color_optical_frame"
            answer = None
            while answer is None:
                color = client.next_header(frame_id)
                stamp = stamp_ns(color.stamp)
                earlier = client.next_header(frame_id)
                earlier.stamp.sec, earlier.stamp.nanosec = divmod(stamp - 33_000_000, 1_000_000_000)
                client.publish_frame(rgb, np.full((96, 128), 2000, np.uint16), camera_info_with_distortion(),
                                     header=earlier)
                client.spin(0.2)
                client.image_pub.publish(client_image(rgb, color))
                client.spin(0.3)  # the node has the color frame and waits for its partner
                client.camera_info_pub.publish(with_header(camera_info_with_distortion(), color))
                client.depth_pub.publish(depth_image(np.full((96, 128), 1500, np.uint16), color))
                deadline = time.monotonic() + 30
                while answer is None and time.monotonic() < deadline:
                    client.spin(0.05)
                    if stamp in client.results and stamp in client.masks:
                        answer = client.results[stamp]
            expected = Segmenter.from_checkpoint(own_thresholds, device="cpu", precision="fp32").segment(
                rgb, "the red disc")[0]  # the model's own thresholds: none were given to the node
            np.testing.assert_array_equal(image_to_numpy(client.masks[stamp]) > 0, expected.mask)
            assert expected.found and answer.centroid_3d_valid
            assert answer.depth == pytest.approx(1.5), "paired with the previous depth frame, not its own"
            u, v = expected.centroid
            by_lens = PinholeCamera.from_camera_info(camera_info_with_distortion()).deproject(u, v, 1.5)
            pinhole = ((u - LENS_CX) * 1.5 / FX, (v - LENS_CY) * 1.5 / FY, 1.5)
            assert max(abs(a - b) for a, b in zip(by_lens, pinhole)) > 1e-3, "the distortion must matter here"
            centroid = client.centroids[stamp].point
            assert (centroid.x, centroid.y, centroid.z) == pytest.approx(by_lens, abs=1e-5)
            # Depth from another frame than the image's: used, but said.
            deadline = time.monotonic() + 60
            while "[frame_id]" not in process.log():
                assert time.monotonic() < deadline, process.log()
                header = client.next_header(frame_id)
                client.camera_info_pub.publish(with_header(camera_info_with_distortion(), header))
                depth_header = Header(stamp=header.stamp, frame_id="camera_depth_frame")
                client.depth_pub.publish(depth_image(np.full((96, 128), 1500, np.uint16), depth_header))
                client.image_pub.publish(client_image(rgb, header))
                client.spin(0.5)
            assert "depth frame_id 'camera_depth_frame' differs from the image's" in process.log()
        finally:
            client.destroy()
        assert process.alive(), process.log()


def client_image(rgb, header):
    from meres_ros.conversions import numpy_to_image

    return numpy_to_image(rgb, "rgb8", header)


def depth_image(depth, header):
    from meres_ros.conversions import numpy_to_image

    return numpy_to_image(depth, "16UC1", header)


def with_header(msg, header):
    msg.header = header
    return msg


def test_model_failures_are_logged_survived_then_take_the_error_path(ros_context, checkpoint):
    name = "meres_faults"
    env = {"MERES_TEST_FAULTS": "oom,nan,ok,raise,raise,raise"}
    parameters = node_parameters(checkpoint, max_consecutive_failures=3)
    with NodeProcess(parameters, node_name=name, env=env, program=HOOKS, remappings={"image": f"{name}/image"}) \
            as process:
        client = MeresClient(context=ros_context, node_name=name, image_topic=f"{name}/image")
        try:
            assert client.wait_for_node(90), process.log()
            client.set_expression("the red disc")
            # Out of memory, then NaN: two frames skipped, the third answered; the node stays active.
            assert client.request(scene_image()).mask.shape == (96, 128)
            assert lifecycle_state(client, name) == State.PRIMARY_STATE_ACTIVE
            # Three failures in a row: the error path, and /diagnostics says ERROR.
            deadline = time.monotonic() + 120
            while lifecycle_state(client, name) != State.PRIMARY_STATE_UNCONFIGURED:
                assert time.monotonic() < deadline, process.log()
                client.publish_frame(scene_image())
                client.spin(0.5)
            error = client.wait_for_diagnostics(lambda s: s.level == DiagnosticStatus.ERROR)
            assert "RuntimeError: injected model failure" in error.message
            log = process.log()
            assert log.count("Traceback") == 3  # the first of each kind: OutOfMemoryError, ModelOutputError, RuntimeError
            assert "OutOfMemoryError: CUDA out of memory" in log and "ModelOutputError: non-finite model output" in log
            assert "[model] frame skipped: RuntimeError" in log  # the second of its kind: one line
            assert "failed on 3 frames in a row" in log and "error processing" in log
            # Fixed (the injected faults are used up): configure and activate bring it back.
            assert change_state(client, name, Transition.TRANSITION_CONFIGURE), process.log()
            assert change_state(client, name, Transition.TRANSITION_ACTIVATE), process.log()
            assert client.request(scene_image()).mask.shape == (96, 128)
        finally:
            client.destroy()
        assert process.alive(), process.log()


def test_diagnostics_report_health(node):
    _, client = node
    client.set_expression("the red disc")
    client.request(scene_image())
    status = client.wait_for_diagnostics(lambda s: s.level == DiagnosticStatus.OK and s.message == "segmenting")
    values = {kv.key: kv.value for kv in status.values}
    assert "meres" in status.name and status.hardware_id == "cpu"
    assert values["device"] == "cpu" and values["precision"] == "float32" and "checkpoint" in values["model"]
    assert values["torch threads"] == "1"  # the threads parameter, applied before the model was built
    assert values["image path"] == "torch"
    assert float(values["latency p50 (ms)"]) > 0 and float(values["latency p95 (ms)"]) >= float(values["latency p50 (ms)"])
    assert {"image rate (Hz)", "depth rate (Hz)", "result rate (Hz)", "frames dropped", "last error"} <= set(values)
    # No image for more than image_timeout (3 s): WARN; images again: OK.
    warning = client.wait_for_diagnostics(lambda s: s.level == DiagnosticStatus.WARN)
    assert "no image" in warning.message
    client.wait_for_diagnostics(lambda s: s.level == DiagnosticStatus.OK, between=lambda: client.publish_frame(scene_image()))


def test_text_encoder_runs_once_per_sentence_not_per_frame(node):
    """The node's /diagnostics count real forward calls of the text encoder: none for a sentence it has."""
    _, client = node

    def calls() -> int:
        status = client.wait_for_diagnostics(lambda s: any(kv.key == "text encoder calls" for kv in s.values))
        return int(next(kv.value for kv in status.values if kv.key == "text encoder calls"))

    client.set_expression("the thing nobody else asks for")
    client.request(scene_image())
    first = calls()
    for _ in range(3):
        client.request(scene_image())
    client.set_expression("the thing nobody else asks for")  # the same sentence again: a new request, same text
    client.request(scene_image())
    assert calls() == first
    client.set_expression("the thing nobody else asks for; and a second one")
    client.request(scene_image())
    assert calls() == first + 1  # one batched call for the one new sentence


def test_client_waits_for_diagnostics_after_its_first_hundred(ros_context):
    """MeresClient keeps the last 100 statuses; a wait after more than that still sees the next one."""
    from diagnostic_msgs.msg import DiagnosticArray, KeyValue

    client = MeresClient(context=ros_context, node_name="meres_diagnostics_only")
    try:
        def status(value: str) -> DiagnosticArray:
            return DiagnosticArray(status=[DiagnosticStatus(name="meres_node: /meres_diagnostics_only",
                                                            values=[KeyValue(key="n", value=value)])])

        for i in range(150):
            client._on_diagnostics(status(str(i)))
        timer = client.node.create_timer(0.2, lambda: client._on_diagnostics(status("next")))
        found = client.wait_for_diagnostics(lambda s: s.values[0].value in ("149", "next"), timeout=10)
        assert found.values[0].value == "next"  # from now on: not one received before the wait
        client.node.destroy_timer(timer)
    finally:
        client.destroy()


# Issue 10 --------------------------------------------------------------------------------------


def two_identical_discs_scene() -> np.ndarray:
    """Two identical red discs (centres (32, 48) and (96, 48), radius 14) and a small red square."""
    import cv2

    img = np.full((96, 128, 3), 30, np.uint8)
    cv2.circle(img, (32, 48), 14, (220, 30, 30), -1)
    cv2.circle(img, (96, 48), 14, (220, 30, 30), -1)
    cv2.rectangle(img, (58, 80), (70, 92), (220, 30, 30), -1)  # 169 px: 0.27 of a disc's 621
    return img


ORACLE = "meres_oracle"


@pytest.fixture(scope="module")
def oracle_node(ros_context, checkpoint):
    """A node whose probability map is where the image is red (node_hooks.py): the scene decides the masks."""
    name = ORACLE
    remappings = {topic: f"{name}/{topic}" for topic in ("image", "depth", "camera_info")}
    with NodeProcess(node_parameters(checkpoint, image_reliability="reliable"), node_name=name,
                     env={"MERES_TEST_RED_ORACLE": "1"}, program=HOOKS, remappings=remappings) as process, \
            connected(process, MeresClient(context=ros_context, node_name=name, image_topic=f"{name}/image",
                                           depth_topic=f"{name}/depth", camera_info_topic=f"{name}/camera_info",
                                           image_qos=RELIABLE)) as client:
        yield process, client


def test_ambiguous_scene_is_answered_with_both_candidates(oracle_node):
    process, client = oracle_node
    name = ORACLE
    try:
        client.set_expression("the red disc")
        rgb = two_identical_discs_scene()
        result = client.request(rgb).result
        assert result.found and result.ambiguous, process.log()
        assert len(result.candidates) == 2  # the square (0.27 of a disc's mass) is below ambiguity_ratio 0.5
        by_u = sorted(result.candidates, key=lambda c: c.centroid_u)
        assert [(c.centroid_u, c.centroid_v) for c in by_u] == [pytest.approx((32, 48)), pytest.approx((96, 48))]
        assert [(c.bbox.x_offset, c.bbox.y_offset, c.bbox.width, c.bbox.height) for c in by_u] == \
            [(18, 34, 29, 29), (82, 34, 29, 29)]
        assert all(c.score == pytest.approx(0.9) for c in by_u)
        first = result.candidates[0]  # the target is the first candidate
        assert (result.centroid_u, result.centroid_v) == (first.centroid_u, first.centroid_v)
        assert result.bbox == first.bbox
        # A live ambiguity_ratio: at 0.2 the square is a candidate too; 0 is refused.
        assert set_parameter(client, name, "ambiguity_ratio", 0.2).successful
        assert len(client.request(rgb).result.candidates) == 3
        assert not set_parameter(client, name, "ambiguity_ratio", 0.0).successful
        # One disc: found, not ambiguous, one candidate.
        one = rgb.copy()
        one[:, 50:] = 30
        single = client.request(one).result
        assert single.found and not single.ambiguous and len(single.candidates) == 1
        assert (single.candidates[0].centroid_u, single.candidates[0].centroid_v) == pytest.approx((32, 48))
    finally:
        set_parameter(client, name, "ambiguity_ratio", 0.5)


def red_bar_scene() -> np.ndarray:
    """A red bar 41 px wide (u = 40..80) and 11 px high (v = 40..50)."""
    img = np.full((96, 128, 3), 30, np.uint8)
    img[40:51, 40:81] = (220, 30, 30)
    return img


def wait_for_result(client, rgb, accept, timeout=60.0, **frame):
    deadline = time.monotonic() + timeout
    while True:
        result = client.request(rgb, **frame).result
        if accept(result):
            return result
        assert time.monotonic() < deadline, f"no result as expected; last: {result}"


def test_result_is_grasp_ready(oracle_node):
    process, client = oracle_node
    client.set_expression("the red bar")
    depth = np.full((96, 128), 1500, np.uint16)  # a plane 1.5 m away
    result = client.request(red_bar_scene(), depth=depth, camera_info=camera_info()).result
    assert result.found and result.centroid_3d_valid and not result.ambiguous
    assert (result.centroid_u, result.centroid_v) == pytest.approx((60.0, 45.0))
    assert (result.centroid_3d.x, result.centroid_3d.y, result.centroid_3d.z) == \
        pytest.approx(((60 - CX) * 1.5 / FX, (45 - CY) * 1.5 / FY, 1.5))
    # Extent: 451 points; along u each column 11 times, the 5th / 95th percentiles (ranks 22.5, 427.5) at
    # u = 42 and 78: 36 px x 1.5 m / FX; along v each row 41 times: v = 40 and 50, 10 px x 1.5 m / FY.
    assert (result.extent.x, result.extent.y, result.extent.z) == pytest.approx((36 * 1.5 / FX, 10 * 1.5 / FY, 0.0))
    # Uncertainty: the depths inside the part eroded by 2 px (37 x 7 px), all 1.5 m.
    assert result.depth_pixel_count == 37 * 7 and result.depth_std == pytest.approx(0.0)
    # Principal axis along u; spread ratio sqrt(((11^2 - 1) / 12) / ((41^2 - 1) / 12)).
    assert result.axis_angle == pytest.approx(0.0, abs=1e-6)
    assert result.axis_ratio == pytest.approx(math.sqrt(120 / 1680), rel=1e-5)
    # The same bar turned upright: the axis is along v.
    upright = np.full((96, 128, 3), 30, np.uint8)
    upright[20:61, 60:71] = (220, 30, 30)
    assert client.request(upright).result.axis_angle == pytest.approx(math.pi / 2, abs=1e-6)

    # Request ids: every sentence taken is a new request, the same text asked again too. Compared by order,
    # not by +1: once in CI (not reproduced in two runs of this file) again.request_id was first + 2, i.e. one
    # more sentence was taken in between; set_expression's own re-publish (when the node's report takes
    # over 5 s) is one way a late copy reaches the node.
    first = client.request(red_bar_scene()).result.request_id
    client.expression_pub.publish(String(data="the red bar"))
    again = wait_for_result(client, red_bar_scene(), lambda r: r.request_id > first)
    assert again.expression == "the red bar"
    client.set_expression("the bar")
    assert wait_for_result(client, red_bar_scene(), lambda r: r.expression == "the bar").request_id > again.request_id

    # Bandwidth: the mask cropped to the bbox, with its offset; or no mask. ~/mask stays full.
    try:
        assert set_parameter(client, ORACLE, "mask_mode", "cropped").successful
        cropped = wait_for_result(client, red_bar_scene(), lambda r: r.mask.width != 128)
        assert (cropped.mask.width, cropped.mask.height, cropped.mask_offset_x, cropped.mask_offset_y) == (41, 11, 40, 40)
        assert (image_to_numpy(cropped.mask) == 255).all()
        assert set_parameter(client, ORACLE, "mask_mode", "none").successful
        none = wait_for_result(client, red_bar_scene(), lambda r: r.mask.width == 0)
        assert none.mask.height == 0 and len(none.mask.data) == 0 and none.found
        answer = client.request(red_bar_scene())
        assert answer.mask.shape == (96, 128) and answer.mask[40:51, 40:81].all()
        assert not set_parameter(client, ORACLE, "mask_mode", "thumbnail").successful
    finally:
        set_parameter(client, ORACLE, "mask_mode", "full")


def test_compressed_images_jpeg_png_and_corrupt(ros_context, checkpoint):
    import cv2

    from meres_ros.client import compress

    name = "meres_compressed"
    parameters = node_parameters(checkpoint, image_transport="compressed", image_reliability="reliable")
    # The base topic is remapped; the node subscribes below it, as image_transport does.
    with NodeProcess(parameters, node_name=name, remappings={"image": f"/{name}/camera/color"}) as process:
        client = MeresClient(context=ros_context, node_name=name, image_topic=f"/{name}/camera/color",
                             image_qos=RELIABLE, image_format="jpeg")
        try:
            assert client.wait_for_node(90), process.log()
            # The node logs this line after creating the subscription the client has already matched.
            deadline = time.monotonic() + 30
            while f"segmenting '/{name}/camera/color/compressed'" not in process.log():
                assert time.monotonic() < deadline, process.log()
                client.spin(0.2)
            client.set_expression("the red disc")
            rgb = scene_image()
            for image_format in ("jpeg", "png"):
                client.image_format = image_format
                answer = client.request(rgb)
                sent = compress(rgb, image_format, Header()).data
                decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(bytes(sent), np.uint8), cv2.IMREAD_COLOR),
                                       cv2.COLOR_BGR2RGB)
                if image_format == "png":
                    np.testing.assert_array_equal(decoded, rgb)  # lossless
                expected = reference_segmentation(checkpoint, decoded, "the red disc")
                np.testing.assert_array_equal(answer.mask, expected.mask if expected.found else 0 * expected.mask)
                assert answer.result.score == pytest.approx(expected.score, abs=1e-6)
            # Bad payloads: logged by kind with their reason; the node keeps serving.
            from sensor_msgs.msg import CompressedImage

            bad = {"cannot decode the": ("jpeg", b"\xff\xd8 not a jpeg" * 20),
                   "compressed image with no data": ("png", b""),
                   "unsupported compressed format 'tiff'": ("tiff", b"II*\x00" * 10)}
            deadline = time.monotonic() + 60
            for reason, (image_format, data) in bad.items():
                while reason not in process.log():  # a keep-last-1 publisher may replace one not yet delivered
                    assert time.monotonic() < deadline, process.log()
                    client.compressed_image_pub.publish(
                        CompressedImage(header=client.next_header("c"), format=image_format, data=data))
                    client.spin(0.3)
            assert "[image] color image dropped" in process.log() and "Traceback" not in process.log()
            client.image_format = "png"
            assert client.request(rgb).mask.shape == (96, 128)
        finally:
            client.destroy()
        assert process.alive(), process.log()


def segment_once(client: MeresClient, sentence: str, timeout: float, rgb=None, node_name: str = "meres"):
    """Call ~/segment; while it waits, publish `rgb` (when given) every 0.2 s, as a camera would."""
    from meres_ros_interfaces.srv import Segment

    service = client.node.create_client(Segment, f"/{node_name}/segment")
    try:
        assert service.wait_for_service(timeout_sec=30), "~/segment not available"
        future = service.call_async(Segment.Request(sentence=sentence, timeout=timeout))
        deadline = time.monotonic() + timeout + 60
        while not future.done():
            assert time.monotonic() < deadline, "~/segment did not answer"
            if rgb is not None:
                client.publish_frame(rgb)
            client.spin(0.2)
        return future.result()
    finally:
        client.node.destroy_client(service)


def test_segment_service_answers_once_on_the_next_frame(node, checkpoint):
    process, client = node
    client.set_expression("the red disc")
    streaming_id = client.request(scene_image()).result.request_id
    rgb = scene_image()
    response = segment_once(client, "  the blue   square ", 30.0, rgb)
    assert response.success and response.message == "", response.message
    result = response.result
    assert result.expression == "the blue square" and result.request_id > streaming_id
    assert result.header.frame_id == "camera_color_optical_frame"
    expected = reference_segmentation(checkpoint, rgb, "the blue square")
    np.testing.assert_array_equal(image_to_numpy(result.mask) > 0, expected.mask if expected.found else 0 * expected.mask)
    assert result.score == pytest.approx(expected.score, abs=1e-6)
    # The streaming sentence is untouched: results go on for it, with its own request id.
    assert client.active_expression == "the red disc"
    again = client.request(scene_image()).result
    assert again.expression == "the red disc" and again.request_id == streaming_id
    # No frame: a timeout, said as such; a list of sentences: refused.
    late = segment_once(client, "the red disc", 0.5)
    assert not late.success and late.message == "no color frame within 0.5 s"
    several = segment_once(client, "a; b", 5.0)
    assert not several.success and "one sentence expected" in several.message
    assert process.alive(), process.log()


def test_target_smoothing_holds_then_loses_the_target(oracle_node):
    _, client = oracle_node
    depth = lambda mm: np.full((96, 128), mm, np.uint16)  # noqa: E731
    try:
        assert set_parameter(client, ORACLE, "target_smoothing", 0.5).successful
        assert set_parameter(client, ORACLE, "target_lost_frames", 2).successful
        client.set_expression("the red bar, smoothed")  # a new sentence: a fresh target
        first = client.request(red_bar_scene(), depth=depth(1500), camera_info=camera_info()).result
        assert first.centroid_3d.z == pytest.approx(1.5) and first.depth == pytest.approx(1.5)
        second = client.request(red_bar_scene(), depth=depth(2100), camera_info=camera_info()).result
        assert second.depth == pytest.approx(2.1) and second.centroid_3d.z == pytest.approx(0.5 * 1.5 + 0.5 * 2.1)
        held = client.request(red_bar_scene()).result  # no depth for this frame: held
        assert held.centroid_3d_valid and held.centroid_3d.z == pytest.approx(1.8) and not held.target_lost
        lost = client.request(red_bar_scene()).result  # the second frame in a row without it: lost
        assert lost.target_lost and not lost.centroid_3d_valid and lost.found
    finally:
        set_parameter(client, ORACLE, "target_smoothing", 0.0)
        set_parameter(client, ORACLE, "target_lost_frames", 5)


def test_rviz_markers_show_the_target_box_and_sentence(oracle_node):
    from visualization_msgs.msg import Marker, MarkerArray

    _, client = oracle_node
    received = {}
    subscription = client.node.create_subscription(
        MarkerArray, f"/{ORACLE}/markers", lambda m: received.__setitem__(stamp_ns(m.markers[0].header.stamp), m), 10)
    try:
        client.set_expression("the red bar")
        deadline = time.monotonic() + 60
        while True:  # the node renders markers once it sees the subscription
            answer = client.request(red_bar_scene(), depth=np.full((96, 128), 1500, np.uint16),
                                    camera_info=camera_info())
            client.spin(0.5)
            if answer.stamp in received:
                break
            assert time.monotonic() < deadline, "no markers"
        clear, box, label = received[answer.stamp].markers
        result = answer.result
        assert clear.action == Marker.DELETEALL
        assert box.type == Marker.CUBE and box.header.frame_id == "camera_color_optical_frame"
        assert (box.pose.position.x, box.pose.position.y, box.pose.position.z) == \
            pytest.approx((result.centroid_3d.x, result.centroid_3d.y, result.centroid_3d.z))
        # The box is the target's extent; its depth extent (a flat plane: 0) at the 1 cm minimum.
        assert (box.scale.x, box.scale.y, box.scale.z) == pytest.approx((result.extent.x, result.extent.y, 0.01))
        assert label.type == Marker.TEXT_VIEW_FACING and label.text == "the red bar"
        assert label.pose.position.y < box.pose.position.y  # above it (y down)
    finally:
        client.node.destroy_subscription(subscription)


def test_client_spin_until_runs_callbacks_until_the_condition_holds(ros_context):
    client = MeresClient(context=ros_context, name="spin_until_probe", with_results=False)
    try:
        fired = []
        client.node.create_timer(0.1, lambda: fired.append(time.monotonic()))
        started = time.monotonic()
        assert client.spin_until(lambda: len(fired) >= 3, timeout=10.0)
        assert len(fired) == 3 and time.monotonic() - started < 5.0  # returned once the third callback ran
        assert not client.spin_until(lambda: False, timeout=0.3)
    finally:
        client.destroy()
