"""meres_node's interface, in one place: node name, topics, QoS profiles, parameters.

The node, `MeresClient`, `meres-demo` and the tests all read it from here, so a
topic or a QoS profile cannot drift between the node and the code that talks to it.
"""
from __future__ import annotations

import re
from typing import Optional

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.parameter import Parameter
from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy

from meres_core.config import BACKENDS
from meres_core.model_source import DEFAULT as DEFAULT_MODEL
from meres_core.model_source import PRECISIONS
from meres_ros.pipeline import MASK_MODES

NODE_NAME = "meres"

# Inputs (relative names: remap them, or push the node into a camera namespace).
IMAGE_TOPIC = "image"  # sensor_msgs/Image, color; or CompressedImage on image/compressed
IMAGE_TRANSPORTS = ("raw", "compressed")
DEPTH_TOPIC = "depth"  # sensor_msgs/Image, registered to the color image
CAMERA_INFO_TOPIC = "camera_info"  # sensor_msgs/CameraInfo of the color camera
EXPRESSION_TOPIC = "/referring_expression"  # std_msgs/String
# Outputs, private to the node (~/name).
MASK_TOPIC = "~/mask"  # sensor_msgs/Image mono8
CENTROID_TOPIC = "~/centroid"  # geometry_msgs/PointStamped, metres in the image's optical frame, only
RESULT_TOPIC = "~/result"  # meres_ros_interfaces/ReferringSegmentation (first expression)
RESULTS_TOPIC = "~/results"  # meres_ros_interfaces/ReferringSegmentationArray (every expression)
ACTIVE_EXPRESSION_TOPIC = "~/expression"  # std_msgs/String, latched: the expressions in use
DEBUG_IMAGE_TOPIC = "~/debug_image"  # sensor_msgs/Image rgb8
MARKERS_TOPIC = "~/markers"  # visualization_msgs/MarkerArray: 3D targets for RViz, only while subscribed
DIAGNOSTICS_TOPIC = "/diagnostics"  # diagnostic_msgs/DiagnosticArray
# One-shot requests: meres_ros_interfaces/srv/Segment; a request without a timeout waits this long (s).
SEGMENT_SERVICE = "~/segment"
SEGMENT_TIMEOUT_S = 5.0


def output_topic(node_name: str, private_topic: str) -> str:
    """'~/mask' of the node called `node_name` (maybe with a namespace) -> '/meres/mask'."""
    return f"/{node_name.strip('/')}/{private_topic.removeprefix('~/')}"


# QoS (REP 2003). Sensor inputs: keep the newest only, reliability chosen to match the driver.
RELIABILITIES = {"best_effort": QoSReliabilityPolicy.BEST_EFFORT, "reliable": QoSReliabilityPolicy.RELIABLE}
# Depth and CameraInfo messages kept for pairing by stamp: ~0.3 s at 30 Hz.
STAMP_BUFFER_LENGTH = 10


def image_qos(reliability: str) -> QoSProfile:
    return QoSProfile(depth=1, history=QoSHistoryPolicy.KEEP_LAST, reliability=RELIABILITIES[reliability],
                      durability=QoSDurabilityPolicy.VOLATILE)


def paired_input_qos(reliability: str) -> QoSProfile:
    """Depth and CameraInfo: a few messages deep, so the one paired with a color frame is still there."""
    return QoSProfile(depth=STAMP_BUFFER_LENGTH, history=QoSHistoryPolicy.KEEP_LAST,
                      reliability=RELIABILITIES[reliability], durability=QoSDurabilityPolicy.VOLATILE)


# Expressions. A reliable volatile subscription matches every publisher: rclpy's default
# (reliable, volatile), `ros2 topic pub` and latched (transient-local) ones. Only a
# transient-local subscription is sent what a latched publisher published before it
# matched; the node holds one while a latched publisher exists (a volatile publisher
# would see it as incompatible and log so).
EXPRESSION_QOS = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE,
                            durability=QoSDurabilityPolicy.VOLATILE)
EXPRESSION_HISTORY_QOS = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                                    durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
# Results: reliable, a few deep; a late subscriber gets nothing old.
RESULT_QOS = QoSProfile(depth=5, reliability=QoSReliabilityPolicy.RELIABLE, durability=QoSDurabilityPolicy.VOLATILE)
# ~/expression: latched, so a late subscriber learns what the node is looking for.
ACTIVE_EXPRESSION_QOS = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                                   durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
DIAGNOSTICS_QOS = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE,
                             durability=QoSDurabilityPolicy.VOLATILE)


def result_message_types():
    """(ReferringSegmentation, ReferringSegmentationArray, ReferringCandidate), or None when
    meres_ros_interfaces is not built."""
    try:
        from meres_ros_interfaces.msg import ReferringCandidate, ReferringSegmentation, ReferringSegmentationArray
    except ImportError:
        return None
    return ReferringSegmentation, ReferringSegmentationArray, ReferringCandidate


