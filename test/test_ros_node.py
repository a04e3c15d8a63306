"""meres_node as a real process, driven over real topics from this process.

One node serves the output tests (same checkpoint file here and there, so the
masks must be identical); the lifecycle and parameter tests start their own.
Nothing here assumes that a best-effort frame arrives: `MeresClient.request`
resends until answered.
"""
import random
import signal
import time

import numpy as np
import pytest
import rclpy
import yaml
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.srv import GetParameters, SetParameters
from rclpy.parameter import Parameter, parameter_value_to_python
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo

from meres_core.checkpoint import save_checkpoint
from meres_core.inference import Decision, Segmenter
from meres_ros.client import MeresClient, NodeProcess, config_file
from meres_ros.conversions import image_to_numpy
from meres_ros.geometry import PinholeCamera
from meres_ros.streams import stamp_ns

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
    return {"checkpoint": str(checkpoint), "device": "cpu", "precision": "fp32", "max_rate": 0.0,
            "presence_threshold": 0.0, **overrides}


@pytest.fixture(scope="module")
def node(ros_context, checkpoint):
    with NodeProcess(node_parameters(checkpoint)) as process:
        client = MeresClient(context=ros_context)
        try:
            assert client.wait_for_node(90), process.log()
            yield process, client
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
