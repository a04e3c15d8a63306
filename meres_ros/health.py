"""What the node reports on /diagnostics, kept without rclpy: rates, latency, drops, model failures.

The node counts events here from its callbacks and worker; once a second it asks
for a `Report` and turns it into a diagnostic_msgs/DiagnosticStatus.
"""
from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

# diagnostic_msgs/DiagnosticStatus levels.
OK, WARN, ERROR = 0, 1, 2
STREAMS = ("image", "depth", "camera_info", "result")


@dataclass
class Report:
    level: int
    message: str
    values: dict[str, str] = field(default_factory=dict)


@dataclass
class Failure:
    """What `Health.failed` tells the worker: log the traceback? stop the node?"""

    first_of_its_kind: bool
    consecutive: int
    limit_reached: bool


class Health:
    """Thread-safe counters of one node; `report` is called about once a second."""

    def __init__(self, image_timeout_s: float, failure_limit: int, latency_window: int = 200):
        self.image_timeout_s = image_timeout_s
        self.failure_limit = failure_limit
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._counts_at_last_report: Counter[str] = Counter()
        self._last_report_at = time.monotonic()
        self._last_image_at: Optional[float] = None
        self._latencies_s: deque[float] = deque(maxlen=latency_window)
        self._failure_kinds: set[str] = set()
        self._consecutive_failures = 0
        self.last_error = ""

    def received(self, stream: str) -> None:
        with self._lock:
            self._counts[stream] += 1
            if stream == "image":
                self._last_image_at = time.monotonic()

    def published(self, latency_s: float) -> None:
        """A frame's results went out, `latency_s` after its color image arrived."""
        with self._lock:
            self._counts["result"] += 1
            self._latencies_s.append(latency_s)
            self._consecutive_failures = 0

    def failed(self, kind: str, error: str) -> Failure:
        with self._lock:
            first = kind not in self._failure_kinds
            self._failure_kinds.add(kind)
            self._consecutive_failures += 1
            self.last_error = error
            return Failure(first, self._consecutive_failures, self._consecutive_failures >= self.failure_limit)

    def reset_failures(self) -> None:
        """A fresh start (configure): the model is given its N tries again."""
        with self._lock:
            self._consecutive_failures = 0

    def activated(self) -> None:
        """Silence is measured from activation: an inactive node expects no images."""
        with self._lock:
            self._last_image_at = time.monotonic()

    def count(self, stream: str) -> int:
        with self._lock:
            return self._counts[stream]

    def report(self, state: str, details: dict[str, str], dropped: int) -> Report:
        """`state`: the lifecycle state label; `details`: model, device, ... as they are now."""
        now = time.monotonic()
        with self._lock:
            elapsed = max(now - self._last_report_at, 1e-6)
            rates = {s: (self._counts[s] - self._counts_at_last_report[s]) / elapsed for s in STREAMS}
            self._counts_at_last_report = Counter(self._counts)
            self._last_report_at = now
            latencies = np.array(self._latencies_s) * 1000.0
            silent_s = None if self._last_image_at is None else now - self._last_image_at
            failing = self._consecutive_failures
            last_error = self.last_error
            totals = Counter(self._counts)
        values = {"state": state, **details}
        values.update({f"{s} rate (Hz)": f"{rates[s]:.1f}" for s in STREAMS})
        values.update({f"{s} received": str(totals[s]) for s in STREAMS if s != "result"})
        values["results published"] = str(totals["result"])
        values["frames dropped"] = str(dropped)
        values["latency p50 (ms)"] = f"{np.percentile(latencies, 50):.1f}" if latencies.size else "-"
        values["latency p95 (ms)"] = f"{np.percentile(latencies, 95):.1f}" if latencies.size else "-"
        values["consecutive model failures"] = str(failing)
        values["last error"] = last_error or "-"
        if failing:
            return Report(ERROR, f"model failing: {failing} frame(s) in a row: {last_error}", values)
        if state == "active" and silent_s is not None and silent_s > self.image_timeout_s:
            return Report(WARN, f"no image received for {silent_s:.0f} s", values)
        if state != "active":
            return Report(OK, f"{state}: not segmenting", values)
        return Report(OK, "segmenting", values)
