"""Robust mask depth and pinhole deprojection, checked against hand computations."""
import math

import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo

from meres_ros.geometry import DepthRange, PinholeCamera, depth_to_meters, robust_depth


def camera_info(fx=500.0, fy=400.0, cx=320.0, cy=240.0, width=640, height=480) -> CameraInfo:
    return CameraInfo(width=width, height=height, k=[fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0])


def test_deprojection_by_hand():
    camera = PinholeCamera.from_camera_info(camera_info())
    # u=420 is 100 px right of cx: x = 100 * 2.0 / 500 = 0.4; v=140 is 100 px above cy: y = -100 * 2.0 / 400 = -0.5
    assert camera.deproject(420.0, 140.0, 2.0) == pytest.approx((0.4, -0.5, 2.0))
    assert camera.deproject(320.0, 240.0, 1.5) == pytest.approx((0.0, 0.0, 1.5))


@pytest.mark.parametrize("k", [
    [0.0, 0, 320, 0, 400, 240, 0, 0, 1],  # fx = 0: uncalibrated
    [500, 0, 320, 0, 0.0, 240, 0, 0, 1],
    [-500, 0, 320, 0, 400, 240, 0, 0, 1],
    [math.nan, 0, 320, 0, 400, 240, 0, 0, 1],
    [500, 0, math.inf, 0, 400, 240, 0, 0, 1],
])
def test_invalid_intrinsics_are_rejected(k):
    with pytest.raises(ValueError):
        PinholeCamera.from_camera_info(CameraInfo(width=640, height=480, k=k))


def test_camera_info_for_another_resolution_is_rejected():
    camera = PinholeCamera.from_camera_info(camera_info(width=640, height=480))
    with pytest.raises(ValueError, match="640x480"):
        camera.check_matches(240, 320)
    PinholeCamera.from_camera_info(camera_info(width=0, height=0)).check_matches(240, 320)  # unknown size: accepted


def test_depth_to_meters_marks_invalid_pixels():
    millimetres = np.array([[0, 1000], [2500, 65535]], np.uint16)
    np.testing.assert_allclose(depth_to_meters(millimetres, 0.001), [[np.nan, 1.0], [2.5, 65.535]], rtol=1e-6)
    metres = np.array([[np.nan, -1.0], [np.inf, 0.75]], np.float32)
    np.testing.assert_array_equal(depth_to_meters(metres, 0.001), np.array([[np.nan, np.nan], [np.nan, 0.75]], np.float32))
    with pytest.raises(ValueError, match="depth_scale"):
        depth_to_meters(millimetres, 0.0)


def test_robust_depth_ignores_holes_outliers_and_edges():
    depth = np.full((40, 40), 3.0, np.float32)  # background
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    depth[10:30, 10:30] = 1.0  # the object
    depth[10, 10:30] = 3.0  # edge pixels that see the background
    depth[15:18, 15:18] = np.nan  # holes
    depth[20, 20] = 0.01  # closer than depth_min
    depth[21, 21] = 50.0  # beyond depth_max
    assert robust_depth(depth, mask, DepthRange(0.1, 10.0), erosion_px=2) == pytest.approx(1.0)


def test_robust_depth_of_a_thin_object_falls_back_to_the_whole_mask():
    depth = np.full((20, 20), 2.0, np.float32)
    mask = np.zeros((20, 20), bool)
    mask[10, 2:18] = True  # one pixel thick: erosion removes it all
    assert robust_depth(depth, mask, erosion_px=3) == pytest.approx(2.0)


def test_robust_depth_without_valid_pixels_is_none():
    depth = np.full((10, 10), np.nan, np.float32)
    assert robust_depth(depth, np.ones((10, 10), bool)) is None
    assert robust_depth(np.ones((10, 10), np.float32), np.zeros((10, 10), bool)) is None


def test_robust_depth_needs_registered_depth():
    with pytest.raises(ValueError, match="registered"):
        robust_depth(np.ones((10, 12), np.float32), np.ones((10, 10), bool))


def distort_by_hand(x: float, y: float, d: list[float]) -> tuple[float, float]:
    """The plumb_bob / rational_polynomial forward model (Brown-Conrady, as in CameraInfo.msg), written out."""
    k1, k2, p1, p2, k3, *rest = d + [0.0] * (8 - len(d))
    k4, k5, k6 = rest[:3]
    r2 = x * x + y * y
    radial = (1 + k1 * r2 + k2 * r2**2 + k3 * r2**3) / (1 + k4 * r2 + k5 * r2**2 + k6 * r2**3)
    return (x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
            y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)


