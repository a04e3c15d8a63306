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
