"""Print the export options of the best calibrated presence rule in an evaluation's metrics.json.

    python -m training.presence_choice runs/demo_gpu/eval/val/metrics.json
    --presence-score area_fraction --presence-threshold 0.0123

Of the presence scores `training.evaluate` calibrated (each at its highest threshold that
keeps MIN_PRESENT_FOUND of present targets found), the one that rejects the most absent
targets; nothing when none keeps that many found (the checkpoint's own settings stay).
"""
from __future__ import annotations

import json
import sys


def presence_choice(metrics: dict) -> list[str]:
    calibrations = metrics.get("presence_calibration", {})
    kept = {rule: c for rule, c in calibrations.items() if c["present_found"] >= c["min_present_found"]}
    if not kept:
        return []
    rule = max(kept, key=lambda r: kept[r]["absent_rejected"])
    return ["--presence-score", rule, "--presence-threshold", repr(kept[rule]["threshold"])]


def main(argv=None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit(__doc__.splitlines()[0] + "\nusage: python -m training.presence_choice METRICS_JSON")
    with open(args[0]) as f:
        print(" ".join(presence_choice(json.load(f))))


if __name__ == "__main__":
    main()
