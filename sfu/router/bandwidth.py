"""One subscriber's downlink: its bandwidth estimate from transport-wide feedback, and
the probes that let the estimate climb to a higher layer. Sans-IO: the caller hands in
feedback packets, the forwarder's record of what it sent, and the time.

Without probing the estimate cannot grow past what the subscriber already receives
(GCC caps an increase at 1.5 times the acknowledged rate), so a subscriber on the low
layer would stay there. A probe sends, for PROBE_DURATION_US, padding-only packets on
one of its video streams (Forwarder.probe: its decoder skips them, its feedback
reports them) so that the subscriber receives the rate of the layer it wants; the
feedback then tells whether the link carried it (sfu.bwe.estimator judges the cluster).
A failed probe waits longer before the next (exponential backoff), so a link that
cannot take more is not probed into congestion.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from sfu.bwe.estimator import BandwidthEstimator, PacketResult
from sfu.bwe.twcc import parse_feedback

INITIAL_BPS = 300_000
MIN_BPS = 50_000
# Without feedback this long after the connection came, the subscriber has no
# transport-cc (an aiortc client): its layers are not limited by an estimate.
FEEDBACK_GRACE_US = 3_000_000
FIRST_PROBE_FACTOR = 3  # the first probe, at this many times the initial estimate
# A downlink that showed its limit (a failed probe, overuse, loss) counts as limited
# this long: until then its estimate, not the publisher's maximum, is what it can take.
LIMITED_FOR_US = 10_000_000
PROBE_DURATION_US = 500_000
PROBE_STEP_US = 20_000  # the probe is paced in steps this long
# Probe for this much more than the layers need: more than the headroom an up-switch
# asks of the estimate (sfu.router.layers.UPSWITCH_HEADROOM).
PROBE_HEADROOM = 1.3
PROBE_BACKOFF_MIN_US = 2_000_000
PROBE_BACKOFF_MAX_US = 8_000_000  # a link that recovers is found soon
PROBE_NEVER_BY_COUNT = 1 << 30  # a cluster size no feedback reaches
PACKET_BYTES = 300  # what a probe packet carries (255 bytes of padding), to size a probe

SentPackets = Callable[[int, int], list[tuple[int, int, int] | None]]


class Downlink:
    def __init__(self, max_bps: int, now_us: int) -> None:
        self.estimator = BandwidthEstimator(INITIAL_BPS, MIN_BPS, max_bps)
        self._created_us = now_us
        self._limited_until_us = -1
        self._probe_sent = 0  # padding bytes sent in the probe under way
        self._probe_media_bps = 0  # what the media brought when it started
        self._probe_packet_bytes = PACKET_BYTES  # what a padding packet has carried
        self.feedback_packets = 0
        self.malformed = 0  # feedback packets that did not parse
        self._reported_upto = -1  # the highest transport-wide number fed to the estimator
        self._clusters = itertools.count(1)
        self._probe: tuple[int, int, int, int] | None = None  # cluster, start, end, target
        self._next_probe_us = 0
        self._backoff_us = PROBE_BACKOFF_MIN_US
        self.probes = 0
        self.probes_succeeded = 0

    @property
    def has_estimate(self) -> bool:
        return self.feedback_packets > 0

    @property
    def estimate_bps(self) -> int | None:
        return self.estimator.estimate_bps if self.has_estimate else None

    @property
    def probing(self) -> bool:
        return self._probe is not None

    def budget_bps(self, now_us: int) -> int | None:
        """What the subscriber's layers may add up to: the estimate; the initial one
        while feedback may still come; None (no limit) for a subscriber without
        transport-cc."""
        if self.has_estimate:
            return self.estimator.estimate_bps
        return INITIAL_BPS if now_us - self._created_us < FEEDBACK_GRACE_US else None

    def limited(self, now_us: int) -> bool:
        """Whether the link has lately shown that it cannot take more."""
        return now_us < self._limited_until_us

    def on_feedback(self, packet: bytes, sent_packets: SentPackets, now_us: int) -> None:
        """A transport-wide feedback packet from the subscriber; ``sent_packets(base, n)``
        is what the forwarder sent under those numbers."""
        try:
            feedback = parse_feedback(packet)
        except ValueError:
            self.malformed += 1
            return
        records = sent_packets(feedback.base_seq, len(feedback.arrivals))
        results = []
        for (_, arrival_us), record in zip(feedback.arrivals, records, strict=False):
            if record is None or record[0] <= self._reported_upto:
                continue  # unknown, or reported before: each packet counts once
            number, send_us, size = record
            results.append(PacketResult(number, send_us, size, arrival_us,
                                        self._cluster_of(send_us)))
        if not results:
            return
        self._reported_upto = max(r.seq for r in results)
        probe = self._probe
        self.feedback_packets += 1
        self.estimator.on_packets(results, now_us)
        if probe is not None and results[-1].send_us > probe[2]:
            self.estimator.end_probe(probe[0])  # the feedback has passed the window
        if self.estimator.delay_state == "overusing" or self.estimator.loss_fraction > 0.1:
            self._limited_until_us = now_us + LIMITED_FOR_US
        self.settle(now_us)

    def _cluster_of(self, send_us: int) -> int:
        if self._probe is not None and self._probe[1] <= send_us <= self._probe[2]:
            return self._probe[0]
        return -1

    def should_probe(self, wanted_bps: int, now_us: int) -> bool:
        """Whether to probe now: the subscriber wants more than the estimate allows, no
        probe is under way and the backoff has passed."""
        estimate = self.estimate_bps
        return (estimate is not None and self._probe is None and now_us >= self._next_probe_us
                and wanted_bps > estimate)

    def start_probe(self, wanted_bps: int, now_us: int) -> int:
        """Start a probe cluster for ``wanted_bps`` (with headroom; the first one higher,
        as libwebrtc's initial probes, to find a fast link at once); returns its rate."""
        target = int(wanted_bps * PROBE_HEADROOM)
        if self.probes == 0:
            target = max(target, FIRST_PROBE_FACTOR * self.estimator.estimate_bps)
        target = min(target, self.estimator.max_bps)
        cluster = next(self._clusters)
        # Every packet sent in the window belongs to the cluster, media and padding: it
        # is judged once feedback reaches past the window (on_feedback), not by count.
        self.estimator.start_probe(cluster, target, PROBE_NEVER_BY_COUNT)
        self._probe = (cluster, now_us, now_us + PROBE_DURATION_US, target)
        self._probe_sent = 0
        # Fixed for the probe: the acknowledged rate will soon include its own padding.
        self._probe_media_bps = self.estimator.acked_bps
        self.probes += 1
        return target

    def probe_packets(self, now_us: int) -> int:
        """How many padding packets to send now, in the probe under way, to keep it at its
        rate over what the media bring (0 when it is over, or ahead)."""
        if self._probe is None or now_us > self._probe[2]:
            return 0
        _, start, _, target = self._probe
        deficit_bps = max(0, target - self._probe_media_bps)
        due = deficit_bps * (now_us - start + PROBE_STEP_US) // 8_000_000
        # Never more than two steps' worth at once: a late timer must not make a burst.
        step_most = 2 * deficit_bps * PROBE_STEP_US // 8_000_000
        return max(0, -(-min(due - self._probe_sent, step_most) // self._probe_packet_bytes))

    def probe_sent(self, octets: int, packets: int) -> None:
        """What the forwarder resent for the probe."""
        self._probe_sent += octets
        if packets:
            self._probe_packet_bytes = max(100, octets // packets)

    def settle(self, now_us: int) -> None:
        """Once the estimator has judged the probe under way (or its feedback is long
        overdue): back off after a failure."""
        if self._probe is None:
            return
        result = self.estimator.last_probe
        if result is not None and result[0] == self._probe[0]:
            success = result[1]
        elif now_us > self._probe[2] + 2 * PROBE_DURATION_US:
            success = False  # no verdict: the feedback never covered it
        else:
            return
        self._probe = None
        if success:
            self.probes_succeeded += 1
            self._backoff_us = PROBE_BACKOFF_MIN_US
        else:
            self._backoff_us = min(2 * self._backoff_us, PROBE_BACKOFF_MAX_US)
            self._limited_until_us = now_us + LIMITED_FOR_US
        self._next_probe_us = now_us + self._backoff_us
