"""Referring segmentation metrics (paper Sec. 4.1 and Appendix C) and the pixel PR curve (Fig. 4).

oIoU: total intersection / total union over all sentences. mIoU: mean per-sentence
IoU. P@X: fraction of sentences with IoU >= X (as LAVT). Values are fractions in
[0, 1]; `format_table` prints them as percentages like the paper.

The robot's answer, when the caller passes it (`found`, `centroid`): `on_target` is the
fraction of sentences with a target whose grasp point (the published centroid) lies
inside the target's ground-truth mask, a not-found answer counting as a miss; `found`
is the fraction answered found (on no-target sentences: the false alarms).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Union

import numpy as np

PRECISION_THRESHOLDS = (0.5, 0.7, 0.9)
METRIC_COLUMNS = ("oIoU", "mIoU") + tuple(f"P@{t}" for t in PRECISION_THRESHOLDS)
ANSWER_COLUMNS = ("on_target", "found")


def _as_array(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, possibly on the GPU
        x = x.detach().cpu().numpy()
    return np.asarray(x)


class SegmentationMetrics:
    """Accumulates per-sentence intersection and union; `summary` also breaks them down by kind."""

    def __init__(self, thresholds: tuple[float, ...] = PRECISION_THRESHOLDS):
        self.thresholds = tuple(thresholds)
        self.reset()

    def reset(self) -> None:
        self.intersections: list[int] = []
        self.unions: list[int] = []
        self.ious: list[float] = []
        self.kinds: list[Optional[str]] = []
        self.found: list[float] = []  # 1 / 0, NaN where the answer was not given
        self.on_target: list[float] = []  # 1 / 0, NaN where there is no target or no answer

    def update(self, pred, gt, kind: Optional[str] = None, found: Optional[bool] = None,
               centroid: Optional[tuple[float, float]] = None) -> float:
        """Add one sentence (bool masks of the same shape) and optionally the answer given for it
        (`found`, and the (u, v) pixel centroid when found); returns its IoU."""
        pred, gt = _as_array(pred).astype(bool), _as_array(gt).astype(bool)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
        intersection = int(np.count_nonzero(pred & gt))
        union = int(np.count_nonzero(pred | gt))
        # An absent target correctly rejected (both masks empty) is a perfect answer: IoU 1 for mIoU
        # and P@X, while it adds 0 / 0 to oIoU, which stays a ratio of pixel totals.
        iou = intersection / union if union else 1.0
        self.intersections.append(intersection)
        self.unions.append(union)
        self.ious.append(iou)
        self.kinds.append(kind)
        self.found.append(math.nan if found is None else float(found))
        self.on_target.append(math.nan if found is None or not gt.any() else float(centroid_on_target(centroid, gt)))
        return iou

    def __len__(self) -> int:
        return len(self.ious)

    def _summarize(self, rows: np.ndarray) -> dict:
        ious = np.asarray(self.ious)[rows]
        union = int(np.asarray(self.unions, np.int64)[rows].sum())
        out = {
            "oIoU": int(np.asarray(self.intersections, np.int64)[rows].sum()) / union if union else math.nan,
            "mIoU": float(ious.mean()) if len(ious) else math.nan,
        }
        for t in self.thresholds:
            out[f"P@{t}"] = float((ious >= t).mean()) if len(ious) else math.nan
        for name in ANSWER_COLUMNS:
            values = np.asarray(getattr(self, name))[rows]
            values = values[~np.isnan(values)]
            out[name] = float(values.mean()) if len(values) else math.nan
        out["n"] = int(len(ious))
        return out

    def summary(self) -> dict:
        """oIoU, mIoU, P@X, n, and `by_kind` with the same keys per kind (NaN where undefined)."""
        kinds = np.asarray([k if k is not None else "" for k in self.kinds], dtype=object)
        out = self._summarize(np.ones(len(self.ious), bool))
        out["by_kind"] = {k: self._summarize(kinds == k) for k in sorted(set(self.kinds) - {None})}
        return out


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks; two empty masks agree fully."""
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


def centroid_on_target(centroid: Optional[tuple[float, float]], gt: np.ndarray) -> bool:
    """Whether the (u, v) pixel centroid falls on the ground-truth mask (False when None)."""
    if centroid is None:
        return False
    u, v = (int(round(c)) for c in centroid)
    return 0 <= v < gt.shape[0] and 0 <= u < gt.shape[1] and bool(gt[v, u])


