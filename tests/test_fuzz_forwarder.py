"""Hostile media into each forwarder: nothing escapes, every packet is accounted for."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sfu import rtp
from sfu.rtcp import packets
from tests.srtp_helpers import Capture, implementations, rtp_packet, session_pair

VALID = [
    rtp_packet(seq=1, timestamp=1, ssrc=0xAA, payload=b"\x10\x00\x00\x9d\x01\x2a" + bytes(60),
               extensions=rtp.write_extensions([(1, b"0"), (3, b"\x01\x02\x03")]), csrcs=(9,)),
    packets.build_pli(1, 0xBB) + bytes.fromhex("81c90001") + bytes(4),
]


@st.composite
def mutations(draw: st.DrawFn) -> tuple[str, bytes]:
    """(how to send it, bytes): raw garbage, or a mutated packet protected properly."""
    how = draw(st.sampled_from(["raw", "rtp", "rtcp"]))
    if how == "raw":
        return how, draw(st.binary(max_size=1600))
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(0, 6))):
        action = draw(st.sampled_from(["flip", "cut", "grow", "byte"]))
        if action == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif action == "cut":
            del data[draw(st.integers(0, len(data))):]
        elif action == "grow":
            data += draw(st.binary(max_size=200))
        elif data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return how, bytes(data)


@pytest.mark.parametrize("impl", implementations())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packets=st.lists(mutations(), min_size=1, max_size=30))
def test_hostile_packets_are_dropped_and_counted(impl: Any,
                                                 packets: list[tuple[str, bytes]]) -> None:
    pub_protect, pub_rx = session_pair("AEAD_AES_128_GCM")
    sub_protect, sub_rx = session_pair("AEAD_AES_128_GCM")
    fwd = impl(0)
    to_pub, to_sub = Capture(), Capture()
    fwd.add_endpoint(1, pub_rx, session_pair("AEAD_AES_128_GCM")[0], to_pub, -1, ("127.0.0.1", 1))
    fwd.add_endpoint(2, sub_rx, session_pair("AEAD_AES_128_GCM")[0], to_sub, -1, ("127.0.0.1", 2))
    fwd.add_producer(10, 1, 0xAA, rtp.CODEC_VP8)
    fwd.add_consumer(20, 10, 2, 0xBB, True, {96: 96}, {1: 1, 3: 3}, b"0", 1, 3, 0, 0)
    sent = 0
    for how, data in packets:
        datagram = data
        try:
            if how == "rtp":
                datagram = pub_protect.protect(data)
            elif how == "rtcp":
                datagram = sub_protect.protect_rtcp(data)
        except Exception:  # libsrtp will not protect it: send it as it is
            pass
        endpoint = 1 if how != "rtcp" else 2
        status = fwd.handle_packet(endpoint, datagram, sent * 20_000)
        assert 0 <= status < len(rtp.DROP_REASONS)
        sent += 1
    counters = fwd.counters()
    handled = sum(counters["accepted" if r == "ok" else f"drop_{r}"] for r in rtp.DROP_REASONS)
    assert handled == sent, counters
    # Whatever reached the subscriber is valid SRTP for it, under its own SSRC.
    for data, _ in to_sub.sent:
        assert data[8:12] == (0xBB).to_bytes(4, "big")
    assert len(to_sub.sent) == counters["sent"]
    assert len(to_pub.sent) == counters["keyframe_requests_sent"]  # PLIs, nothing else


def test_random_keys_never_authenticate() -> None:
    """A packet protected with someone else's key is dropped as an SRTP failure."""
    _, rx = session_pair("AES128_CM_SHA1_80")
    stranger, _ = session_pair("AES128_CM_SHA1_80", os.urandom(30))
    for impl_param in implementations():
        impl = impl_param.values[0]
        if impl is None:
            continue
        fwd = impl(0)
        fwd.add_endpoint(1, rx, session_pair()[0], Capture(), -1, ("127.0.0.1", 1))
        datagram = stranger.protect(VALID[0])
        assert fwd.handle_packet(1, datagram, 0) == rtp.DROP_SRTP_FAIL
