"""`meres_node`: a managed (lifecycle) node that segments what a sentence refers to.

Inputs
  image                  sensor_msgs/Image, color (rgb8, bgr8, rgba8, bgra8, mono8, mono16);
                         sensor-data QoS, keep last 1, reliability from `image_reliability`
  depth                  sensor_msgs/Image, registered to `image` (16UC1 / mono16 x depth_scale, 32FC1 m); optional
  camera_info            sensor_msgs/CameraInfo of the color camera; optional
  /referring_expression  std_msgs/String, reliable + transient local. "a; b" = several expressions,
                         segmented in one batched call; "" clears the target.
Outputs (header = the input image's header)
  ~/mask         sensor_msgs/Image mono8, 0 / 255: the first expression's mask (all 0 when absent)
  ~/centroid     geometry_msgs/PointStamped of the first expression, only when it is found:
                 z > 0: the 3D point in metres in the image's optical frame (depth + CameraInfo valid);
                 z == 0: no metric depth: x, y are the pixel centroid (u, v)
  ~/result       meres_ros_interfaces/ReferringSegmentation of the first expression
  ~/results      meres_ros_interfaces/ReferringSegmentationArray, one entry per expression
  ~/expression   std_msgs/String, transient local: the expressions in use ("a; b"), republished on change
  ~/debug_image  sensor_msgs/Image rgb8 overlay, rendered only while someone subscribes

Lifecycle: configure loads the model (a bad checkpoint fails the transition and
the node stays unconfigured), activate subscribes to the images and starts the
worker, deactivate stops both, cleanup frees the model. With `autostart` the
node configures and activates itself.

Threads: subscription callbacks only store messages. One worker thread runs
the model on the newest color frame; frames that arrive while it is busy
replace the waiting one and are counted as dropped, so a slow model never
builds a backlog.
"""
from __future__ import annotations

import functools
import math
import re
import signal
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from typing import Optional

