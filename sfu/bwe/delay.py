"""The delay-based overuse detector of Google Congestion Control, sans IO.

draft-ietf-rmcat-gcc-02 §5 as libwebrtc implements it today (InterArrivalDelta,
TrendlineEstimator): packets are grouped into bursts by send time; between consecutive
groups, the delay variation d = (arrival delta) − (send delta) is how much longer the
second group spent queued than the first. Its running sum is the queueing delay built
so far (up to a constant); a least-squares slope over the last groups says whether the
queue is growing (overuse), draining (underuse) or steady (normal). The slope, scaled,
is held against a threshold that adapts so the detector is not starved by competing
loss-based flows (draft §5.4).

Times are µs on input (the sender's send clock, the receiver's arrival clock: only
differences of each are used, so the two clocks need not agree); the filter works in
milliseconds because libwebrtc's constants are tuned in milliseconds.
"""

from __future__ import annotations

from collections import deque

NORMAL = "normal"
OVERUSING = "overusing"
UNDERUSING = "underusing"

BURST_US = 5_000  # packets sent within 5 ms of a group's first are one group
TRENDLINE_WINDOW = 20  # groups in the regression
SMOOTHING = 0.9  # exponential smoothing of the accumulated delay
THRESHOLD_GAIN = 4.0
MIN_DELTAS_FOR_FULL_GAIN = 60  # the slope counts less until this many deltas were seen
MAX_DELTA_COUNT = 1000
INITIAL_THRESHOLD_MS = 12.5
THRESHOLD_K_UP = 0.0087  # per ms: the threshold rises slowly toward a larger trend …
THRESHOLD_K_DOWN = 0.039  # … and falls faster toward a smaller one
THRESHOLD_MIN_MS = 6.0
THRESHOLD_MAX_MS = 600.0
THRESHOLD_MAX_STEP_MS = 100.0  # a long pause does not move the threshold in one jump
THRESHOLD_IGNORE_MARGIN_MS = 15.0  # a trend this far beyond is a spike, not a new normal
OVERUSE_TIME_MS = 10.0  # the trend must stay above the threshold this long


class _Group:
    __slots__ = ("first_send_us", "last_arrival_us", "last_send_us")

    def __init__(self, send_us: int, arrival_us: int) -> None:
        self.first_send_us = send_us
        self.last_send_us = send_us
        self.last_arrival_us = arrival_us


class DelayDetector:
    """Feed received packets in arrival order; ``state`` is the current hypothesis."""

    def __init__(self) -> None:
        self.state = NORMAL
        self.threshold_ms = INITIAL_THRESHOLD_MS
        self.trend = 0.0  # the last regression slope (ms of delay per ms)
        self._current: _Group | None = None
        self._previous: _Group | None = None
        self._first_arrival_us: int | None = None
        self._deltas = 0
        self._accumulated_ms = 0.0
        self._smoothed_ms = 0.0
        self._history: deque[tuple[float, float]] = deque(maxlen=TRENDLINE_WINDOW)
        self._overuse_ms = -1.0  # time the trend has been above the threshold; -1: not
        self._overuse_count = 0
        self._threshold_updated_ms: float | None = None

    def on_packet(self, send_us: int, arrival_us: int) -> None:
        group = self._current
        if group is None:
            self._current = _Group(send_us, arrival_us)
            return
        if send_us < group.first_send_us:
            return  # reordered from an earlier group: its delta would be meaningless
        if send_us - group.first_send_us <= BURST_US:
            group.last_send_us = max(group.last_send_us, send_us)
            group.last_arrival_us = max(group.last_arrival_us, arrival_us)
            return
        # `group` is complete: measure it against the one before, then start a new one.
        if self._previous is not None:
            previous = self._previous
            send_delta_ms = (group.last_send_us - previous.last_send_us) / 1000
            arrival_delta_ms = (group.last_arrival_us - previous.last_arrival_us) / 1000
            self._update(arrival_delta_ms - send_delta_ms, send_delta_ms, group.last_arrival_us)
        self._previous = group
        self._current = _Group(send_us, arrival_us)

    def _update(self, delay_ms: float, send_delta_ms: float, arrival_us: int) -> None:
        if self._first_arrival_us is None:
            self._first_arrival_us = arrival_us
        now_ms = (arrival_us - self._first_arrival_us) / 1000
        self._deltas = min(self._deltas + 1, MAX_DELTA_COUNT)
        self._accumulated_ms += delay_ms
        self._smoothed_ms = (SMOOTHING * self._smoothed_ms
                             + (1 - SMOOTHING) * self._accumulated_ms)
        self._history.append((now_ms, self._smoothed_ms))
        trend = self.trend
        if len(self._history) == TRENDLINE_WINDOW:
            slope = _slope(self._history)
            if slope is not None:  # None: no spread in time, keep the old slope
                trend = slope
        self._detect(trend, send_delta_ms, now_ms)

    def _detect(self, trend: float, send_delta_ms: float, now_ms: float) -> None:
        if self._deltas < 2:
            self.state = NORMAL
            return
        modified = min(self._deltas, MIN_DELTAS_FOR_FULL_GAIN) * trend * THRESHOLD_GAIN
        if modified > self.threshold_ms:
            # Overuse only once the trend has stayed up for a while and is not falling:
            # a single late group (a scheduling hiccup) must not cut the rate.
            if self._overuse_ms < 0:
                self._overuse_ms = send_delta_ms / 2
            else:
                self._overuse_ms += send_delta_ms
            self._overuse_count += 1
            if (self._overuse_ms > OVERUSE_TIME_MS and self._overuse_count > 1
                    and trend >= self.trend):
                self._overuse_ms = 0.0
                self._overuse_count = 0
                self.state = OVERUSING
        elif modified < -self.threshold_ms:
            self._overuse_ms = -1.0
            self._overuse_count = 0
            self.state = UNDERUSING
        else:
            self._overuse_ms = -1.0
            self._overuse_count = 0
            self.state = NORMAL
        self.trend = trend
        self._adapt_threshold(abs(modified), now_ms)

    def _adapt_threshold(self, magnitude: float, now_ms: float) -> None:
        if self._threshold_updated_ms is None:
            self._threshold_updated_ms = now_ms
        if magnitude > self.threshold_ms + THRESHOLD_IGNORE_MARGIN_MS:
            self._threshold_updated_ms = now_ms
            return
        k = THRESHOLD_K_DOWN if magnitude < self.threshold_ms else THRESHOLD_K_UP
        elapsed_ms = min(now_ms - self._threshold_updated_ms, THRESHOLD_MAX_STEP_MS)
        self.threshold_ms += k * (magnitude - self.threshold_ms) * elapsed_ms
        self.threshold_ms = min(max(self.threshold_ms, THRESHOLD_MIN_MS), THRESHOLD_MAX_MS)
        self._threshold_updated_ms = now_ms


def _slope(points: deque[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x, or None when all x are equal."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    numerator = sum((x - mean_x) * (y - mean_y) for x, y in points)
    denominator = sum((x - mean_x) ** 2 for x, _ in points)
    return numerator / denominator if denominator else None
