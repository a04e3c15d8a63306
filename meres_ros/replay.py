"""`meres-replay`: segment recorded frames offline with the node's own code path.

    meres-replay INPUT -e "the red mug" [-e "the laptop"] --out out/replay

INPUT is an image folder, a video file (anything OpenCV reads) or a ROS 2 bag
(directory or .db3 / .mcap file, read with rosbags). Bag frames go through the
same Image conversion, depth / CameraInfo matching, batched `Segmenter` call and
3D centroid as in `meres_node`; bad frames are reported and skipped the same way.

Writes, under --out: masks/<frame>_<k>.png (0/255 per expression), overlays/<frame>.png
and results.json (per frame: name, stamp, and per expression found, score, bbox,
pixel and 3D centroid, timings).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np

from meres_core.model_source import (
    ModelSource,
    add_decision_arguments,
    add_model_arguments,
    decision_settings,
    with_settings,
)
from meres_ros.conversions import image_to_rgb
from meres_ros.geometry import DepthRange
from meres_ros.pipeline import (
    DepthSettings,
    Frame,
    InputError,
    depth_and_camera,
    parse_expressions,
    render_overlay,
    segment_frame,
    target_to_dict,
)
from meres_ros.streams import StampBuffer, stamp_ns

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
BAG_SUFFIXES = {".db3", ".mcap"}


@dataclass
class SourceFrame:
    name: str  # file name, video frame number or bag message index: names the output files
    frame: Frame
    stamp_ns: Optional[int] = None


def frames_from_folder(folder: Path) -> Iterator[SourceFrame]:
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            print(f"skipped {path.name}: not a readable image", file=sys.stderr)
            continue
        yield SourceFrame(path.stem, Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))


def frames_from_video(path: Path) -> Iterator[SourceFrame]:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"OpenCV cannot open {path} as a video")
    try:
        index = 0
        while True:
            ok, bgr = capture.read()
            if not ok:
                return
            stamp = int(capture.get(cv2.CAP_PROP_POS_MSEC) * 1e6)
            yield SourceFrame(f"frame_{index:06d}", Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)), stamp)
            index += 1
    finally:
        capture.release()


def frames_from_bag(path: Path, topic: Optional[str], depth_topic: Optional[str], camera_info_topic: Optional[str],
                    depth: DepthSettings, tolerance_ns: int) -> Iterator[SourceFrame]:
    """Color frames of a bag, each with the depth and CameraInfo nearest to its stamp (when topics are given).

    Bags store topics interleaved by receive time, so a color frame waits until the bag
    has moved `tolerance` past its stamp before it is matched: its depth may come later.
    """
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    # Message definitions of bags that do not store their own (sqlite3 bags of older ROS releases).
    with AnyReader([path], default_typestore=get_typestore(Stores.ROS2_KILTED)) as reader:
        images = [c for c in reader.connections if c.msgtype == "sensor_msgs/msg/Image"]
        if topic is None:
            if not images:
                raise ValueError(f"{path} has no sensor_msgs/msg/Image topic")
            topic = images[0].topic
            print(f"color topic: {topic} (choose with --topic; image topics: {', '.join(c.topic for c in images)})")
        wanted = {topic, depth_topic, camera_info_topic} - {None}
        connections = [c for c in reader.connections if c.topic in wanted]
        if topic not in {c.topic for c in connections}:
            raise ValueError(f"{path} has no topic {topic}")
        depths, camera_infos = StampBuffer(64), StampBuffer(64)
        pending: deque = deque()
        index = 0

        def matched(msg) -> SourceFrame:
            try:
                rgb = image_to_rgb(msg)
            except ValueError as error:
                raise InputError("image", str(error)) from None
            frame = Frame(rgb)
            stamp = stamp_ns(msg.header.stamp)
            depth_msg = depths.nearest(stamp, tolerance_ns)
            info_msg = camera_infos.nearest(stamp, tolerance_ns)
            if depth_msg is not None and info_msg is not None:
                try:
                    frame.depth_m, frame.camera = depth_and_camera(rgb.shape, depth_msg, info_msg, depth.scale)
                except InputError as error:
                    print(f"no 3D for the frame at {stamp}: [{error.kind}] {error}", file=sys.stderr)
            return SourceFrame(f"msg_{index:06d}", frame, stamp)

        def release(until: Optional[int]) -> Iterator[SourceFrame]:
            nonlocal index
            while pending and (until is None or stamp_ns(pending[0].header.stamp) + tolerance_ns < until):
                msg = pending.popleft()
                try:
                    yield matched(msg)
                except InputError as error:
                    print(f"skipped bag image {index}: {error}", file=sys.stderr)
                index += 1

        for connection, _, raw in reader.messages(connections=connections):
            msg = reader.deserialize(raw, connection.msgtype)
            if connection.topic == topic:
                pending.append(msg)
            elif connection.topic == depth_topic:
                depths.add(msg)
            else:
                camera_infos.add(msg)
            yield from release(stamp_ns(msg.header.stamp))
        yield from release(None)


def open_source(path: Path, args) -> Iterator[SourceFrame]:
    if path.is_dir() and not (path / "metadata.yaml").exists():
        return frames_from_folder(path)
    if path.is_dir() or path.suffix.lower() in BAG_SUFFIXES:
        depth = DepthSettings(scale=args.depth_scale)
        return frames_from_bag(path, args.topic, args.depth_topic, args.camera_info_topic, depth,
                               int(args.sync_tolerance * 1e9))
    return frames_from_video(path)


def run(args) -> int:
    expressions = parse_expressions("; ".join(args.expression))
    if not expressions:
        raise SystemExit("give at least one --expression")
    out = Path(args.out)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(exist_ok=True)
    source = ModelSource.from_args(args)
    print(f"loading {source.describe()}")
    segmenter = source.load()
    decision = with_settings(segmenter.decision, **decision_settings(args))
    depth_settings = DepthSettings(scale=args.depth_scale, depth_range=DepthRange(args.depth_min, args.depth_max))
    records = []
    started = time.perf_counter()
    for count, item in enumerate(open_source(Path(args.input), args)):
        if args.max_frames and count >= args.max_frames:
            break
        if count % args.every:
            continue
        targets = segment_frame(segmenter, item.frame, expressions, depth_settings, decision)
        for k, target in enumerate(targets):
            cv2.imwrite(str(out / "masks" / f"{item.name}_{k}.png"), target.mask.astype(np.uint8) * 255)
        overlay = render_overlay(item.frame.rgb, targets)
        cv2.imwrite(str(out / "overlays" / f"{item.name}.png"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        records.append({"frame": item.name, "stamp_ns": item.stamp_ns, "targets": [target_to_dict(t) for t in targets]})
        print(f"{item.name}: " + "; ".join(
            f"{t.expression[:40]!r} {'found' if t.found else 'absent'} {t.score:.2f}" for t in targets))
    summary = {"input": str(args.input), "expressions": expressions, "source": source.describe(),
               "frames": records, "seconds": round(time.perf_counter() - started, 2)}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    print(f"{len(records)} frames -> {out}/results.json, masks/, overlays/")
    return 0 if records else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meres-replay", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("input", help="image folder, video file, or ROS 2 bag (folder or .db3 / .mcap)")
    parser.add_argument("-e", "--expression", action="append", required=True,
                        help="referring expression; repeat (or 'a; b') for several, segmented in one batch")
    parser.add_argument("--out", default="out/replay", help="output folder")
    parser.add_argument("--every", type=int, default=1, help="segment every N-th frame")
    parser.add_argument("--max-frames", type=int, default=0, help="stop after N input frames (0: all)")
    add_model_arguments(parser)
    add_decision_arguments(parser)
    bag = parser.add_argument_group("ROS 2 bags")
    bag.add_argument("--topic", help="color sensor_msgs/Image topic (default: the first Image topic)")
    bag.add_argument("--depth-topic", help="registered depth topic, for 3D centroids")
    bag.add_argument("--camera-info-topic", help="CameraInfo topic of the color camera, for 3D centroids")
    bag.add_argument("--depth-scale", type=float, default=0.001, help="metres per unit of 16UC1 depth")
    bag.add_argument("--depth-min", type=float, default=0.1)
    bag.add_argument("--depth-max", type=float, default=10.0)
    bag.add_argument("--sync-tolerance", type=float, default=0.05, help="seconds between matched stamps")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.every < 1:
        raise SystemExit("--every must be >= 1")
    from meres_core.checkpoint import CheckpointError

    try:
        return run(args)
    except (ValueError, OSError, CheckpointError) as error:
        print(f"meres-replay: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
