"""training.diagnose: each answer's outcome against hand-made masks, and a run on held-out scenes."""
import json

import numpy as np

from meres_core.data.refer import load_refs
from training import diagnose
from training.diagnose import OUTCOMES, outcome


def _box(y0, y1, x0, x1):
    mask = np.zeros((40, 60), bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_outcome_names_what_the_grasp_point_landed_on():
    target = {"id": 1, "category_id": 1, "color": "red"}
    annotations = [target, {"id": 2, "category_id": 1, "color": "blue"}, {"id": 3, "category_id": 2, "color": "red"},
                   {"id": 4, "category_id": 3, "color": "green"}]
    masks = {1: _box(0, 10, 0, 10), 2: _box(0, 10, 20, 30), 3: _box(20, 30, 0, 10), 4: _box(20, 30, 20, 30)}
    assert outcome(True, (5.0, 5.0), target, annotations, masks) == "on target"
    assert outcome(True, (25.0, 5.0), target, annotations, masks) == "same shape"
    assert outcome(True, (5.0, 25.0), target, annotations, masks) == "same colour"
    assert outcome(True, (25.0, 25.0), target, annotations, masks) == "other object"
    assert outcome(True, (50.0, 35.0), target, annotations, masks) == "background"
    assert outcome(False, None, target, annotations, masks) == "not found"
    assert outcome(False, None, None, annotations, masks) == "rejected"
    assert outcome(True, (5.0, 5.0), None, annotations, masks) == "found absent"
    # "the red shape left of the blue one": a point on the blue landmark is that, before its shape counts.
    assert outcome(True, (25.0, 5.0), target, annotations, masks, landmark=2) == "landmark"
    assert outcome(True, (5.0, 25.0), target, annotations, masks, landmark=2) == "same colour"


def test_diagnose_answers_every_sentence_and_its_rates_match_its_outcomes(heldout, tmp_path):
    refs = load_refs(heldout / "synth" / "refs(synth).p")
    summary = diagnose.main(["--checkpoint", "demo", "--data-root", str(heldout), "--split", "all",
                             "--out", str(tmp_path / "diag.json")])
    written = json.loads((tmp_path / "diag.json").read_text())
    rows = written["sentences"]
    assert len(rows) == sum(len(r["sentences"]) for r in refs)
    assert {row["outcome"] for row in rows} <= set(OUTCOMES)
    assert all((row["kind"] == "absent") == (row["outcome"] in ("rejected", "found absent")) for row in rows)
    for kind, counts in summary["outcomes"].items():
        assert sum(counts.values()) == sum(row["kind"] == kind for row in rows)
        if kind == "absent":
            continue
        by_category = summary["category"][kind].values()
        assert sum(g["n"] for g in by_category) == sum(counts.values())
        assert round(sum(g["on_target"] * g["n"] for g in by_category)) == counts.get("on target", 0)
    assert written["summary"] == summary


def test_spatial_wording_and_landmark_read_every_meres_synth_template():
    from meres_core.data.synthetic.vocabulary import EXTREME, NOUNS, RELATION_TEMPLATES, RELATION_WORDS

    for templates in EXTREME.values():
        for template in templates:
            assert diagnose.spatial_wording(template.format(np="red circle")) == "edge", template
            assert diagnose.landmark_name(template.format(np="red circle")) is None, template
    for relation, words in RELATION_WORDS.items():
        for template in RELATION_TEMPLATES:
            for word in words:
                for landmark in ("blue square", *(f"green {noun}" for noun in NOUNS[None])):
                    sentence = template.format(np="red circle", rel=word, lm=landmark)
                    assert diagnose.spatial_wording(sentence) == ("nearest" if relation == "nearest" else "side of"), sentence
                    assert diagnose.landmark_name(sentence) == (None if landmark.startswith("green") else "square",
                                                                "green" if landmark.startswith("green") else "blue")