def segment_service_type():
    """meres_ros_interfaces/srv/Segment, or None when meres_ros_interfaces is not built."""
    try:
        from meres_ros_interfaces.srv import Segment
    except ImportError:
        return None
    return Segment


# Parameters ---------------------------------------------------------------------------------

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _descriptor(description: str, *, read_only: bool = False, float_range: Optional[tuple[float, float]] = None,
                int_range: Optional[tuple[int, int]] = None, constraints: str = "") -> ParameterDescriptor:
    descriptor = ParameterDescriptor(description=description, read_only=read_only, additional_constraints=constraints)
    if float_range is not None:
        descriptor.floating_point_range = [FloatingPointRange(from_value=float_range[0], to_value=float_range[1], step=0.0)]
    if int_range is not None:
        descriptor.integer_range = [IntegerRange(from_value=int_range[0], to_value=int_range[1], step=1)]
    return descriptor


# name -> (default, descriptor). A Parameter.Type default declares the parameter unset:
# the decision thresholds then come from the model's own InferenceConfig (meres_core/config.py).
# Declared in this order: a check that compares two parameters runs when the second is declared.
PARAMETERS = {
    "autostart": (True, _descriptor("Configure and activate at startup; false when a lifecycle manager drives the node.",
                                    read_only=True)),
    "checkpoint": (DEFAULT_MODEL.checkpoint, _descriptor("Checkpoint file, or 'demo' for the bundled demo model. Read at configure.")),
    "preset": (DEFAULT_MODEL.preset, _descriptor("Preset name (e.g. 'tiny'): build that model with random weights instead of loading "
                               "`checkpoint` (tests, bring-up). Read at configure.")),
    "seed": (DEFAULT_MODEL.seed, _descriptor("Seed of the random weights of `preset`. Read at configure.")),
    "device": (DEFAULT_MODEL.device, _descriptor("Inference device. Read at configure.", constraints="auto, cpu, cuda or cuda:N")),
    "precision": (DEFAULT_MODEL.precision, _descriptor("Inference precision; auto = fp16 on CUDA, bf16 on a CPU with bf16 units (AMX, AVX512-BF16), "
                                                       "else fp32. Read at configure.",
                                      constraints=", ".join(PRECISIONS))),
    "threads": (DEFAULT_MODEL.threads, _descriptor("CPU threads of the model's kernels (torch intra-op); 0 = torch's default (one per physical "
                                                   "core, or OMP_NUM_THREADS). "
                                                   "Read at configure.", int_range=(0, 1024))),
    "backend": (DEFAULT_MODEL.backend, _descriptor(
        "How the image path runs: auto (default: the compiled package when cached for this model and machine; until "
        "then eager while a background process at nice 19 compiles it, from the 50th frame on; eager on CUDA), torch "
        "(eager), onnx (onnxruntime) or compiled (AOTInductor: compiled on the first configure, minutes on a small CPU, "
        "then loaded from the cache); empty = the model's own (torch unless its config says otherwise). Read at configure.", constraints=", ".join(BACKENDS))),
    "mask_threshold": (Parameter.Type.DOUBLE, _descriptor(
        "Probability above which a pixel belongs to the mask. Unset: the model's own "
        "(inference.mask_threshold of its config).", float_range=(0.0, 1.0))),
    "presence_threshold": (Parameter.Type.DOUBLE, _descriptor(
        "Presence score at or above which the target counts as found. Unset: the model's own "
        "(inference.presence_threshold of its config).", float_range=(0.0, 1.0))),
    "ambiguity_ratio": (Parameter.Type.DOUBLE, _descriptor(
        "A result is ambiguous (\"which one?\") when a second separated part of the mask holds at least this "
        "fraction of the most probable part's probability mass. Unset: the model's own "
        "(inference.ambiguity_ratio of its config).", float_range=(0.0, 1.0))),
    "expressions": (Parameter.Type.STRING_ARRAY, _descriptor(
        "Expressions to segment from the start, as if published on /referring_expression; a message there replaces them.")),
    "max_expressions": (8, _descriptor("Most expressions accepted in one message (one batch per frame).",
                                       int_range=(1, 64))),
    "max_rate": (10.0, _descriptor("Most frames segmented per second; 0 = as fast as the model runs.",
                                   float_range=(0.0, 1000.0))),
    "max_result_age": (2.0, _descriptor("Freshness, in camera periods: when the model is slower than the camera and "
                                        "answering the newest frame would make its result older than this (from the "
                                        "frame's arrival) while the next frame would be answered in time, the worker "
                                        "waits for the next frame. 0 = always answer the newest frame at once.",
                                        float_range=(0.0, 100.0))),
    "mask_mode": ("full", _descriptor("The mask in ~/result and ~/results: full (the image's size), cropped (to the "
                                      "bbox, with its offset in the message) or none; ~/mask stays full.",
                                      constraints=", ".join(MASK_MODES))),
    "publish_debug": (True, _descriptor("Render ~/debug_image (only while it has subscribers).")),
    "use_depth": (True, _descriptor("Use depth + camera_info for a 3D centroid on ~/centroid.")),
    "depth_scale": (0.001, _descriptor("Metres per unit of an integer (16UC1 / mono16) depth image; 0.001 for mm.",
                                       float_range=(1e-6, 1.0))),
    "depth_min": (0.1, _descriptor("Depths below this (m) are invalid; below depth_max.", float_range=(0.0, 100.0))),
    "depth_max": (10.0, _descriptor("Depths above this (m) are invalid; above depth_min.", float_range=(0.0, 100.0))),
    "target_smoothing": (0.0, _descriptor("Exponential smoothing of the 3D target across frames: each new point moves "
                                          "it by (1 - this) of the way; 0 = off. Reset by a new sentence.",
                                          float_range=(0.0, 0.99))),
    "target_lost_frames": (5, _descriptor("Frames in a row without a 3D point after which the target is lost "
                                          "(ReferringSegmentation.target_lost) and forgotten.", int_range=(1, 1000))),
    "depth_erosion_px": (2, _descriptor("Erode the mask by this many pixels before taking its median depth, "
                                        "away from mixed foreground/background edge pixels.", int_range=(0, 50))),
    "sync_tolerance": (0.015, _descriptor("Largest stamp difference (s) between a color frame and the depth / "
                                          "camera_info paired with it (half a frame period at 30 Hz).",
                                          float_range=(0.0, 1.0))),
    "sync_wait": (0.1, _descriptor("Longest wait (s) for a depth / camera_info that has not arrived yet for a color "
                                   "frame; not waited for while that stream is silent.", float_range=(0.0, 2.0))),
    "rectified": (False, _descriptor("true when image and depth are rectified (image_rect): deproject with the "
                                     "projection matrix P; false: with K and the distortion D.")),
    "image_transport": ("raw", _descriptor("raw: sensor_msgs/Image on `image`; compressed: sensor_msgs/CompressedImage "
                                           "(JPEG or PNG) on `image`/compressed, as image_transport names it. "
                                           "Read at activate.", constraints=", ".join(IMAGE_TRANSPORTS))),
    "image_reliability": ("best_effort", _descriptor("QoS reliability of the image, depth and camera_info "
                                                     "subscriptions. Read at activate.",
                                                     constraints=", ".join(RELIABILITIES))),
    "max_consecutive_failures": (5, _descriptor("Frames in a row the model may fail (exception, NaN output, out of "
                                                "memory) before the node goes to its lifecycle error path.",
                                                int_range=(1, 1000))),
    "image_timeout": (3.0, _descriptor("Seconds without a color image after which /diagnostics warns.",
                                       float_range=(0.1, 3600.0))),
    "problem_log_period": (5.0, _descriptor("Seconds between two warnings about the same kind of bad input.",
                                            float_range=(0.0, 3600.0))),
}

