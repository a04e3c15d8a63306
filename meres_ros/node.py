"""`meres_node`: a managed (lifecycle) node that segments what a sentence refers to.

Inputs (names, QoS and parameters: meres_ros/interface.py)
  image                  sensor_msgs/Image, color (rgb8, bgr8, rgba8, bgra8, mono8, mono16); keep last 1,
                         reliability from `image_reliability`; with image_transport:=compressed,
                         sensor_msgs/CompressedImage (JPEG, PNG) on image/compressed, decoded by the worker
  depth                  sensor_msgs/Image registered to `image` (16UC1 / mono16 x depth_scale, 32FC1 m); optional
  camera_info            sensor_msgs/CameraInfo of the color camera; optional
  /referring_expression  std_msgs/String from any publisher: volatile or latched, before or after the node
                         started. "a; b" = several expressions, segmented in one batched call; "" clears the target.
Outputs (header = the input image's header)
  ~/mask         sensor_msgs/Image mono8, 0 / 255: the first expression's mask (all 0 when absent)
  ~/centroid     geometry_msgs/PointStamped, metres in the image's optical frame: the first expression's
                 grasp point, published only when depth and CameraInfo gave one (never pixels)
  ~/result       meres_ros_interfaces/ReferringSegmentation of the first expression (pixel centroid: centroid_u/v;
                 request_id, "which one?" candidates, 3D extent and depth spread, principal axis; mask per mask_mode)
  ~/results      meres_ros_interfaces/ReferringSegmentationArray, one entry per expression
  ~/expression   std_msgs/String, latched: the expressions in use ("a; b"), republished on change
  ~/debug_image  sensor_msgs/Image rgb8 overlay, rendered only while someone subscribes
  ~/markers      visualization_msgs/MarkerArray for RViz: per 3D target a box of its extent and its sentence,
                 only while someone subscribes
  /diagnostics   diagnostic_msgs/DiagnosticArray, 1 Hz: model, rates, latency, drops, last error

A result is published only if the expressions it answers are still the node's: a
frame in flight when a new sentence arrives is dropped, not published.

Lifecycle: configure loads the model (a bad checkpoint fails the transition and
the node stays unconfigured), activate subscribes to the images and starts the
worker, deactivate stops both, cleanup frees the model. With `autostart` the
node configures and activates itself. After `max_consecutive_failures` model
failures in a row the node takes the lifecycle error path (errorprocessing ->
unconfigured, model released) and says why.

Threads: subscription callbacks only store messages. One worker thread runs
the model on the newest color frame; frames that arrive while it is busy
replace the waiting one and are counted as dropped, so a slow model never
builds a backlog. Configure builds the model in a thread that ends
(ModelSource.load): an OpenMP pool left in the executor thread would slow
every kernel of the worker's (meres_core.device.in_passing_thread).
"""
from __future__ import annotations

import functools
import itertools
import math
import signal
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PointStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSDurabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rclpy.subscription import Subscription
from rclpy.task import Future
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, RegionOfInterest
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

try:  # Iron and later
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks

from meres_ros import health
from meres_ros.conversions import (
    check_color_image,
    check_compressed_image,
    check_depth_image,
    color_to_rgb,
    numpy_to_image,
)
from meres_ros.geometry import DepthRange, PinholeCamera
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
    EXPRESSION_QOS,
    EXPRESSION_TOPIC,
    IMAGE_TOPIC,
    LIVE_PARAMETERS,
    MARKERS_TOPIC,
    MASK_TOPIC,
    NODE_NAME,
    PARAMETERS,
    RESULT_QOS,
    RESULT_TOPIC,
    RESULTS_TOPIC,
    SEGMENT_SERVICE,
    SEGMENT_TIMEOUT_S,
    STAMP_BUFFER_LENGTH,
    image_qos,
    paired_input_qos,
    parameter_problem,
    result_message_types,
    segment_service_type,
)
from meres_ros.pipeline import (
    EXPRESSION_SEPARATOR,
    MAX_EXPRESSION_CHARS,
    DepthSettings,
    Frame,
    InputError,
    Target,
    depth_and_camera,
    inference_ms,
    mask_window,
    parse_expressions,
    release_memory,
    render_overlay,
    segment_frame,
)
from meres_core.model_source import ModelSource, with_settings
from meres_ros.markers import target_markers
from meres_ros.streams import (
    FramePacer,
    LatchedCopies,
    LatestSlot,
    OneShot,
    OneShotQueue,
    ProblemLog,
    StampBuffer,
    stamp_ns,
)
from meres_ros.tracking import TargetTracker

