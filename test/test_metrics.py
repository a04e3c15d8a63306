import math

import numpy as np
import pytest

from meres_core.metrics import (PixelPR, SegmentationMetrics, calibrate_presence, format_table, mask_iou,
                                plot_pr_curves)


def box(shape, y0, y1, x0, x1):
    mask = np.zeros(shape, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_perfect_and_empty_predictions():
    gt = box((10, 10), 0, 4, 0, 5)  # 20 pixels
    metrics = SegmentationMetrics()
    assert metrics.update(gt, gt) == 1.0
    assert metrics.update(np.zeros_like(gt), gt) == 0.0
    s = metrics.summary()
    assert s["n"] == 2
    assert s["oIoU"] == pytest.approx(20 / 40)
    assert s["mIoU"] == pytest.approx(0.5)
    assert s["P@0.5"] == s["P@0.7"] == s["P@0.9"] == pytest.approx(0.5)


def test_hand_computed_iou_and_thresholds_use_greater_or_equal():
    gt = box((10, 10), 0, 10, 0, 5)  # 50 pixels
    pred = box((10, 10), 0, 10, 0, 7)  # 70 pixels, 50 shared: IoU 50/70
    metrics = SegmentationMetrics()
    assert metrics.update(pred, gt) == pytest.approx(50 / 70)
    exact = box((10, 10), 0, 10, 0, 10)  # IoU exactly 0.5 against 50 of its 100 pixels
    assert metrics.update(exact, gt) == pytest.approx(0.5)
    s = metrics.summary()
    assert s["P@0.5"] == 1.0  # 0.5 >= 0.5 counts
    assert s["P@0.7"] == pytest.approx(0.5)  # 0.714 >= 0.7, 0.5 not
    assert s["P@0.9"] == 0.0
    assert s["oIoU"] == pytest.approx((50 + 50) / (70 + 100))


def test_oiou_and_miou_differ():
    # A large object segmented well and a small one missed: oIoU is dominated by the large one.
    metrics = SegmentationMetrics()
    big = box((100, 100), 0, 100, 0, 100)
    metrics.update(big, big)
    small = box((100, 100), 0, 2, 0, 2)
    metrics.update(np.zeros_like(small), small)
    s = metrics.summary()
    assert s["mIoU"] == pytest.approx(0.5)
    assert s["oIoU"] == pytest.approx(10000 / 10004)


def test_absent_target_convention_and_by_kind():
    metrics = SegmentationMetrics()
    empty = np.zeros((8, 8), bool)
    gt = box((8, 8), 0, 4, 0, 4)
    assert metrics.update(empty, empty, kind="absent") == 1.0  # correctly rejected
    assert metrics.update(gt, empty, kind="absent") == 0.0  # hallucinated target
    metrics.update(gt, gt, kind="spatial")
    s = metrics.summary()
    assert s["mIoU"] == pytest.approx(2 / 3)
    assert s["oIoU"] == pytest.approx(16 / (16 + 16))  # the rejected sentence adds 0 / 0
    absent = s["by_kind"]["absent"]
    assert absent["n"] == 2 and absent["P@0.5"] == 0.5 and absent["oIoU"] == 0.0
    assert s["by_kind"]["spatial"]["oIoU"] == 1.0
    only_rejections = SegmentationMetrics()
    only_rejections.update(empty, empty)
    assert math.isnan(only_rejections.summary()["oIoU"])


def test_shape_mismatch_and_torch_input():
    torch = pytest.importorskip("torch")
    metrics = SegmentationMetrics()
    with pytest.raises(ValueError):
        metrics.update(np.zeros((4, 4)), np.zeros((4, 5)))
    assert metrics.update(torch.ones(3, 3, dtype=torch.bool), torch.ones(3, 3)) == 1.0


def test_pixel_pr_perfect_and_random():
    rng = np.random.default_rng(0)
    gt = rng.random((64, 64)) < 0.3
    perfect = PixelPR()
    perfect.update(gt.astype(float), gt)
    assert perfect.auc() == pytest.approx(1.0)
    precision, recall, thresholds = perfect.curve()
    assert precision.shape == recall.shape == thresholds.shape == (1000,)
    assert recall[0] == 1.0 and precision[0] == pytest.approx(gt.mean())

    random = PixelPR(bins=100)
    for _ in range(4):
        gt = rng.random((64, 64)) < 0.3
        random.update(rng.random((64, 64)), gt)
    assert random.auc() == pytest.approx(0.3, abs=0.03)  # uninformative: AUC ~ prevalence


def test_pixel_pr_known_ranking():
    # Scores 0.9 (pos), 0.6 (neg), 0.3 (pos): AP = 0.5 * 1 + 0.5 * 2/3.
    pr = PixelPR(bins=10)
    pr.update(np.array([0.9, 0.6, 0.3]), np.array([True, False, True]))
    assert pr.auc() == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_plot_and_table(tmp_path):
    pr = PixelPR()
    pr.update(np.array([[0.9, 0.1], [0.8, 0.4]]), np.array([[True, False], [True, True]]))
    pr.plot(tmp_path / "pr.png", label="full")
    plot_pr_curves({"a": pr, "b": pr}, tmp_path / "both.png")
    for name in ("pr.png", "both.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    metrics = SegmentationMetrics()
    gt = box((10, 10), 0, 10, 0, 5)
    metrics.update(box((10, 10), 0, 10, 0, 7), gt)
    table = format_table({"val": metrics.summary(), "testA": SegmentationMetrics().summary()})
    lines = table.splitlines()
    assert lines[0].split() == ["split", "oIoU", "mIoU", "P@0.5", "P@0.7", "P@0.9", "n"]
    assert lines[2].split() == ["val", "71.43", "71.43", "100.00", "100.00", "0.00", "1"]
    assert lines[3].split() == ["testA", "-", "-", "-", "-", "-", "0"]


def test_centroid_on_target_per_kind_counts_misses_and_skips_absent():
    gt = np.zeros((10, 10), bool)
    gt[2:5, 6:9] = True  # u 6..8, v 2..4
    m = SegmentationMetrics()
    m.update(gt, gt, "spatial", found=True, centroid=(7.0, 3.0))  # on target
    m.update(gt, gt, "spatial", found=True, centroid=(2.0, 3.0))  # off target (left of it)
    m.update(np.zeros_like(gt), gt, "ordinal", found=False, centroid=None)  # not found: a miss
    m.update(gt, gt, "ordinal", found=True, centroid=(8.4, 4.4))  # rounds to (8, 4): inside
    m.update(np.zeros_like(gt), np.zeros_like(gt), "absent", found=False)
    m.update(gt, np.zeros_like(gt), "absent", found=True, centroid=(7.0, 3.0))  # a false alarm
    m.update(gt, gt, "attribute")  # no answer given: counts for IoU only
    s = m.summary()
    assert s["by_kind"]["spatial"]["on_target"] == 0.5
    assert s["by_kind"]["ordinal"]["on_target"] == 0.5 and s["by_kind"]["ordinal"]["found"] == 0.5
    assert np.isnan(s["by_kind"]["absent"]["on_target"]) and s["by_kind"]["absent"]["found"] == 0.5
    assert np.isnan(s["by_kind"]["attribute"]["on_target"])
    assert s["on_target"] == 0.5  # 2 of the 4 present sentences with an answer
    assert "on_target" in format_table({"all": s})


def test_presence_calibration_picks_the_threshold_that_separates_found_from_absent():
    scores = [0.9, 0.85, 0.8, 0.7, 0.0, 0.55, 0.6, 0.0]
    has_target = [True, True, True, True, False, False, False, False]
    best = calibrate_presence(scores, has_target, thresholds=[0.5, 0.65, 0.75, 0.95])
    assert best == {"threshold": 0.65, "absent_rejected": 1.0, "present_found": 1.0}
    # A non-empty mask scores above the mask threshold: the default grid starts there.
    assert calibrate_presence(scores, has_target, mask_threshold=0.5)["threshold"] == 0.61  # first above 0.6
    with pytest.raises(ValueError):
        calibrate_presence([0.5], [True])


def test_presence_calibration_keeps_the_present_targets_found_above_a_floor():
    scores = [0.95, 0.9, 0.85, 0.6, 0.7, 0.65, 0.55, 0.0]  # one present target scores low
    has_target = [True, True, True, True, False, False, False, False]
    thresholds = [0.5, 0.58, 0.75]
    assert calibrate_presence(scores, has_target, thresholds=thresholds)["threshold"] == 0.75  # 1.0 + 0.75
    floored = calibrate_presence(scores, has_target, thresholds=thresholds, min_present_found=0.95)
    assert floored == {"threshold": 0.58, "absent_rejected": 0.5, "present_found": 1.0}
    assert calibrate_presence(scores, has_target, thresholds=[0.99], min_present_found=0.95)["threshold"] == 0.99


def test_mask_iou():
    a = np.zeros((4, 4), bool)
    assert mask_iou(a, a) == 1.0
    b = a.copy()
    b[0, :2] = True
    c = b.copy()
    c[1, :2] = True
    assert mask_iou(b, c) == 0.5
