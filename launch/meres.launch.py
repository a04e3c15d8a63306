"""Start meres_node as a lifecycle node.

    ros2 launch meres_ros meres.launch.py image:=/camera/color/image_raw \\
        depth:=/camera/aligned_depth_to_color/image_raw camera_info:=/camera/color/camera_info

The node brings itself to active (its `autostart` parameter, true in config/meres.yaml).
With autostart:=false it stays unconfigured for a lifecycle manager (nav2_lifecycle_manager,
or `ros2 lifecycle set /meres configure`), and this file emits no transitions of its own.

checkpoint, device, autostart, use_sim_time and log_level override params_file only when
given; left out, the parameter file decides (meres_ros/launch_arguments.py).
"""
import launch
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.substitutions import FindPackageShare

from meres_ros.launch_arguments import LOG_LEVELS, PARAMETER_ARGUMENTS, node_arguments


def start_node(context):
    given = {name: LaunchConfiguration(name).perform(context) for name in [*PARAMETER_ARGUMENTS, "log_level"]}
    arguments = node_arguments(given)
    return [LifecycleNode(
        package="meres_ros",
        executable="meres_node",
        name="meres",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[LaunchConfiguration("params_file"), arguments.parameters],
        ros_arguments=arguments.ros_arguments,
        remappings=[
            ("image", LaunchConfiguration("image")),
            ("depth", LaunchConfiguration("depth")),
            ("camera_info", LaunchConfiguration("camera_info")),
            ("/referring_expression", LaunchConfiguration("expression_topic")),
        ],
    )]


def generate_launch_description() -> launch.LaunchDescription:
    config = PathJoinSubstitution([FindPackageShare("meres_ros"), "config"])
    not_given = "(default: as params_file says)"
    arguments = [
        DeclareLaunchArgument("checkpoint", default_value="", description=f"checkpoint file, or 'demo' {not_given}"),
        DeclareLaunchArgument("device", default_value="", description=f"auto, cpu, cuda or cuda:N {not_given}"),
        DeclareLaunchArgument("autostart", default_value="",
                              description="true: the node configures and activates itself; false: it waits for a "
                                          f"lifecycle manager {not_given}"),
        DeclareLaunchArgument("use_sim_time", default_value="", description=f"true with a simulator or a bag {not_given}"),
        DeclareLaunchArgument("log_level", default_value="",
                              description=f"{', '.join(LOG_LEVELS)} (default: info)"),
        DeclareLaunchArgument("image", default_value="/camera/color/image_raw", description="color image topic"),
        DeclareLaunchArgument("depth", default_value="/camera/aligned_depth_to_color/image_raw",
                              description="depth topic, registered to the color image"),
        DeclareLaunchArgument("camera_info", default_value="/camera/color/camera_info",
                              description="CameraInfo topic of the color camera"),
        DeclareLaunchArgument("expression_topic", default_value="/referring_expression",
                              description="std_msgs/String topic of the referring expression"),
        DeclareLaunchArgument("params_file", default_value=PathJoinSubstitution([config, "meres.yaml"]),
                              description="parameter file (the arguments above override it when given)"),
        DeclareLaunchArgument("namespace", default_value="", description="node namespace"),
        DeclareLaunchArgument("fastdds_profile", default_value="false",
                              description="true: use config/fastdds_shm.xml (large shared-memory segment) for this "
                                          "node; the camera driver needs the same profile"),
    ]
    use_shm_profile = SetEnvironmentVariable(
        "FASTDDS_DEFAULT_PROFILES_FILE", PathJoinSubstitution([config, "fastdds_shm.xml"]),
        condition=IfCondition(LaunchConfiguration("fastdds_profile")))
    return launch.LaunchDescription([*arguments, use_shm_profile, OpaqueFunction(function=start_node)])
