"""The node's rclpy-free plumbing: the latest-frame slot, stamp pairing, the problem log, duplicate sentences,
one-shot requests.

Everything here is plain Python and thread-safe, so it is tested without ROS and
the node only wires it to topics.
"""
from __future__ import annotations

import re
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Callable, Optional


def stamp_ns(stamp) -> int:
    """builtin_interfaces/Time (or anything with sec and nanosec) -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class LatestSlot:
    """Holds only the newest item; putting one over an item nobody took drops the old one."""

    def __init__(self):
        self._condition = threading.Condition()
        self._item = None
        self.dropped = 0

    def put(self, item) -> None:
        with self._condition:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._condition.notify()

    def take(self, timeout: float):
        with self._condition:
            if self._item is None:
                self._condition.wait(timeout)
            item, self._item = self._item, None
            return item

    def wake(self) -> None:
        with self._condition:
            self._condition.notify_all()


class StampBuffer:
    """The last messages of a topic, paired with another stream's stamps (thread-safe).

    `nearest` answers from what has arrived; `wait_for_partner` also waits, up to
    a bound, for a partner that is still on its way: a depth frame usually arrives
    a few milliseconds after the color frame it belongs to, and taking the previous
    depth frame instead would be motion error.
    """

    def __init__(self, length: int):
        self._items: deque[tuple[int, object]] = deque(maxlen=length)
        self._condition = threading.Condition()

    def add(self, msg) -> None:
        with self._condition:
            self._items.append((stamp_ns(msg.header.stamp), msg))
            self._condition.notify_all()

    def nearest(self, stamp: int, tolerance_ns: int):
        with self._condition:
            return self._nearest(stamp, tolerance_ns)

    def _nearest(self, stamp: int, tolerance_ns: int):
        best = min(self._items, key=lambda item: abs(item[0] - stamp), default=None)
        if best is None or abs(best[0] - stamp) > tolerance_ns:
            return None
        return best[1]

    def newest_stamp(self) -> Optional[int]:
        with self._condition:
            return max((s for s, _ in self._items), default=None)

    def wait_for_partner(self, stamp: int, tolerance_ns: int, timeout_s: float, live_window_ns: int):
        """The message nearest `stamp` (within tolerance), once no nearer one can come, or None.

        No nearer one can come once a message stamped at or after `stamp` has arrived
        (stamps of one topic increase), so this waits until then or `timeout_s`. It does
        not wait when the stream is silent (nothing within `live_window_ns` of `stamp`):
        a camera without depth, or a dropout, must not slow every frame down.
        """
        deadline = time.monotonic() + timeout_s
        with self._condition:
            while True:
                newest = max((s for s, _ in self._items), default=None)
                if newest is None or newest >= stamp or stamp - newest > live_window_ns:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            return self._nearest(stamp, tolerance_ns)

    def clear(self) -> None:
        with self._condition:
            self._items.clear()


class ProblemLog:
    """Warns about bad input at most once per period for each kind of problem, counting the rest.

    Problems are keyed by their kind and their reason with numbers and quoted
    values blanked, so a stream of frames with the same defect logs once per
    period while a different defect is reported at once.
    """

    def __init__(self, warn: Callable[[str], None], period_s: float):
        self._warn = warn
        self.period_s = period_s
        self._last: dict[tuple[str, str], list] = {}
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def report(self, kind: str, reason: str) -> None:
        template = re.sub(r"'[^']*'|\"[^\"]*\"|-?\d+(\.\d+)?", "#", reason)
        now = time.monotonic()
        with self._lock:
            self.counts[kind] += 1
            entry = self._last.get((kind, template))
            if entry is not None and now - entry[0] < self.period_s:
                entry[1] += 1
                return
            held_back = entry[1] if entry is not None else 0
            self._last[(kind, template)] = [now, 0]
        suffix = f" ({held_back} more like it in the last {self.period_s:g} s)" if held_back else ""
        self._warn(f"[{kind}] {reason}{suffix}")


class LatchedCopies:
    """Recognizes the second copy of a sentence that reached the node on both expression subscriptions.

    The node hears /referring_expression on a volatile subscription (every publisher)
    and, while a latched publisher exists, on a transient-local one (its history).
    A latched publisher's message arrives on both, in either order (two readers), and
    the history subscription, created when such a publisher appears, replays what the
    live one may have heard seconds before. Applying the copy again would make a new
    request, or undo a newer sentence from another publisher.

    Iron and later hand the callback the sample's source timestamp, the publisher's stamp
    of that one publish, which both copies carry: a copy is then exactly a (text, stamp)
    taken before, however late it comes. Humble's callbacks get the text alone (`stamp`
    None), and arrival times decide: a history sentence heard live within
    `live_first_window_s` is a copy; a live sentence is a copy only right after
    (`history_first_window_s`) the same text was taken from the history, with nothing taken
    in between. A copy delayed past those windows (a busy executor) is taken twice there.
    """

    REMEMBERED_PUBLISHES = 256  # (text, stamp) pairs kept; a replay is of the last few publishes

    def __init__(self, live_first_window_s: float, history_first_window_s: float):
        self.live_first_window_s = live_first_window_s
        self.history_first_window_s = history_first_window_s
        self._taken_publishes: deque[tuple[str, int]] = deque(maxlen=self.REMEMBERED_PUBLISHES)
        self._heard_live: dict[str, float] = {}  # text -> monotonic time
        self._taken_from_history: Optional[tuple[str, float]] = None  # the last sentence taken, if from the history
        self._lock = threading.Lock()

    def take_live(self, text: str, stamp: Optional[int] = None) -> bool:
        """A sentence from the volatile subscription. True: take it; False: it is a copy."""
        if stamp is not None:
            return self._take_publish(text, stamp)
        now = time.monotonic()
        with self._lock:
            self._heard_live = {t: at for t, at in self._heard_live.items() if now - at < self.live_first_window_s}
            self._heard_live[text] = now
            last, self._taken_from_history = self._taken_from_history, None  # a pair completes only once
            return not (last is not None and last[0] == text and now - last[1] < self.history_first_window_s)

    def take_history(self, text: str, stamp: Optional[int] = None) -> bool:
        """A sentence from the transient-local subscription. True: take it; False: it is a copy."""
        if stamp is not None:
            return self._take_publish(text, stamp)
        now = time.monotonic()
        with self._lock:
            at = self._heard_live.get(text)
            if at is not None and now - at < self.live_first_window_s:
                return False
            self._taken_from_history = (text, now)
            return True

    def _take_publish(self, text: str, stamp: int) -> bool:
        with self._lock:
            if (text, stamp) in self._taken_publishes:
                return False
            self._taken_publishes.append((text, stamp))
            return True


@dataclass
class OneShot:
    """A sentence asked for once (the node's segment service), answered on the first frame received after it."""

    request_id: int
    sentence: str
    requested_at: float  # time.monotonic()


class OneShotQueue:
    """The one-shot requests waiting for a frame (thread-safe): the executor adds, the worker takes."""

    def __init__(self):
        self._pending: dict[int, OneShot] = {}
        self._lock = threading.Lock()

    def add(self, request: OneShot) -> None:
        with self._lock:
            self._pending[request.request_id] = request

    def take_due(self, received_at: float) -> list[OneShot]:
        """Remove and return the requests made at or before a frame received at `received_at`: a frame
        already waiting when a request came is older than what it asks for."""
        with self._lock:
            due = [r for r in self._pending.values() if r.requested_at <= received_at]
            for request in due:
                del self._pending[request.request_id]
            return due

    def discard(self, request_id: int) -> bool:
        """Forget a request (timed out); False when the worker took it already."""
        with self._lock:
            return self._pending.pop(request_id, None) is not None

    def take_all(self) -> list[OneShot]:
        with self._lock:
            requests, self._pending = list(self._pending.values()), {}
            return requests


class FramePacer:
    """Keeps results fresh when the model is slower than the camera: skip a frame for the next one.

    The worker answers the newest frame. With a model slower than one camera period the
    newest frame has already waited up to a period when the worker takes it, so its result
    comes out up to (one period + one model call) after the frame arrived. When answering a
    frame now would make its result older than `max_age_periods` camera periods (counted
    from its arrival) while the next frame, expected within that period, would be answered in
    time, the worker waits for that one instead (`wait_s`). It waits at most once per frame
    answered and only while frames keep coming, so a stopped camera's last frame is answered.

    Camera period and model time are estimates from the last `window` frames (medians of the
    arrival intervals; a high percentile of the worker's times). Thread-safe: the executor
    reports arrivals, the worker asks and reports its times.
    """

    def __init__(self, window: int = 20, time_percentile: float = 90.0):
        self._arrivals: deque[float] = deque(maxlen=window + 1)
        self._durations: deque[float] = deque(maxlen=window)
        self._percentile = time_percentile
        self._lock = threading.Lock()
        self.skipped = 0

    def arrived(self, at: float) -> None:
        with self._lock:
            self._arrivals.append(at)

    def answered(self, duration_s: float) -> None:
        """The worker's time for one frame, from taking it to its results going out."""
        with self._lock:
            self._durations.append(duration_s)

    def period_s(self) -> Optional[float]:
        with self._lock:
            arrivals = list(self._arrivals)
        if len(arrivals) < 3:
            return None
        intervals = sorted(b - a for a, b in zip(arrivals, arrivals[1:]))
        return intervals[len(intervals) // 2]

    def model_s(self) -> Optional[float]:
        with self._lock:
            durations = sorted(self._durations)
        if len(durations) < 3:
            return None
        return durations[min(int(len(durations) * self._percentile / 100.0), len(durations) - 1)]

    def wait_s(self, received_at: float, now: float, max_age_periods: float) -> float:
        """How long to wait for a fresher frame instead of answering the one received at `received_at`; 0: answer it."""
        if max_age_periods <= 0:
            return 0.0
        period, model = self.period_s(), self.model_s()
        with self._lock:
            last_arrival = self._arrivals[-1] if self._arrivals else None
        if period is None or model is None or period <= 0 or last_arrival is None:
            return 0.0
        if now - last_arrival > 2.0 * period:  # the camera paused or stopped: answer what is here
            return 0.0
        limit = max_age_periods * period
        waited = now - received_at
        if waited + model <= limit or model > limit:  # in time; or no frame could be, so no use waiting
            return 0.0
        # The next frame is due one period after this one; allow a quarter period of jitter.
        return max(received_at + 1.25 * period - now, 0.0)
