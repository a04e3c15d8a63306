"""sensor_msgs/Image <-> numpy: every encoding, row padding, byte order, and the rejections."""
import numpy as np
import pytest
from sensor_msgs.msg import Image

from meres_ros import conversions
from meres_ros.conversions import (
    ENCODINGS,
    image_to_depth,
    image_to_numpy,
    image_to_rgb,
    numpy_to_image,
)

RNG = np.random.default_rng(0)


def sample(encoding: str, height: int = 5, width: int = 7) -> np.ndarray:
    layout = ENCODINGS[encoding]
    shape = (height, width) if layout.channels == 1 else (height, width, layout.channels)
    if layout.dtype == np.float32:
        return RNG.uniform(0.1, 5.0, shape).astype(np.float32)
    return RNG.integers(0, np.iinfo(layout.dtype).max, shape, dtype=layout.dtype)


def raw_message(array: np.ndarray, encoding: str, padding: int = 0, big_endian: bool = False) -> Image:
    """Build a message by hand (not with numpy_to_image) with `padding` bytes after each row."""
    wire = array.astype(array.dtype.newbyteorder(">" if big_endian else "<"))
    rows = wire.reshape(array.shape[0], -1).view(np.uint8)
    padded = np.concatenate([rows, np.full((rows.shape[0], padding), 0xAB, np.uint8)], axis=1)
    return Image(height=array.shape[0], width=array.shape[1], encoding=encoding, is_bigendian=int(big_endian),
                 step=padded.shape[1], data=padded.tobytes())


@pytest.mark.parametrize("encoding", list(ENCODINGS))
@pytest.mark.parametrize("padding", [0, 4])
@pytest.mark.parametrize("big_endian", [False, True])
def test_image_to_numpy_reads_every_encoding(encoding, padding, big_endian):
    array = sample(encoding)
    result = image_to_numpy(raw_message(array, encoding, padding, big_endian))
    assert result.dtype == array.dtype and result.dtype.isnative
    np.testing.assert_array_equal(result, array)


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_numpy_to_image_round_trip(encoding):
    array = sample(encoding)
    msg = numpy_to_image(array, encoding)
    assert (msg.height, msg.width, msg.encoding) == (5, 7, encoding)
    assert msg.step == 7 * ENCODINGS[encoding].bytes_per_pixel
    np.testing.assert_array_equal(image_to_numpy(msg), array)


def test_color_conversions_give_rgb():
    rgb = sample("rgb8")
    alpha = np.full(rgb.shape[:2] + (1,), 9, np.uint8)
    cases = {
        "rgb8": rgb,
        "bgr8": rgb[:, :, ::-1],
        "rgba8": np.concatenate([rgb, alpha], axis=2),
        "bgra8": np.concatenate([rgb[:, :, ::-1], alpha], axis=2),
    }
    for encoding, pixels in cases.items():
        out = image_to_rgb(numpy_to_image(np.ascontiguousarray(pixels), encoding))
        assert out.dtype == np.uint8 and out.flags.c_contiguous, encoding
        np.testing.assert_array_equal(out, rgb, err_msg=encoding)


def test_grayscale_becomes_three_equal_channels():
    gray = sample("mono8")
    np.testing.assert_array_equal(image_to_rgb(numpy_to_image(gray, "mono8")), np.stack([gray] * 3, axis=2))
    gray16 = sample("mono16")
    out = image_to_rgb(numpy_to_image(gray16, "mono16"))
    np.testing.assert_array_equal(out[:, :, 0], (gray16 >> 8).astype(np.uint8))


def test_depth_encodings_are_not_color_and_color_is_not_depth():
    with pytest.raises(ValueError, match="depth encoding"):
        image_to_rgb(numpy_to_image(sample("16UC1"), "16UC1"))
    with pytest.raises(ValueError, match="depth must be one of"):
        image_to_depth(numpy_to_image(sample("rgb8"), "rgb8"))
    depth = sample("32FC1")
    np.testing.assert_array_equal(image_to_depth(numpy_to_image(depth, "32FC1")), depth)


def good_message() -> Image:
    return numpy_to_image(sample("rgb8"), "rgb8")


@pytest.mark.parametrize("field, value, reason", [
    ("encoding", "yuv422", "unsupported encoding"),
    ("encoding", "", "unsupported encoding"),
    ("encoding", "jpeg", "unsupported encoding"),
    ("height", 0, "empty image"),
    ("width", 0, "empty image"),
    ("width", 100_000, "side limit"),
    ("step", 3, "step 3 is smaller"),
    ("step", 7 * 3 + 1, "data has"),
    ("data", b"\x00" * 10, "data has 10 bytes"),
])
def test_bad_messages_are_rejected_with_the_reason(field, value, reason):
    msg = good_message()
    setattr(msg, field, value)
    with pytest.raises(ValueError, match=reason):
        image_to_rgb(msg)


