"""`meres-demo`: the shipped demo model, behind the real ROS 2 node, on synthetic scenes.

No camera and no downloads. The demo
  1. renders a few synthetic scenes (fixed seed: the same every run) with depth and camera intrinsics,
  2. starts `meres_node` as its own process with the demo checkpoint,
  3. plays operator and camera: for each chosen sentence, publishes it on /referring_expression,
     then the scene's color image, registered depth and CameraInfo at a fixed rate until the
     node answers,
  4. prints one line per answer and writes the node's overlay (ground truth outlined in white),
  5. ends with a summary against the ground truth: centroid on target (the grasp point inside the
     target's true mask), found accuracy, mIoU per kind, latency.

It runs on its own ROS domain, local to this machine, so it never talks to a robot's graph.
Exit status: 0 when the pipeline worked, whatever the model's accuracy; 1 when something
is broken (the node died, did not answer, or did not exit cleanly); 2 for a usage error.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from meres_core.model_source import ModelSource, add_decision_arguments, add_model_arguments, decision_settings

if TYPE_CHECKING:
    from meres_core.metrics import SegmentationMetrics

DEFAULT_OUT = "out/demo"


@dataclass
class Query:
    image_id: int
    sentence: str
    kind: str
    has_target: bool
    gt_mask: np.ndarray


def prepare_scenes(folder: Path, count: int, seed: int) -> None:
    """Render the scenes unless this folder already holds exactly these (seed, count)."""
    from meres_core.data.synthetic import generate

    meta_path = folder / "meta.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("seed") == seed and meta.get("num_images") == count and meta.get("depth"):
            return
    print(f"rendering {count} synthetic scenes (seed {seed}) into {folder}")
    generate(folder, count, seed=seed, depth=True, split_fractions=(0.0, 0.0, 1.0))


def choose_queries(folder: Path, limit: int, seed: int, kinds: Optional[set[str]] = None):
    """Sentences spread evenly over the kinds (round robin), each from a different ref where possible.

    `kinds` keeps only sentences of those kinds (attribute, spatial, ordinal, size, category, absent).
    """
    from meres_core.data.refer import ReferDataset

    dataset = ReferDataset(folder, dataset="synth", split_by="synth", split="test")
    rng = random.Random(seed)
    by_kind: dict[str, list[tuple[dict, dict]]] = {}
    for ref in dataset.refs:
        for sentence in ref["sentences"]:
            kind = sentence.get("kind", "synth")
            if not kinds or kind in kinds:
                by_kind.setdefault(kind, []).append((ref, sentence))
    for candidates in by_kind.values():
        rng.shuffle(candidates)
    queues = [by_kind[k] for k in sorted(by_kind)]
    chosen, used_refs = [], set()
    while len(chosen) < limit and any(queues):
        for queue in queues:
            # Prefer a ref not asked yet; else any sentence left of this kind.
            pick = next((c for c in queue if c[0]["ref_id"] not in used_refs), queue[0] if queue else None)
            if pick is None or len(chosen) == limit:
                continue
            queue.remove(pick)
            used_refs.add(pick[0]["ref_id"])
            chosen.append(pick)
    queries, images = [], {}
    for ref, sentence in chosen:
        image_id = int(ref["image_id"])
        if image_id not in images:
            images[image_id] = dataset.read_image(image_id)
        mask = dataset.ref_mask(ref, *images[image_id].shape[:2])
        queries.append(Query(image_id, sentence["sent"], sentence.get("kind", "synth"), bool(mask.any()), mask))
    return queries, images


def camera_info_message(folder: Path):
    from sensor_msgs.msg import CameraInfo

    intrinsics = json.loads((folder / "camera_info.json").read_text())
    fx, fy, cx, cy = (float(intrinsics[k]) for k in ("fx", "fy", "cx", "cy"))
    return CameraInfo(width=int(intrinsics["width"]), height=int(intrinsics["height"]), distortion_model="plumb_bob",
                      d=[0.0] * 5, k=[fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0],
                      r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], p=[fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0])


def read_depth(folder: Path, image_id: int) -> np.ndarray:
    import cv2

    from meres_core.data.synthetic import image_file_name

    depth = cv2.imread(str(folder / "depth" / image_file_name(image_id)), cv2.IMREAD_UNCHANGED)
    if depth is None or depth.dtype != np.uint16:
        raise FileNotFoundError(f"no uint16 depth image for scene {image_id} in {folder / 'depth'}")
    return depth


def pixel_centroid(answer, camera_info) -> Optional[tuple[float, float]]:
    """The answer's centroid in pixels: from ~/result, else projected back from ~/centroid (metres)."""
    if answer.result is not None:
        return (answer.result.centroid_u, answer.result.centroid_v) if answer.result.found else None
    if answer.centroid is None:
        return None
    point = answer.centroid.point
    k = camera_info.k
    return k[0] * point.x / point.z + k[2], k[4] * point.y / point.z + k[5]


