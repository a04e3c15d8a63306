"""One benchmark entry point: every section, one JSON file with the targets, measurements and machine.

    python -m bench                          # everything (make bench): out/bench/bench.json
    python -m bench --quick --out FILE       # a few minutes on 2 cores
    python -m bench --sections model backends   # some sections
    python -m bench --device cuda            # model and backends sections on the GPU (fp16 and fp32)

Each section is a module of this package with `run(quick) -> {"targets", "measurements"}`
(and optionally "baselines"; a `device` argument when it has one). `targets` maps each target
name of issue 11 to {"value", "target", "ok"} ("op" and "note" where given). A section whose
module is missing is skipped with a note; one that fails is reported with its error and the
others still run (exit status 1).
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from .common import machine

# name -> what it measures; the module is bench/<name>.py
SECTIONS = {
    "model": "paper@480 against the matmul roofline, 8 sentences vs 1, bf16/fp16 vs fp32 masks, presets",
    "backends": "the image path under onnxruntime (ONNX export) and compiled by AOTInductor vs eager PyTorch",
    "node": "the ROS 2 node against the bare Segmenter: latency, 30 Hz camera, memory, start-up",
    "train": "training throughput per preset",
}


def run_section(name: str, quick: bool, device: str) -> dict:
    try:
        module = importlib.import_module(f"bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"bench.{name}":
            raise
        return {"skipped": f"bench/{name}.py is missing", "targets": {}, "measurements": {}}
    kwargs = {"device": device} if "device" in inspect.signature(module.run).parameters else {}
    if device != "cpu" and not kwargs:
        return {"skipped": f"bench/{name}.py runs on the CPU only", "targets": {}, "measurements": {}}
    start = time.perf_counter()
    result = module.run(quick, **kwargs)
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def collect(sections: list[str], quick: bool, device: str) -> dict:
    report = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "quick": quick, "device": device,
              "machine": machine(), "targets": {}, "baselines": {}, "sections": {}}
    for name in sections:
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        try:
            result = run_section(name, quick, device)
        except Exception as exc:  # one broken section must not hide the others' numbers
            result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(),
                      "targets": {}, "measurements": {}}
        report["sections"][name] = result
        for key, value in result.get("targets", {}).items():
            report["targets"][key] = {**value, "section": name}
        if result.get("baselines"):
            report["baselines"][name] = result["baselines"]
    return report


def summary(report: dict) -> str:
    lines = [f"{'target':42} {'value':>10} {'target':>10}  ok"]
    for name, t in report["targets"].items():
        value = "-" if t["value"] is None else f"{t['value']:.4g}"
        lines.append(f"{name:42} {value:>10} {t.get('op', '<=') + ' ' + str(t['target']):>10}  {'yes' if t['ok'] else 'NO'}")
    for name, section in report["sections"].items():
        if "skipped" in section or "error" in section:
            lines.append(f"[{name}] {section.get('skipped') or section.get('error')}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and scenes: a few minutes on 2 cores")
    parser.add_argument("--out", help="the JSON file (default: out/bench/bench.json, or quick.json with --quick)")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (sections that support it)")
    args = parser.parse_args(argv)
    out = Path(args.out or f"out/bench/{'quick' if args.quick else 'bench'}.json")
    report = collect(args.sections, args.quick, args.device)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(summary(report), file=sys.stderr)
    print(f"bench: wrote {out}", file=sys.stderr)
    return 1 if any("error" in s for s in report["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
