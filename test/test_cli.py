"""`meres-segment` end to end as a user runs it."""
import json
import subprocess
import sys

import cv2
import pytest


def run(*args):
    return subprocess.run([sys.executable, "-m", "meres_core.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def image_path(tmp_path, scene):
    path = tmp_path / "scene.png"
    cv2.imwrite(str(path), cv2.cvtColor(scene, cv2.COLOR_RGB2BGR))
    return path


def test_prints_one_json_per_expression_and_writes_overlay(tmp_path, image_path):
    out = tmp_path / "overlay.png"
    proc = run("--preset", "tiny", "--image", str(image_path), "--text", "the red circle", "--text", "blue square",
               "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["expression"] for r in rows] == ["the red circle", "blue square"]
    assert all({"found", "score", "bbox", "centroid", "ambiguous", "candidates"} <= set(r) for r in rows)
    assert cv2.imread(str(out)).shape == (96, 128, 3)


@pytest.mark.parametrize("case", ["missing_image", "unreadable_image", "empty_text", "bad_checkpoint",
                                  "bad_ambiguity_ratio"])
def test_bad_input_exits_2_with_a_message(tmp_path, image_path, case):
    args = {"missing_image": ["--preset", "tiny", "--image", str(tmp_path / "nope.png"), "--text", "a"],
            "unreadable_image": ["--preset", "tiny", "--image", str(tmp_path / "bad.png"), "--text", "a"],
            "empty_text": ["--preset", "tiny", "--image", str(image_path), "--text", "  "],
            "bad_checkpoint": ["--checkpoint", str(image_path), "--image", str(image_path), "--text", "a"],
            "bad_ambiguity_ratio": ["--preset", "tiny", "--image", str(image_path), "--text", "a",
                                    "--ambiguity-ratio", "0"]}[case]
    (tmp_path / "bad.png").write_bytes(b"not a png")
    proc = run(*args)
    assert proc.returncode == 2
    assert "meres-segment: error:" in proc.stderr and "Traceback" not in proc.stderr