# The executor wakes at least this often (s), so a signal is handled promptly.
SPIN_PERIOD_S = 0.1
DIAGNOSTICS_PERIOD_S = 1.0
# Outputs built and published only while something subscribes (volatile topics: nothing is owed to later ones).
LAZY_OUTPUTS = ("mask", "result", "results", "debug_image", "markers")
# A depth / camera_info stream counts as live (worth waiting for) while its newest stamp is this close.
LIVE_STREAM_WINDOW_NS = 1_000_000_000
# Iron and later pass a two-argument subscription callback the message info, whose source timestamp
# identifies one publish: the two copies of a latched sentence are then recognized exactly.
MESSAGE_INFO_CALLBACKS = hasattr(Subscription, "CallbackType")
# Humble only: a sentence heard on both expression subscriptions this close together is one message twice:
# live first, the history subscription may be created (graph checked at 1 Hz) and replay it seconds later;
# history first, the live copy usually follows within milliseconds.
LATCHED_COPY_WINDOWS_S = (5.0, 1.0)
DIAGNOSTIC_LEVELS = {health.OK: DiagnosticStatus.OK, health.WARN: DiagnosticStatus.WARN,
                     health.ERROR: DiagnosticStatus.ERROR}


@dataclass(frozen=True)
class LiveSettings:
    """What the worker reads for each frame; replaced as a whole when parameters change."""

    max_expressions: int
    max_rate: float
    max_result_age: float  # camera periods; 0: answer the newest frame at once (FramePacer)
    publish_debug: bool
    use_depth: bool
    depth: DepthSettings
    sync_tolerance_ns: int
    sync_wait_s: float
    rectified: bool
    mask_threshold: Optional[float]  # None: the model's own
    presence_threshold: Optional[float]
    ambiguity_ratio: Optional[float]
    mask_mode: str  # pipeline.MASK_MODES: what each result message carries as its mask
    target_smoothing: float
    target_lost_frames: int

    def decision(self, segmenter):
        """The model's decision with these settings where they are set."""
        return with_settings(segmenter.decision, mask_threshold=self.mask_threshold,
                             presence_threshold=self.presence_threshold, ambiguity_ratio=self.ambiguity_ratio)


