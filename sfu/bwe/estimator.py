"""How fast one subscriber's downlink can be fed: a GCC-like estimator, sans IO.

Fed with the fate of the packets sent to the subscriber (from transport-wide feedback,
sfu.bwe.twcc), it combines, like libwebrtc's GoogCcNetworkController:

* a delay-based estimate: the overuse detector (sfu.bwe.delay) drives an AIMD rate
  controller (draft-ietf-rmcat-gcc-02 §5.5) that grows the rate by 8 % per second while
  the queue is steady, holds while it drains, and on overuse drops to 85 % of what the
  link was just measured to deliver (the acknowledged rate);
* a loss-based estimate (draft §6): cut in proportion to the loss above 10 %, free to grow
  below 2 %;
* probes: a cluster sent faster than the estimate shows, by the rate it arrived at,
  whether the link can carry more, so the estimate can jump instead of creeping up.

The estimate is the smaller of the first two, within [min_bps, max_bps]. Each packet must
be reported once: the caller's feedback adapter drops repeats. The caller owns the clock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from sfu.bwe.delay import OVERUSING, UNDERUSING, DelayDetector

ACKED_WINDOW_US = 500_000  # the acknowledged rate is measured over this much arrival time
INCREASE_PER_SECOND = 1.08
MIN_INCREASE_BPS = 1_000  # so a very low rate still climbs
DECREASE_FACTOR = 0.85  # on overuse, aim under the measured rate so the queue drains
# libwebrtc's rule: an increase may not take the estimate past what the link has shown
# it carries (an application-limited sender shows little), or it runs away unchecked.
INCREASE_LIMIT_FACTOR = 1.5
INCREASE_LIMIT_EXTRA_BPS = 10_000
LOSS_WINDOW_US = 500_000  # loss is judged over at least this long …
LOSS_WINDOW_MIN_PACKETS = 20  # … and this many packets, so one drop is not 10 %
LOSS_HIGH = 0.10
LOSS_LOW = 0.02
LOSS_DECREASE_GAIN = 0.5  # estimate *= 1 - gain * loss
PROBE_MIN_PACKETS = 5
PROBE_MIN_REPORTED = 0.8  # of the cluster's packets, before it is judged
PROBE_SUCCESS_RATIO = 0.9  # receive rate / send rate at or above: the link kept up
PROBE_SATURATED_SHARE = 0.95  # of a saturated probe's receive rate, the link carries
MAX_PENDING_PROBES = 8  # clusters whose feedback never comes are forgotten

HOLD = "hold"
INCREASE = "increase"


@dataclass(frozen=True)
class PacketResult:
    seq: int  # extended transport-wide sequence number (monotonic)
    send_us: int
    size: int  # bytes
    arrival_us: int | None  # None: reported lost
    probe_cluster: int = -1  # -1: not a probe


class _AckedRate:
    """Bytes that arrived within the last ACKED_WINDOW_US of arrival time, as a rate."""

    def __init__(self) -> None:
        self._window: deque[tuple[int, int]] = deque()  # (arrival µs, bytes)
        self._bytes = 0
        self._first_us: int | None = None
        self._latest_us = 0

    def add(self, arrival_us: int, size: int) -> None:
        if self._first_us is None:
            self._first_us = arrival_us
        self._latest_us = max(self._latest_us, arrival_us)
        self._window.append((arrival_us, size))
        self._bytes += size
        cutoff = self._latest_us - ACKED_WINDOW_US
        while self._window and self._window[0][0] <= cutoff:
            self._bytes -= self._window.popleft()[1]

    @property
    def bps(self) -> int | None:
        """None until a whole window has been seen: a rate over a few packets is noise."""
        if self._first_us is None or self._latest_us - self._first_us < ACKED_WINDOW_US:
            return None
        return self._bytes * 8 * 1_000_000 // ACKED_WINDOW_US


class _Probe:
    __slots__ = ("packets", "reports", "target_bps")

    def __init__(self, target_bps: int, packets: int) -> None:
        self.target_bps = target_bps
        self.packets = packets
        self.reports: dict[int, PacketResult] = {}  # by seq: a repeat counts once


class BandwidthEstimator:
    def __init__(self, initial_bps: int = 300_000, min_bps: int = 30_000,
                 max_bps: int = 10_000_000) -> None:
        if not 0 < min_bps <= max_bps:
            raise ValueError(f"need 0 < min_bps <= max_bps, got {min_bps}, {max_bps}")
        self.min_bps = min_bps
        self.max_bps = max_bps
        start = float(min(max(initial_bps, min_bps), max_bps))
        self._delay_bps = start
        self._loss_bps = start
        self._detector = DelayDetector()
        self._acked = _AckedRate()
        self._rate_state = HOLD  # as libwebrtc: increase only after a first "normal"
        self._rate_changed_us = 0
        self._loss_fraction = 0.0
        self._loss_reported = 0
        self._loss_lost = 0
        self._loss_window_us: int | None = None  # when the current loss window opened
        self._probes: dict[int, _Probe] = {}
        self.last_probe: tuple[int, bool, int] | None = None  # (cluster, success, receive bps)

    @property
    def estimate_bps(self) -> int:
        return int(min(self._delay_bps, self._loss_bps))

    @property
    def acked_bps(self) -> int:
        """The rate acknowledged packets arrived at over ~500 ms; 0 until measured."""
        return self._acked.bps or 0

    @property
    def loss_fraction(self) -> float:
        """Lost / reported over the last completed loss window."""
        return self._loss_fraction

    @property
    def delay_state(self) -> str:
        return self._detector.state

    def start_probe(self, cluster: int, target_bps: int,
                    packets: int = PROBE_MIN_PACKETS) -> None:
        """Expect a probe cluster of ``packets`` packets sent at ``target_bps``."""
        if cluster < 0:
            raise ValueError("probe cluster ids are >= 0 (-1 marks a packet of no probe)")
        if packets < PROBE_MIN_PACKETS:
            raise ValueError(f"a probe cluster needs at least {PROBE_MIN_PACKETS} packets")
        self._probes[cluster] = _Probe(target_bps, packets)
        while len(self._probes) > MAX_PENDING_PROBES:
            del self._probes[next(iter(self._probes))]

    def end_probe(self, cluster: int) -> None:
        """The cluster is complete with the packets reported so far (its sender tags
        every packet sent in a time window, so it knows the cluster's size only once
        feedback reaches past the window): judge it now."""
        probe = self._probes.pop(cluster, None)
        if probe is not None:
            self._judge_probe(cluster, probe)

    def on_packets(self, results: list[PacketResult], now_us: int) -> None:
        """One feedback's worth of results, reported at ``now_us``."""
        if not results:
            return  # the rate moves on feedback only, not on the clock
        # The detector wants arrival order (a reordered packet is dropped by its grouping).
        for arrival_us, _, send_us, size in sorted(
                (r.arrival_us, r.seq, r.send_us, r.size) for r in results
                if r.arrival_us is not None):
            self._detector.on_packet(send_us, arrival_us)
            self._acked.add(arrival_us, size)
        self._update_rate_control(now_us)
        self._update_loss(results, now_us)
        self._update_probes(results)

    def _update_rate_control(self, now_us: int) -> None:
        acked = self._acked.bps
        state = self._detector.state
        if state == OVERUSING:
            # With nothing measured yet there is no rate to fall back to: wait for one.
            if acked is not None:
                self._delay_bps = min(self._delay_bps, DECREASE_FACTOR * acked)
            self._rate_state = HOLD  # until the queue has drained ("normal" again)
            self._rate_changed_us = now_us
        elif state == UNDERUSING:
            self._rate_state = HOLD  # the queue is draining: let it, at the current rate
        else:
            if self._rate_state == HOLD:
                self._rate_state = INCREASE
                self._rate_changed_us = now_us
            limit = math.inf if acked is None else (
                INCREASE_LIMIT_FACTOR * acked + INCREASE_LIMIT_EXTRA_BPS)
            # Above the limit already (a successful probe put it there): hold, not cut.
            if self._delay_bps < limit:
                seconds = min((now_us - self._rate_changed_us) / 1e6, 1.0)
                step = max(self._delay_bps * (INCREASE_PER_SECOND ** seconds - 1),
                           MIN_INCREASE_BPS)
                self._delay_bps = min(self._delay_bps + step, limit)
            self._rate_changed_us = now_us
        self._delay_bps = self._clamp(self._delay_bps)

    def _update_loss(self, results: list[PacketResult], now_us: int) -> None:
        if self._loss_window_us is None:
            self._loss_window_us = now_us
        self._loss_reported += len(results)
        self._loss_lost += sum(1 for r in results if r.arrival_us is None)
        elapsed_us = now_us - self._loss_window_us
        if self._loss_reported < LOSS_WINDOW_MIN_PACKETS or elapsed_us < LOSS_WINDOW_US:
            return
        loss = self._loss_lost / self._loss_reported
        self._loss_fraction = loss
        if loss > LOSS_HIGH:
            # From the estimate in force, not from a loss-based value left high above it.
            self._loss_bps = self.estimate_bps * (1 - LOSS_DECREASE_GAIN * loss)
        elif loss < LOSS_LOW:
            seconds = min(elapsed_us / 1e6, 1.0)
            self._loss_bps = (self._loss_bps * INCREASE_PER_SECOND ** seconds
                              + MIN_INCREASE_BPS)
        self._loss_bps = self._clamp(self._loss_bps)
        self._loss_reported = self._loss_lost = 0
        self._loss_window_us = now_us

    def _update_probes(self, results: list[PacketResult]) -> None:
        for result in results:
            probe = self._probes.get(result.probe_cluster)
            if probe is not None:
                probe.reports[result.seq] = result
        for cluster, probe in list(self._probes.items()):
            needed = max(PROBE_MIN_PACKETS, math.ceil(PROBE_MIN_REPORTED * probe.packets))
            if len(probe.reports) >= needed:
                del self._probes[cluster]
                self._judge_probe(cluster, probe)

    def _judge_probe(self, cluster: int, probe: _Probe) -> None:
        reports = sorted(probe.reports.values(), key=lambda r: r.send_us)
        arrived = sorted((r.arrival_us, r.seq, r.size) for r in reports
                         if r.arrival_us is not None)
        receive_bps = 0.0
        # An arrival time marks the end of a packet's reception, so the span from the
        # first arrival to the last holds every packet but the first.
        if len(arrived) >= 2 and arrived[-1][0] > arrived[0][0]:
            receive_bps = (sum(size for _, _, size in arrived[1:]) * 8e6
                           / (arrived[-1][0] - arrived[0][0]))
        if receive_bps <= 0:
            self.last_probe = (cluster, False, 0)  # nothing measurable: leave the estimate
            return
        # A send time marks the start of a packet's sending: every packet but the last.
        send_span_us = reports[-1].send_us - reports[0].send_us
        send_bps = (sum(r.size for r in reports[:-1]) * 8e6 / send_span_us
                    if send_span_us > 0 else float(probe.target_bps))
        success = receive_bps >= PROBE_SUCCESS_RATIO * send_bps
        if success:
            # The probe is the one way past the acknowledged-rate limit of an increase;
            # the loss-based side follows, as libwebrtc sets its send rate from the probe.
            rate = min(receive_bps, self.max_bps)
            self._delay_bps = max(self._delay_bps, rate)
            self._loss_bps = max(self._loss_bps, rate)
        elif self._detector.state == OVERUSING:
            # The probe filled the queue: what came out is what the link carries.
            self._delay_bps = self._clamp(min(self._delay_bps, receive_bps))
        else:
            # Saturated, but what came out the link did carry (libwebrtc takes 95 % of
            # it): a probe that fell short still lifts an estimate below that.
            rate = self._clamp(PROBE_SATURATED_SHARE * receive_bps)
            self._delay_bps = max(self._delay_bps, rate)
            self._loss_bps = max(self._loss_bps, rate)
        self.last_probe = (cluster, success, int(receive_bps))

    def _clamp(self, bps: float) -> float:
        return min(max(bps, self.min_bps), self.max_bps)
