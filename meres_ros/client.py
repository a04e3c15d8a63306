"""Driving a `meres_node` from another process: start it, send it frames, wait for its answer.

Used by `meres-demo` and by the node's tests, so both talk to the real node the
way a robot would: over topics, with best-effort images that may be lost.
A request therefore resends its frame (with a fresh stamp each time) until an
answer for one of the stamps it sent comes back.
"""
from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PointStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header, String

from meres_ros.conversions import image_to_numpy, numpy_to_image
from meres_ros.interface import (
    ACTIVE_EXPRESSION_QOS,
    ACTIVE_EXPRESSION_TOPIC,
    CAMERA_INFO_TOPIC,
    CENTROID_TOPIC,
    DEBUG_IMAGE_TOPIC,
    DEPTH_TOPIC,
    DIAGNOSTICS_QOS,
    DIAGNOSTICS_TOPIC,
    EXPRESSION_HISTORY_QOS,
    EXPRESSION_TOPIC,
    IMAGE_TOPIC,
    MASK_TOPIC,
    NODE_NAME,
    RESULT_TOPIC,
    RESULTS_TOPIC,
    output_topic,
    result_message_types,
)
from meres_ros.pipeline import parse_expressions
from meres_ros.streams import stamp_ns


def config_file(name: str) -> Path:
    """A file of the package's config/ folder: source checkout, pip install or colcon install."""
    candidates = [Path(__file__).resolve().parents[1] / "config" / name, Path(sys.prefix) / "share" / "meres_ros" / "config" / name]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("meres_ros")) / "config" / name)
    except (ImportError, LookupError, OSError):
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"config/{name} not found in {', '.join(str(c.parent) for c in candidates)}")


def _parameter_yaml(parameters: dict) -> str:
    return yaml.safe_dump({"/**": {"ros__parameters": parameters}}, sort_keys=False)


class NodeProcess:
    """`meres_node` as a child process, its log in a file; `stop()` sends SIGINT and returns the exit code."""

    def __init__(self, parameters: dict, remappings: Optional[dict] = None, params_files: Sequence[Path] = (),
                 env: Optional[dict] = None, log_path: Optional[Path] = None, node_name: str = NODE_NAME,
                 program: Sequence[str] = ("-m", "meres_ros.node")):
        """`params_files` are loaded in order, then `parameters`: later values win.
        `program`: what the Python interpreter runs (a test may run the node through a wrapper script)."""
        self._workdir = tempfile.TemporaryDirectory(prefix="meres_node_")
        overrides = Path(self._workdir.name) / "parameters.yaml"
        overrides.write_text(_parameter_yaml(parameters))
        self.log_path = Path(log_path) if log_path else Path(self._workdir.name) / "node.log"
        self.command = [sys.executable, *program, "--ros-args", "-r", f"__node:={node_name}"]
        for path in [*params_files, overrides]:
            self.command += ["--params-file", str(path)]
        for source, target in (remappings or {}).items():
            self.command += ["-r", f"{source}:={target}"]
        self.env = {**os.environ, **(env or {})}
        self.process: Optional[subprocess.Popen] = None

    def start(self) -> "NodeProcess":
        self._log_file = open(self.log_path, "w")
        self.process = subprocess.Popen(self.command, stdout=self._log_file, stderr=subprocess.STDOUT, env=self.env)
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> Optional[int]:
        """Signal the node and wait; kill it if it does not exit in time (returns None then)."""
        if self.process is None:
            return None
        code = self.process.poll()
        if code is None:
            self.process.send_signal(sig)
            try:
                code = self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                code = None
        self._log_file.close()
        return code

    def __enter__(self) -> "NodeProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self._workdir.cleanup()


@dataclass
class Answer:
    """The node's output for one frame."""

    stamp: int  # ns, the stamp of the frame that was answered
    mask: np.ndarray  # bool (H, W), first expression
    centroid: Optional[PointStamped]  # metres in the optical frame; None without a 3D point
    result: object = None  # meres_ros_interfaces/ReferringSegmentation, when built
    results: object = None  # meres_ros_interfaces/ReferringSegmentationArray, when built
    latency_s: float = 0.0  # from publishing the frame to receiving its mask
    header: Optional[Header] = None
    debug_image: Optional[Image] = None  # rgb8 overlay, when the client asked for it

    @property
    def found(self) -> bool:
        return self.result.found if self.result is not None else bool(self.mask.any())


def compress(rgb: np.ndarray, image_format: str, header: Header) -> CompressedImage:
    """RGB -> CompressedImage as compressed_image_transport writes it (jpeg / png of the bgr8 image)."""
    import cv2

    ok, data = cv2.imencode(f".{'jpg' if image_format == 'jpeg' else image_format}", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"OpenCV cannot encode {image_format}")
    return CompressedImage(header=header, format=f"rgb8; {image_format} compressed bgr8", data=data.tobytes())


