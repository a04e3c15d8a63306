"""Start meres_node as a lifecycle node and bring it to active.

    ros2 launch meres_ros meres.launch.py image:=/camera/color/image_raw \\
        depth:=/camera/aligned_depth_to_color/image_raw camera_info:=/camera/color/camera_info

The node activates itself (`autostart`, default true). With autostart:=false this
file drives the transitions instead: configure at start, activate once configured
(a failed configure, e.g. a corrupt checkpoint, leaves it unconfigured, as logged).
"""
import launch
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler, SetEnvironmentVariable
from launch.conditions import IfCondition, UnlessCondition
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition


def generate_launch_description() -> launch.LaunchDescription:
    config = PathJoinSubstitution([FindPackageShare("meres_ros"), "config"])
    arguments = [
        DeclareLaunchArgument("checkpoint", default_value="demo", description="checkpoint file, or 'demo'"),
        DeclareLaunchArgument("device", default_value="auto", description="auto, cpu, cuda or cuda:N"),
        DeclareLaunchArgument("image", default_value="/camera/color/image_raw", description="color image topic"),
        DeclareLaunchArgument("depth", default_value="/camera/aligned_depth_to_color/image_raw",
                              description="depth topic, registered to the color image"),
        DeclareLaunchArgument("camera_info", default_value="/camera/color/camera_info",
                              description="CameraInfo topic of the color camera"),
        DeclareLaunchArgument("expression_topic", default_value="/referring_expression",
                              description="std_msgs/String topic of the referring expression"),
        DeclareLaunchArgument("params_file", default_value=PathJoinSubstitution([config, "meres.yaml"]),
                              description="parameter file (the other arguments override it)"),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="the node configures and activates itself; false: this launch file does"),
        DeclareLaunchArgument("fastdds_profile", default_value="false",
                              description="true: use config/fastdds_shm.xml (large shared-memory segment) for this "
                                          "node; the camera driver needs the same profile"),
    ]
    use_shm_profile = SetEnvironmentVariable(
        "FASTDDS_DEFAULT_PROFILES_FILE", PathJoinSubstitution([config, "fastdds_shm.xml"]),
        condition=IfCondition(LaunchConfiguration("fastdds_profile")))
    node = LifecycleNode(
        package="meres_ros",
        executable="meres_node",
        name="meres",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[
            LaunchConfiguration("params_file"),
            {"checkpoint": ParameterValue(LaunchConfiguration("checkpoint"), value_type=str),
             "device": ParameterValue(LaunchConfiguration("device"), value_type=str),
             "autostart": ParameterValue(LaunchConfiguration("autostart"), value_type=bool)},
        ],
        remappings=[
            ("image", LaunchConfiguration("image")),
            ("depth", LaunchConfiguration("depth")),
            ("camera_info", LaunchConfiguration("camera_info")),
            ("/referring_expression", LaunchConfiguration("expression_topic")),
        ],
    )
    configure = EmitEvent(
        event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=Transition.TRANSITION_CONFIGURE),
        condition=UnlessCondition(LaunchConfiguration("autostart")))
    activate_when_configured = RegisterEventHandler(
        OnStateTransition(
            target_lifecycle_node=node, goal_state="inactive",
            entities=[EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                                  transition_id=Transition.TRANSITION_ACTIVATE))]),
        condition=UnlessCondition(LaunchConfiguration("autostart")))
    return launch.LaunchDescription([*arguments, use_shm_profile, activate_when_configured, node, configure])
