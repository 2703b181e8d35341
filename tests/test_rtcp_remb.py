"""REMB, checked byte for byte against aiortc's RTCP classes."""

from __future__ import annotations

import pytest
from aiortc.rtp import RtcpPacket, RtcpPsfbPacket, pack_remb_fci, unpack_remb_fci
from hypothesis import given
from hypothesis import strategies as st

from sfu.rtcp.remb import build_remb, encode_bitrate


@given(st.integers(0, 2**40), st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=8))
def test_matches_aiortc(bitrate: int, ssrcs: list[int]) -> None:
    ours = build_remb(1, bitrate, ssrcs)
    theirs = bytes(RtcpPsfbPacket(fmt=15, ssrc=1, media_ssrc=0, fci=pack_remb_fci(
        bitrate, ssrcs)))
    assert ours == theirs
    (parsed,) = RtcpPacket.parse(ours)
    assert isinstance(parsed, RtcpPsfbPacket) and parsed.fmt == 15
    decoded_bitrate, decoded_ssrcs = unpack_remb_fci(parsed.fci)
    assert decoded_ssrcs == ssrcs
    assert decoded_bitrate <= bitrate and decoded_bitrate >= bitrate * (1 - 2**-17)


def test_encoding_examples() -> None:
    assert encode_bitrate(0) == (0, 0)
    assert encode_bitrate(262_143) == (0, 262_143)
    assert encode_bitrate(262_144) == (1, 131_072)
    exponent, mantissa = encode_bitrate(2_500_000)
    assert mantissa << exponent <= 2_500_000 < (mantissa + 1) << exponent


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        build_remb(1, 1000, [])
    with pytest.raises(ValueError):
        encode_bitrate(-1)