def test_lying_encoding_is_caught_by_the_size_check():
    """An rgb8 frame (odd width) announced as another encoding has a step that cannot match it."""
    for encoding in ("mono16", "16UC1", "32FC1", "rgba8", "bgra8"):
        msg = good_message()
        msg.encoding = encoding
        with pytest.raises(ValueError):
            image_to_numpy(msg)


def test_huge_announced_size_is_rejected_before_allocation():
    msg = Image(height=16000, width=16000, encoding="rgba8", step=16000 * 4, data=b"\x00" * 16)
    with pytest.raises(ValueError, match="byte limit"):
        image_to_numpy(msg)


def test_numpy_to_image_checks_shape_and_dtype():
    with pytest.raises(ValueError, match="dtype"):
        numpy_to_image(np.zeros((2, 2), np.float64), "32FC1")
    with pytest.raises(ValueError, match="shape"):
        numpy_to_image(np.zeros((2, 2), np.uint8), "rgb8")
    with pytest.raises(ValueError, match="unsupported"):
        numpy_to_image(np.zeros((2, 2), np.uint8), "8UC2")


def test_duck_typed_message_with_numpy_data():
    """rosbags' deserialized Image has the same fields with `data` as a numpy array."""

    class BagImage:
        height, width, encoding, is_bigendian, step = 2, 3, "bgr8", 0, 9
        data = np.arange(18, dtype=np.uint8)

    np.testing.assert_array_equal(image_to_rgb(BagImage()), np.arange(18, dtype=np.uint8).reshape(2, 3, 3)[:, :, ::-1])


def test_no_cv_bridge_without_a_ros2_install():
    """Here rclpy comes from PyPI: the numpy path is the one under test, not a ROS 1 cv_bridge."""
    if conversions._CV_BRIDGE_CLASS is not None:
        pytest.skip("a ROS 2 cv_bridge is installed")
    assert conversions._ros2_cv_bridge() is None


def test_cv_bridge_agrees_with_numpy_path(monkeypatch):
    if conversions._CV_BRIDGE_CLASS is None:
        pytest.skip("no ROS 2 cv_bridge here")
    msg = raw_message(sample("16UC1"), "16UC1", padding=2, big_endian=True)
    with_bridge = image_to_numpy(msg)
    monkeypatch.setattr(conversions, "_CV_BRIDGE_CLASS", None)
    np.testing.assert_array_equal(with_bridge, image_to_numpy(msg))


def test_compressed_images_decode_to_rgb():
    import cv2
    from sensor_msgs.msg import CompressedImage

    from meres_ros.conversions import color_to_rgb, compressed_to_rgb

    rgb = np.zeros((6, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50  # distinct channels: a swapped order shows

    def encoded(extension, pixels, fmt):
        return CompressedImage(format=fmt, data=cv2.imencode(extension, pixels)[1].tobytes())

    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    np.testing.assert_array_equal(compressed_to_rgb(encoded(".png", bgr, "rgb8; png compressed bgr8")), rgb)
    assert np.abs(color_to_rgb(encoded(".jpg", bgr, "jpeg")).astype(int) - rgb).max() <= 3  # lossy
    bgra = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)
    np.testing.assert_array_equal(compressed_to_rgb(encoded(".png", bgra, "bgra8; png compressed bgra8")), rgb)
    gray16 = np.full((6, 8), 0x8000, np.uint16)
    assert (compressed_to_rgb(encoded(".png", gray16, "mono16; png compressed mono16")) == 0x80).all()
    for fmt, data, reason in [("jpeg", b"garbage" * 10, "cannot decode"), ("png", b"", "no data"),
                              ("16UC1; compressedDepth png", b"x" * 20, "unsupported"), ("bmp", b"BM" * 10, "unsupported")]:
        with pytest.raises(ValueError, match=reason):
            compressed_to_rgb(CompressedImage(format=fmt, data=data))


def test_numpy_to_image_hands_over_an_array_not_bytes():
    """rclpy takes an array.array('B') as it is; bytes it converts (and, with field checks, as on Humble,
    checks) element by element: ~20 ms per 640x480 mask."""
    import array

    class Recording(Image):
        __slots__ = ("given",)

        @Image.data.setter
        def data(self, value):
            self.given = value
            Image.data.fset(self, value)

    mask = np.arange(12, dtype=np.uint8).reshape(3, 4)
    msg = conversions.numpy_to_image(mask, "mono8", msg_type=Recording)
    assert isinstance(msg.given, array.array) and msg.given.typecode == "B"
    np.testing.assert_array_equal(conversions.image_to_numpy(msg), mask)
    checked = conversions.numpy_to_image(mask[:, ::2], "mono8", msg_type=lambda: Image(check_fields=True))
    np.testing.assert_array_equal(conversions.image_to_numpy(checked), mask[:, ::2])
