"""RViz markers for the node's 3D targets: a box of the target's extent and its sentence as text.

One MarkerArray per frame: a DELETEALL first (so a target no longer seen disappears), then a
box and a label for every expression with a 3D point, in the image's optical frame.
"""
from __future__ import annotations

import math
from typing import Sequence

from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from meres_ros.pipeline import Target

NAMESPACE = "meres"
# A box side when the extent is unknown or flat (a table-top object seen from above has 0 depth extent).
MIN_SIDE_M = 0.01
UNKNOWN_SIDE_M = 0.05
TEXT_HEIGHT_M = 0.04
FOUND_COLOR = ColorRGBA(r=0.1, g=0.9, b=0.2, a=0.5)
AMBIGUOUS_COLOR = ColorRGBA(r=1.0, g=0.6, b=0.0, a=0.5)  # "which one?": ask before grasping
TEXT_COLOR = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)


def target_markers(header, targets: Sequence[Target]) -> MarkerArray:
    markers = [Marker(header=header, ns=NAMESPACE, action=Marker.DELETEALL)]
    for index, target in enumerate(targets):
        if target.point_3d is None:
            continue
        x, y, z = target.point_3d
        sides = [side if side is not None and math.isfinite(side) else UNKNOWN_SIDE_M
                 for side in (target.extent_m or (None, None, None))]
        sides = [max(side, MIN_SIDE_M) for side in sides]
        box = Marker(header=header, ns=NAMESPACE, id=2 * index, type=Marker.CUBE, action=Marker.ADD,
                     color=AMBIGUOUS_COLOR if target.ambiguous else FOUND_COLOR)
        box.pose.position.x, box.pose.position.y, box.pose.position.z = x, y, z
        box.pose.orientation.w = 1.0
        box.scale.x, box.scale.y, box.scale.z = sides
        label = Marker(header=header, ns=NAMESPACE, id=2 * index + 1, type=Marker.TEXT_VIEW_FACING,
                       action=Marker.ADD, color=TEXT_COLOR,
                       text=target.expression + (" (which one?)" if target.ambiguous else ""))
        # Above the box: y points down in the optical frame.
        label.pose.position.x, label.pose.position.y, label.pose.position.z = x, y - sides[1] / 2 - TEXT_HEIGHT_M, z
        label.pose.orientation.w = 1.0
        label.scale.z = TEXT_HEIGHT_M
        markers += [box, label]
    return MarkerArray(markers=markers)