class MeresClient:
    """A small rclpy node that plays camera + operator for a running meres_node."""

    def __init__(self, context=None, node_name: str = NODE_NAME, name: Optional[str] = None,
                 image_topic: str = IMAGE_TOPIC, depth_topic: str = DEPTH_TOPIC,
                 camera_info_topic: str = CAMERA_INFO_TOPIC, expression_topic: str = EXPRESSION_TOPIC,
                 image_qos: QoSProfile = qos_profile_sensor_data, expression_qos: QoSProfile = EXPRESSION_HISTORY_QOS,
                 with_debug_image: bool = False, with_results: bool = True, image_format: str = "raw"):
        """`expression_qos`: latched by default, so a sentence set before the node is up still reaches it.
        `with_debug_image`: subscribe to ~/debug_image (the node renders it only then) and wait for it in answers.
        `with_results`: wait for ~/result(s) too, when meres_ros_interfaces is importable here.
        `image_format`: raw (Image on `image_topic`), or jpeg / png (CompressedImage on `image_topic`/compressed,
        for a node with image_transport:=compressed); may be changed between frames."""
        self.node = rclpy.create_node(name or f"{node_name.strip('/')}_client", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.result_types = result_message_types() if with_results else None
        keep = 50  # reliable, volatile: what the node publishes with, deep enough for a burst
        self.image_pub = self.node.create_publisher(Image, image_topic, image_qos)
        self.compressed_image_pub = self.node.create_publisher(CompressedImage, f"{image_topic}/compressed", image_qos)
        self.image_format = image_format
        self.depth_pub = self.node.create_publisher(Image, depth_topic, image_qos)
        self.camera_info_pub = self.node.create_publisher(CameraInfo, camera_info_topic, image_qos)
        self.expression_pub = self.node.create_publisher(String, expression_topic, expression_qos)
        self.masks: dict[int, Image] = {}
        self.mask_received_at: dict[int, float] = {}  # monotonic time
        self.centroids: dict[int, PointStamped] = {}
        self.results: dict[int, object] = {}
        self.result_arrays: dict[int, object] = {}
        self.debug_images: dict[int, Image] = {}
        self.with_debug_image = with_debug_image
        self.active_expression: Optional[str] = None
        self.diagnostics: list[DiagnosticStatus] = []  # this node's statuses, oldest first (the last 100)
        self._diagnostics_received = 0
        topic = functools.partial(output_topic, node_name)
        self.node.create_subscription(Image, topic(MASK_TOPIC), self._on_mask, keep)
        self.node.create_subscription(PointStamped, topic(CENTROID_TOPIC), lambda m: self._store(self.centroids, m), keep)
        self.node.create_subscription(String, topic(ACTIVE_EXPRESSION_TOPIC), self._on_expression, ACTIVE_EXPRESSION_QOS)
        self._diagnostics_name = f"/{node_name.strip('/')}"
        self.node.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC, self._on_diagnostics, DIAGNOSTICS_QOS)
        if with_debug_image:
            self.node.create_subscription(Image, topic(DEBUG_IMAGE_TOPIC), lambda m: self._store(self.debug_images, m), keep)
        if self.result_types is not None:
            self.node.create_subscription(self.result_types[0], topic(RESULT_TOPIC),
                                          lambda m: self._store(self.results, m), keep)
            self.node.create_subscription(self.result_types[1], topic(RESULTS_TOPIC),
                                          lambda m: self._store(self.result_arrays, m), keep)
        self._sent: dict[int, float] = {}  # stamp -> monotonic send time
        self._last_stamp = 0

    def _store(self, table: dict, msg, value=None) -> None:
        table[stamp_ns(msg.header.stamp)] = msg if value is None else value
        if len(table) > 200:  # answers nobody asked for (other clients, old frames)
            del table[next(iter(table))]

    def _on_mask(self, msg: Image) -> None:
        self._store(self.masks, msg)
        self._store(self.mask_received_at, msg, time.monotonic())

    def _on_expression(self, msg: String) -> None:
        self.active_expression = msg.data

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        mine = [s for s in msg.status if s.name.endswith(self._diagnostics_name)]
        self.diagnostics += mine
        self._diagnostics_received += len(mine)
        del self.diagnostics[:-100]

    def wait_for_diagnostics(self, accept, timeout: float = 60.0,
                             between: Optional[Callable[[], None]] = None) -> DiagnosticStatus:
        """The first of this node's statuses, from now on, for which `accept(status)` holds. `between` runs
        between the 0.1 s spins: e.g. a camera that keeps streaming, so that a 1 Hz status published late
        still finds images newer than the node's image_timeout."""
        seen = self._diagnostics_received  # counted, not len(diagnostics): that stops growing at 100
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            new = self._diagnostics_received - seen
            for status in self.diagnostics[len(self.diagnostics) - min(new, len(self.diagnostics)):]:
                if accept(status):
                    return status
            seen += new
            if between is not None:
                between()
            self.spin(0.1)
        last = self.diagnostics[-1] if self.diagnostics else None
        raise TimeoutError(f"no matching /diagnostics status within {timeout} s; last: "
                           f"{None if last is None else (last.level, last.message)}")

    def spin(self, seconds: float) -> None:
        """Run callbacks for `seconds`."""
        self.spin_until(lambda: False, seconds)

    def spin_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Run callbacks until `done()` holds (checked after each) or `timeout` s pass; returns `done()`.

        Blocks in the wait set between messages: a loop of short spins would cost this process a
        fifth of a core, taken from the node it is measuring on a small CPU."""
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.executor.spin_once(timeout_sec=min(remaining, 0.05))
        return True

    def wait_for_node(self, timeout: float = 60.0) -> bool:
        """True once the node is active: its ~/mask publisher and image subscription are both matched."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            image_pub = self.image_pub if self.image_format == "raw" else self.compressed_image_pub
            if image_pub.get_subscription_count() > 0 and self.active_expression is not None:
                return True
            self.spin(0.1)
        return False

    def set_expression(self, text: str, timeout: float = 30.0, republish_after: float = 5.0) -> None:
        """Publish on /referring_expression and wait until the node says it uses it.

        Published again when the node still reports another sentence `republish_after` seconds
        later: a node that has just started receives the latched history of every publisher of the
        topic in no defined order, so another publisher's older sentence can land after ours.
        """
        expected = "; ".join(parse_expressions(text))
        self.expression_pub.publish(String(data=text))
        published_at = time.monotonic()
        deadline = published_at + timeout
        while self.active_expression != expected:
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"the node did not take the expression {text[:60]!r} within {timeout} s "
                                   f"(it reports {self.active_expression!r})")
            if now - published_at >= republish_after:
                self.expression_pub.publish(String(data=text))
                published_at = now
            self.spin(0.05)

    def next_header(self, frame_id: str) -> Header:
        """A header with a stamp later than any sent before (the node may warn about stamps going back)."""
        stamp = max(time.time_ns(), self._last_stamp + 1_000_000)
        self._last_stamp = stamp
        header = Header(frame_id=frame_id)
        header.stamp.sec, header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        return header

    def publish_frame(self, rgb: np.ndarray, depth: Optional[np.ndarray] = None,
                      camera_info: Optional[CameraInfo] = None, frame_id: str = "camera_color_optical_frame",
                      header: Optional[Header] = None) -> Header:
        """Depth and CameraInfo first (same stamp), then the color image that the node waits for."""
        header = header or self.next_header(frame_id)
        if camera_info is not None:
            camera_info.header = header
            self.camera_info_pub.publish(camera_info)
        if depth is not None:
            self.depth_pub.publish(numpy_to_image(depth, "32FC1" if depth.dtype == np.float32 else "16UC1", header))
        if self.image_format == "raw":
            self.image_pub.publish(numpy_to_image(rgb, "rgb8", header))
        else:
            self.compressed_image_pub.publish(compress(rgb, self.image_format, header))
        self._sent[stamp_ns(header.stamp)] = time.monotonic()
        return header

    def request(self, rgb: np.ndarray, depth: Optional[np.ndarray] = None, camera_info: Optional[CameraInfo] = None,
                timeout: float = 60.0, resend_after: float = 2.0) -> Answer:
        """Send the frame until the node answers one of its copies; raise TimeoutError after `timeout` s."""
        self._sent.clear()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.publish_frame(rgb, depth, camera_info)
            resend_at = time.monotonic() + resend_after
            while time.monotonic() < min(resend_at, deadline):
                answer = self._complete_answer()
                if answer is not None:
                    return answer
                self.spin(0.02)
        raise TimeoutError(f"no answer from the node within {timeout} s ({len(self._sent)} copies of the frame sent)")

    def _complete_answer(self) -> Optional[Answer]:
        for stamp in [s for s in self._sent if s in self.masks]:
            mask_msg = self.masks[stamp]
            mask = image_to_numpy(mask_msg) > 0
            result = self.results.get(stamp)
            if self.result_types is not None and (result is None or stamp not in self.result_arrays):
                continue  # published before the mask, but on other topics: still on its way
            # ~/centroid carries only 3D points; ~/result says whether this frame has one. Without
            # ~/result there is no telling, and the answer is complete without it.
            has_3d = result is not None and result.centroid_3d_valid
            if (has_3d and stamp not in self.centroids) or (self.with_debug_image and stamp not in self.debug_images):
                continue
            received = self.mask_received_at.get(stamp, time.monotonic())
            return Answer(stamp=stamp, mask=mask, centroid=self.centroids.get(stamp), result=result,
                          results=self.result_arrays.get(stamp), latency_s=received - self._sent[stamp],
                          header=mask_msg.header, debug_image=self.debug_images.get(stamp))
        return None

    def destroy(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
