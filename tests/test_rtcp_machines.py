"""The sans-IO RTCP machines of sfu/rtcp/ on their own (the forwarder tests drive them,
and their cdef twins in sfu/_fastpath.pyx, through both forwarders)."""

from __future__ import annotations

from sfu.rtcp.keyframe import KeyframeThrottle
from sfu.rtcp.nack import (
    NACK_EARLIER,
    NACK_FIRST_DELAY_US,
    NACK_MAX_MISSING,
    NACK_RECOVERED,
    NackGenerator,
)
from sfu.rtcp.retransmit import RETRANSMIT_TOKEN, RetransmitBudget
from sfu.rtcp.sr import SrTranslator
from sfu.rtcp.stats import ReceiveStats


def test_nack_generator_gaps_deadlines_and_recovery() -> None:
    nack = NackGenerator()
    assert nack.deadline() == -1
    assert nack.on_arrival(100, 103, 0) == NACK_EARLIER  # 101, 102 lost
    assert nack.deadline() == NACK_FIRST_DELAY_US
    assert nack.on_arrival(103, 106, 1000) == 0  # 104, 105: due after 101, 102
    assert nack.due(NACK_FIRST_DELAY_US - 1) == ([], 0)
    assert nack.due(NACK_FIRST_DELAY_US) == ([101, 102], 0)
    assert nack.on_arrival(106, 101, 30_000) == NACK_RECOVERED
    assert nack.rtt_us == 30_000 - NACK_FIRST_DELAY_US
    assert nack.on_arrival(106, 104, 30_000) == 0  # late, never asked for
    assert nack.count == 2  # 102 and 105
    assert nack.on_arrival(106, 106 + NACK_MAX_MISSING + 2, 40_000) == 0  # keyframe's job
    assert nack.count == 0 and nack.deadline() == -1


def test_nack_generator_keeps_the_newest_when_full() -> None:
    nack = NackGenerator()
    nack.on_arrival(0, NACK_MAX_MISSING + 1, 0)  # 1..256 lost
    assert nack.on_arrival(NACK_MAX_MISSING + 1, NACK_MAX_MISSING + 3, 10) == 0
    assert nack.count == NACK_MAX_MISSING
    assert nack.ext[0] == 2 and nack.ext[-1] == NACK_MAX_MISSING + 2


def test_receive_stats_report_block() -> None:
    stats = ReceiveStats(90_000)
    assert stats.report_block(7, 0) is None
    for seq in (10, 11, 14):  # 12, 13 lost
        assert stats.on_arrival(seq, seq * 3000, seq * 33_333) == 0x10000 + seq
    stats.on_sender_report(0x12345678, 1_000_000)
    block = stats.report_block(7, 1_500_000)
    assert block is not None
    ssrc, fraction, lost, highest, _, lsr, dlsr = block
    assert (ssrc, fraction, lost, highest, lsr) == (7, 2 * 256 // 5, 2, 0x10000 + 14,
                                                    0x12345678)
    assert dlsr == 65536 // 2


def test_sr_translator_round_trip() -> None:
    sr = SrTranslator()
    assert sr.report() is None and sr.rtt() == -1
    report = bytes.fromhex("80c80006cafe0001" "0001234567890000" "00001000" "00000001"
                           "00000002")
    translated = sr.translate(report, 0xAB, 10, 5, 6, 2_000_000)
    assert translated[4:8] == bytes.fromhex("000000ab")
    assert sr.sent_ntp_mid == 0x23456789
    # Arrival 300 ms after sending, of which the subscriber held it 125 ms (DLSR).
    sr.on_report_block(12, -1, 40, 0x23456789, 65536 // 8, 2_300_000)
    assert sr.report() == (12, -1, 40, 175_000)
    assert sr.rtt() == 175_000


def test_keyframe_throttle() -> None:
    throttle = KeyframeThrottle()
    assert throttle.ready(0, 500_000)
    throttle.on_request(0)
    assert not throttle.ready(499_999, 500_000)
    assert throttle.ready(500_000, 500_000)


def test_retransmit_budget_starts_full_and_pays_in_packets_and_bytes() -> None:
    budget = RetransmitBudget()
    budget.mark(0, 0, 0)
    budget.refill(0, 0, 0)  # the floor: 50 packets, 60 000 bytes a second
    assert budget.has_token()
    assert budget.spend(1200)
    assert not budget.spend(60_000)  # more bytes than are left: nothing taken
    assert budget.tokens_packets == 49 * RETRANSMIT_TOKEN