@pytest.mark.parametrize("model, d", [
    ("plumb_bob", [-0.28, 0.09, 0.0012, -0.0007, -0.015]),
    ("rational_polynomial", [0.42, -0.11, 0.0009, 0.0004, 0.02, 0.71, -0.05, 0.04]),
])
def test_deprojection_undoes_the_lens_distortion(model, d):
    fx, fy, cx, cy = 615.0, 612.0, 322.0, 241.0
    info = CameraInfo(width=640, height=480, distortion_model=model, d=d, k=[fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0])
    # A point 1.6 m ahead, well off-axis, where distortion moves its pixel by several pixels.
    x, y, z = 0.52, -0.31, 1.6
    xd, yd = distort_by_hand(x / z, y / z, d)
    u, v = fx * xd + cx, fy * yd + cy
    assert math.hypot(u - (fx * x / z + cx), v - (fy * y / z + cy)) > 5.0, "the test point must be visibly distorted"
    camera = PinholeCamera.from_camera_info(info)
    assert camera.deproject(u, v, z) == pytest.approx((x, y, z), abs=1e-6)


def test_rectified_images_use_p_and_ignore_d():
    info = CameraInfo(width=640, height=480, distortion_model="plumb_bob", d=[-0.3, 0.1, 0.0, 0.0, 0.0],
                      k=[615.0, 0.0, 322.0, 0.0, 612.0, 241.0, 0.0, 0.0, 1.0],
                      p=[600.0, 0.0, 320.0, 0.0, 0.0, 600.0, 240.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    camera = PinholeCamera.from_camera_info(info, rectified=True)
    assert camera.deproject(380.0, 180.0, 2.0) == pytest.approx((0.2, -0.2, 2.0))


@pytest.mark.parametrize("model, d, reason", [
    ("equidistant", [0.1, 0.01, 0.0, 0.0], "not supported"),
    ("plumb_bob", [0.1, 0.01, 0.0], "needs 5"),
    ("plumb_bob", [math.nan, 0.0, 0.0, 0.0, 0.0], "finite"),
])
def test_unusable_distortion_is_rejected(model, d, reason):
    info = CameraInfo(width=640, height=480, distortion_model=model, d=d, k=[500.0, 0, 320, 0, 500.0, 240, 0, 0, 1])
    with pytest.raises(ValueError, match=reason):
        PinholeCamera.from_camera_info(info)


# Grasp-ready geometry (issue 10) ----------------------------------------------------------------


def bar(rows: slice, cols: slice, shape=(60, 60)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[rows, cols] = True
    return mask


def test_principal_axis_of_bars_and_lines():
    from meres_ros.geometry import principal_axis

    # 40 x 4 bar: variances (40^2 - 1) / 12 along u and (4^2 - 1) / 12 along v.
    angle, ratio = principal_axis(bar(slice(10, 14), slice(5, 45)))
    assert angle == pytest.approx(0.0, abs=1e-9) and ratio == pytest.approx(math.sqrt(15 / 1599))
    assert principal_axis(bar(slice(5, 45), slice(10, 14)))[0] == pytest.approx(math.pi / 2)
    # Pixels (2i, i): the line v = u / 2, at atan(1/2) from +u towards +v (down in the image); a line: ratio 0.
    line = np.zeros((60, 60), bool)
    line[np.arange(20), 2 * np.arange(20)] = True
    angle, ratio = principal_axis(line)
    assert angle == pytest.approx(math.atan(0.5)) and ratio == pytest.approx(0.0, abs=1e-6)
    anti = np.zeros((60, 60), bool)
    anti[19 - np.arange(20), np.arange(20)] = True  # going up to the right
    assert principal_axis(anti)[0] == pytest.approx(-math.pi / 4)
    assert principal_axis(bar(slice(10, 30), slice(10, 30)))[1] == pytest.approx(1.0)  # a square: no axis
    with pytest.raises(ValueError):
        principal_axis(np.zeros((5, 5), bool))


def test_depth_samples_give_the_spread_and_count_of_the_eroded_part():
    from meres_ros.geometry import depth_samples

    depth = np.full((20, 20), np.nan, np.float32)
    depth[5:10, :] = 1.0
    depth[10:15, :] = 1.2
    mask = bar(slice(5, 15), slice(5, 15), (20, 20))  # 10 x 10; eroded by 2: rows / cols 7..12, 36 px
    samples = depth_samples(depth, mask, DepthRange(0.1, 10.0), erosion_px=2)
    assert samples.size == 36  # 18 at 1.0 m, 18 at 1.2 m
    assert float(np.std(samples)) == pytest.approx(0.1, abs=1e-6)
    assert float(np.median(samples)) == pytest.approx(1.1)


def test_surface_extent_spans_the_5th_to_95th_percentile_of_the_points():
    from meres_ros.geometry import surface_extent

    camera = PinholeCamera(fx=100.0, fy=100.0, cx=20.0, cy=10.0)
    depth = np.full((30, 40), 2.0, np.float32)
    part = bar(slice(5, 16), slice(10, 31), (30, 40))  # u = 10..30 (21 columns), v = 5..15 (11 rows): 231 px
    # x: each u 11 times; the 5th / 95th percentiles (ranks 11.5 and 218.5 of 231) are u = 11 and u = 29,
    # 18 px x 2 m / 100 px = 0.36 m. y: each v 21 times; ranks 11.5 and 218.5 are v = 5 and v = 15: 0.20 m.
    assert surface_extent(depth, part, camera) == pytest.approx((0.36, 0.20, 0.0))
    # 5 stray depths at 9 m (2% of the points) leave the depth extent at 0; the full span would be 7 m.
    stray = depth.copy()
    stray[10, 18:23] = 9.0
    x, y, z = surface_extent(stray, part, camera)
    assert z == 0.0 and x == pytest.approx(0.36, abs=0.02) and y == pytest.approx(0.20, abs=0.02)
    # A step: half the part at 2.0 m, half at 2.3 m: 0.3 m deep.
    step = depth.copy()
    step[:, 21:] = 2.3
    assert surface_extent(step, part, camera)[2] == pytest.approx(0.3)
    assert surface_extent(np.full((30, 40), np.nan, np.float32), part, camera) is None


def test_deproject_pixels_agrees_with_deproject_through_the_lens():
    camera = PinholeCamera(fx=110.0, fy=100.0, cx=10.0, cy=8.0, distortion=(-0.25, 0.08, 0.001, -0.002, 0.0))
    u, v, z = np.array([3.0, 60.0, 120.0]), np.array([90.0, 40.0, 5.0]), np.array([0.5, 1.5, 3.0])
    points = camera.deproject_pixels(u, v, z)
    for i in range(3):
        assert tuple(points[i]) == pytest.approx(camera.deproject(u[i], v[i], z[i]), abs=1e-9)


def test_segment_frame_reads_each_part_in_its_window_with_the_full_images_answers():
    """segment_frame measures a part (axis, depth, extent) in the part's box widened by the erosion radius
    (pipeline.part_window), never the whole frame; its answers are those of the whole frame, also for a
    part on the image border and with lens distortion."""
    import cv2

    from meres_core.inference import Decision, Segmenter
    from meres_ros.geometry import depth_samples, principal_axis, surface_extent
    from meres_ros.pipeline import DepthSettings, Frame, part_window, segment_frame

    height, width = 120, 160
    probability = np.zeros((height, width), np.float32)
    cv2.ellipse(probability, (40, 60), (25, 9), 30, 0, 360, 0.9, -1)  # tilted, inside
    cv2.circle(probability, (155, 5), 12, 0.8, -1)  # cut by the top-right corner
    rng = np.random.default_rng(0)
    depth_m = (1.0 + 0.3 * rng.random((height, width))).astype(np.float32)
    depth_m[::7, ::5] = np.nan
    camera = PinholeCamera(fx=110.0, fy=100.0, cx=80.0, cy=60.0, distortion=(-0.2, 0.05, 0.001, -0.002, 0.0))

    class Stub:  # a Segmenter whose probability maps are given
        decision = Decision(0.5, 0.5, 0.9)

        def __init__(self, maps):
            self.maps = maps

        def segment(self, image, expressions, decision=None):
            return [Segmenter.decide(self, e, self.maps[e], decision) for e in expressions]

    only = {"inside": np.where(np.arange(width) < 100, probability, 0),
            "corner": np.where(np.arange(width) >= 100, probability, 0)}
    settings = DepthSettings(erosion_px=3)
    frame = Frame(np.zeros((height, width, 3), np.uint8), depth_m, camera)
    for target in segment_frame(Stub(only), frame, ["inside", "corner"], settings):
        part = target.segmentation.part
        assert target.found and part.sum() > 50
        assert (target.axis_angle, target.axis_ratio) == pytest.approx(principal_axis(part), abs=1e-9)
        depths = depth_samples(depth_m, part, settings.depth_range, settings.erosion_px)
        assert target.depth_m == pytest.approx(float(np.median(depths)), abs=1e-9)
        assert target.depth_pixel_count == depths.size and target.depth_std_m == pytest.approx(float(np.std(depths)))
        assert target.extent_m == pytest.approx(surface_extent(depth_m, part, camera, settings.depth_range), abs=1e-9)
    rows, cols = part_window((150, 0, 159, 16), (height, width), 4)
    assert (rows, cols) == (slice(0, 21), slice(146, 160))
