"""What launch/meres.launch.py passes to meres_node, as a pure function (no launch, no rclpy).

A launch argument that was not given passes nothing, so the parameter file decides;
one that was given overrides it. Tested without launch_ros (which has no pip wheel).
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Launch arguments that become node parameters when given, with their parameter type.
PARAMETER_ARGUMENTS = {"checkpoint": str, "device": str, "autostart": bool, "use_sim_time": bool}
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")


@dataclass
class NodeArguments:
    parameters: dict = field(default_factory=dict)  # overrides, after the parameter file
    ros_arguments: list[str] = field(default_factory=list)


def _boolean(name: str, text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError(f"launch argument {name} must be true or false, got {text!r}")
    return text.lower() == "true"


def node_arguments(given: dict[str, str]) -> NodeArguments:
    """`given`: launch argument values as text, '' for an argument that was not given."""
    result = NodeArguments()
    for name, kind in PARAMETER_ARGUMENTS.items():
        text = given.get(name, "").strip()
        if text:
            result.parameters[name] = _boolean(name, text) if kind is bool else text
    level = given.get("log_level", "").strip().lower()
    if level:
        if level not in LOG_LEVELS:
            raise ValueError(f"launch argument log_level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
        result.ros_arguments += ["--log-level", level]
    return result
