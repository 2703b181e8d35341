"""sfu/bwe: the transport-wide feedback packet, and the estimator driven through a
simulated bottleneck (a FIFO of capacity C with drop-tail at Q bytes, a propagation
delay, optional random loss), directly and through real feedback packets."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.bwe.delay import OVERUSING
from sfu.bwe.estimator import BandwidthEstimator, PacketResult
from sfu.bwe.twcc import (
    DELTA_UNIT_US,
    REFERENCE_TIME_UNIT_US,
    TwccFeedback,
    build_feedback,
    parse_feedback,
)

PACKET_BYTES = 1200
PROP_US = 25_000
FEEDBACK_INTERVAL_US = 100_000
RECEIVER_CLOCK_OFFSET_US = 7_777_777  # the receiver's clock has nothing to do with ours
DEEP_QUEUE_BYTES = 10_000_000  # never fills in these runs: delay is the only signal


class Link:
    """Bottleneck: arrival = max(send, link free) + size*8/C + propagation delay."""

    def __init__(self, capacity_bps: int, queue_bytes: int = DEEP_QUEUE_BYTES,
                 loss: float = 0.0, seed: int = 1) -> None:
        self.capacity_bps = capacity_bps
        self.queue_bytes = queue_bytes
        self.loss = loss
        self.rng = random.Random(seed)
        self.free_us = 0.0  # when the link has sent everything queued so far
        self.dropped = 0

    def transmit(self, send_us: int, size: int) -> int | None:
        if self.loss and self.rng.random() < self.loss:
            self.dropped += 1
            return None
        backlog_bytes = max(0.0, self.free_us - send_us) * self.capacity_bps / 8e6
        if backlog_bytes + size > self.queue_bytes:  # drop-tail
            self.dropped += 1
            return None
        self.free_us = max(float(send_us), self.free_us) + size * 8e6 / self.capacity_bps
        return round(self.free_us) + PROP_US


@dataclass
class Sent:
    seq: int
    send_us: int
    size: int
    arrival_us: int | None
    cluster: int


class Harness:
    """Paced sender → link → receiver sending feedback every 100 ms → estimator.

    Feedback generated at receiver time T covers every packet up to the last one
    arrived by T (the lost ones in between as lost) and reaches the sender at T + PROP_US.
    With ``via_twcc`` it travels as a real packet, 16-bit sequence numbers and the
    receiver's own clock included, and the sender maps it back as a feedback adapter would.
    """

    def __init__(self, link: Link, estimator: BandwidthEstimator, *, via_twcc: bool = False,
                 first_seq: int = 0) -> None:
        self.link = link
        self.est = estimator
        self.via_twcc = via_twcc
        self.first_seq = first_seq
        self.sent: list[Sent] = []
        self.reported = 0  # index into `sent` of the first packet not yet reported
        self.next_feedback_us = FEEDBACK_INTERVAL_US
        self.feedback_count = 0
        self.clock_us = 0
        self.trace: list[tuple[int, int]] = []  # (feedback time, estimate after it)
        self.on_feedback: Callable[[Harness], None] | None = None

    def send(self, size: int = PACKET_BYTES, cluster: int = -1) -> None:
        self.deliver_feedback(self.clock_us)
        arrival = self.link.transmit(self.clock_us, size)
        self.sent.append(Sent(self.first_seq + len(self.sent), self.clock_us, size, arrival,
                              cluster))

    def run(self, until_us: int, rate_bps: Callable[[], float]) -> None:
        while self.clock_us < until_us:
            self.send()
            self.clock_us += round(PACKET_BYTES * 8e6 / rate_bps())
        self.deliver_feedback(until_us)

    def probe(self, cluster: int, rate_bps: int, packets: int) -> None:
        self.est.start_probe(cluster, rate_bps, packets)
        for _ in range(packets):
            self.send(cluster=cluster)
            self.clock_us += round(PACKET_BYTES * 8e6 / rate_bps)

    def deliver_feedback(self, now_us: int) -> None:
        while self.next_feedback_us + PROP_US <= now_us:
            generated_us = self.next_feedback_us
            self.next_feedback_us += FEEDBACK_INTERVAL_US
            last = -1
            for i in range(self.reported, len(self.sent)):
                arrival = self.sent[i].arrival_us
                if arrival is not None:
                    if arrival > generated_us:
                        break  # FIFO: every later packet arrives later still
                    last = i
            if last < 0:
                continue
            batch = self.sent[self.reported:last + 1]
            self.reported = last + 1
            results = self._through_twcc(batch) if self.via_twcc else [
                PacketResult(s.seq, s.send_us, s.size, s.arrival_us, s.cluster) for s in batch]
            self.est.on_packets(results, generated_us + PROP_US)
            self.trace.append((generated_us + PROP_US, self.est.estimate_bps))
            if self.on_feedback is not None:
                self.on_feedback(self)

    def _through_twcc(self, batch: list[Sent]) -> list[PacketResult]:
        received = [s.arrival_us + RECEIVER_CLOCK_OFFSET_US for s in batch
                    if s.arrival_us is not None]
        reference = min(received) // REFERENCE_TIME_UNIT_US * REFERENCE_TIME_UNIT_US
        packet = build_feedback(
            1, 2, batch[0].seq & 0xFFFF, reference, self.feedback_count % 256,
            [(s.seq & 0xFFFF, None if s.arrival_us is None
              else s.arrival_us + RECEIVER_CLOCK_OFFSET_US) for s in batch])
        self.feedback_count += 1
        feedback = parse_feedback(packet)
        highest = self.sent[-1].seq
        results = []
        for seq16, arrival in feedback.arrivals:
            seq = highest - ((highest - seq16) & 0xFFFF)  # unwrap against the newest sent
            sent = self.sent[seq - self.first_seq]
            results.append(PacketResult(seq, sent.send_us, sent.size, arrival, sent.cluster))
        return results

    def first_time_below(self, bps: int) -> int | None:
        return next((t for t, e in self.trace if e < bps), None)

    def first_time_above(self, bps: int) -> int | None:
        return next((t for t, e in self.trace if e > bps), None)


def adaptive(est: BandwidthEstimator, cap_bps: int) -> Callable[[], float]:
    return lambda: min(est.estimate_bps, cap_bps)


# (a) Overload: 1.5 Mbit/s into 300 kbit/s.


@pytest.mark.parametrize("via_twcc", [False, True])
def test_overload_deep_buffer_is_caught_by_delay_alone(via_twcc: bool) -> None:
    est = BandwidthEstimator(initial_bps=1_500_000)
    sim = Harness(Link(300_000), est, via_twcc=via_twcc, first_seq=65_000)
    states: list[str] = []
    sim.on_feedback = lambda h: states.append(h.est.delay_state)
    sim.run(3_000_000, lambda: 1_500_000)
    assert sim.link.dropped == 0 and est.loss_fraction == 0.0  # no loss signal at all
    assert OVERUSING in states
    below = sim.first_time_below(400_000)
    assert below is not None and below <= 3_000_000  # measured: 0.75 s (both paths)
    # 0.85 × the measured 300 kbit/s, not a collapse to the floor.
    assert 200_000 <= est.estimate_bps <= 300_000
    assert 270_000 <= est.acked_bps <= 330_000


def test_overload_shallow_buffer() -> None:
    est = BandwidthEstimator(initial_bps=1_500_000)
    sim = Harness(Link(300_000, queue_bytes=30_000), est)
    sim.run(3_000_000, lambda: 1_500_000)
    assert sim.link.dropped > 0 and est.loss_fraction > 0.5
    below = sim.first_time_below(400_000)
    assert below is not None and below <= 3_000_000
    assert est.estimate_bps >= est.min_bps


# (b) Growth on an idle 5 Mbit/s link, the sender following the estimate up to 2 Mbit/s.


@pytest.mark.parametrize("via_twcc", [False, True])
def test_growth_is_8_percent_per_second(via_twcc: bool) -> None:
    est = BandwidthEstimator(initial_bps=300_000)
    sim = Harness(Link(5_000_000, queue_bytes=64_000), est, via_twcc=via_twcc)
    sim.run(20_000_000, adaptive(est, 2_000_000))
    assert sim.link.dropped == 0 and est.delay_state == "normal"
    crossed = sim.first_time_above(1_000_000)
    # 300 kbit/s × 1.08^t passes 1 Mbit/s at t = ln(10/3)/ln(1.08) = 15.6 s; measured
    # 15.8 s (the first 0.2 s wait for the first feedback). Neither faster nor much slower.
    assert crossed is not None and 15_000_000 <= crossed <= 17_500_000
    for t, estimate in sim.trace:
        assert estimate <= 300_000 * 1.08 ** (t / 1e6) * 1.02


def test_startup_probes_reach_1_mbit_at_once() -> None:
    # libwebrtc's start: probes at 3× and 6× the initial rate, then the AIMD from there.
    est = BandwidthEstimator(initial_bps=300_000)
    sim = Harness(Link(5_000_000, queue_bytes=64_000), est)
    sim.probe(0, 900_000, 10)
    sim.probe(1, 1_800_000, 10)
    sim.run(15_000_000, adaptive(est, 2_000_000))
    crossed = sim.first_time_above(1_000_000)
    assert crossed is not None and crossed <= 500_000  # measured: 0.23 s
    assert est.estimate_bps >= 1_800_000


def test_an_application_limited_sender_does_not_let_the_estimate_run_away() -> None:
    est = BandwidthEstimator(initial_bps=300_000)
    sim = Harness(Link(5_000_000), est)
    sim.run(30_000_000, lambda: 200_000)  # the link could carry 25 times that
    # 1.5 × 200 kbit/s + 10 kbit/s; unlimited, 8 %/s for 30 s would make it 3 Mbit/s.
    # (The 500 ms window holds 10 or 11 packets: acked reads 200 or 211 kbit/s.)
    assert est.acked_bps <= 1.1 * 200_000
    assert est.estimate_bps <= 1.5 * est.acked_bps + 10_000 <= 340_000


# (c) Probes.


def run_probe(capacity_bps: int) -> tuple[BandwidthEstimator, list[tuple[int, int]]]:
    """Media at 250 kbit/s for 2 s, then 10 packets at 1.5 Mbit/s, then media again."""
    est = BandwidthEstimator(initial_bps=300_000)
    sim = Harness(Link(capacity_bps, queue_bytes=64_000), est)
    at_result: list[tuple[int, int]] = []  # (estimate, acked) when the result came

    def watch(h: Harness) -> None:
        if h.est.last_probe is not None and not at_result:
            at_result.append((h.est.estimate_bps, h.est.acked_bps))

    sim.on_feedback = watch
    sim.run(2_000_000, lambda: 250_000)
    assert est.last_probe is None
    sim.probe(7, 1_500_000, 10)
    sim.run(4_000_000, lambda: 250_000)
    return est, at_result


def test_probe_over_a_narrow_link_fails_and_measures_the_link() -> None:
    est, at_result = run_probe(300_000)
    assert est.last_probe is not None
    cluster, success, receive_bps = est.last_probe
    assert cluster == 7 and not success
    assert abs(receive_bps - 300_000) <= 0.25 * 300_000  # measured: 300 kbit/s
    assert at_result[0][0] <= 300_000  # no lift


def test_probe_over_a_wide_link_succeeds_and_lifts_the_estimate_at_once() -> None:
    est, at_result = run_probe(5_000_000)
    assert est.last_probe is not None
    cluster, success, receive_bps = est.last_probe
    assert cluster == 7 and success
    assert abs(receive_bps - 1_500_000) <= 0.1 * 1_500_000
    estimate, acked = at_result[0]
    # Past the 1.5 × acked + 10 kbit/s limit an increase would be held to.
    assert estimate >= 1_200_000 and estimate > 1.5 * acked + 10_000
    assert est.estimate_bps >= 1_200_000  # and kept, though the sender went back to 250k


def test_probe_is_judged_once_80_percent_of_it_is_reported() -> None:
    est = BandwidthEstimator()
    est.start_probe(3, 1_000_000, packets=10)
    probe = [PacketResult(i, i * 9_600, 1200, 50_000 + i * 9_600, 3) for i in range(10)]
    est.on_packets(probe[:7], 200_000)
    assert est.last_probe is None
    est.on_packets(probe[7:8], 300_000)
    assert est.last_probe == (3, True, 1_000_000)
    assert est.estimate_bps == 1_000_000
    with pytest.raises(ValueError):
        est.start_probe(4, 1_000_000, packets=4)


# (d) Random loss without queueing.


def run_lossy(loss: float) -> tuple[BandwidthEstimator, Harness]:
    est = BandwidthEstimator(initial_bps=1_000_000)
    sim = Harness(Link(5_000_000, loss=loss, seed=20), est)
    sim.run(10_000_000, adaptive(est, 2_000_000))
    return est, sim


def test_heavy_random_loss_drives_the_estimate_down() -> None:
    est, sim = run_lossy(0.20)
    assert est.delay_state == "normal"  # the queue never builds: loss is the only signal
    # The last loss window only (20 packets or so at the end's rate): noisy.
    assert 0.10 < est.loss_fraction < 0.5
    assert est.estimate_bps < 300_000  # from 1 Mbit/s; measured: 150 kbit/s
    below = sim.first_time_below(500_000)
    assert below is not None and below <= 6_000_000  # measured: 3.6 s


def test_light_random_loss_is_tolerated() -> None:
    est, _ = run_lossy(0.01)
    assert est.estimate_bps > 1_000_000  # measured: 1.8 Mbit/s, from 1 Mbit/s


# Invariants under arbitrary input.


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50_000), st.integers(1, 1500),
                          st.none() | st.integers(-100_000, 100_000),
                          st.sampled_from([-1, 0, 1])),
                max_size=60),
       st.integers(30_000, 10_000_000))
def test_estimate_stays_within_bounds(
        packets: list[tuple[int, int, int | None, int]], initial: int) -> None:
    est = BandwidthEstimator(initial_bps=initial, min_bps=30_000, max_bps=10_000_000)
    est.start_probe(0, 2_000_000)
    est.start_probe(1, 500_000)
    send_us = 0
    for i, (gap, size, jitter, cluster) in enumerate(packets):
        send_us += gap
        arrival = None if jitter is None else send_us + 40_000 + jitter
        est.on_packets([PacketResult(i, send_us, size, arrival, cluster)], send_us + 60_000)
        assert 30_000 <= est.estimate_bps <= 10_000_000
        assert 0.0 <= est.loss_fraction <= 1.0


# (e) The feedback packet.

# Feedback packets from Chrome, as the webrtc-rs/pion test suites keep them
# (rtcp/src/transport_feedbacks/transport_layer_cc/transport_layer_cc_test.rs).
CHROME_RUN = bytes([
    0xAF, 0xCD, 0x00, 0x05, 0xFA, 0x17, 0xFA, 0x17, 0x43, 0x03, 0x2F, 0xA0, 0x00, 0x99,
    0x00, 0x01, 0x3D, 0xE8, 0x02, 0x17, 0x20, 0x01, 0x94, 0x01])
CHROME_TWO_BIT = bytes([
    0xAF, 0xCD, 0x00, 0x07, 0x9B, 0x74, 0xF6, 0x1F, 0x93, 0x71, 0xDC, 0xBC, 0x85, 0x3C,
    0x00, 0x09, 0x63, 0xF9, 0x16, 0xB3, 0xD5, 0x52, 0x00, 0x30, 0x9B, 0xAA, 0x6A, 0xAA,
    0x7B, 0x01, 0x09, 0x01])
ONE_BIT = bytes([  # that suite's expected output for a one-bit vector
    0xAF, 0xCD, 0x00, 0x07, 0xFA, 0x17, 0xFA, 0x17, 0x43, 0x03, 0x2F, 0xA0, 0x9C, 0x14,
    0x00, 0x0C, 0x75, 0x84, 0x20, 0x00, 0xBE, 0xC0, 0xC1, 0x3F, 0x3B, 0x3F, 0x53, 0x90,
    0x3B, 0x00, 0x00, 0x03])
LARGE_RUNS_UNPADDED = bytes([
    0x8F, 0xCD, 0x00, 0x07, 0xFA, 0x17, 0xFA, 0x17, 0x19, 0x3D, 0xD8, 0xBB, 0x01, 0x74,
    0x00, 0x06, 0x45, 0xB1, 0x5A, 0x40, 0x40, 0x02, 0x20, 0x04, 0x1F, 0xFE, 0x1F, 0x9A,
    0xD0, 0x00, 0xD0, 0x00])


def absolute(reference_us: int, deltas_us: list[int | None]) -> list[int | None]:
    out: list[int | None] = []
    now = reference_us
    for delta in deltas_us:
        if delta is not None:
            now += delta
        out.append(None if delta is None else now)
    return out


def test_known_packets() -> None:
    fb = parse_feedback(CHROME_RUN)
    assert (fb.sender_ssrc, fb.media_ssrc, fb.base_seq, fb.feedback_count) == (
        4195875351, 1124282272, 153, 23)
    assert fb.reference_time_us == 4057090 * 64_000
    assert fb.arrivals == [(153, fb.reference_time_us + 37_000)]

    fb = parse_feedback(CHROME_TWO_BIT)
    assert (fb.base_seq, fb.feedback_count) == (34108, 179)
    assert fb.reference_time_us == 6551830 * 64_000
    # Seven two-bit symbols, then a run of 48 "lost" of which the status count needs two.
    assert [seq for seq, _ in fb.arrivals] == list(range(34108, 34117))
    assert [a for _, a in fb.arrivals] == absolute(fb.reference_time_us, [
        38_750, 42_500, 26_500, 42_500, 30_750, None, 66_250, None, None])

    fb = parse_feedback(ONE_BIT)
    assert [a for _, a in fb.arrivals] == absolute(fb.reference_time_us, [
        48_250, 15_750, 14_750, 15_750, 20_750, None, 36_000, 14_750, None, None, None, None])
    # Our encoder picks the same chunk and padding for it, byte for byte.
    assert build_feedback(fb.sender_ssrc, fb.media_ssrc, fb.base_seq, fb.reference_time_us,
                          fb.feedback_count, fb.arrivals) == ONE_BIT
    assert build_feedback(4195875351, 1124282272, 153, 4057090 * 64_000, 23,
                          parse_feedback(CHROME_RUN).arrivals) == CHROME_RUN

    fb = parse_feedback(LARGE_RUNS_UNPADDED)
    assert [a for _, a in fb.arrivals] == absolute(fb.reference_time_us, [
        2_047_500, 2_022_500, 52_000, 0, 52_000, 0])
    assert parse_feedback(build_feedback(fb.sender_ssrc, fb.media_ssrc, fb.base_seq,
                                         fb.reference_time_us, fb.feedback_count,
                                         fb.arrivals)) == fb


def test_negative_reference_and_deltas_and_long_runs() -> None:
    reference = -5 * REFERENCE_TIME_UNIT_US
    arrivals: list[tuple[int, int | None]] = [(65_530, reference - 1_000)]  # before it
    arrivals += [((65_531 + i) % 65_536, None) for i in range(20_000)]  # three runs
    arrivals += [(19_995, reference + 8_000_000), (19_996, reference + 7_000_000)]
    packet = build_feedback(0xFFFFFFFF, 0, 65_530, reference, 255, arrivals)
    assert len(packet) < 40
    assert parse_feedback(packet) == TwccFeedback(0xFFFFFFFF, 0, 65_530, reference, 255,
                                                  arrivals)


Arrivals = list[tuple[int, int | None]]


@st.composite
def feedbacks(draw: st.DrawFn) -> tuple[int, int, Arrivals]:
    """Runs of lost / small-delta / large-delta packets, quantised as the wire is."""
    base_seq = draw(st.integers(0, 0xFFFF))
    reference = draw(st.integers(-(1 << 23), (1 << 23) - 1)) * REFERENCE_TIME_UNIT_US
    steps: list[int | None] = []
    for kind, length in draw(st.lists(st.tuples(st.sampled_from("lsL"), st.integers(1, 30)),
                                      min_size=1, max_size=12)):
        for _ in range(length):
            if kind == "l":
                steps.append(None)
            elif kind == "s":
                steps.append(draw(st.integers(0, 255)))
            else:
                steps.append(draw(st.integers(-(1 << 15), (1 << 15) - 1)))
    now = reference
    arrivals: Arrivals = []
    for i, step in enumerate(steps):
        if step is not None:
            now += step * DELTA_UNIT_US
        arrivals.append(((base_seq + i) % 65_536, None if step is None else now))
    return base_seq, reference, arrivals


@settings(max_examples=300, deadline=None)
@given(feedbacks(), st.integers(0, 0xFFFFFFFF), st.integers(0, 255))
def test_round_trip(feedback: tuple[int, int, Arrivals], ssrc: int, count: int) -> None:
    base_seq, reference, arrivals = feedback
    packet = build_feedback(ssrc, 42, base_seq, reference, count, arrivals)
    assert len(packet) % 4 == 0
    assert parse_feedback(packet) == TwccFeedback(ssrc, 42, base_seq, reference, count,
                                                  arrivals)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.none() | st.integers(0, 2_000_000), min_size=1, max_size=100))
def test_unquantised_arrivals_round_to_the_nearest_250_us(offsets: list[int | None]) -> None:
    reference = 64_000 * 1000
    arrivals: Arrivals = [(i, None if o is None else reference + o)
                          for i, o in enumerate(offsets)]
    parsed = parse_feedback(build_feedback(1, 2, 0, reference, 0, arrivals)).arrivals
    for (_, sent), (_, got) in zip(arrivals, parsed, strict=True):
        assert (sent is None) == (got is None)
        if sent is not None and got is not None:
            assert abs(got - sent) <= DELTA_UNIT_US // 2


def test_build_refuses_what_the_wire_cannot_say() -> None:
    ok: Arrivals = [(0, 0)]
    with pytest.raises(ValueError, match="64 ms"):
        build_feedback(1, 2, 0, 1_000, 0, ok)
    with pytest.raises(ValueError, match="64 ms"):
        build_feedback(1, 2, 0, (1 << 23) * 64_000, 0, ok)
    with pytest.raises(ValueError, match="1 to"):
        build_feedback(1, 2, 0, 0, 0, [])
    with pytest.raises(ValueError, match="does not follow"):
        build_feedback(1, 2, 0, 0, 0, [(0, 0), (2, 0)])
    with pytest.raises(ValueError, match="receive delta"):
        build_feedback(1, 2, 0, 0, 0, [(0, 0), (1, 9_000_000)])
    with pytest.raises(ValueError, match="8 bits"):
        build_feedback(1, 2, 0, 0, 256, ok)


@pytest.mark.parametrize(("packet", "message"), [
    (b"", "too short"),
    (CHROME_RUN[:19], "too short"),
    (bytes([0x4F]) + CHROME_RUN[1:], "version"),
    (bytes([0xA1]) + CHROME_RUN[1:], "not transport-wide"),
    (CHROME_RUN[:1] + bytes([206]) + CHROME_RUN[2:], "not transport-wide"),
    (CHROME_RUN + bytes(4), "length field"),
    (CHROME_RUN[:-1] + bytes([0]), "padding"),
    (CHROME_RUN[:-1] + bytes([5]), "padding"),
    (CHROME_RUN[:14] + bytes([0, 0]) + CHROME_RUN[16:], "no packets"),
    (CHROME_RUN[:14] + bytes([0, 9]) + CHROME_RUN[16:], "truncated"),
    (CHROME_RUN[:20] + bytes([0x60, 0x01]) + CHROME_RUN[22:], "reserved"),
    (CHROME_RUN[:20] + bytes([0x40, 0x01]) + CHROME_RUN[22:], "truncated"),
])
def test_parse_refuses_malformed_packets(packet: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_feedback(packet)


def parse_or_refuse(packet: bytes) -> None:
    """Only ValueError may come out; anything else fails the test."""
    try:
        fb = parse_feedback(packet)
    except ValueError:
        return
    assert 1 <= len(fb.arrivals) <= 0xFFFF


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=80))
def test_fuzz_random_bytes(packet: bytes) -> None:
    parse_or_refuse(packet)


@settings(max_examples=400, deadline=None)
@given(feedbacks(), st.data())
def test_fuzz_mutated_packets(feedback: tuple[int, int, Arrivals], data: st.DataObject) -> None:
    """Valid packets, damaged past the header mostly, so parsing gets to the chunks and
    deltas before it finds out."""
    base_seq, reference, arrivals = feedback
    packet = bytearray(build_feedback(1, 2, base_seq, reference, 0, arrivals))
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "flip", "cut", "fix length"]))
        if action == "flip":
            at = data.draw(st.integers(min(12, len(packet) - 1), len(packet) - 1))
            packet[at] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del packet[data.draw(st.integers(1, len(packet))):]
        elif len(packet) >= 4:  # consistent with the size again, so parsing goes deeper
            del packet[len(packet) // 4 * 4:]
            packet[2:4] = (len(packet) // 4 - 1).to_bytes(2, "big")
    parse_or_refuse(bytes(packet))


# (f) End to end: feedback built at the receiver, parsed at the sender, sequence numbers
# wrapping through 65535 and the receiver on its own clock — the (a) and (b) runs above
# with via_twcc=True, and a probe through the same path:


def test_probe_through_feedback_packets() -> None:
    est = BandwidthEstimator(initial_bps=300_000)
    sim = Harness(Link(5_000_000, queue_bytes=64_000), est, via_twcc=True, first_seq=65_530)
    sim.run(1_000_000, lambda: 250_000)
    sim.probe(1, 1_500_000, 10)
    sim.run(1_500_000, lambda: 250_000)
    assert est.last_probe is not None and est.last_probe[:2] == (1, True)
    assert abs(est.last_probe[2] - 1_500_000) <= 0.1 * 1_500_000
    assert est.estimate_bps >= 1_200_000
