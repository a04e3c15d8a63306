"""sensor_msgs/Image <-> numpy.

`image_to_numpy` validates a message before touching its pixels: an image
whose encoding, size, `step` or data length disagree is rejected with a
`ValueError` saying which field is wrong, so the node can log the reason and
drop the frame instead of crashing or reading garbage.

On a ROS 2 install that has `cv_bridge`, its conversion is used for the pixel
copy (after the same validation); elsewhere (rclpy from PyPI) the numpy code
below does it. The PyPI package called `cv-bridge` is a ROS 1 port that breaks
with numpy 2: it is never imported, which is why `cv_bridge` is only looked
for where the ament index of a ROS 2 install lists it.

Works on rclpy messages and on any object with the same fields (rosbags'
deserialized messages, whose `data` is a numpy array).
"""
from __future__ import annotations

import sys
from array import array as PyArray
from dataclasses import dataclass

import numpy as np

# Larger than any camera we know of; beyond it a message is corrupt, not big.
MAX_SIDE = 16384
MAX_BYTES = 1 << 29


@dataclass(frozen=True)
class Encoding:
    dtype: np.dtype
    channels: int

    @property
    def bytes_per_pixel(self) -> int:
        return self.dtype.itemsize * self.channels


ENCODINGS: dict[str, Encoding] = {
    "rgb8": Encoding(np.dtype(np.uint8), 3),
    "bgr8": Encoding(np.dtype(np.uint8), 3),
    "rgba8": Encoding(np.dtype(np.uint8), 4),
    "bgra8": Encoding(np.dtype(np.uint8), 4),
    "mono8": Encoding(np.dtype(np.uint8), 1),
    "mono16": Encoding(np.dtype(np.uint16), 1),
    "16UC1": Encoding(np.dtype(np.uint16), 1),
    "32FC1": Encoding(np.dtype(np.float32), 1),
}
COLOR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16")
DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")


def _ros2_cv_bridge():
    """The ROS 2 `CvBridge` class when a ROS 2 install provides it, else None."""
    try:
        from ament_index_python.packages import get_package_prefix

        get_package_prefix("cv_bridge")  # PackageNotFoundError (a LookupError) unless ROS 2 has it
        from cv_bridge import CvBridge
    except (ImportError, LookupError, OSError):  # OSError: no AMENT_PREFIX_PATH, i.e. no ROS 2 install
        return None
    return CvBridge


_CV_BRIDGE_CLASS = _ros2_cv_bridge()


