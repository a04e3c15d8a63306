"""RViz markers of the 3D targets (meres_ros/markers.py)."""
import numpy as np
import pytest
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from meres_core.inference import Candidate, SegmentationResult
from meres_ros.markers import AMBIGUOUS_COLOR, FOUND_COLOR, MIN_SIDE_M, UNKNOWN_SIDE_M, target_markers
from meres_ros.pipeline import Target


def target(expression, point=None, extent=None, candidates=1):
    mask = np.ones((4, 4), bool)
    parts = [Candidate((0, 0, 3, 3), (1.5, 1.5), 0.9, 14.4)] * candidates
    result = SegmentationResult(expression, True, 0.9, mask, mask.astype(np.float32), (0, 0, 3, 3), (1.5, 1.5),
                                candidates=parts)
    return Target(result, point_3d=point, extent_m=extent)


def test_a_box_and_a_label_per_3d_target_after_a_clear():
    header = Header(frame_id="camera_color_optical_frame")
    markers = target_markers(header, [target("the mug", (0.1, -0.2, 1.0), (0.08, 0.1, 0.0)),
                                      target("the bowl"),  # no 3D point: nothing to show
                                      target("the cup", (0.3, 0.0, 2.0), None, candidates=2)]).markers
    assert [m.action for m in markers] == [Marker.DELETEALL] + [Marker.ADD] * 4
    mug_box, mug_label, cup_box, cup_label = markers[1:]
    assert (mug_box.id, mug_label.id, cup_box.id, cup_label.id) == (0, 1, 4, 5)  # ids by expression index
    assert (mug_box.scale.x, mug_box.scale.y, mug_box.scale.z) == pytest.approx((0.08, 0.1, MIN_SIDE_M))
    assert mug_box.color == FOUND_COLOR and mug_label.text == "the mug"
    assert mug_label.pose.position.y == pytest.approx(-0.2 - 0.05 - 0.04)  # above the box, y down
    assert (cup_box.scale.x, cup_box.scale.y, cup_box.scale.z) == (UNKNOWN_SIDE_M,) * 3
    assert cup_box.color == AMBIGUOUS_COLOR and cup_label.text == "the cup (which one?)"
    assert all(m.header.frame_id == "camera_color_optical_frame" for m in markers)
