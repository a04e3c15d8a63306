"""`python -m bench`: one JSON with every section's targets, a missing or failing section noted (no timings)."""
import json
import sys
import types

import pytest

from bench import __main__ as bench
from bench.common import interleaved, target


def test_target_records_value_limit_and_verdict():
    assert target(1.5, 2.0) == {"value": 1.5, "target": 2.0, "op": "<=", "ok": True}
    assert not target(2.5, 2.0)["ok"]
    assert target(0.99, 0.98, ">=")["ok"] and not target(0.97, 0.98, ">=")["ok"]
    assert not target(None, 1.0)["ok"]
    assert target(3.0, 2.0, note="why")["note"] == "why"


def test_interleaved_times_every_candidate_each_round():
    calls = []
    times = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert set(times) == {"a", "b"} and len(times["a"]["samples_s"]) == 3
    assert times["a"]["min_s"] <= times["a"]["median_s"]


@pytest.fixture
def sections(monkeypatch):
    good = types.ModuleType("bench.fake_good")
    good.run = lambda quick, device="cpu": {"targets": {"x_over_y": target(1.0, 2.0)}, "measurements": {"quick": quick},
                                            "baselines": {"y_s": 0.5}}
    bad = types.ModuleType("bench.fake_bad")

    def broken(quick):
        raise RuntimeError("no camera")

    bad.run = broken
    monkeypatch.setitem(sys.modules, "bench.fake_good", good)
    monkeypatch.setitem(sys.modules, "bench.fake_bad", bad)
    monkeypatch.setattr(bench, "SECTIONS", {"fake_good": "", "fake_bad": "", "fake_missing": ""})


def test_one_json_with_targets_machine_and_notes(sections, tmp_path):
    out = tmp_path / "quick.json"
    status = bench.main(["--quick", "--out", str(out), "--sections", "fake_good", "fake_bad", "fake_missing"])
    report = json.loads(out.read_text())
    assert status == 1  # a section failed
    assert report["quick"] and report["machine"]["cores"] >= 1 and report["machine"]["torch"]
    assert report["targets"] == {"x_over_y": {"value": 1.0, "target": 2.0, "op": "<=", "ok": True, "section": "fake_good"}}
    assert report["baselines"] == {"fake_good": {"y_s": 0.5}}
    assert report["sections"]["fake_good"]["measurements"] == {"quick": True}
    assert "no camera" in report["sections"]["fake_bad"]["error"]
    assert "missing" in report["sections"]["fake_missing"]["skipped"]


def test_the_registry_names_every_section_module():
    assert list(bench.SECTIONS) == ["model", "backends", "node", "train"]
    for name in ("model", "backends", "train"):
        assert callable(__import__(f"bench.{name}", fromlist=["run"]).run)