def calibrate_presence(scores, has_target, thresholds=None, mask_threshold: float = 0.5,
                       min_present_found: float | None = None) -> dict:
    """The presence threshold with the best balanced found / not-found accuracy.

    scores: presence score per sentence (0 for an empty mask, see inference.Segmenter.decide);
    has_target: bool per sentence. Returns the threshold, and the absent sentences rejected
    and present ones found at it. A non-empty mask's score is the mean probability of pixels
    above `mask_threshold`, so the default grid starts there: any lower threshold decides the same.
    `min_present_found`: only thresholds that keep at least this share of present targets found
    compete (the lowest threshold when none does): a robot told "not here" about an object in view
    is stuck, so rejecting absent objects is bought only above that floor.
    """
    scores, has_target = np.asarray(scores, float), np.asarray(has_target, bool)
    if has_target.all() or not has_target.any():
        raise ValueError("calibration needs sentences with and without a target")
    if thresholds is None:
        thresholds = np.linspace(mask_threshold, 0.95, int(round((0.95 - mask_threshold) * 100)) + 1)
    thresholds = np.asarray(thresholds, float)
    found = scores[None, :] >= thresholds[:, None]  # (thresholds, sentences); a 0 score is never found
    found &= scores[None, :] > 0
    rejected = (~found[:, ~has_target]).mean(1)
    kept = found[:, has_target].mean(1)
    balanced = rejected + kept
    if min_present_found is not None:
        balanced = np.where(kept >= min_present_found, balanced, -np.inf)
    best = int(np.argmax(balanced)) if np.isfinite(balanced).any() else 0
    return {"threshold": round(float(thresholds[best]), 4), "absent_rejected": float(rejected[best]),
            "present_found": float(kept[best])}


class PixelPR:
    """Pixel-level precision-recall over thresholds, from fixed histograms of probabilities.

    A pixel counts as predicted positive at threshold `i / bins` when its probability
    falls in bin i or above, so memory stays constant over a whole split.
    """

    def __init__(self, bins: int = 1000):
        self.bins = bins
        self.positives = np.zeros(bins, np.int64)
        self.negatives = np.zeros(bins, np.int64)

    def update(self, prob, gt) -> None:
        prob, gt = _as_array(prob).astype(np.float64), _as_array(gt).astype(bool)
        if prob.shape != gt.shape:
            raise ValueError(f"probabilities {prob.shape} and ground truth {gt.shape} differ in shape")
        index = np.clip((prob * self.bins).astype(np.int64), 0, self.bins - 1)
        self.positives += np.bincount(index[gt], minlength=self.bins)
        self.negatives += np.bincount(index[~gt], minlength=self.bins)

    def curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(precision, recall, thresholds) for ascending thresholds; precision is 1 where nothing is predicted."""
        tp = np.cumsum(self.positives[::-1])[::-1]
        fp = np.cumsum(self.negatives[::-1])[::-1]
        predicted = tp + fp
        precision = np.divide(tp, predicted, out=np.ones(self.bins), where=predicted > 0)
        total = self.positives.sum()
        recall = tp / total if total else np.full(self.bins, math.nan)
        return precision, recall, np.arange(self.bins) / self.bins

    def auc(self) -> float:
        """Area under the PR curve as a step sum over recall (average precision), never interpolated upward."""
        precision, recall, _ = self.curve()
        recall_next = np.append(recall[1:], 0.0)
        return float(np.sum((recall - recall_next) * precision))

    def plot(self, path: Union[str, Path], label: str = "MERES") -> None:
        plot_pr_curves({label: self}, path)


def plot_pr_curves(curves: dict[str, PixelPR], path: Union[str, Path], title: str = "Precision-recall") -> None:
    """One PNG with a curve per model, AUC in the legend (the paper's Fig. 4)."""
    # Figure + Agg canvas, not pyplot: no global backend switch, safe in headless processes.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, pr in curves.items():
        precision, recall, _ = pr.curve()
        ax.plot(recall, precision, label=f"{label} (AUC {pr.auc():.4f})")
    ax.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(str(path), dpi=120)


def format_table(results: dict[str, dict]) -> str:
    """Rows = the keys of `results` (splits), columns oIoU, mIoU, P@0.5, P@0.7, P@0.9 in %, the answer
    columns (on_target, found) when any row has them, then n."""
    answers = any(summary.get(c) is not None and not math.isnan(summary[c])
                  for summary in results.values() for c in ANSWER_COLUMNS)
    columns = METRIC_COLUMNS + (ANSWER_COLUMNS if answers else ())
    header = ["split", *columns, "n"]
    rows = [[name, *(_percent(summary.get(c)) for c in columns), str(summary.get("n", ""))]
            for name, summary in results.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in [header, *rows]]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _percent(value: Optional[float]) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.2f}"