import numpy as np
import rclpy
from geometry_msgs.msg import PointStamped
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from rclpy.qos import (
    QoSDurabilityPolicy,
    QoSHistoryPolicy,
    QoSProfile,
    QoSReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import CameraInfo, Image, RegionOfInterest
from std_msgs.msg import String

from meres_ros.conversions import check_color_image, check_depth_image, image_to_rgb, numpy_to_image
from meres_ros.geometry import DepthRange, PinholeCamera
from meres_ros.pipeline import (
    MAX_EXPRESSION_CHARS,
    DepthSettings,
    Frame,
    InputError,
    ModelSource,
    StampBuffer,
    Target,
    depth_and_camera,
    inference_ms,
    load_segmenter,
    parse_expressions,
    release_memory,
    render_overlay,
    segment_frame,
    stamp_ns,
)

NODE_NAME = "meres"
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
PRECISIONS = ("auto", "fp16", "bf16", "fp32")
RELIABILITIES = {"best_effort": QoSReliabilityPolicy.BEST_EFFORT, "reliable": QoSReliabilityPolicy.RELIABLE}
# Parameters applied to the running node at once; the others are read at configure / activate.
LIVE_PARAMETERS = {
    "mask_threshold", "presence_threshold", "expressions", "max_expressions", "max_rate", "publish_debug",
    "use_depth", "depth_scale", "depth_min", "depth_max", "depth_erosion_px", "sync_tolerance", "problem_log_period",
}
# Depth and CameraInfo messages kept for matching by stamp: ~0.3 s at 30 Hz.
STAMP_BUFFER_LENGTH = 10
# The executor wakes at least this often (s), so a signal is handled promptly.
SPIN_PERIOD_S = 0.1


def result_message_types():
    """(ReferringSegmentation, ReferringSegmentationArray), or None when meres_ros_interfaces is not built."""
    try:
        from meres_ros_interfaces.msg import ReferringSegmentation, ReferringSegmentationArray
    except ImportError:
        return None
    return ReferringSegmentation, ReferringSegmentationArray


class ProblemLog:
    """Warns about bad input at most once per period for each kind of problem, counting the rest.

    Problems are keyed by their kind and their reason with numbers and quoted
    values blanked, so a stream of frames with the same defect logs once per
    period while a different defect is reported at once.
    """

    def __init__(self, logger, period_s: float):
        self._logger = logger
        self.period_s = period_s
        self._last: dict[tuple[str, str], list] = {}
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def report(self, kind: str, reason: str) -> None:
        template = re.sub(r"'[^']*'|\"[^\"]*\"|-?\d+(\.\d+)?", "#", reason)
        now = time.monotonic()
        with self._lock:
            self.counts[kind] += 1
            entry = self._last.get((kind, template))
            if entry is not None and now - entry[0] < self.period_s:
                entry[1] += 1
                return
            held_back = entry[1] if entry is not None else 0
            self._last[(kind, template)] = [now, 0]
        suffix = f" ({held_back} more like it in the last {self.period_s:g} s)" if held_back else ""
        self._logger.warning(f"[{kind}] {reason}{suffix}")


class LatestSlot:
    """Holds only the newest item; putting one over an item nobody took drops the old one."""

    def __init__(self):
        self._condition = threading.Condition()
        self._item = None
        self.dropped = 0

    def put(self, item) -> None:
        with self._condition:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._condition.notify()

    def take(self, timeout: float):
        with self._condition:
            if self._item is None:
                self._condition.wait(timeout)
            item, self._item = self._item, None
            return item

    def wake(self) -> None:
        with self._condition:
            self._condition.notify_all()


@dataclass(frozen=True)
class LiveSettings:
    """What the worker reads for each frame; replaced as a whole when parameters change."""

    max_expressions: int
    max_rate: float
    publish_debug: bool
    use_depth: bool
    depth: DepthSettings
    sync_tolerance_ns: int


def _descriptor(description: str, *, read_only: bool = False, float_range: Optional[tuple[float, float]] = None,
                int_range: Optional[tuple[int, int]] = None, constraints: str = "") -> ParameterDescriptor:
    descriptor = ParameterDescriptor(description=description, read_only=read_only, additional_constraints=constraints)
    if float_range is not None:
        descriptor.floating_point_range = [FloatingPointRange(from_value=float_range[0], to_value=float_range[1], step=0.0)]
    if int_range is not None:
        descriptor.integer_range = [IntegerRange(from_value=int_range[0], to_value=int_range[1], step=1)]
    return descriptor


PARAMETERS = {
    "autostart": (True, _descriptor("Configure and activate at startup; false when a lifecycle manager drives the node.",
                                    read_only=True)),
    "checkpoint": ("demo", _descriptor("Checkpoint file, or 'demo' for the bundled demo model. Read at configure.")),
    "preset": ("", _descriptor("Preset name (e.g. 'tiny'): build that model with random weights instead of loading "
                               "`checkpoint` (tests, bring-up). Read at configure.")),
    "seed": (0, _descriptor("Seed of the random weights of `preset`. Read at configure.")),
    "device": ("auto", _descriptor("Inference device. Read at configure.", constraints="auto, cpu, cuda or cuda:N")),
    "precision": ("auto", _descriptor("Inference precision; auto = fp16 on CUDA, fp32 on CPU. Read at configure.",
                                      constraints=", ".join(PRECISIONS))),
    "mask_threshold": (0.5, _descriptor("Probability above which a pixel belongs to the mask.", float_range=(0.0, 1.0))),
    "presence_threshold": (0.5, _descriptor("Presence score at or above which the target counts as found.",
                                            float_range=(0.0, 1.0))),
    "expressions": (Parameter.Type.STRING_ARRAY, _descriptor(
        "Expressions to segment from the start, as if published on /referring_expression; a message there replaces them.")),
    "max_expressions": (8, _descriptor("Most expressions accepted in one message (one batch per frame).",
                                       int_range=(1, 64))),
    "max_rate": (10.0, _descriptor("Most frames segmented per second; 0 = as fast as the model runs.",
                                   float_range=(0.0, 1000.0))),
    "publish_debug": (True, _descriptor("Render ~/debug_image (only while it has subscribers).")),
    "use_depth": (True, _descriptor("Use depth + camera_info for a 3D centroid.")),
    "depth_scale": (0.001, _descriptor("Metres per unit of an integer (16UC1 / mono16) depth image; 0.001 for mm.",
                                       float_range=(1e-6, 1.0))),
    "depth_min": (0.1, _descriptor("Depths below this (m) are invalid.", float_range=(0.0, 100.0))),
    "depth_max": (10.0, _descriptor("Depths above this (m) are invalid.", float_range=(0.0, 100.0))),
    "depth_erosion_px": (2, _descriptor("Erode the mask by this many pixels before taking its median depth, "
                                        "away from mixed foreground/background edge pixels.", int_range=(0, 50))),
    "sync_tolerance": (0.05, _descriptor("Largest stamp difference (s) between a color frame and the depth / "
                                         "camera_info used with it.", float_range=(0.0, 10.0))),
    "image_reliability": ("best_effort", _descriptor("QoS reliability of the image, depth and camera_info "
                                                     "subscriptions. Read at activate.",
                                                     constraints=", ".join(RELIABILITIES))),
    "problem_log_period": (5.0, _descriptor("Seconds between two warnings about the same kind of bad input.",
                                            float_range=(0.0, 3600.0))),
}


def logged_transition(callback):
    """rclpy turns an exception in a transition callback into ERROR without a word: say what it was."""

    @functools.wraps(callback)
    def wrapper(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            return callback(self, state)
        except Exception:
            self.get_logger().error(f"{callback.__name__} raised:\n{traceback.format_exc()}")
            return TransitionCallbackReturn.ERROR

    return wrapper


class MeresNode(LifecycleNode):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        for name, (default, descriptor) in PARAMETERS.items():
            self.declare_parameter(name, default, descriptor)
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)

        self._problems = ProblemLog(self.get_logger(), self.get_parameter("problem_log_period").value)
        self._settings = self._read_live_settings()
        self._result_types = result_message_types()
        if self._result_types is None:
            self.get_logger().warning(
                "meres_ros_interfaces is not built: ~/result and ~/results are disabled; "
                "~/mask, ~/centroid and ~/debug_image are published (see meres_ros_interfaces/README.md)")

        self._segmenter = None
        self._expressions: list[str] = []
        self._expressions_lock = threading.Lock()
        self._frames = LatestSlot()
        self._depths = StampBuffer(STAMP_BUFFER_LENGTH)
        self._camera_infos = StampBuffer(STAMP_BUFFER_LENGTH)
        self._last_color_stamp: Optional[int] = None
        self._worker: Optional[threading.Thread] = None
        self._stop_worker = threading.Event()
        self._stats = Counter()
        self._outputs: dict[str, object] = {}
        self._expression_subscription = None
        self._input_subscriptions: list = []

    # Lifecycle ---------------------------------------------------------------------------

    @logged_transition
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        source = ModelSource(
            checkpoint=self.get_parameter("checkpoint").value,
            preset=self.get_parameter("preset").value,
            seed=self.get_parameter("seed").value,
            device=self.get_parameter("device").value,
            precision=self.get_parameter("precision").value,
        )
        self.get_logger().info(f"loading {source.describe()}")
        try:
            self._segmenter = load_segmenter(source, self.get_parameter("mask_threshold").value,
                                             self.get_parameter("presence_threshold").value)
        except Exception as error:  # CheckpointError, ValueError (device), OSError, ...: stay unconfigured
            self.get_logger().error(f"configure failed, cannot load {source.describe()}: {type(error).__name__}: {error}")
            self._segmenter = None
            release_memory()
            return TransitionCallbackReturn.FAILURE

        reliable = QoSProfile(depth=5, reliability=QoSReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                             durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
        self._outputs = {
            "mask": self.create_lifecycle_publisher(Image, "~/mask", reliable),
            "centroid": self.create_lifecycle_publisher(PointStamped, "~/centroid", reliable),
            "debug_image": self.create_lifecycle_publisher(Image, "~/debug_image", reliable),
            "expression": self.create_publisher(String, "~/expression", latched),
        }
        if self._result_types is not None:
            result_type, array_type = self._result_types
            self._outputs["result"] = self.create_lifecycle_publisher(result_type, "~/result", reliable)
            self._outputs["results"] = self.create_lifecycle_publisher(array_type, "~/results", reliable)

        if self._expressions_parameter():
            self._set_expressions(self._expressions_parameter(), origin="parameter expressions")
        else:  # tell ~/expression listeners what the node holds (nothing yet, or what it had before a cleanup)
            self._outputs["expression"].publish(String(data="; ".join(self._current_expressions())))
        self._expression_subscription = self.create_subscription(String, "/referring_expression",
                                                                 self._on_expression, latched)
        self.get_logger().info("configured")
        return TransitionCallbackReturn.SUCCESS

    @logged_transition
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        reliability = RELIABILITIES[self.get_parameter("image_reliability").value]
        latest_only = QoSProfile(depth=1, history=QoSHistoryPolicy.KEEP_LAST, reliability=reliability,
                                 durability=qos_profile_sensor_data.durability)
        small = QoSProfile(depth=STAMP_BUFFER_LENGTH, reliability=reliability,
                           durability=qos_profile_sensor_data.durability)
        self._input_subscriptions = [
            self.create_subscription(Image, "image", self._on_image, latest_only),
            self.create_subscription(Image, "depth", self._on_depth, small),
            self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, small),
        ]
        self._stop_worker.clear()
        self._worker = threading.Thread(target=self._run_worker, name="meres_inference", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"active: segmenting '{self.resolve_topic_name('image')}' for "
            f"'{self.resolve_topic_name('/referring_expression')}' "
            f"({'; '.join(self._current_expressions()) or 'no expression yet'})")
        return super().on_activate(state)

    @logged_transition
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop()
        self.get_logger().info("inactive")
        return super().on_deactivate(state)

    @logged_transition
    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release()
        self.get_logger().info("cleaned up, model freed")
        return TransitionCallbackReturn.SUCCESS

    @logged_transition
    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release()
        return TransitionCallbackReturn.SUCCESS

    @logged_transition
    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.get_logger().error(f"error in state {state.label}: releasing everything")
        self.release()
        return TransitionCallbackReturn.SUCCESS

    def _stop(self) -> None:
        """Stop the worker and drop the image subscriptions (inverse of activate)."""
        if self._worker is None:
            return
        self._stop_worker.set()
        self._frames.wake()
        self._worker.join()
        self._worker = None
        for subscription in self._input_subscriptions:
            self.destroy_subscription(subscription)
        self._input_subscriptions = []
        self._frames.take(timeout=0.0)
        self._depths.clear()
        self._camera_infos.clear()
        self._log_statistics()

    def release(self) -> None:
        """Inverse of configure, from any state; also what process exit runs."""
        self._stop()
        if self._expression_subscription is not None:
            self.destroy_subscription(self._expression_subscription)
            self._expression_subscription = None
        for name, publisher in self._outputs.items():
            if name == "expression":
                self.destroy_publisher(publisher)
            else:
                self.destroy_lifecycle_publisher(publisher)
        self._outputs = {}
        self._segmenter = None
        release_memory()

    def _log_statistics(self) -> None:
        if not self._stats["received"]:
            return
        problems = ", ".join(f"{kind} {count}" for kind, count in sorted(self._problems.counts.items())) or "none"
        self.get_logger().info(
            f"frames: received {self._stats['received']}, segmented {self._stats['segmented']}, "
            f"dropped as stale {self._frames.dropped}; bad input: {problems}")

    # Parameters --------------------------------------------------------------------------

    def _validate_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        values = {p.name: p.value for p in parameters}
        if "device" in values and not DEVICE_PATTERN.match(str(values["device"])):
            return SetParametersResult(successful=False, reason=f"device must be auto, cpu, cuda or cuda:N, got {values['device']!r}")
        if "precision" in values and values["precision"] not in PRECISIONS:
            return SetParametersResult(successful=False, reason=f"precision must be one of {', '.join(PRECISIONS)}")
        if "image_reliability" in values and values["image_reliability"] not in RELIABILITIES:
            return SetParametersResult(successful=False, reason=f"image_reliability must be one of {', '.join(RELIABILITIES)}")
        depth_min = values.get("depth_min", self._parameter_or_none("depth_min"))
        depth_max = values.get("depth_max", self._parameter_or_none("depth_max"))
        if depth_min is not None and depth_max is not None and depth_min >= depth_max:
            return SetParametersResult(successful=False, reason=f"depth_min {depth_min} must be below depth_max {depth_max}")
        return SetParametersResult(successful=True)

    def _parameter_or_none(self, name: str):
        return self.get_parameter(name).value if self.has_parameter(name) else None

    def _apply_parameters(self, parameters: list[Parameter]) -> None:
        names = {p.name for p in parameters}
        self._settings = self._read_live_settings()
        self._problems.period_s = self.get_parameter("problem_log_period").value
        if self._segmenter is not None:
            self._segmenter.mask_threshold = self.get_parameter("mask_threshold").value
            self._segmenter.presence_threshold = self.get_parameter("presence_threshold").value
        if "expressions" in names and self._segmenter is not None:
            self._set_expressions(self._expressions_parameter(), origin="parameter expressions")
        deferred = sorted(names - LIVE_PARAMETERS)
        if deferred:
            self.get_logger().info(f"{', '.join(deferred)} take effect at the next configure / activate")

    def _expressions_parameter(self) -> list[str]:
        # An empty list in YAML leaves a string-array parameter unset, hence get_parameter_or.
        values = self.get_parameter_or("expressions").value or []
        return [e.strip()[:MAX_EXPRESSION_CHARS] for e in values if e.strip()][: self._settings.max_expressions]

    def _read_live_settings(self) -> LiveSettings:
        value = lambda name: self.get_parameter(name).value  # noqa: E731
        return LiveSettings(
            max_expressions=value("max_expressions"),
            max_rate=value("max_rate"),
            publish_debug=value("publish_debug"),
            use_depth=value("use_depth"),
            depth=DepthSettings(scale=value("depth_scale"), depth_range=DepthRange(value("depth_min"), value("depth_max")),
                                erosion_px=value("depth_erosion_px")),
            sync_tolerance_ns=int(value("sync_tolerance") * 1e9),
        )

    # Callbacks: store, never compute -----------------------------------------------------

    def _on_expression(self, msg: String) -> None:
        try:
            expressions = parse_expressions(msg.data, self._settings.max_expressions)
        except ValueError as error:
            self._problems.report("expression", f"ignored: {error}")
            return
        self._set_expressions(expressions, origin="/referring_expression")

    def _set_expressions(self, expressions: list[str], origin: str) -> None:
        with self._expressions_lock:
            self._expressions = expressions
        shown = "; ".join(expressions)
        self.get_logger().info(f"expressions from {origin}: {shown[:200]!r}" if expressions else f"target cleared by {origin}")
        if "expression" in self._outputs:
            self._outputs["expression"].publish(String(data=shown))

    def _current_expressions(self) -> list[str]:
        with self._expressions_lock:
            return list(self._expressions)

    def _on_image(self, msg: Image) -> None:
        self._stats["received"] += 1
        try:
            check_color_image(msg)  # here, not in the worker: it sees only the frames it has time for
        except ValueError as error:
            self._problems.report("image", f"color image dropped: {error}")
            return
        stamp = stamp_ns(msg.header.stamp)
        if self._last_color_stamp is not None and stamp < self._last_color_stamp:
            # A bag restarted or the clock was reset: older depth would match nothing sensible.
            self._problems.report("stamp", f"image stamp went back {(self._last_color_stamp - stamp) / 1e9:.3f} s; "
                                           "depth and camera_info buffers cleared")
            self._depths.clear()
            self._camera_infos.clear()
        self._last_color_stamp = stamp
        self._frames.put(msg)

    def _on_depth(self, msg: Image) -> None:
        self._stats["depth_received"] += 1
        try:
            check_depth_image(msg)
        except ValueError as error:
            self._problems.report("depth", f"depth image dropped: {error}")
            return
        self._depths.add(msg)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._stats["camera_info_received"] += 1
        try:
            PinholeCamera.from_camera_info(msg)
        except ValueError as error:
            self._problems.report("camera_info", f"CameraInfo dropped: {error}")
            return
        self._camera_infos.add(msg)

    # Worker ------------------------------------------------------------------------------

    def _run_worker(self) -> None:
        next_start = 0.0
        while not self._stop_worker.is_set():
            # Wait for the rate slot before taking a frame, so the frame taken is the newest.
            delay = next_start - time.monotonic()
            if delay > 0 and self._stop_worker.wait(delay):
                break
            msg = self._frames.take(timeout=0.2)
            if msg is None:
                continue
            settings = self._settings
            next_start = time.monotonic() + (1.0 / settings.max_rate if settings.max_rate > 0 else 0.0)
            try:
                self._process(msg, settings)
            except Exception as error:  # a bug or a device failure must not end the worker
                self._problems.report("internal", f"frame skipped: {type(error).__name__}: {error}")

    def _process(self, msg: Image, settings: LiveSettings) -> None:
        expressions = self._current_expressions()
        segmenter = self._segmenter
        if not expressions or segmenter is None:
            return
        try:
            rgb = image_to_rgb(msg)
        except ValueError as error:
            self._problems.report("image", f"color image dropped: {error}")
            return
        frame = Frame(rgb)
        if settings.use_depth:
            self._attach_depth(frame, msg, settings)
        try:
            targets = segment_frame(segmenter, frame, expressions, settings.depth)
        except ValueError as error:
            self._problems.report("inference", f"segmentation refused: {error}")
            return
        self._stats["segmented"] += 1
        if frame.depth_m is not None:
            for target in targets:
                if target.pixel_centroid is not None and target.point_3d is None:
                    self._problems.report("depth", f"no valid depth inside the mask of {target.expression[:40]!r} "
                                                   f"(NaN, 0 or outside [{settings.depth.depth_range.min_m:g}, "
                                                   f"{settings.depth.depth_range.max_m:g}] m): centroid in pixels")
        self._publish(msg.header, frame, targets, settings)

    def _attach_depth(self, frame: Frame, msg: Image, settings: LiveSettings) -> None:
        stamp = stamp_ns(msg.header.stamp)
        depth_msg = self._depths.nearest(stamp, settings.sync_tolerance_ns)
        info_msg = self._camera_infos.nearest(stamp, settings.sync_tolerance_ns)
        if not (self._stats["depth_received"] and self._stats["camera_info_received"]):
            self.get_logger().info("no depth or camera_info received yet: ~/centroid is in pixels until both arrive "
                                   "(use_depth:=false if there is no depth camera)", once=True)
            return
        if depth_msg is None or info_msg is None:
            missing = " and ".join(name for name, m in (("depth", depth_msg), ("camera_info", info_msg)) if m is None)
            self._problems.report("sync", f"no {missing} within {settings.sync_tolerance_ns / 1e9:g} s of the color "
                                          "frame: centroid without metric depth")
            return
        try:
            frame.depth_m, frame.camera = depth_and_camera(frame.rgb.shape, depth_msg, info_msg, settings.depth.scale)
        except InputError as error:
            self._problems.report(error.kind, f"no 3D centroid for this frame: {error}")

    # Output ------------------------------------------------------------------------------

    def _publish(self, header, frame: Frame, targets: list[Target], settings: LiveSettings) -> None:
        primary = targets[0]
        if primary.pixel_centroid is not None:
            point = PointStamped(header=header)
            if primary.point_3d is not None:
                point.point.x, point.point.y, point.point.z = primary.point_3d
            else:
                point.point.x, point.point.y = primary.pixel_centroid
            self._outputs["centroid"].publish(point)
        masks = [numpy_to_image(t.mask.astype(np.uint8) * 255, "mono8", header) for t in targets]
        if self._result_types is not None:
            elapsed = inference_ms(targets)
            results = [self._result_message(header, t, m, elapsed) for t, m in zip(targets, masks)]
            self._outputs["result"].publish(results[0])
            self._outputs["results"].publish(self._result_types[1](header=header, results=results))
        self._outputs["mask"].publish(masks[0])
        debug = self._outputs["debug_image"]
        if settings.publish_debug and debug.get_subscription_count() > 0:
            debug.publish(numpy_to_image(render_overlay(frame.rgb, targets), "rgb8", header))

    def _result_message(self, header, target: Target, mask: Image, elapsed_ms: float):
        result = self._result_types[0](header=header, expression=target.expression, found=target.found,
                                       score=float(target.score), mask=mask, inference_time_ms=float(elapsed_ms))
        if target.bbox is not None:
            x0, y0, x1, y1 = target.bbox
            result.bbox = RegionOfInterest(x_offset=x0, y_offset=y0, width=x1 - x0 + 1, height=y1 - y0 + 1)
        result.centroid_u, result.centroid_v = target.pixel_centroid or (math.nan, math.nan)
        result.depth = float(target.depth_m) if target.depth_m is not None else math.nan
        if target.point_3d is not None:
            result.centroid_3d_valid = True
            result.centroid_3d.x, result.centroid_3d.y, result.centroid_3d.z = target.point_3d
        return result


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(args=None) -> None:
    # SIGINT / SIGTERM raise KeyboardInterrupt here instead of rclpy shutting the context down
    # from its own handler, so the node can still log and publish while it releases the model.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    node = MeresNode()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        if node.get_parameter("autostart").value and node.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            node.trigger_activate()
        while rclpy.ok():
            executor.spin_once(timeout_sec=SPIN_PERIOD_S)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.release()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