@dataclass(frozen=True)
class Expressions:
    """The sentences being segmented; a new object, with the next `request_id`, for each sentence taken."""

    texts: tuple[str, ...] = ()
    request_id: int = 0  # ReferringSegmentation.request_id of the results for these sentences


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
        self._ready = False  # parameters are applied to the node once it is built
        # Registered before the declarations, which run it: a bad value in a parameter file is
        # refused at startup, with its name, instead of failing later in a transition.
        self.add_on_set_parameters_callback(self._check_parameters)
        try:
            for name, (default, descriptor) in PARAMETERS.items():
                self.declare_parameter(name, default, descriptor)
        except ParameterException:
            # Nobody else holds this half-built node: destroy it before main() shuts rclpy down, not when
            # the interpreter collects it afterwards (a CI run saw that exit die with SIGSEGV, not 2).
            self.destroy_node()
            raise
        # Humble has no post-set callback (it came in Iron): there the check applies accepted values itself.
        self._post_set_available = hasattr(self, "add_post_set_parameters_callback")
        if self._post_set_available:
            self.add_post_set_parameters_callback(
                lambda parameters: self._apply_parameters({p.name: p.value for p in parameters}))

        self._problems = ProblemLog(self.get_logger().warning, self.get_parameter("problem_log_period").value)
        self._health = health.Health(self.get_parameter("image_timeout").value,
                                     self.get_parameter("max_consecutive_failures").value)
        self._settings = self._read_live_settings(self._parameter)
        self._result_types = result_message_types()
        if self._result_types is None:
            self.get_logger().warning(
                "meres_ros_interfaces is not built: ~/result and ~/results are disabled; "
                "~/mask, ~/centroid and ~/debug_image are published (see meres_ros_interfaces/README.md)")

        self._segmenter = None
        self._said_no_depth = False  # the "no depth yet" hint is logged once per process
        self._model_description = "not loaded"
        self._text_encoder_calls = 0
        self._expressions = Expressions()
        self._expressions_lock = threading.Lock()  # held while a result is checked against them and published
        self._latched_copies = LatchedCopies(*LATCHED_COPY_WINDOWS_S)
        self._frames = LatestSlot()  # (color Image, monotonic time received)
        self._pacer = FramePacer()  # waits for a fresher frame when the newest would be answered late
        self._depths = StampBuffer(STAMP_BUFFER_LENGTH)
        self._camera_infos = StampBuffer(STAMP_BUFFER_LENGTH)
        self._last_color_stamp: Optional[int] = None
        self._worker: Optional[threading.Thread] = None
        self._stop_worker = threading.Event()
        self._model_broken = False  # set by the worker; the deactivate it triggers then reports ERROR
        self._stale_results = 0
        # Request ids: one count for every sentence taken, streaming or one-shot (ReferringSegmentation.request_id).
        self._request_ids = itertools.count(1)
        self._one_shots = OneShotQueue()
        self._one_shot_answers: deque = deque()  # (request_id, (success, message, result)), from the worker
        self._one_shot_futures: dict[int, Future] = {}  # executor thread only
        self._segment_service = None
        self._tracker = TargetTracker()  # the worker's; replaced when its parameters change
        self._outputs: dict[str, object] = {}
        self._expression_subscription = None
        self._history_subscription = None
        self._input_subscriptions: list = []

        # The worker cannot change the lifecycle state itself (deactivate joins it): it wakes the executor.
        self._error_path = self.create_guard_condition(self._take_error_path)
        # The worker's one-shot answers are handed to the waiting service calls in the executor thread.
        self._one_shot_answered = self.create_guard_condition(self._deliver_one_shot_answers)
        self._diagnostics = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, DIAGNOSTICS_QOS)
        self.create_timer(DIAGNOSTICS_PERIOD_S, self._tick)
        self._ready = True

    # Lifecycle ---------------------------------------------------------------------------

    @logged_transition
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        source = ModelSource(**{name: self.get_parameter(name).value for name in ModelSource.__dataclass_fields__})
        self.get_logger().info(f"loading {source.describe()}")
        try:
            self._segmenter = source.load()
        except Exception as error:  # CheckpointError, ValueError (device), OSError, ...: stay unconfigured
            self.get_logger().error(f"configure failed, cannot load {source.describe()}: {type(error).__name__}: {error}")
            self._segmenter = None
            release_memory()
            return TransitionCallbackReturn.FAILURE
        self._model_description = source.describe()
        self._text_encoder_calls = 0
        # Real forward calls of the text encoder (a sentence the Segmenter has cached costs none): /diagnostics.
        self._segmenter.model.text.register_forward_hook(self._count_text_encoder_call)
        self._health.reset_failures()
        self._model_broken = False

        self._outputs = {
            "mask": self.create_lifecycle_publisher(Image, MASK_TOPIC, RESULT_QOS),
            "centroid": self.create_lifecycle_publisher(PointStamped, CENTROID_TOPIC, RESULT_QOS),
            "debug_image": self.create_lifecycle_publisher(Image, DEBUG_IMAGE_TOPIC, RESULT_QOS),
            "markers": self.create_lifecycle_publisher(MarkerArray, MARKERS_TOPIC, RESULT_QOS),
            "expression": self.create_publisher(String, ACTIVE_EXPRESSION_TOPIC, ACTIVE_EXPRESSION_QOS),
        }
        if self._result_types is not None:
            result_type, array_type, _ = self._result_types
            self._outputs["result"] = self.create_lifecycle_publisher(result_type, RESULT_TOPIC, RESULT_QOS)
            self._outputs["results"] = self.create_lifecycle_publisher(array_type, RESULTS_TOPIC, RESULT_QOS)

        if self._expressions_parameter():
            self._set_expressions(self._expressions_parameter(), origin="parameter expressions")
        else:  # tell ~/expression listeners what the node holds (nothing yet, or what it had before a cleanup)
            self._outputs["expression"].publish(String(data="; ".join(self._expressions.texts)))
        self._expression_subscription = self.create_subscription(
            String, EXPRESSION_TOPIC, self._expression_callback(from_history=False), EXPRESSION_QOS)
        self._watch_latched_publishers()
        service_type = segment_service_type()
        if service_type is not None and self._result_types is not None:
            # Its own reentrant group: a waiting request (a pending coroutine) keeps its callback group busy, and
            # in the node's default mutually exclusive group it would block the image callbacks and its own timer.
            self._segment_service = self.create_service(service_type, SEGMENT_SERVICE, self._on_segment_request,
                                                        callback_group=ReentrantCallbackGroup())
        self.get_logger().info("configured")
        return TransitionCallbackReturn.SUCCESS

    @logged_transition
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        reliability = self.get_parameter("image_reliability").value
        image_topic = self.resolve_topic_name(IMAGE_TOPIC)
        if self.get_parameter("image_transport").value == "compressed":
            # image_transport's naming: the transport's topic below the (remapped) base topic.
            image_topic = f"{image_topic}/compressed"
            color = self.create_subscription(CompressedImage, image_topic, self._on_compressed_image,
                                             image_qos(reliability))
        else:
            color = self.create_subscription(Image, image_topic, self._on_image, image_qos(reliability))
        self._input_subscriptions = [
            color,
            self.create_subscription(Image, DEPTH_TOPIC, self._on_depth, paired_input_qos(reliability)),
            self.create_subscription(CameraInfo, CAMERA_INFO_TOPIC, self._on_camera_info, paired_input_qos(reliability)),
        ]
        self._stop_worker.clear()
        self._worker = threading.Thread(target=self._run_worker, name="meres_inference", daemon=True)
        self._worker.start()
        self._health.activated()
        self.get_logger().info(
            f"active: segmenting '{image_topic}' for "
            f"'{self.resolve_topic_name(EXPRESSION_TOPIC)}' "
            f"({'; '.join(self._expressions.texts) or 'no expression yet'})")
        return super().on_activate(state)

    @logged_transition
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop()
        if self._model_broken:  # the worker asked for this deactivate: make it the error path
            return TransitionCallbackReturn.ERROR
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
        self.get_logger().error(f"error processing (from {state.label}): model released, node unconfigured; "
                                "configure it again once the cause is fixed")
        self.release()
        return TransitionCallbackReturn.SUCCESS

    def _count_text_encoder_call(self, module, inputs, output) -> None:
        self._text_encoder_calls += 1

    def _take_error_path(self) -> None:
        if self._worker is not None:
            self.trigger_deactivate()  # on_deactivate returns ERROR: errorprocessing -> on_error -> unconfigured

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
        for request in self._one_shots.take_all():
            self._one_shot_answers.append((request.request_id, (False, "meres_node was deactivated", None)))
        self._deliver_one_shot_answers()
        self._log_statistics()

    def release(self) -> None:
        """Inverse of configure, from any state; also what process exit runs."""
        self._stop()
        for subscription in (self._expression_subscription, self._history_subscription):
            if subscription is not None:
                self.destroy_subscription(subscription)
        self._expression_subscription = self._history_subscription = None
        if self._segment_service is not None:
            self.destroy_service(self._segment_service)
            self._segment_service = None
        self._tracker = TargetTracker()  # the worker's; replaced when its parameters change
        for name, publisher in self._outputs.items():
            if name == "expression":
                self.destroy_publisher(publisher)
            else:
                self.destroy_lifecycle_publisher(publisher)
        self._outputs = {}
        self._segmenter = None
        self._model_description = "not loaded"
        release_memory()

    def _log_statistics(self) -> None:
        received = self._health.count("image")
        if not received:
            return
        problems = ", ".join(f"{kind} {count}" for kind, count in sorted(self._problems.counts.items())) or "none"
        self.get_logger().info(
            f"frames: received {received}, answered {self._health.count('result')}, "
            f"dropped as stale {self._frames.dropped}, dropped for a newer sentence {self._stale_results}; "
            f"bad input: {problems}")

    # Parameters --------------------------------------------------------------------------

    def _parameter(self, name: str):
        """The value, None for one declared unset (get_parameter raises for those)."""
        return self.get_parameter_or(name).value

    def _check_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        values = {p.name: p.value for p in parameters}
        current = {name: self._parameter(name) for name in PARAMETERS if self.has_parameter(name)}
        current.update(values)
        for name, value in values.items():
            problem = parameter_problem(name, value, current)
            if problem is not None:
                return SetParametersResult(successful=False, reason=problem)
        if self._ready and not self._post_set_available:
            self._apply_parameters(values)  # Humble: the values are accepted but not stored yet
        return SetParametersResult(successful=True)

    def _apply_parameters(self, changed: dict) -> None:
        """`changed`: the parameters just accepted, with their new values."""
        value = lambda name: changed[name] if name in changed else self._parameter(name)  # noqa: E731
        self._settings = self._read_live_settings(value)
        self._problems.period_s = value("problem_log_period")
        self._health.image_timeout_s = value("image_timeout")
        self._health.failure_limit = value("max_consecutive_failures")
        if "expressions" in changed and self._segmenter is not None:
            self._set_expressions(self._expressions_parameter(changed.get("expressions")), origin="parameter expressions")
        deferred = sorted(set(changed) - LIVE_PARAMETERS)
        if deferred:
            self.get_logger().info(f"{', '.join(deferred)} take effect at the next configure / activate")

    def _expressions_parameter(self, values: Optional[list[str]] = None) -> list[str]:
        if values is None:  # an empty list in YAML leaves a string-array parameter unset
            values = self._parameter("expressions")
        return [e.strip()[:MAX_EXPRESSION_CHARS] for e in values or [] if e.strip()][: self._settings.max_expressions]

    @staticmethod
    def _read_live_settings(value: Callable[[str], object]) -> LiveSettings:
        return LiveSettings(
            max_expressions=value("max_expressions"),
            max_rate=value("max_rate"),
            max_result_age=value("max_result_age"),
            publish_debug=value("publish_debug"),
            use_depth=value("use_depth"),
            depth=DepthSettings(scale=value("depth_scale"), depth_range=DepthRange(value("depth_min"), value("depth_max")),
                                erosion_px=value("depth_erosion_px")),
            sync_tolerance_ns=int(value("sync_tolerance") * 1e9),
            sync_wait_s=value("sync_wait"),
            rectified=value("rectified"),
            mask_threshold=value("mask_threshold"),
            presence_threshold=value("presence_threshold"),
            ambiguity_ratio=value("ambiguity_ratio"),
            mask_mode=value("mask_mode"),
            target_smoothing=value("target_smoothing"),
            target_lost_frames=value("target_lost_frames"),
        )

    # Expressions -------------------------------------------------------------------------

    def _watch_latched_publishers(self) -> None:
        """Hold a transient-local subscription exactly while a latched publisher exists.

        Only such a subscription is sent what a latched publisher published before it
        matched; while no latched publisher exists it would only make volatile publishers
        log that it is incompatible with them.
        """
        if self._expression_subscription is None:
            return
        publishers = self.get_publishers_info_by_topic(self.resolve_topic_name(EXPRESSION_TOPIC))
        latched = any(p.qos_profile.durability == QoSDurabilityPolicy.TRANSIENT_LOCAL for p in publishers)
        if latched and self._history_subscription is None:
            quiet = SubscriptionEventCallbacks(incompatible_qos=lambda event: self.get_logger().debug(
                "a volatile publisher of the expression topic does not match the latched-history subscription "
                "(expected: the volatile subscription hears it)"))
            self._history_subscription = self.create_subscription(
                String, EXPRESSION_TOPIC, self._expression_callback(from_history=True), EXPRESSION_HISTORY_QOS,
                event_callbacks=quiet)
        elif not latched and self._history_subscription is not None:
            self.destroy_subscription(self._history_subscription)
            self._history_subscription = None

    def _expression_callback(self, from_history: bool):
        """The callback of one expression subscription, with the message info where the distro passes it."""
        take = self._latched_copies.take_history if from_history else self._latched_copies.take_live
        origin = f"{EXPRESSION_TOPIC} (latched)" if from_history else EXPRESSION_TOPIC

        def on_expression(msg: String, info) -> None:
            if take(msg.data, info.get("source_timestamp") or None):  # 0: not reported by the middleware
                self._take_expression(msg.data, origin)

        def on_expression_humble(msg: String) -> None:
            if take(msg.data):
                self._take_expression(msg.data, origin)

        return on_expression if MESSAGE_INFO_CALLBACKS else on_expression_humble

    def _take_expression(self, text: str, origin: str) -> None:
        try:
            expressions = parse_expressions(text, self._settings.max_expressions)
        except ValueError as error:
            self._problems.report("expression", f"ignored: {error}")
            return
        self._set_expressions(expressions, origin)

    def _set_expressions(self, expressions: list[str], origin: str) -> None:
        """A sentence taken: a new request, even with the text of the current one (asked again, answered
        again: results computed before it are not published with its request id)."""
        with self._expressions_lock:
            repeated = tuple(expressions) == self._expressions.texts
            self._expressions = Expressions(tuple(expressions), next(self._request_ids))
        if repeated:
            return
        shown = "; ".join(expressions)
        self.get_logger().info(f"expressions from {origin}: {shown[:200]!r}" if expressions else f"target cleared by {origin}")
        if "expression" in self._outputs:
            self._outputs["expression"].publish(String(data=shown))

    # Sensor callbacks: store, never compute ----------------------------------------------

    def _on_image(self, msg: Image) -> None:
        self._take_color(msg, check_color_image)

    def _on_compressed_image(self, msg: CompressedImage) -> None:
        self._take_color(msg, check_compressed_image)  # the payload is decoded by the worker, for the frames it takes

    def _take_color(self, msg, check: Callable) -> None:
        self._health.received("image")
        try:
            check(msg)  # here, not in the worker: it sees only the frames it has time for
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
        received_at = time.monotonic()
        self._pacer.arrived(received_at)
        self._frames.put((msg, received_at))

    def _on_depth(self, msg: Image) -> None:
        self._health.received("depth")
        try:
            check_depth_image(msg)
        except ValueError as error:
            self._problems.report("depth", f"depth image dropped: {error}")
            return
        self._depths.add(msg)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._health.received("camera_info")
        try:
            PinholeCamera.from_camera_info(msg, self._settings.rectified)
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
            item = self._frames.take(timeout=0.2)
            if item is None:
                continue
            settings = self._settings
            started = time.monotonic()
            wait = self._pacer.wait_s(item[1], started, settings.max_result_age)
            if wait > 0:  # answering this frame would give an old result: the next one is due first
                fresher = self._frames.take(timeout=wait)
                if self._stop_worker.is_set():
                    break
                if fresher is not None:
                    self._pacer.skipped += 1
                    item, started = fresher, time.monotonic()
            next_start = started + (1.0 / settings.max_rate if settings.max_rate > 0 else 0.0)
            try:
                segmented = self._process(*item, settings)
            except Exception as error:  # the model (or a bug) failed on this frame: skip it, count it
                if self._worker_failed(error):
                    return
            else:
                if segmented:
                    self._pacer.answered(time.monotonic() - started)

    def _worker_failed(self, error: Exception) -> bool:
        """Log a failure (with its traceback the first time of its kind); True when the node must stop."""
        kind = type(error).__name__
        description = f"{kind}: {error}"
        failure = self._health.failed(kind, description)
        if failure.first_of_its_kind:
            self.get_logger().error(f"frame skipped: {description}\n{traceback.format_exc()}")
        else:
            self._problems.report("model", f"frame skipped: {description}")
        if "OutOfMemory" in kind:
            release_memory()  # give the next frame its chance
        if not failure.limit_reached:
            return False
        self.get_logger().error(
            f"the model failed on {failure.consecutive} frames in a row (max_consecutive_failures); last: "
            f"{description}. Taking the lifecycle error path: the model is released and the node unconfigured")
        self._model_broken = True
        self._error_path.trigger()
        return True

    def _process(self, msg, received_at: float, settings: LiveSettings) -> bool:
        """Segment one frame and publish; False when there was nothing to segment it for (or it was unusable)."""
        expressions = self._expressions
        segmenter = self._segmenter
        one_shots = self._one_shots.take_due(received_at)
        if not (expressions.texts or one_shots) or segmenter is None:
            return False
        try:
            rgb = color_to_rgb(msg)
        except ValueError as error:
            self._problems.report("image", f"color image dropped: {error}")
            for request in one_shots:  # their frame is the next usable one
                self._one_shots.add(request)
            return False
        frame = Frame(rgb)
        if settings.use_depth:
            self._attach_depth(frame, msg, settings)
        decision = settings.decision(segmenter)
        # One batch for the streaming expressions and the one-shot sentences.
        texts = expressions.texts + tuple(request.sentence for request in one_shots)
        try:
            # Inputs are checked by now: whatever this raises is the model failing (see _worker_failed).
            targets = segment_frame(segmenter, frame, texts, settings.depth, decision)
        except Exception as error:
            self._answer_one_shots(one_shots, lambda _: (False, f"model failed: {type(error).__name__}: {error}", None))
            raise
        streamed, answered = targets[:len(expressions.texts)], targets[len(expressions.texts):]
        elapsed = inference_ms(targets)
        self._answer_one_shots(one_shots, lambda i: (True, "", self._result_message(
            msg.header, answered[i], one_shots[i].request_id, settings.mask_mode, elapsed)))
        if not streamed:
            return True
        targets = streamed
        if frame.depth_m is not None:
            for target in targets:
                if target.pixel_centroid is not None and target.point_3d is None:
                    self._problems.report("depth", f"no valid depth inside the mask of {target.expression[:40]!r} "
                                                   f"(NaN, 0 or outside [{settings.depth.depth_range.min_m:g}, "
                                                   f"{settings.depth.depth_range.max_m:g}] m): no 3D centroid")
        self._track(targets, expressions.request_id, settings)
        self._publish(msg.header, frame, targets, settings, expressions, received_at)
        return True

    def _track(self, targets: list[Target], request_id: int, settings: LiveSettings) -> None:
        """The 3D point of each target as the tracker sees it: smoothed, held or lost."""
        if (self._tracker.smoothing, self._tracker.lost_after) != (settings.target_smoothing, settings.target_lost_frames):
            self._tracker = TargetTracker(settings.target_smoothing, settings.target_lost_frames)
        for index, target in enumerate(targets):
            state = self._tracker.update(request_id, index, target.point_3d)
            target.point_3d, target.lost = state.point, state.lost

    def _attach_depth(self, frame: Frame, msg: Image, settings: LiveSettings) -> None:
        if not (self._health.count("depth") and self._health.count("camera_info")):
            if not self._said_no_depth:  # not rclpy's once=True: it walks the stack on every call (~1 ms a frame here)
                self._said_no_depth = True
                self.get_logger().info("no depth or camera_info received yet: no 3D centroid until both arrive "
                                       "(use_depth:=false if there is no depth camera)")
            return
        stamp = stamp_ns(msg.header.stamp)
        deadline = time.monotonic() + settings.sync_wait_s
        depth_msg = self._depths.wait_for_partner(stamp, settings.sync_tolerance_ns, settings.sync_wait_s,
                                                  LIVE_STREAM_WINDOW_NS)
        info_msg = self._camera_infos.wait_for_partner(stamp, settings.sync_tolerance_ns,
                                                       max(deadline - time.monotonic(), 0.0), LIVE_STREAM_WINDOW_NS)
        if depth_msg is None or info_msg is None:
            missing = " and ".join(name for name, m in (("depth", depth_msg), ("camera_info", info_msg)) if m is None)
            self._problems.report("sync", f"no {missing} within {settings.sync_tolerance_ns / 1e9:g} s of the color "
                                          "frame: no 3D centroid")
            return
        for name, partner in (("depth", depth_msg), ("camera_info", info_msg)):
            if partner.header.frame_id != msg.header.frame_id:
                self._problems.report("frame_id", f"{name} frame_id '{partner.header.frame_id}' differs from the "
                                                  f"image's '{msg.header.frame_id}': depth must be registered to the "
                                                  "color image and camera_info must be the color camera's")
        try:
            frame.depth_m, frame.camera = depth_and_camera(frame.rgb.shape, depth_msg, info_msg, settings.depth.scale,
                                                           settings.rectified)
        except InputError as error:
            self._problems.report(error.kind, f"no 3D centroid for this frame: {error}")

    # One-shot requests (~/segment) -----------------------------------------------------------

    async def _on_segment_request(self, request, response):
        """Segment `request.sentence` in the next color frame; runs as a coroutine, so the executor keeps
        serving the image callbacks while it waits."""
        sentence = " ".join(request.sentence.split())[:MAX_EXPRESSION_CHARS]
        if self._worker is None:
            response.message = "meres_node is not active"
            return response
        if not sentence or EXPRESSION_SEPARATOR in sentence:
            response.message = (f"one sentence expected, got {request.sentence[:60]!r} "
                                "(several: publish 'a; b' on /referring_expression)")
            return response
        timeout = request.timeout if 0.0 < request.timeout < math.inf else SEGMENT_TIMEOUT_S
        one_shot = OneShot(next(self._request_ids), sentence, time.monotonic())
        future = Future()
        self._one_shot_futures[one_shot.request_id] = future
        self._one_shots.add(one_shot)
        timer = self.create_timer(timeout, lambda: self._expire_one_shot(one_shot.request_id, timeout))
        try:
            response.success, response.message, result = await future
        finally:
            timer.cancel()
            self.destroy_timer(timer)
            self._one_shot_futures.pop(one_shot.request_id, None)
        if result is not None:
            response.result = result
        return response

    def _expire_one_shot(self, request_id: int, timeout: float) -> None:
        self._one_shots.discard(request_id)
        future = self._one_shot_futures.get(request_id)
        if future is not None and not future.done():
            future.set_result((False, f"no color frame within {timeout:g} s", None))

    def _answer_one_shots(self, requests: list[OneShot], answer: Callable[[int], tuple]) -> None:
        """Worker side: `answer(i)` -> (success, message, result) for requests[i]."""
        if not requests:
            return
        for i, request in enumerate(requests):
            self._one_shot_answers.append((request.request_id, answer(i)))
        self._one_shot_answered.trigger()

    def _deliver_one_shot_answers(self) -> None:
        while self._one_shot_answers:
            request_id, answer = self._one_shot_answers.popleft()
            future = self._one_shot_futures.get(request_id)
            if future is not None and not future.done():  # else it timed out meanwhile
                future.set_result(answer)

    # Output ------------------------------------------------------------------------------

    def _publish(self, header, frame: Frame, targets: list[Target], settings: LiveSettings,
                 expressions: Expressions, received_at: float) -> None:
        """Each output that has a subscriber (image_transport's lazy publishing): a full-size mask costs a
        copy and its serialization, ~1 ms each at 640x480, for a topic nobody may read. What a robot acts
        on (centroid, results) goes out first; the images are built after it."""
        listened = {name: self._outputs[name].get_subscription_count() > 0 for name in LAZY_OUTPUTS
                    if name in self._outputs}
        primary = targets[0]
        centroid = None
        if primary.point_3d is not None:
            centroid = PointStamped(header=header)
            centroid.point.x, centroid.point.y, centroid.point.z = primary.point_3d
        results = None
        if self._result_types is not None and (listened.get("result") or listened.get("results")):
            elapsed = inference_ms(targets)
            results = [self._result_message(header, t, expressions.request_id, settings.mask_mode, elapsed)
                       for t in (targets if listened.get("results") else targets[:1])]
        result_array = self._result_types[1](header=header, results=results) if listened.get("results") else None
        firsts = {"centroid": centroid, "result": results[0] if listened.get("result") else None, "results": result_array}
        if not self._publish_if_current(expressions, firsts):
            self._stale_results += 1  # computed for sentences the node no longer holds: never published
            return
        overlay = None
        if settings.publish_debug and listened.get("debug_image"):
            overlay = numpy_to_image(render_overlay(frame.rgb, targets), "rgb8", header)
        markers = target_markers(header, targets) if listened.get("markers") else None
        mask = numpy_to_image(primary.mask.astype(np.uint8) * 255, "mono8", header) if listened.get("mask") else None
        # A sentence changed meanwhile keeps its images back; its results went out above.
        self._publish_if_current(expressions, {"debug_image": overlay, "markers": markers, "mask": mask})
        self._health.published(time.monotonic() - received_at)

    def _publish_if_current(self, expressions: Expressions, messages: dict) -> bool:
        """Publish the messages (None: skipped) on the outputs of those names, unless the node no longer
        holds `expressions` (or has no outputs, deactivated); False then, and nothing is published."""
        with self._expressions_lock:
            if self._expressions is not expressions or not self._outputs:
                return False
            for name, message in messages.items():
                if message is not None:
                    self._outputs[name].publish(message)
            return True

    def _result_message(self, header, target: Target, request_id: int, mask_mode: str, elapsed_ms: float):
        mask, offset_x, offset_y = mask_window(target, mask_mode)
        result = self._result_types[0](header=header, expression=target.expression, request_id=request_id,
                                       found=target.found, score=float(target.score),
                                       mask=numpy_to_image(mask, "mono8", header), mask_offset_x=offset_x,
                                       mask_offset_y=offset_y, inference_time_ms=float(elapsed_ms))
        if target.bbox is not None:
            result.bbox = region_of_interest(target.bbox)
        result.centroid_u, result.centroid_v = target.pixel_centroid or (math.nan, math.nan)
        result.ambiguous = target.ambiguous
        result.candidates = [self._result_types[2](score=c.score, bbox=region_of_interest(c.bbox), centroid_u=c.centroid[0],
                                                   centroid_v=c.centroid[1]) for c in target.candidates]
        result.axis_angle, result.axis_ratio = (target.axis_angle, target.axis_ratio) if target.found else (math.nan,) * 2
        result.depth = float(target.depth_m) if target.depth_m is not None else math.nan
        result.depth_std = float(target.depth_std_m) if target.depth_std_m is not None else math.nan
        result.depth_pixel_count = target.depth_pixel_count
        result.extent.x, result.extent.y, result.extent.z = target.extent_m or (math.nan,) * 3
        result.target_lost = target.lost
        if target.point_3d is not None:
            result.centroid_3d_valid = True
            result.centroid_3d.x, result.centroid_3d.y, result.centroid_3d.z = target.point_3d
        return result

    # Diagnostics -------------------------------------------------------------------------

    def _tick(self) -> None:
        self._watch_latched_publishers()
        self._publish_diagnostics()

    def _lifecycle_label(self) -> str:
        if self._worker is not None:
            return "active"
        return "inactive" if self._segmenter is not None else "unconfigured"

    def _publish_diagnostics(self) -> None:
        segmenter = self._segmenter
        details = {"model": self._model_description}
        if segmenter is not None:
            decision = self._settings.decision(segmenter)
            details.update({"device": str(segmenter.device), "precision": str(segmenter.dtype).removeprefix("torch."),
                            "image path": segmenter.image_path_state,
                            "mask_threshold": f"{decision.mask_threshold:g}",
                            "presence_threshold": f"{decision.presence_threshold:g}",
                            "ambiguity_ratio": f"{decision.ambiguity_ratio:g}",
                            "torch threads": str(torch_threads()), "text encoder calls": str(self._text_encoder_calls)})
        details["expressions"] = "; ".join(self._expressions.texts)[:200] or "-"
        details["results dropped for a newer sentence"] = str(self._stale_results)
        details["frames skipped for a fresher one"] = str(self._pacer.skipped)
        report = self._health.report(self._lifecycle_label(), details, self._frames.dropped)
        status = DiagnosticStatus(level=DIAGNOSTIC_LEVELS[report.level],
                                  name=f"meres_node: {self.get_fully_qualified_name()}",
                                  message=report.message, hardware_id=details.get("device", ""),
                                  values=[KeyValue(key=k, value=v) for k, v in report.values.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diagnostics.publish(array)


def torch_threads() -> int:
    torch = sys.modules.get("torch")  # imported with the model
    return torch.get_num_threads() if torch is not None else 0


def region_of_interest(bbox: tuple[int, int, int, int]) -> RegionOfInterest:
    """Inclusive (x_min, y_min, x_max, y_max) pixels -> sensor_msgs/RegionOfInterest."""
    x0, y0, x1, y1 = bbox
    return RegionOfInterest(x_offset=x0, y_offset=y0, width=x1 - x0 + 1, height=y1 - y0 + 1)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(args=None) -> int:
    # SIGINT / SIGTERM raise KeyboardInterrupt here instead of rclpy shutting the context down
    # from its own handler, so the node can still log and publish while it releases the model.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        node = MeresNode()
    except ParameterException as error:  # a bad value in a parameter file or on the command line
        rclpy.logging.get_logger(NODE_NAME).fatal(f"refusing to start: invalid parameter: {error}")
        rclpy.try_shutdown()
        return 2
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