def save_overlay(path: Path, answer, gt_mask: np.ndarray) -> None:
    import cv2

    from meres_ros.conversions import image_to_rgb

    if answer.debug_image is None:
        return
    overlay = np.ascontiguousarray(image_to_rgb(answer.debug_image))
    contours, _ = cv2.findContours(gt_mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(overlay, contours, -1, (255, 255, 255), 1)
    cv2.imwrite(str(path), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


def format_point(point) -> str:
    return "-" if point is None else "(" + ", ".join(f"{c:+.3f}" for c in point) + ")"


def run(args) -> int:
    import rclpy

    from meres_core.metrics import SegmentationMetrics, centroid_on_target
    from meres_ros.client import MeresClient, NodeProcess, config_file

    out = Path(args.out)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    scenes = out / "scenes"
    prepare_scenes(scenes, args.scenes, args.scene_seed)
    queries, images = choose_queries(scenes, args.sentences, args.scene_seed, set(args.kinds or ()))
    depths = {image_id: read_depth(scenes, image_id) for image_id in images}
    camera_info = camera_info_message(scenes)

    domain = args.domain_id if args.domain_id is not None else random.randint(100, 200)
    ros_env = {"ROS_DOMAIN_ID": str(domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
               "FASTDDS_DEFAULT_PROFILES_FILE": os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE",
                                                                str(config_file("fastdds_shm.xml")))}
    os.environ.update(ros_env)  # this process's own participant reads them at rclpy.init
    source = ModelSource.from_args(args)
    decision = {name: value for name, value in decision_settings(args).items() if value is not None}
    parameters = {**source.as_parameters(), **decision, "max_rate": 0.0, "publish_debug": True}
    node = NodeProcess(parameters, params_files=[config_file("meres.yaml")], env=ros_env, log_path=out / "node.log")
    print(f"starting meres_node with {source.describe()} on ROS domain {domain}, log: {node.log_path}")
    rclpy.init(domain_id=domain)
    node.start()
    client = MeresClient(with_debug_image=True)
    metrics = SegmentationMetrics()
    records, broken = [], None
    try:
        if not client.wait_for_node(args.startup_timeout):
            broken = f"the node did not become active within {args.startup_timeout:g} s"
        for index, query in enumerate(queries if broken is None else []):
            if not node.alive():
                broken = "the node process died"
                break
            try:
                client.set_expression(query.sentence, timeout=args.timeout)
                answer = client.request(images[query.image_id], depths[query.image_id], camera_info,
                                        timeout=args.timeout, resend_after=1.0 / args.rate)
            except TimeoutError as error:
                broken = str(error)
                break
            centroid = pixel_centroid(answer, camera_info)
            iou = metrics.update(answer.mask, query.gt_mask, query.kind, found=answer.found, centroid=centroid)
            # A present target answered "not found" is a miss, as in training.evaluate.
            on_target = centroid_on_target(centroid, query.gt_mask) if query.has_target else None
            point_3d = None
            if answer.centroid is not None:
                point_3d = (answer.centroid.point.x, answer.centroid.point.y, answer.centroid.point.z)
            score = answer.result.score if answer.result is not None else None
            model_ms = answer.result.inference_time_ms if answer.result is not None else None
            record = {"sentence": query.sentence, "kind": query.kind, "image_id": query.image_id,
                      "has_target": query.has_target, "found": answer.found, "score": score, "iou": iou,
                      "centroid_px": centroid, "centroid_on_target": on_target, "centroid_3d_m": point_3d,
                      "latency_ms": answer.latency_s * 1000.0, "model_ms": model_ms}
            records.append(record)
            save_overlay(out / "overlays" / f"{index:03d}_scene{query.image_id}.png", answer, query.gt_mask)
            print(f"[{index + 1:2d}/{len(queries)}] {query.sentence!r} ({query.kind}): "
                  f"{'found' if answer.found else 'not found'}"
                  f"{'' if score is None else f' {score:.2f}'} | target {'present' if query.has_target else 'absent'}"
                  f" | IoU {iou:.2f} | px {format_point(centroid)} | 3D {format_point(point_3d)} m"
                  f" | {record['latency_ms']:.0f} ms" + ("" if model_ms is None else f" (model {model_ms:.0f} ms)"),
                  flush=True)
    finally:
        client.destroy()
        rclpy.try_shutdown()
        exit_code = node.stop()
    if exit_code != 0 and broken is None:
        broken = f"the node exited with {exit_code} instead of 0 on SIGINT"
    summary = summarize(records, metrics, len(queries))
    summary["broken"] = broken
    (out / "summary.json").write_text(json.dumps({"summary": summary, "results": records}, indent=1))
    print_summary(summary, out)
    if broken is not None:
        print(f"meres-demo: BROKEN: {broken} (node log: {node.log_path})", file=sys.stderr)
        print("".join(node.log().splitlines(keepends=True)[-20:]), file=sys.stderr)
        return 1
    return 0


def summarize(records: list[dict], metrics: SegmentationMetrics, planned: int) -> dict:
    stats = metrics.summary() if records else {}
    latencies = [r["latency_ms"] for r in records]
    model_times = [r["model_ms"] for r in records if r["model_ms"] is not None]
    return {
        "answered": len(records), "planned": planned,
        "mIoU": stats.get("mIoU", math.nan), "oIoU": stats.get("oIoU", math.nan), "P@0.5": stats.get("P@0.5", math.nan),
        "found_accuracy": float(np.mean([r["found"] == r["has_target"] for r in records])) if records else math.nan,
        "centroid_on_target": stats.get("on_target", math.nan),
        "latency_ms": {"mean": float(np.mean(latencies)) if latencies else math.nan, "p50": percentile(latencies, 50),
                       "p95": percentile(latencies, 95), "max": max(latencies, default=math.nan)},
        "model_ms_mean": float(np.mean(model_times)) if model_times else None,
        "by_kind": {k: {"n": v["n"], "mIoU": v["mIoU"], "centroid_on_target": v["on_target"], "found": v["found"]}
                    for k, v in stats.get("by_kind", {}).items()},
    }


def print_summary(summary: dict, out: Path) -> None:
    latency = summary["latency_ms"]
    print(f"\nsummary: {summary['answered']}/{summary['planned']} sentences answered")
    print(f"  mIoU {summary['mIoU']:.3f}  oIoU {summary['oIoU']:.3f}  P@0.5 {summary['P@0.5']:.3f}  "
          f"found accuracy {summary['found_accuracy']:.3f}  centroid on target {summary['centroid_on_target']:.3f}")
    print(f"  latency (frame published -> mask received, across processes): mean {latency['mean']:.0f} ms, "
          f"p50 {latency['p50']:.0f} ms, p95 {latency['p95']:.0f} ms, max {latency['max']:.0f} ms"
          + ("" if summary["model_ms_mean"] is None else f"; model {summary['model_ms_mean']:.0f} ms mean"))
    if summary["by_kind"]:
        print("  by kind      n  centroid on target  found   mIoU")
        for kind, row in summary["by_kind"].items():
            on_target = "-" if math.isnan(row["centroid_on_target"]) else f"{row['centroid_on_target']:.2f}"
            print(f"  {kind:<10} {row['n']:>3}  {on_target:>18}  {row['found']:>5.2f}  {row['mIoU']:.2f}")
    print(f"  overlays: {out / 'overlays'}, details: {out / 'summary.json'}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meres-demo", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder (scenes, overlays, summary.json, node.log)")
    parser.add_argument("--scenes", type=int, default=12, help="synthetic scenes to render")
    parser.add_argument("--sentences", type=int, default=36, help="sentences to ask, spread evenly over the kinds")
    parser.add_argument("--scene-seed", type=int, default=0, help="seed of the scenes and of the sentences chosen")
    parser.add_argument("--kinds", nargs="+", help="only sentences of these kinds (attribute, spatial, ordinal, "
                        "size, category, absent)")
    parser.add_argument("--rate", type=float, default=5.0, help="Hz at which a frame is republished until answered")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one answer")
    parser.add_argument("--startup-timeout", type=float, default=120.0, help="seconds for the node to load its model")
    parser.add_argument("--domain-id", type=int, help="ROS domain (default: a random one in 100-200)")
    add_model_arguments(parser)
    add_decision_arguments(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.scenes < 1 or args.sentences < 1 or args.rate <= 0:
        print("meres-demo: --scenes, --sentences and --rate must be positive", file=sys.stderr)
        return 2
    if not args.preset:
        from meres_core.checkpoint import resolve_checkpoint

        path = resolve_checkpoint(args.checkpoint)
        if not path.is_file():
            print(f"meres-demo: checkpoint {args.checkpoint!r} not found ({path}); "
                  "`meres-demo --preset tiny` runs the same pipeline with random weights", file=sys.stderr)
            return 2
    started = time.perf_counter()
    code = run(args)
    print(f"meres-demo: done in {time.perf_counter() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