def _data_as_bytes(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:  # a plain list of ints
        return np.asarray(data, dtype=np.uint8)


def check_image(msg) -> Encoding:
    """Validate the header fields of an Image; return its encoding's layout."""
    encoding = str(msg.encoding)
    layout = ENCODINGS.get(encoding)
    if layout is None:
        raise ValueError(f"unsupported encoding {encoding!r} (supported: {', '.join(ENCODINGS)})")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ValueError(f"empty image: {width}x{height}")
    if height > MAX_SIDE or width > MAX_SIDE:
        raise ValueError(f"image {width}x{height} exceeds the {MAX_SIDE} pixel side limit")
    row_bytes = width * layout.bytes_per_pixel
    if step < row_bytes:
        raise ValueError(
            f"step {step} is smaller than width x bytes per pixel = {width} x {layout.bytes_per_pixel} "
            f"= {row_bytes} for {encoding}: the encoding does not match the data"
        )
    if step % layout.dtype.itemsize:
        raise ValueError(f"step {step} is not a multiple of the {layout.dtype.itemsize}-byte element of {encoding}: "
                         "the encoding does not match the data")
    if step * height > MAX_BYTES:
        raise ValueError(f"image of {step * height} bytes exceeds the {MAX_BYTES} byte limit")
    size = len(msg.data)
    if size != step * height:
        raise ValueError(f"data has {size} bytes, expected step x height = {step} x {height} = {step * height}")
    return layout


def image_to_numpy(msg) -> np.ndarray:
    """Image -> array in the message's own encoding: (H, W) for one channel, else (H, W, C).

    Native byte order, row padding removed. May share memory with `msg.data`
    and be read-only: copy it before writing to it.
    """
    layout = check_image(msg)
    if _CV_BRIDGE_CLASS is not None and type(msg).__module__.startswith("sensor_msgs"):
        return np.asarray(_CV_BRIDGE_CLASS().imgmsg_to_cv2(msg, desired_encoding="passthrough"))
    height, width = int(msg.height), int(msg.width)
    rows = _data_as_bytes(msg.data).reshape(height, int(msg.step))[:, : width * layout.bytes_per_pixel]
    wire_dtype = layout.dtype.newbyteorder(">" if msg.is_bigendian else "<")
    pixels = np.ascontiguousarray(rows).view(wire_dtype)
    if not wire_dtype.isnative and wire_dtype.itemsize > 1:
        pixels = pixels.astype(layout.dtype.newbyteorder("="))
    shape = (height, width) if layout.channels == 1 else (height, width, layout.channels)
    return pixels.reshape(shape)


def check_color_image(msg) -> None:
    """Validate an Image meant as color input without converting its pixels (cheap: for callbacks)."""
    encoding = str(msg.encoding)
    if encoding in ENCODINGS and encoding not in COLOR_ENCODINGS:
        raise ValueError(f"{encoding} is a depth encoding, not a color image (expected one of {', '.join(COLOR_ENCODINGS)})")
    check_image(msg)


def check_depth_image(msg) -> None:
    """Validate an Image meant as depth input without converting its pixels."""
    encoding = str(msg.encoding)
    if encoding not in DEPTH_ENCODINGS:
        raise ValueError(f"depth must be one of {', '.join(DEPTH_ENCODINGS)}, got {encoding!r}")
    check_image(msg)


def image_to_rgb(msg) -> np.ndarray:
    """A color or grayscale Image -> RGB uint8 (H, W, 3), what `Segmenter` takes."""
    check_color_image(msg)
    encoding = str(msg.encoding)
    pixels = image_to_numpy(msg)
    if encoding == "rgb8":
        return np.ascontiguousarray(pixels)
    if encoding in ("bgr8", "bgra8"):
        return np.ascontiguousarray(pixels[:, :, 2::-1])
    if encoding == "rgba8":
        return np.ascontiguousarray(pixels[:, :, :3])
    if encoding == "mono16":
        pixels = (pixels >> 8).astype(np.uint8)
    return np.repeat(pixels[:, :, None], 3, axis=2)


# sensor_msgs/CompressedImage formats this node decodes (compressed_image_transport writes "jpeg",
# "png" or "<encoding>; jpeg compressed bgr8"). compressedDepth is another transport, not handled.
COMPRESSED_FORMATS = ("jpeg", "png")


def check_compressed_image(msg) -> None:
    """Validate a CompressedImage's format and size without decoding it (cheap: for callbacks)."""
    fmt = str(msg.format).lower()
    if "compresseddepth" in fmt.replace(" ", "") or not any(name in fmt for name in (*COMPRESSED_FORMATS, "jpg")):
        raise ValueError(f"unsupported compressed format {msg.format!r} (supported: {', '.join(COMPRESSED_FORMATS)})")
    size = len(msg.data)
    if size == 0:
        raise ValueError("compressed image with no data")
    if size > MAX_BYTES:
        raise ValueError(f"compressed image of {size} bytes exceeds the {MAX_BYTES} byte limit")


def compressed_to_rgb(msg) -> np.ndarray:
    """A JPEG or PNG CompressedImage -> RGB uint8 (H, W, 3), decoded with OpenCV."""
    import cv2

    check_compressed_image(msg)
    pixels = cv2.imdecode(_data_as_bytes(msg.data), cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.size == 0:
        raise ValueError(f"cannot decode the {len(msg.data)}-byte {msg.format!r} payload (corrupt or not that format)")
    if max(pixels.shape[:2]) > MAX_SIDE:
        raise ValueError(f"image {pixels.shape[1]}x{pixels.shape[0]} exceeds the {MAX_SIDE} pixel side limit")
    if pixels.dtype == np.uint16:  # 16-bit PNG
        pixels = (pixels >> 8).astype(np.uint8)
    if pixels.ndim == 2:
        return np.repeat(pixels[:, :, None], 3, axis=2)
    # OpenCV decodes to BGR(A), whatever the publisher's encoding was (compressed_image_transport
    # converts color to bgr8 before compressing).
    return np.ascontiguousarray(pixels[:, :, 2::-1])


def color_to_rgb(msg) -> np.ndarray:
    """A color Image or CompressedImage -> RGB uint8 (H, W, 3)."""
    return compressed_to_rgb(msg) if hasattr(msg, "format") else image_to_rgb(msg)


def image_to_depth(msg) -> np.ndarray:
    """A depth Image -> (H, W) array: uint16 (16UC1 / mono16, usually mm) or float32 (32FC1, m)."""
    check_depth_image(msg)
    return image_to_numpy(msg)


def numpy_to_image(array: np.ndarray, encoding: str, header=None, msg_type=None):
    """Array -> Image (native byte order, no row padding); `msg_type` defaults to sensor_msgs/Image."""
    layout = ENCODINGS.get(encoding)
    if layout is None:
        raise ValueError(f"unsupported encoding {encoding!r} (supported: {', '.join(ENCODINGS)})")
    array = np.asarray(array)
    expected_ndim = 2 if layout.channels == 1 else 3
    if array.ndim != expected_ndim or (layout.channels > 1 and array.shape[2] != layout.channels):
        raise ValueError(f"{encoding} needs shape (H, W{'' if layout.channels == 1 else f', {layout.channels}'}), got {array.shape}")
    if array.dtype != layout.dtype:
        raise ValueError(f"{encoding} needs dtype {layout.dtype}, got {array.dtype}")
    if msg_type is None:
        from sensor_msgs.msg import Image as msg_type
    msg = msg_type()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(array.shape[0]), int(array.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = int(sys.byteorder == "big" and layout.dtype.itemsize > 1)
    msg.step = msg.width * layout.bytes_per_pixel
    # An array.array('B') is taken as it is; bytes would be copied element by element (and on Humble, or
    # with ROS_PYTHON_CHECK_FIELDS=1, checked element by element first: ~20 ms for a 640x480 mask).
    data = PyArray("B")
    data.frombytes(np.ascontiguousarray(array).reshape(-1).view(np.uint8))  # one copy: no bytes in between
    msg.data = data
    return msg
