"""training.word_probe: the pairs name the right objects, and the scores tell reading from ignoring."""
import json

import numpy as np

from training import word_probe
from training.scenes import load_scenes
from training.word_probe import PairScores, SceneObject, scene_pairs


def test_pairs_name_the_objects_the_words_describe():
    objects = [SceneObject(1, "circle", "red", 300.0, 900.0), SceneObject(2, "circle", "blue", 100.0, 2000.0),
               SceneObject(3, "star", "red", 200.0, 500.0), SceneObject(4, "square", "green", 50.0, 700.0)]
    pairs = {p.kind: p for p in scene_pairs(objects)}
    assert pairs["left/right"].sentences == ("the leftmost circle", "the rightmost circle")
    assert pairs["left/right"].targets == (2, 1)
    assert pairs["bigger/smaller"].targets == (2, 1)  # 2000 px is the bigger circle
    assert pairs["colour"].sentences == ("the red circle", "the blue circle") and pairs["colour"].targets == (1, 2)
    assert pairs["shape"].sentences == ("the square", "the star") and pairs["shape"].targets == (4, 3)
    # no unambiguous answer, no pair
    close = [SceneObject(1, "circle", "red", 10.0, 1000.0), SceneObject(2, "circle", "red", 90.0, 1200.0)]
    assert {p.kind for p in scene_pairs(close)} == {"left/right"}


def test_scores_tell_a_model_that_reads_the_word_from_one_that_does_not():
    left, right = np.zeros((10, 20), bool), np.zeros((10, 20), bool)
    left[2:6, 1:5], right[2:6, 12:16] = True, True
    reads, ignores = PairScores(), PairScores()
    reads.add("left/right", (left, right), ((3.0, 4.0), (13.0, 4.0)), (left, right))
    ignores.add("left/right", (left, left), ((3.0, 4.0), (3.0, 4.0)), (left, right))
    assert reads.summary()["left/right"] == {"pairs": 1, "mask_iou": 0.0, "both_on_target": 1.0, "swapped": 0.0}
    assert ignores.summary()["left/right"] == {"pairs": 1, "mask_iou": 1.0, "both_on_target": 0.0, "swapped": 0.0}
    swapped = PairScores()
    swapped.add("left/right", (right, left), ((13.0, 4.0), (3.0, 4.0)), (left, right))
    assert swapped.summary()["left/right"]["swapped"] == 1.0


def test_probe_runs_on_held_out_scenes_and_writes_json(heldout, tmp_path):
    scenes, names = load_scenes(heldout, None)
    assert len(scenes) == 6
    expected = sum(len(scene_pairs(word_probe.scene_objects(anns, names))) for _, anns in scenes)
    assert expected > 0
    summary = word_probe.main(["--checkpoint", "demo", "--data-root", str(heldout), "--split", "all",
                               "--out", str(tmp_path / "probe.json")])
    assert sum(row["pairs"] for row in summary.values()) == expected
    for row in summary.values():
        assert 0.0 <= row["mask_iou"] <= 1.0 and row["both_on_target"] + row["swapped"] <= 1.0
    assert json.loads((tmp_path / "probe.json").read_text())["pairs"] == summary