# Applied to the running node at once; the others are read at configure / activate.
LIVE_PARAMETERS = {
    "mask_threshold", "presence_threshold", "ambiguity_ratio", "expressions", "max_expressions", "max_rate", "max_result_age", "mask_mode", "publish_debug",
    "use_depth", "depth_scale", "depth_min", "depth_max", "depth_erosion_px", "target_smoothing", "target_lost_frames", "sync_tolerance", "sync_wait",
    "rectified", "max_consecutive_failures", "image_timeout", "problem_log_period",
}


def parameter_problem(name: str, value, current: dict) -> Optional[str]:
    """Why `value` is not acceptable for parameter `name` (None when it is).

    `current` holds the other parameters' values (those declared so far), for the
    checks that compare two parameters. Ranges and types are checked by rclpy from
    the descriptors; this checks what a descriptor cannot say.
    """
    if name == "device" and not DEVICE_PATTERN.match(str(value)):
        return f"device must be auto, cpu, cuda or cuda:N, got {value!r}"
    if name == "precision" and value not in PRECISIONS:
        return f"precision must be one of {', '.join(PRECISIONS)}, got {value!r}"
    if name == "backend" and value and value not in BACKENDS:
        return f"backend must be one of {', '.join(BACKENDS)} (or empty: the model's own), got {value!r}"
    if name == "ambiguity_ratio" and value is not None and not value > 0.0:
        return "ambiguity_ratio must be above 0 (at 0 every speck of the mask would be a candidate)"
    if name == "mask_mode" and value not in MASK_MODES:
        return f"mask_mode must be one of {', '.join(MASK_MODES)}, got {value!r}"
    if name == "image_transport" and value not in IMAGE_TRANSPORTS:
        return f"image_transport must be one of {', '.join(IMAGE_TRANSPORTS)}, got {value!r}"
    if name == "image_reliability" and value not in RELIABILITIES:
        return f"image_reliability must be one of {', '.join(RELIABILITIES)}, got {value!r}"
    if name in ("depth_min", "depth_max"):
        depth_min = value if name == "depth_min" else current.get("depth_min")
        depth_max = value if name == "depth_max" else current.get("depth_max")
        if depth_min is not None and depth_max is not None and depth_min >= depth_max:
            return f"depth_min ({depth_min}) must be below depth_max ({depth_max})"
    return None
