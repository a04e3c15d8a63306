"""Issue 11, node side: the real `meres_node` (its own process, shipped demo model, default settings)
against the bare `Segmenter` call, over real topics from this process.

    python -m bench.node [--quick] [--out FILE] [--param name=value ...]

Sections, one node process for all but the first:
  startup      cold start of `meres-segment` (a fresh process) to its first printed result; the node's
               configure time (its own log: "loading" -> "configured") and process start to first result
  latency      one frame at a time on synthetic 640x480 scenes (meres-synth renderer): image stamp to
               ~/result received here, against the node's own `Segmenter.segment` call on that frame
               (ReferringSegmentation.inference_time_ms): the same frame, precision, threads and CPU load.
               (A bare Segmenter in this process is no fair baseline on a shared CPU: beside the node, and
               at nice 10 behind other work, its two OpenMP threads ran 2-20x slower than the node's.)
  camera       a 30 Hz camera (color + depth + CameraInfo) for 15 s (--quick) / 60 s after a warm-up:
               result age (now - image stamp at reception) in camera periods, results per second,
               node RSS growth, the node's text-encoder calls while the sentence does not change
               (its /diagnostics counter of real text-encoder forward calls), and 4 parameter reads a
               second (~/get_parameters round trips: how long a service call waits on the busy node)

Images travel through Fast DDS shared memory (config/fastdds_shm.xml, as `meres-demo` and the launch
file's fastdds_profile:=true): with Fast DDS defaults 640x480 frames fragment over UDP.
`run(quick)` returns {"targets": {name: {"value", "target", "ok"}}, "measurements": {...}}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

from .common import target

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WIDTH, HEIGHT = 640, 480
CAMERA_HZ = 30.0
SCENE_SEED = 11
TEXT_CALLS_KEY = "text encoder calls"  # meres_node's /diagnostics value (meres_ros/node.py)


def node_parameters(overrides: Optional[dict] = None) -> dict:
    """The node's defaults except: the demo model on the CPU, and no rate cap (max_rate defaults to 10 Hz)."""
    return {"checkpoint": "demo", "device": "cpu", "max_rate": 0.0, **(overrides or {})}


def scenes(count: int):
    """(rgb, depth mm, sentence naming the scene's front-most shape) for `count` synthetic scenes."""
    from meres_core.data.synthetic import render_scene

    out = []
    for image_id in range(1, count + 1):
        scene = render_scene(SCENE_SEED, image_id, HEIGHT, WIDTH, depth=True)
        shape = scene.shapes[-1]
        out.append((scene.image, scene.depth, f"the {shape.color} {shape.category}"))
    return out


def camera_info_message():
    from sensor_msgs.msg import CameraInfo

    from meres_core.data.synthetic import camera_info

    c = camera_info(HEIGHT, WIDTH)
    return CameraInfo(width=WIDTH, height=HEIGHT, distortion_model="plumb_bob", d=[0.0] * 5,
                      k=[c["fx"], 0.0, c["cx"], 0.0, c["fy"], c["cy"], 0.0, 0.0, 1.0],
                      r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                      p=[c["fx"], 0.0, c["cx"], 0.0, 0.0, c["fy"], c["cy"], 0.0, 0.0, 0.0, 1.0, 0.0])


def percentile(values, q: float) -> Optional[float]:
    return float(np.percentile(values, q)) if len(values) else None


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# -- startup ------------------------------------------------------------------------------------


