"""The header rules in sfu.rtp (and the pieces of them already in sfu._fastpath)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfu import rtp
from sfu.rtcp import packets

try:
    from sfu import _fastpath
except ImportError:  # pragma: no cover - SFU_PUREPYTHON builds
    _fastpath = None  # type: ignore[assignment]


@pytest.mark.parametrize(
    ("highest", "seq", "expected"),
    [
        (0x10000 + 65535, 0, 0x20000),  # wrap forward
        (0x20000, 65535, 0x10000 + 65535),  # one step back across the wrap
        (0x10000 + 100, 101, 0x10000 + 101),
        (0x10000 + 100, 99, 0x10000 + 99),
        (0x10000 + 100, 100 + 0x7FFF, 0x10000 + 100 + 0x7FFF),  # furthest ahead
        (0x10000 + 100, (100 + 0x8000) & 0xFFFF, 0x10000 + 100 - 0x8000),  # behind
    ],
)
def test_extend_seq(highest: int, seq: int, expected: int) -> None:
    assert rtp.extend_seq(highest, seq) == expected


@given(st.integers(0x10000, 2**40), st.integers(-0x7FFF, 0x7FFF))
def test_extend_seq_recovers_any_offset_within_half_range(highest: int, step: int) -> None:
    assert rtp.extend_seq(highest, (highest + step) & 0xFFFF) == highest + step


@pytest.mark.skipif(_fastpath is None, reason="sfu._fastpath is not built")
@given(st.integers(0, 2**40), st.integers(0, 0xFFFF), st.integers(0, 2**52))
def test_fastpath_arithmetic_matches_twin(highest: int, seq: int, now_us: int) -> None:
    assert _fastpath.extend_seq(highest, seq) == rtp.extend_seq(highest, seq)
    assert _fastpath.abs_send_time(now_us) == rtp.abs_send_time(now_us)


def test_abs_send_time() -> None:
    assert rtp.abs_send_time(0) == 0
    assert rtp.abs_send_time(1_000_000) == 1 << 18  # one second in 6.18 fixed point
    assert rtp.abs_send_time(64_000_000) == 0  # wraps every 64 s
    assert rtp.abs_send_time(500_000) == 1 << 17


def test_parse_header_layout_and_errors() -> None:
    packet = bytes([0x90 | 1, 96]) + bytes(10) + bytes(4) + b"\xbe\xde\x00\x01" + bytes(4) + b"pay"
    layout = rtp.parse_header(packet)
    assert isinstance(layout, rtp.HeaderLayout)
    assert (layout.ext_profile, layout.ext_offset, layout.ext_length) == (0xBEDE, 20, 4)
    assert packet[layout.payload_offset : layout.payload_end] == b"pay"
    assert rtp.parse_header(bytes(11)) == rtp.DROP_TOO_SHORT
    assert rtp.parse_header(bytes([0x40]) + bytes(11)) == rtp.DROP_BAD_VERSION
    assert rtp.parse_header(bytes([0x8F]) + bytes(11)) == rtp.DROP_BAD_HEADER  # 15 CSRCs
    assert rtp.parse_header(bytes([0x90]) + bytes(11) + b"\xbe\xde\x00\x09") == rtp.DROP_BAD_HEADER
    assert rtp.parse_header(bytes([0xA0]) + bytes(11) + b"\x00\x00\x00\x00") == rtp.DROP_BAD_HEADER
    padded = rtp.parse_header(bytes([0xA0]) + bytes(11) + b"ab\x00\x02")
    assert isinstance(padded, rtp.HeaderLayout) and padded.payload_end == 14


@given(
    st.lists(
        st.tuples(st.integers(1, 14), st.binary(min_size=1, max_size=16)), max_size=8
    )
)
def test_one_byte_extensions_round_trip(elements: list[tuple[int, bytes]]) -> None:
    block = rtp.write_extensions(elements)
    if not elements:
        assert block == b""
        return
    assert block[:2] == b"\xbe\xde" and len(block) % 4 == 0
    packet = bytes([0x90]) + bytes(11) + block
    layout = rtp.parse_header(packet)
    assert isinstance(layout, rtp.HeaderLayout)
    assert rtp.read_extensions(packet, layout) == elements


@given(
    st.lists(
        st.tuples(st.integers(1, 255), st.binary(min_size=0, max_size=255)), min_size=1,
        max_size=4,
    ).filter(lambda e: any(i > 14 or not 1 <= len(v) <= 16 for i, v in e))
)
def test_two_byte_extensions_round_trip(elements: list[tuple[int, bytes]]) -> None:
    block = rtp.write_extensions(elements)
    assert block[:2] == b"\x10\x00" and len(block) % 4 == 0
    packet = bytes([0x90]) + bytes(11) + block
    layout = rtp.parse_header(packet)
    assert isinstance(layout, rtp.HeaderLayout)
    assert rtp.read_extensions(packet, layout) == elements


def test_read_extensions_rejects_overrun() -> None:
    packet = bytes([0x90]) + bytes(11) + b"\xbe\xde\x00\x01" + b"\x13\x00\x00\x00"
    layout = rtp.parse_header(packet)
    assert isinstance(layout, rtp.HeaderLayout)
    assert rtp.read_extensions(packet, layout) is None  # id 1, 4 bytes, only 3 left


@pytest.mark.parametrize(
    ("codec", "payload", "expected"),
    [
        (rtp.CODEC_VP8, b"\x10\x00\x00\x9d", True),  # S=1, PID 0, P=0
        (rtp.CODEC_VP8, b"\x10\x01", False),  # P=1: interframe
        (rtp.CODEC_VP8, b"\x00\x00", False),  # not a partition start
        (rtp.CODEC_VP8, b"\x90\x80\x81\x23\x00", True),  # X, I with 15-bit picture id
        (rtp.CODEC_VP8, b"\x90\xe0\x05\x11\x00\x00", True),  # X, I (7-bit), L, T/K
        (rtp.CODEC_VP8, b"\x90\x80", False),  # truncated
        (rtp.CODEC_H264, b"\x65\x88", True),  # IDR
        (rtp.CODEC_H264, b"\x67\x42", True),  # SPS
        (rtp.CODEC_H264, b"\x41\x9a", False),  # non-IDR slice
        (rtp.CODEC_H264, b"\x18\x00\x02\x67\x42\x00\x02\x68\xce", True),  # STAP-A with SPS
        (rtp.CODEC_H264, b"\x7c\x85\x00", True),  # FU-A start of an IDR
        (rtp.CODEC_H264, b"\x7c\x05\x00", False),  # FU-A continuation
        (rtp.CODEC_OPUS, b"\xfc", True),
    ],
)
def test_keyframe_detection(codec: int, payload: bytes, expected: bool) -> None:
    assert rtp.is_keyframe_start(codec, payload) is expected


def test_pli_and_rtcp_iteration() -> None:
    pli = packets.build_pli(1, 0xDEADBEEF)
    assert pli == bytes.fromhex("81ce0002" "00000001" "deadbeef")
    compound = bytes.fromhex("81c90001" "00000001") + pli
    assert packets.iter_rtcp(compound) == [(201, 1, 0, 8), (206, 1, 8, 12)]
    assert packets.iter_rtcp(compound[:-1]) is None
    assert packets.is_rtcp(pli) and not packets.is_rtcp(bytes([0x80, 96]))


@pytest.mark.parametrize("highest", [0, 5, 600, 65535])
def test_history_window_is_the_last_history_size_sent(highest: int) -> None:
    """Bit k of history_window(highest, pid): pid + k is one of the HISTORY_SIZE up to
    ``highest``; for every pid near the window, some far from it, across the wrap."""
    held = {(highest - back) & 0xFFFF for back in range(rtp.HISTORY_SIZE)}
    near = range(highest - rtp.HISTORY_SIZE - 100, highest + 100)
    for pid in {p & 0xFFFF for p in near} | set(range(0, 0x10000, 97)):
        expected = sum(1 << k for k in range(17) if (pid + k) & 0xFFFF in held)
        assert rtp.history_window(highest, pid) == expected, pid
