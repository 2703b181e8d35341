"""Receiver reports, checked against aiortc's RTCP classes."""

from __future__ import annotations

from aiortc.rtp import RtcpPacket, RtcpReceiverInfo, RtcpRrPacket
from hypothesis import given
from hypothesis import strategies as st

from sfu.rtcp.reports import ReportBlock, build_rr

blocks = st.builds(
    ReportBlock,
    ssrc=st.integers(0, 2**32 - 1),
    fraction_lost=st.integers(0, 255),
    cumulative_lost=st.integers(-(2**23), 2**23 - 1),
    highest_sequence=st.integers(0, 2**32 - 1),
    jitter=st.integers(0, 2**32 - 1),
    lsr=st.integers(0, 2**32 - 1),
    dlsr=st.integers(0, 2**32 - 1),
)


@given(st.integers(0, 2**32 - 1), st.lists(blocks, max_size=5))
def test_matches_aiortc(sender: int, report_blocks: list[ReportBlock]) -> None:
    ours = build_rr(sender, report_blocks)
    theirs = bytes(RtcpRrPacket(ssrc=sender, reports=[
        RtcpReceiverInfo(ssrc=b.ssrc, fraction_lost=b.fraction_lost,
                         packets_lost=b.cumulative_lost, highest_sequence=b.highest_sequence,
                         jitter=b.jitter, lsr=b.lsr, dlsr=b.dlsr)
        for b in report_blocks]))
    assert ours == theirs
    (parsed,) = RtcpPacket.parse(ours)
    assert isinstance(parsed, RtcpRrPacket)
    assert [r.packets_lost for r in parsed.reports] == [b.cumulative_lost for b in report_blocks]


def test_cumulative_loss_is_clamped_to_24_bits() -> None:
    report = build_rr(1, [ReportBlock(2, 0, 1 << 30, 0, 0, 0, 0)])
    assert report[13:16] == b"\x7f\xff\xff"


@given(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=40).map(sorted))
def test_nack_matches_aiortc(lost: list[int]) -> None:
    from aiortc.rtp import RtcpRtpfbPacket

    from sfu.rtcp.packets import build_nack

    lost = list(dict.fromkeys(lost))
    ours = build_nack(1, 0xABC, lost)
    assert ours == bytes(RtcpRtpfbPacket(fmt=1, ssrc=1, media_ssrc=0xABC, lost=lost))
    (parsed,) = RtcpPacket.parse(ours)
    assert isinstance(parsed, RtcpRtpfbPacket) and parsed.lost == lost
