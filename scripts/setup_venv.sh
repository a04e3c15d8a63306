#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and print its path on stdout.
#
# The venv lives outside the clone, keyed by a hash of every file that decides what is
# installed, so CI and fresh clones reuse it instead of reinstalling ~6 GB of wheels.
# A venv is used only after a complete install (the .complete stamp).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
key=$(cat setup.py constraints.txt requirements-ros.txt scripts/setup_venv.sh scripts/build_msgs.sh \
        meres_ros_interfaces/CMakeLists.txt meres_ros_interfaces/package.xml msg/*.msg srv/*.srv | sha256sum | cut -c1-16)
cache=${MERES_VENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/meres-ros}
venv="$cache/venv-$key"

if [ ! -f "$venv/.complete" ]; then
  echo "setup_venv: creating $venv (first run takes ~10 minutes)" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  "$PYTHON" -m venv "$venv"
  pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q -c constraints.txt)
  "${pip[@]}" --upgrade pip >&2
  # torch/torchvision first, from the pinned pair, so nothing else pulls another build.
  "${pip[@]}" torch torchvision >&2
  "${pip[@]}" -r requirements-ros.txt >&2
  "${pip[@]}" -e ".[dev]" >&2
  # The custom messages (~/result), generated from pip wheels since there is no ROS install.
  scripts/build_msgs.sh "$venv" >&2
  touch "$venv/.complete"
fi
# The clone may have moved since the venv was made: point the editable install here.
"$venv/bin/python" -m pip install --disable-pip-version-check -q --no-deps -e . >&2
echo "$venv"
