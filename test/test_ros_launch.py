"""launch/meres.launch.py: the argument handling (a pure function, tested here without launch), and the
description itself where launch_ros exists."""
import ast
import importlib.util
from pathlib import Path

import pytest

from meres_ros.launch_arguments import node_arguments

LAUNCH_FILE = Path(__file__).resolve().parents[1] / "launch" / "meres.launch.py"
ALLOWED_IMPORTS = ("launch", "launch_ros", "meres_ros.launch_arguments")
ARGUMENTS = ("checkpoint", "device", "autostart", "use_sim_time", "log_level")


def test_arguments_not_given_leave_the_parameter_file_in_charge():
    arguments = node_arguments({name: "" for name in ARGUMENTS})
    assert arguments.parameters == {} and arguments.ros_arguments == []


def test_arguments_given_override_with_their_types():
    arguments = node_arguments({"checkpoint": "/models/mugs.pt", "device": "cuda:1", "autostart": "False",
                                "use_sim_time": "true", "log_level": "DEBUG"})
    assert arguments.parameters == {"checkpoint": "/models/mugs.pt", "device": "cuda:1", "autostart": False,
                                    "use_sim_time": True}
    assert arguments.ros_arguments == ["--log-level", "debug"]


@pytest.mark.parametrize("given, named", [({"autostart": "yes"}, "autostart"), ({"log_level": "loud"}, "log_level")])
def test_bad_arguments_are_refused_by_name(given, named):
    with pytest.raises(ValueError, match=named):
        node_arguments(given)


def test_launch_file_passes_only_given_arguments_and_drives_no_transitions():
    source = LAUNCH_FILE.read_text()
    tree = ast.parse(source)
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert modules and all(m.startswith(ALLOWED_IMPORTS) for m in modules), modules
    # Launch arguments that default to a value and are always passed would override the parameter file;
    # an event handler that activates on every transition to inactive would undo a lifecycle manager.
    assert "ParameterValue" not in source and "OnStateTransition" not in source and "ChangeState" not in source
    assert "node_arguments(" in source
    for name in ARGUMENTS:
        assert f'DeclareLaunchArgument("{name}", default_value=""' in source, name


def test_launch_description_builds():
    pytest.importorskip("launch_ros")
    from launch import LaunchContext, LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch_ros.actions import LifecycleNode

    spec = importlib.util.spec_from_file_location("meres_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    assert isinstance(description, LaunchDescription)
    arguments = {e.name for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    assert {*ARGUMENTS, "image", "depth", "camera_info", "params_file", "fastdds_profile"} <= arguments
    context = LaunchContext()
    for argument in description.entities:
        if isinstance(argument, DeclareLaunchArgument):
            context.launch_configurations[argument.name] = "" if argument.name in ARGUMENTS else "x"
    context.launch_configurations["device"] = "cpu"
    [opaque] = [e for e in description.entities if isinstance(e, OpaqueFunction)]
    [node] = opaque.execute(context)
    assert isinstance(node, LifecycleNode)