def cli_cold_start(folder: Path, rgb: np.ndarray, sentence: str, device: str = "cpu") -> dict:
    """`meres-segment` as a fresh process: seconds to its first JSON line (the first result) and to its exit."""
    import cv2

    image = folder / "scene.png"
    cv2.imwrite(str(image), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    command = [sys.executable, "-m", "meres_core.cli", "--checkpoint", "demo", "--device", device,
               "--image", str(image), "--text", sentence]
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    first = process.stdout.readline()
    first_result_s = time.monotonic() - started
    process.communicate()
    return {"first_result_s": round(first_result_s, 2), "exit_s": round(time.monotonic() - started, 2),
            "exit_code": process.returncode, "answered": first.startswith("{")}


LOG_TIME = re.compile(r"\[(\d+\.\d+)\] \[[^\]]*\]: (loading|configured)")


def configure_seconds(log: str) -> Optional[float]:
    """From the node's own log: the configure transition's "loading ..." line to its "configured" line."""
    times = {}
    for stamp, what in LOG_TIME.findall(log):
        times.setdefault(what, float(stamp))
    if len(times) < 2:
        return None
    return round(times["configured"] - times["loading"], 3)


# -- the node, driven from here -------------------------------------------------------------------


class Listener:
    """~/result and /diagnostics of the node, with the wall-clock time each result arrived."""

    def __init__(self, client, node_name: Optional[str] = None):
        from meres_ros.interface import NODE_NAME, RESULT_TOPIC, output_topic, result_message_types

        types = result_message_types()
        if types is None:
            raise RuntimeError("meres_ros_interfaces is not built (scripts/build_msgs.sh): no ~/result to time")
        self.node_name = node_name or NODE_NAME
        self.received: dict[int, int] = {}  # image stamp (ns) -> time.time_ns() at reception
        self.inference_ms: dict[int, float] = {}  # the node's Segmenter call for that frame
        client.node.create_subscription(types[0], output_topic(node_name or NODE_NAME, RESULT_TOPIC), self._on_result, 50)
        self.client = client

    def _on_result(self, msg) -> None:
        now = time.time_ns()
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        self.received[stamp] = now
        self.inference_ms[stamp] = float(msg.inference_time_ms)

    def wait(self, stamp: int, timeout: float) -> Optional[int]:
        self.client.spin_until(lambda: stamp in self.received, timeout)
        return self.received.get(stamp)

    def diagnostic(self, key: str, timeout: float = 5.0) -> Optional[str]:
        """`key` from the node's next /diagnostics status."""
        try:
            status = self.client.wait_for_diagnostics(lambda s: any(v.key == key for v in s.values), timeout)
        except TimeoutError:
            return None
        return next(v.value for v in status.values if v.key == key)


def stamp_of(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def latency_pairs(client, listener: Listener, frames, per_sentence: int) -> dict:
    """One frame at a time: image stamp -> ~/result received here, against the node's own Segmenter call on
    that frame (ReferringSegmentation.inference_time_ms: `Segmenter.segment`'s wall time in the node process,
    so the same precision, threads and CPU load)."""
    node_ms, model_ms, lost = [], [], 0
    for rgb, _, sentence in frames:
        client.set_expression(sentence)
        for repeat in range(per_sentence + 1):
            stamp = stamp_of(client.publish_frame(rgb))
            arrived = listener.wait(stamp, 10.0)
            if repeat == 0:
                continue  # the first frame of a sentence also encodes it
            if arrived is None:
                lost += 1
                continue
            node_ms.append((arrived - stamp) / 1e6)
            model_ms.append(listener.inference_ms[stamp])
    ratios = [n / m for n, m in zip(node_ms, model_ms) if m > 0]
    return {
        "frames": len(node_ms), "lost": lost,
        "node_ms_p50": round(percentile(node_ms, 50), 2) if node_ms else None,
        "node_ms_p90": round(percentile(node_ms, 90), 2) if node_ms else None,
        "segmenter_ms_p50": round(percentile(model_ms, 50), 2) if model_ms else None,
        "segmenter_ms_p90": round(percentile(model_ms, 90), 2) if model_ms else None,
        "node_over_segmenter_p50": round(percentile(ratios, 50), 3) if ratios else None,
        "node_minus_segmenter_ms_p50": round(percentile([n - m for n, m in zip(node_ms, model_ms)], 50), 2)
        if node_ms else None,
    }


# The node's executor answers services (parameters, lifecycle, ~/segment) beside the camera's callbacks:
# a parameter read during the camera run is how long a robot's request waits on a busy node.
PARAMETER_READS_PER_S = 4.0


class ParameterReads:
    """`~/get_parameters` calls to the node, one at a time, each timed from its request to its answer here."""

    def __init__(self, client, node_name: str):
        from rcl_interfaces.srv import GetParameters

        from meres_ros.interface import output_topic

        self._request = GetParameters.Request(names=["max_rate"])
        self._service = client.node.create_client(GetParameters, output_topic(node_name, "get_parameters"))
        self._pending = False
        self.round_trips_ms: list[float] = []

    def ask(self) -> None:
        if self._pending or not self._service.service_is_ready():
            return
        self._pending, asked = True, time.monotonic()

        def answered(_future) -> None:
            self.round_trips_ms.append((time.monotonic() - asked) * 1000)
            self._pending = False

        self._service.call_async(self._request).add_done_callback(answered)

    def summary(self) -> dict:
        values = self.round_trips_ms
        return {"parameter_reads": len(values),
                "parameter_read_ms_p50": round(percentile(values, 50), 2) if values else None,
                "parameter_read_ms_p90": round(percentile(values, 90), 2) if values else None,
                "parameter_read_ms_max": round(max(values), 2) if values else None}


def camera_run(client, listener: Listener, process, frame, seconds: float, warmup_s: float,
               rate_hz: float = CAMERA_HZ) -> dict:
    """A camera at `rate_hz` (color + depth + CameraInfo of one scene); one sentence all along."""
    rgb, depth, sentence = frame
    info = camera_info_message()
    client.set_expression(sentence)
    calls_before = listener.diagnostic(TEXT_CALLS_KEY)
    period = 1.0 / rate_hz
    sent: list[int] = []
    rss: list[int] = []
    parameter_reads = ParameterReads(client, listener.node_name)
    started = time.monotonic()
    measure_from = started + warmup_s
    next_frame, next_sample, next_read = started, measure_from, measure_from
    first_measured = None
    while time.monotonic() < measure_from + seconds:
        header = client.publish_frame(rgb, depth, info)
        now = time.monotonic()
        if now >= measure_from:
            first_measured = first_measured if first_measured is not None else len(sent)
            if now >= next_sample:
                rss.append(rss_kib(process.pid()))
                next_sample += 1.0
            if now >= next_read:
                parameter_reads.ask()
                next_read += 1.0 / PARAMETER_READS_PER_S
        sent.append(stamp_of(header))
        next_frame += period
        client.spin(max(next_frame - time.monotonic(), 0.0))
    client.spin(1.0)
    calls_after = listener.diagnostic(TEXT_CALLS_KEY)
    measured = sent[first_measured:]
    ages = [(listener.received[s] - s) / 1e9 / period for s in measured if s in listener.received]
    model_ms = [listener.inference_ms[s] for s in measured if s in listener.inference_ms]
    answered = sum(s in listener.received for s in measured)
    span_s = (measured[-1] - measured[0]) / 1e9 if len(measured) > 1 else seconds
    calls = None if calls_before is None or calls_after is None else int(calls_after) - int(calls_before)
    return {
        "seconds": seconds, "warmup_s": warmup_s, "frames_sent": len(measured),
        "input_rate_hz": round(len(measured) / span_s, 2), "results": answered,
        "results_per_s": round(answered / span_s, 2),
        "result_age_periods_p50": round(percentile(ages, 50), 3) if ages else None,
        "result_age_periods_p99": round(percentile(ages, 99), 3) if ages else None,
        "result_age_periods_max": round(max(ages), 3) if ages else None,
        "segmenter_ms_p50": round(percentile(model_ms, 50), 2) if model_ms else None,
        "rss_mib_first": round(rss[0] / 1024, 1) if rss else None,
        "rss_mib_last": round(rss[-1] / 1024, 1) if rss else None,
        "rss_growth_pct": round(100.0 * (rss[-1] - rss[0]) / rss[0], 2) if rss else None,
        "text_encoder_calls": calls,
        **parameter_reads.summary(),
    }


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "amx": "amx_bf16" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else None}


def run(quick: bool, device: str = "cpu", overrides: Optional[dict] = None) -> dict:
    """`device`: where the node and the bare Segmenter run; `overrides`: node parameters instead of the defaults."""
    import rclpy

    from meres_ros.client import MeresClient, NodeProcess, config_file

    seconds, warmup_s = (15.0, 5.0) if quick else (60.0, 20.0)
    scene_count, per_sentence = (6, 5) if quick else (12, 10)
    parameters = node_parameters({"device": device, **(overrides or {})})
    frames = scenes(scene_count)
    measurements: dict = {"machine": machine(), "node_parameters": parameters}

    with tempfile.TemporaryDirectory(prefix="bench_node_") as folder:
        measurements["cli_cold_start"] = cli_cold_start(Path(folder), frames[0][0], frames[0][2], device)

    domain = random.randint(100, 200)
    env = {"ROS_DOMAIN_ID": str(domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
           "FASTDDS_DEFAULT_PROFILES_FILE": str(config_file("fastdds_shm.xml"))}
    previous = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # this process's participant too: a writer sends through its own segment
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    try:
        started = time.monotonic()
        with NodeProcess(parameters, env=env) as process:
            client = MeresClient(context=context, with_results=False)
            try:
                listener = Listener(client)
                if not client.wait_for_node(180):
                    raise RuntimeError(f"the node did not come up:\n{process.log()[-3000:]}")
                active_s = time.monotonic() - started
                client.set_expression(frames[0][2])
                client.request(frames[0][0], timeout=60.0)
                measurements["node_start"] = {
                    "process_start_to_active_s": round(active_s, 2),
                    "process_start_to_first_result_s": round(time.monotonic() - started, 2),
                    "configure_s": configure_seconds(process.log()),
                }
                measurements["latency"] = latency_pairs(client, listener, frames, per_sentence)
                # The node's own view of the same frames: image received -> results published (its /diagnostics).
                measurements["latency"]["node_received_to_published_ms_p50"] = listener.diagnostic("latency p50 (ms)")
                measurements["camera_30hz"] = camera_run(client, listener, process, frames[0], seconds, warmup_s)
                measurements["node_diagnostics"] = {
                    key: listener.diagnostic(key) for key in ("precision", "image path", "torch threads", "frames dropped",
                                                              "frames skipped for a fresher one", TEXT_CALLS_KEY)}
            finally:
                client.destroy()
            measurements["node_exit_code"] = process.stop()
    finally:
        rclpy.try_shutdown(context=context)
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    latency, camera = measurements["latency"], measurements["camera_30hz"]
    targets = {
        "node_latency_over_forward": target(latency["node_over_segmenter_p50"], 1.10),
        "p99_result_age_periods_30hz": target(camera["result_age_periods_p99"], 2.0),
        "rss_growth_pct": target(camera["rss_growth_pct"], 5.0, "<"),
        "text_encoder_calls_unchanged_sentence": target(camera["text_encoder_calls"], 0, "=="),
        "demo_results_per_s_through_node": target(camera["results_per_s"], 20.0, ">="),
    }
    segmenter_ms = latency["segmenter_ms_p50"]
    if not targets["demo_results_per_s_through_node"]["ok"] and segmenter_ms:
        targets["demo_results_per_s_through_node"]["note"] = (
            f"the bare Segmenter call alone took {segmenter_ms:.0f} ms (p50) in this run, i.e. at most "
            f"{1000 / segmenter_ms:.1f} results/s before the node adds anything")
    if not targets["p99_result_age_periods_30hz"]["ok"] and segmenter_ms:
        targets["p99_result_age_periods_30hz"]["note"] = (
            f"one Segmenter call is {segmenter_ms / (1000 / CAMERA_HZ):.2f} camera periods (p50) in this run: "
            "a result is at least that old, and over 2 periods whenever the model takes more than 2 periods")
    return {"targets": targets, "measurements": measurements}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="15 s camera run, 6 scenes (a few minutes on 2 cores)")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a node parameter instead of its default (YAML value), e.g. precision=fp32")
    args = parser.parse_args(argv)
    import yaml

    overrides = {}
    for pair in args.param:
        name, _, value = pair.partition("=")
        overrides[name] = yaml.safe_load(value)
    report = run(args.quick, args.device, overrides)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0  # a missed target is a result, not a failure of the benchmark


if __name__ == "__main__":
    sys.exit(main())
