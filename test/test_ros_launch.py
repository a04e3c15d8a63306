"""launch/meres.launch.py: builds a description where launch_ros exists; imports nothing heavy anywhere."""
import ast
import importlib.util
from pathlib import Path

import pytest

LAUNCH_FILE = Path(__file__).resolve().parents[1] / "launch" / "meres.launch.py"
ALLOWED_IMPORTS = ("launch", "launch_ros", "lifecycle_msgs")


def test_launch_file_imports_only_launch_packages():
    tree = ast.parse(LAUNCH_FILE.read_text())
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert modules and all(m.split(".")[0] in ALLOWED_IMPORTS for m in modules), modules


def test_launch_description_builds():
    pytest.importorskip("launch_ros")
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument
    from launch_ros.actions import LifecycleNode

    spec = importlib.util.spec_from_file_location("meres_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert isinstance(description, LaunchDescription)
    arguments = {e.name for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    assert {"checkpoint", "device", "image", "depth", "camera_info", "params_file", "fastdds_profile"} <= arguments
    assert any(isinstance(e, LifecycleNode) for e in description.entities)
