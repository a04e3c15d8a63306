"""The shipped demo model loads, and its recorded evaluation is what a fresh evaluation gives."""
import json
import math

import pytest

from meres_core.checkpoint import resolve_checkpoint
from meres_core.inference import Segmenter
from training import report_demo

RECORD = resolve_checkpoint("demo").with_name("meres_demo_eval.json")


def test_shipped_checkpoint_loads_with_the_demo_presets_deviations():
    segmenter = Segmenter.from_checkpoint("demo", device="cpu")
    assert segmenter.cfg.model.coord_features and segmenter.cfg.model.sentence_position_prior
    assert not segmenter.cfg.model.extractor.divide_by_k
    assert segmenter.metadata.get("train_config", {}).get("preset") == "demo"


def test_recorded_evaluation_matches_a_fresh_one_on_the_fixture(tmp_path):
    recorded = json.loads(RECORD.read_text())["fixture"]
    assert recorded["scenes"] == {"generator": "meres-synth", **report_demo.FIXTURE}
    fresh = report_demo.evaluate_on("demo", report_demo.fixture_scenes(tmp_path / "scenes"), tmp_path / "eval")
    for key in report_demo.COMPARED:
        want, got = recorded["summary"][key], fresh[key]
        if want is None:
            assert got is None or math.isnan(got), key
        else:
            assert got == pytest.approx(want, abs=1e-4), key
