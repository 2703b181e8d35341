"""nack_deadline and the loss listener: the API a per-room timer needs instead of polling
nack_due. Both forwarders get the same packets and must give the same deadlines and the
same listener calls; the deadline must be exact (nothing due before it, something done
at it)."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sfu import _fastpath_fallback, rtp
from sfu.fastpath import cython_unavailable_reason
from sfu.rtcp.nack import NACK_FIRST_DELAY_US
from tests.srtp_helpers import Capture, implementations, rtp_packet, session_pair

PUB = 1
PRODUCER, AUDIO = 10, 11
PUB_SSRC, AUDIO_SSRC = 0xCAFE0001, 0xCAFE0002
PROFILE = "AES128_CM_SHA1_80"


class Side:
    """One forwarder with a video and an audio producer on one publisher endpoint, and a
    loss listener that records its calls."""

    def __init__(self, impl: Any, rx_key: bytes) -> None:
        self.fwd = impl(500_000)
        _, rx = session_pair(PROFILE, rx_key)
        tx, _ = session_pair(PROFILE)
        self.fwd.add_endpoint(PUB, rx, tx, Capture(), -1, ("127.0.0.1", 5000))
        self.fwd.add_producer(PRODUCER, PUB, PUB_SSRC, rtp.CODEC_VP8)
        self.fwd.add_producer(AUDIO, PUB, AUDIO_SSRC, rtp.CODEC_OPUS)
        self.calls: list[int] = []
        self.fwd.set_loss_listener(self.calls.append)


def sides(rx_key: bytes) -> list[Side]:
    impls: list[Any] = [_fastpath_fallback.Forwarder]
    if cython_unavailable_reason() is None:
        from sfu import _fastpath

        impls.append(_fastpath.Forwarder)
    return [Side(impl, rx_key) for impl in impls]


def video(protect: Any, seq: int) -> bytes:
    return bytes(protect.protect(rtp_packet(seq=seq & 0xFFFF, timestamp=seq * 3000 & 0xFFFFFFFF,
                                            ssrc=PUB_SSRC)))


@pytest.mark.parametrize("impl", implementations())
def test_deadlines_follow_gaps_and_retries(impl: Any) -> None:
    key = os.urandom(30)
    protect, _ = session_pair(PROFILE, key)
    side = Side(impl, key)
    fwd = side.fwd
    assert fwd.nack_deadline(PRODUCER) == -1
    assert fwd.nack_deadline(999) == -1  # unknown producer
    for seq, now in ((1, 0), (2, 1000), (5, 2000)):  # 3 and 4 lost
        assert fwd.handle_packet(PUB, video(protect, seq), now) == rtp.OK
    assert side.calls == [PRODUCER]
    assert fwd.nack_deadline(PRODUCER) == 2000 + NACK_FIRST_DELAY_US
    fwd.handle_packet(PUB, video(protect, 6), 2500)  # in order: nothing new
    fwd.handle_packet(PUB, video(protect, 9), 3000)  # 7, 8 lost: due later than 3, 4
    assert side.calls == [PRODUCER]
    assert fwd.nack_due(PRODUCER, 6999) == []
    assert fwd.nack_due(PRODUCER, 7000) == [3, 4]
    assert fwd.nack_deadline(PRODUCER) == 3000 + NACK_FIRST_DELAY_US
    assert fwd.nack_due(PRODUCER, 8000) == [7, 8]
    # Retried one round trip (100 ms until one is timed) after each ask.
    assert fwd.nack_deadline(PRODUCER) == 7000 + 100_000
    fwd.handle_packet(PUB, video(protect, 3), 9000)  # a retransmission
    fwd.handle_packet(PUB, video(protect, 4), 9000)
    assert fwd.nack_deadline(PRODUCER) == 8000 + 100_000
    fwd.handle_packet(PUB, video(protect, 7), 9000)
    fwd.handle_packet(PUB, video(protect, 8), 9000)
    assert fwd.nack_deadline(PRODUCER) == -1
    assert side.calls == [PRODUCER]
    assert fwd.counters()["nack_recovered"] == 4


@pytest.mark.parametrize("impl", implementations())
def test_exhausted_and_old_entries_fall_due_to_be_given_up(impl: Any) -> None:
    key = os.urandom(30)
    protect, _ = session_pair(PROFILE, key)
    fwd = Side(impl, key).fwd
    fwd.handle_packet(PUB, video(protect, 1), 0)
    fwd.handle_packet(PUB, video(protect, 3), 0)
    now = fwd.nack_deadline(PRODUCER)
    for _ in range(8):
        assert fwd.nack_due(PRODUCER, now) == [2]
        now = fwd.nack_deadline(PRODUCER)
    assert 0 <= now <= 7 * 100_000 + NACK_FIRST_DELAY_US  # asked 8 times: give up now
    assert fwd.nack_due(PRODUCER, now) == []
    assert fwd.counters()["nack_gave_up"] == 1
    assert fwd.nack_deadline(PRODUCER) == -1
    # An entry not asked for by the time it is older than a second is given up.
    fwd.handle_packet(PUB, video(protect, 5), 2_000_000)
    assert fwd.nack_deadline(PRODUCER) == 2_000_000 + NACK_FIRST_DELAY_US
    assert fwd.nack_due(PRODUCER, 2_000_000 + 1_000_001) == []
    assert fwd.counters()["nack_gave_up"] == 2
    assert fwd.nack_deadline(PRODUCER) == -1


@pytest.mark.parametrize("impl", implementations())
def test_listener_errors_are_counted_and_audio_is_not_tracked(impl: Any) -> None:
    key = os.urandom(30)
    protect, _ = session_pair(PROFILE, key)
    side = Side(impl, key)

    def broken(producer: int) -> None:
        raise RuntimeError(producer)

    side.fwd.set_loss_listener(broken)
    side.fwd.handle_packet(PUB, video(protect, 1), 0)
    assert side.fwd.handle_packet(PUB, video(protect, 4), 0) == rtp.OK
    assert side.fwd.counters()["loss_listener_errors"] == 1
    assert side.fwd.counters()["accepted"] == 2
    side.fwd.set_loss_listener(None)
    side.fwd.handle_packet(PUB, video(protect, 9), 100_000)
    assert side.fwd.counters()["loss_listener_errors"] == 1
    for seq in (1, 5):  # audio: no NACK
        side.fwd.handle_packet(PUB, bytes(protect.protect(rtp_packet(
            seq=seq, timestamp=seq * 960, ssrc=AUDIO_SSRC, payload_type=111))), 0)
    assert side.fwd.nack_deadline(AUDIO) == -1


# A step: (sequence-number step, microseconds passed, whether the timer fires first).
steps = st.lists(
    st.tuples(
        st.one_of(st.integers(-6, 6), st.integers(7, 40), st.sampled_from([300, -200, 1])),
        st.integers(0, 60_000),
        st.booleans(),
    ),
    min_size=1, max_size=120,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=steps, first_seq=st.integers(0, 0xFFFF))
def test_both_forwarders_agree_on_deadlines_and_listener_calls(
    plan: list[tuple[int, int, bool]], first_seq: int
) -> None:
    key = os.urandom(30)
    protect, _ = session_pair(PROFILE, key)
    both = sides(key)
    seq, now = first_seq, 0
    for step, passed, fire in plan:
        now += passed
        if fire:  # what a timer armed for the deadline does
            deadlines = {s.fwd.nack_deadline(PRODUCER) for s in both}
            assert len(deadlines) == 1
            (deadline,) = deadlines
            before = [s.fwd.counters()["nack_gave_up"] for s in both]
            due = [s.fwd.nack_due(PRODUCER, now) for s in both]
            assert all(d == due[0] for d in due)
            acted = [bool(d) or s.fwd.counters()["nack_gave_up"] > b
                     for d, s, b in zip(due, both, before, strict=True)]
            # Exact: nothing to do before the deadline, something at or after it.
            assert all(a == (0 <= deadline <= now) for a in acted), (deadline, now)
        seq += step
        packet = video(protect, seq)
        heard_before = [len(s.calls) for s in both]
        earlier = [s.fwd.nack_deadline(PRODUCER) for s in both]
        statuses = {s.fwd.handle_packet(PUB, packet, now) for s in both}
        assert len(statuses) == 1  # a repeated sequence number: SRTP replay, in both
        later = [s.fwd.nack_deadline(PRODUCER) for s in both]
        assert len(set(earlier)) == 1 and len(set(later)) == 1
        heard = [s.calls[n:] for s, n in zip(both, heard_before, strict=True)]
        assert all(h == heard[0] for h in heard)
        assert heard[0] in ([], [PRODUCER])  # at most once per packet
        if heard[0]:  # a new gap, due before anything still pending
            assert later[0] == now + NACK_FIRST_DELAY_US
        if later[0] >= 0 and (earlier[0] < 0 or later[0] < earlier[0]):
            assert heard[0] == [PRODUCER]
    counters = [s.fwd.counters() for s in both]
    assert all(c == counters[0] for c in counters)
