"""Forwarder behaviour with real libsrtp sessions: rewrite rules, gating, drops, RTCP.

Every test runs on each implementation of the Forwarder interface that is available
(the pure-Python twin always; the Cython one once it is built).
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass
from typing import Any

import pytest
from pylibsrtp import Session

from sfu import rtp
from sfu.rtcp import packets, retransmit
from tests.srtp_helpers import PROFILES, Capture, implementations, rtp_packet, session_pair

PUB, SUB = 1, 2
PRODUCER, CONSUMER = 10, 20
PUB_SSRC, SUB_SSRC = 0x11111111, 0x22222222
PUB_ADDR, SUB_ADDR = ("127.0.0.1", 5000), ("127.0.0.1", 6000)


@dataclass
class Rig:
    """A publisher and a subscriber endpoint wired to one forwarder."""

    fwd: Any
    pub_protect: Session  # the publisher's SRTP sender
    pub_unprotect: Session  # the publisher's receiver (for RTCP the SFU sends it)
    sub_protect: Session  # the subscriber's sender (its RTCP)
    sub_unprotect: Session  # the subscriber's receiver
    to_pub: Capture
    to_sub: Capture

    def publish(self, packet: bytes, now_us: int = 0) -> int:
        return int(self.fwd.handle_packet(PUB, self.pub_protect.protect(packet), now_us))

    def received(self) -> list[bytes]:
        """What reached the subscriber, decrypted; clears the capture."""
        out = [self.sub_unprotect.unprotect(data) for data, _ in self.to_sub.sent]
        self.to_sub.sent.clear()
        return out

    def rtcp_to_publisher(self) -> list[bytes]:
        out = [self.pub_unprotect.unprotect_rtcp(data) for data, _ in self.to_pub.sent]
        self.to_pub.sent.clear()
        return out


def make_rig(
    impl: Any,
    *,
    profile: str = "AES128_CM_SHA1_80",
    is_video: bool = True,
    codec: int = rtp.CODEC_VP8,
    ext_map: dict[int, int] | None = None,
    mid_id: int = 0,
    abs_send_time_id: int = 0,
    seq_base: int = 1000,
    ts_base: int = 50_000,
    interval_us: int = 500_000,
) -> Rig:
    pub_protect, sfu_rx_pub = session_pair(profile)
    sfu_tx_pub, pub_unprotect = session_pair(profile)
    sub_protect, sfu_rx_sub = session_pair(profile)
    sfu_tx_sub, sub_unprotect = session_pair(profile)
    to_pub, to_sub = Capture(), Capture()
    fwd = impl(interval_us)
    fwd.add_endpoint(PUB, sfu_rx_pub, sfu_tx_pub, to_pub, -1, PUB_ADDR)
    fwd.add_endpoint(SUB, sfu_rx_sub, sfu_tx_sub, to_sub, -1, SUB_ADDR)
    fwd.add_producer(PRODUCER, PUB, PUB_SSRC, codec)
    fwd.add_consumer(
        CONSUMER, PRODUCER, SUB, SUB_SSRC, is_video, {96: 100}, ext_map or {}, b"7",
        mid_id, abs_send_time_id, seq_base, ts_base,
    )
    return Rig(fwd, pub_protect, pub_unprotect, sub_protect, sub_unprotect, to_pub, to_sub)


def header(packet: bytes) -> tuple[int, int, int, int, bool]:
    """(payload type, seq, timestamp, ssrc, marker)."""
    _first, second, seq, ts, ssrc = struct.unpack_from("!BBHII", packet)
    return second & 0x7F, seq, ts, ssrc, bool(second & 0x80)


KEY = b"\x10\x00\x00\x9d\x01\x2a" + bytes(40)  # VP8: start of partition 0, keyframe
DELTA = b"\x10\x01\x00\x00" + bytes(40)  # VP8: start of partition 0, interframe

pytestmark = pytest.mark.parametrize("impl", implementations())


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_rewrites_ssrc_pt_seq_ts_and_keeps_payload(impl: Any, profile: str) -> None:
    rig = make_rig(impl, profile=profile)
    for i in range(5):
        payload = KEY if i == 0 else DELTA
        packet = rtp_packet(seq=40000 + i, timestamp=900 + 3000 * i, ssrc=PUB_SSRC,
                            payload=payload, marker=i == 4, csrcs=(7, 8))
        assert rig.publish(packet) == rtp.OK
    out = rig.received()
    assert [header(p) for p in out] == [
        (100, 1000 + i, 50_000 + 3000 * i, SUB_SSRC, i == 4) for i in range(5)
    ]
    for i, p in enumerate(out):
        assert struct.unpack_from("!II", p, 12) == (7, 8)  # CSRCs kept
        assert p[20:] == (KEY if i == 0 else DELTA)
        assert rig.to_sub.sent == [] and p[0] & 0x0F == 2
    assert rig.fwd.consumer_stats(CONSUMER)[0] == 5
    assert rig.fwd.counters()["sent"] == 5


def test_sequence_and_timestamp_wrap(impl: Any) -> None:
    rig = make_rig(impl, seq_base=65534, ts_base=2**32 - 3000)
    for i in range(5):
        packet = rtp_packet(seq=(65533 + i) & 0xFFFF, timestamp=(2**32 - 6000 + 3000 * i)
                            % 2**32, ssrc=PUB_SSRC, payload=KEY if i == 0 else DELTA)
        rig.publish(packet)
    out = [header(p) for p in rig.received()]
    assert [h[1] for h in out] == [65534, 65535, 0, 1, 2]
    assert [h[2] for h in out] == [(2**32 - 3000 + 3000 * i) % 2**32 for i in range(5)]


def test_reordering_and_loss_keep_offsets(impl: Any) -> None:
    rig = make_rig(impl)
    order = [100, 101, 103, 102, 106, 99]  # 99 predates the first forwarded packet
    for seq in order:
        rig.publish(rtp_packet(seq=seq, timestamp=seq * 10, ssrc=PUB_SSRC,
                               payload=KEY if seq == 100 else DELTA))
    out = [header(p) for p in rig.received()]
    assert [h[1] for h in out] == [1000, 1001, 1003, 1002, 1006]
    assert [h[2] for h in out] == [50_000 + (s - 100) * 10 for s in (100, 101, 103, 102, 106)]
    assert rig.fwd.counters()["skip_before_start"] == 1


def test_video_waits_for_keyframe_and_asks_for_one(impl: Any) -> None:
    rig = make_rig(impl, interval_us=500_000)
    for i, now in enumerate((0, 100_000, 600_000)):
        rig.publish(rtp_packet(seq=i, timestamp=i, ssrc=PUB_SSRC, payload=DELTA), now)
    assert rig.received() == []
    plis = rig.rtcp_to_publisher()
    # Three waiting packets, but the throttle lets only two requests through.
    assert plis == [packets.build_pli(packets.SFU_RTCP_SSRC, PUB_SSRC)] * 2
    counters = rig.fwd.counters()
    assert counters["skip_waiting_keyframe"] == 3
    assert counters["keyframe_requests_throttled"] == 1
    rig.publish(rtp_packet(seq=3, timestamp=3, ssrc=PUB_SSRC, payload=KEY), 700_000)
    rig.publish(rtp_packet(seq=4, timestamp=4, ssrc=PUB_SSRC, payload=DELTA), 700_000)
    assert [header(p)[1] for p in rig.received()] == [1000, 1001]
    assert rig.fwd.consumer_started(CONSUMER)


def test_audio_is_not_gated(impl: Any) -> None:
    rig = make_rig(impl, is_video=False, codec=rtp.CODEC_OPUS)
    rig.publish(rtp_packet(seq=5, timestamp=960, ssrc=PUB_SSRC, payload=b"\xfc\xff\xfe"))
    assert [header(p)[1] for p in rig.received()] == [1000]


def test_header_extensions_are_mapped_rewritten_and_dropped(impl: Any) -> None:
    # Publisher: id 1 mid, 2 audio level (subscriber did not negotiate), 3 abs-send-time.
    rig = make_rig(impl, ext_map={1: 4, 3: 9}, mid_id=4, abs_send_time_id=9)
    ext = rtp.write_extensions([(1, b"0"), (2, b"\x85"), (3, b"\x00\x00\x00")])
    packet = rtp_packet(seq=1, timestamp=1, ssrc=PUB_SSRC, payload=KEY, extensions=ext)
    rig.publish(packet, now_us=1_500_000)
    (out,) = rig.received()
    layout = rtp.parse_header(out)
    assert isinstance(layout, rtp.HeaderLayout)
    assert rtp.read_extensions(out, layout) == [
        (4, b"7"), (9, rtp.abs_send_time(1_500_000).to_bytes(3, "big"))
    ]
    assert out[layout.payload_offset :] == KEY


def test_extension_block_removed_when_nothing_maps(impl: Any) -> None:
    rig = make_rig(impl, ext_map={})
    ext = rtp.write_extensions([(2, b"\x85")])
    rig.publish(rtp_packet(seq=1, timestamp=1, ssrc=PUB_SSRC, payload=KEY, extensions=ext))
    (out,) = rig.received()
    assert out[0] & 0x10 == 0 and out[12:] == KEY


def test_two_byte_extensions_and_padding(impl: Any) -> None:
    rig = make_rig(impl, ext_map={20: 5})
    ext = rtp.write_extensions([(20, bytes(20))])
    packet = rtp_packet(seq=1, timestamp=1, ssrc=PUB_SSRC, payload=KEY, extensions=ext,
                        padding=4)
    rig.publish(packet)
    (out,) = rig.received()
    layout = rtp.parse_header(out)
    assert isinstance(layout, rtp.HeaderLayout)
    assert rtp.read_extensions(out, layout) == [(5, bytes(20))]
    assert out[0] & 0x20 and out[-1] == 4 and out[layout.payload_offset:layout.payload_end] == KEY


def test_unknown_payload_type_is_skipped_per_consumer(impl: Any) -> None:
    rig = make_rig(impl)
    rig.publish(rtp_packet(seq=1, timestamp=1, ssrc=PUB_SSRC, payload=KEY, payload_type=97))
    assert rig.received() == []
    assert rig.fwd.counters()["skip_payload_type"] == 1


def test_garbage_is_dropped_and_counted(impl: Any) -> None:
    rig = make_rig(impl)
    fwd = rig.fwd
    assert fwd.handle_packet(PUB, b"\x80", 0) == rtp.DROP_TOO_SHORT
    assert fwd.handle_packet(PUB, bytes(1600), 0) == rtp.DROP_TOO_LONG
    assert fwd.handle_packet(PUB, b"\x40" + bytes(20), 0) == rtp.DROP_BAD_VERSION
    good = rig.pub_protect.protect(rtp_packet(seq=1, timestamp=1, ssrc=PUB_SSRC, payload=KEY))
    tampered = good[:-1] + bytes([good[-1] ^ 1])
    assert fwd.handle_packet(PUB, tampered, 0) == rtp.DROP_SRTP_FAIL
    assert fwd.handle_packet(99, good, 0) == rtp.DROP_UNKNOWN_ENDPOINT
    other = rtp_packet(seq=2, timestamp=1, ssrc=0x5555, payload=KEY)
    assert rig.publish(other) == rtp.DROP_UNKNOWN_SSRC
    # The subscriber cannot inject media under the publisher's SSRC: SSRCs are per endpoint.
    hijack = rig.sub_protect.protect(rtp_packet(seq=3, timestamp=1, ssrc=PUB_SSRC, payload=KEY))
    assert fwd.handle_packet(SUB, hijack, 0) == rtp.DROP_UNKNOWN_SSRC
    counters = fwd.counters()
    assert counters["drop_too_short"] == counters["drop_too_long"] == 1
    assert counters["drop_bad_version"] == counters["drop_srtp_fail"] == 1
    assert counters["drop_unknown_endpoint"] == 1 and counters["drop_unknown_ssrc"] == 2
    assert rig.received() == []


def test_subscriber_pli_and_fir_reach_the_publisher_throttled(impl: Any) -> None:
    rig = make_rig(impl, interval_us=500_000)
    pli = packets.build_pli(0xABC, SUB_SSRC)
    fir = struct.pack("!BBHII", 0x80 | packets.PSFB_FIR, packets.RTCP_PSFB, 4, 0xABC, 0
                      ) + struct.pack("!IB3x", SUB_SSRC, 1)
    rr = struct.pack("!BBHI", 0x80, packets.RTCP_RR, 1, 0xABC)
    for data, now in ((rr + pli, 0), (fir, 100_000), (pli, 700_000)):
        assert rig.fwd.handle_packet(SUB, rig.sub_protect.protect_rtcp(data), now) == rtp.OK
    assert rig.rtcp_to_publisher() == [packets.build_pli(packets.SFU_RTCP_SSRC, PUB_SSRC)] * 2
    counters = rig.fwd.counters()
    assert counters["keyframe_requests_sent"] == 2
    assert counters["keyframe_requests_throttled"] == 1
    assert counters["rr_in"] == 1 and counters["rtcp_in"] == 3
    bad = rig.sub_protect.protect_rtcp(b"\x81\xce\x00\x05" + pli[4:])  # says 24 bytes, has 12
    assert rig.fwd.handle_packet(SUB, bad, 0) == rtp.DROP_BAD_RTCP


def test_consumer_without_connected_endpoint_is_skipped(impl: Any) -> None:
    rig = make_rig(impl)
    rig.fwd.remove_endpoint(SUB)
    rig.publish(rtp_packet(seq=1, timestamp=1, ssrc=PUB_SSRC, payload=KEY))
    assert rig.fwd.counters()["skip_not_connected"] == 1
    assert not rig.fwd.consumer_started(CONSUMER)


def test_removing_producer_removes_its_consumers(impl: Any) -> None:
    rig = make_rig(impl)
    rig.fwd.remove_producer(PRODUCER)
    assert rig.fwd.consumer_stats(CONSUMER) == (0, 0)
    assert rig.publish(rtp_packet(seq=1, timestamp=1, ssrc=PUB_SSRC, payload=KEY)) == (
        rtp.DROP_UNKNOWN_SSRC)
    with pytest.raises(ValueError):
        rig.fwd.add_consumer(CONSUMER, PRODUCER, SUB, 1, True, {}, {}, b"0", 0, 0, 0, 0)


def test_pause_and_resume_continue_numbering_at_a_keyframe(impl: Any) -> None:
    rig = make_rig(impl, seq_base=65534)
    for i in range(3):  # out 65534, 65535, 0
        rig.publish(rtp_packet(seq=100 + i, timestamp=1000 * i, ssrc=PUB_SSRC,
                               payload=KEY if i == 0 else DELTA))
    rig.fwd.set_producer_paused(PRODUCER, True)
    for i in range(3, 50):  # muted: nothing goes out
        assert rig.publish(rtp_packet(seq=100 + i, timestamp=1000 * i, ssrc=PUB_SSRC,
                                      payload=DELTA)) == rtp.OK
    rig.fwd.set_producer_paused(PRODUCER, False)
    rig.publish(rtp_packet(seq=150, timestamp=50_000, ssrc=PUB_SSRC, payload=DELTA))  # no key
    for i in (151, 152):
        rig.publish(rtp_packet(seq=i, timestamp=1000 * (i - 100), ssrc=PUB_SSRC,
                               payload=KEY if i == 151 else DELTA))
    out = [header(p) for p in rig.received()]
    assert [h[1] for h in out] == [65534, 65535, 0, 1, 2]  # no gap across the mute
    # Timestamps keep their offset: 51 packets' worth of time passed.
    assert [h[2] for h in out] == [50_000 + 1000 * i for i in (0, 1, 2, 51, 52)]
    counters = rig.fwd.counters()
    assert counters["skip_paused"] == 47 and counters["skip_waiting_keyframe"] == 1
    with pytest.raises(ValueError):
        rig.fwd.set_producer_paused(999, True)


def test_moved_producer_continues_numbering_and_time_from_its_new_source(impl: Any) -> None:
    """The publisher reconnected (new peer connection: new endpoint, SSRC, numbering and
    timestamps): the subscriber's stream carries on as if nothing happened."""
    pub2_protect, sfu_rx_pub2 = session_pair("AES128_CM_SHA1_80")
    sfu_tx_pub2, _ = session_pair("AES128_CM_SHA1_80")
    rig = make_rig(impl, seq_base=65534)
    for i in range(3):  # out 65534, 65535, 0 at 50_000 + 3000 i, 33 ms apart
        rig.publish(rtp_packet(seq=100 + i, timestamp=3000 * i, ssrc=PUB_SSRC,
                               payload=KEY if i == 0 else DELTA), now_us=33_333 * i)
    rig.fwd.add_endpoint(PUB + 100, sfu_rx_pub2, sfu_tx_pub2, Capture(), -1, PUB_ADDR)
    rig.fwd.move_producer(PRODUCER, PUB + 100, 0x33333333)
    # The old source is gone, and the new one starts at a keyframe.
    assert rig.publish(rtp_packet(seq=103, timestamp=9000, ssrc=PUB_SSRC,
                                  payload=KEY)) == rtp.DROP_UNKNOWN_SSRC
    later = 66_666 + 2_000_000  # two seconds after the last packet sent
    for i, payload in enumerate((DELTA, KEY, DELTA)):
        datagram = pub2_protect.protect(rtp_packet(
            seq=40_000 + i, timestamp=7_777_777 + 3000 * i, ssrc=0x33333333, payload=payload))
        assert rig.fwd.handle_packet(PUB + 100, datagram, later + 33_333 * i) == rtp.OK
    out = [header(p) for p in rig.received()]
    assert [h[1] for h in out] == [65534, 65535, 0, 1, 2]  # no gap across the move
    # The keyframe's timestamp is the last one sent plus the time that passed (90 kHz).
    last_ts = 50_000 + 6000
    passed = (later + 33_333 - 66_666) * 90_000 // 1_000_000
    assert [h[2] for h in out[3:]] == [last_ts + passed, last_ts + passed + 3000]
    assert rig.fwd.receive_report(PRODUCER, later + 100_000)[0] == 0x33333333
    with pytest.raises(ValueError):
        rig.fwd.move_producer(999, PUB, 1)


def test_send_rtcp_reaches_the_endpoint_protected(impl: Any) -> None:
    from sfu.rtcp.remb import build_remb

    rig = make_rig(impl)
    remb = build_remb(packets.SFU_RTCP_SSRC, 2_500_000, [PUB_SSRC])
    assert rig.fwd.send_rtcp(PUB, remb)
    assert rig.rtcp_to_publisher() == [remb]
    assert not rig.fwd.send_rtcp(99, remb)  # unknown endpoint
    assert not rig.fwd.send_rtcp(PUB, b"\x80\x60" + bytes(10))  # RTP, not RTCP
    assert rig.rtcp_to_publisher() == []


def test_sender_reports_are_translated_per_consumer(impl: Any) -> None:
    rig = make_rig(impl, ts_base=1_000_000)
    sr = struct.pack("!BBHI", 0x80, packets.RTCP_SR, 6, PUB_SSRC) + struct.pack(
        "!IIIII", 0xE000_0000, 0x8000_0000, 500_000, 77, 7700)
    sdes = struct.pack("!BBHI", 0x81, packets.RTCP_SDES, 1, PUB_SSRC)
    # Before the consumer started there is no offset to translate with: nothing is sent.
    assert rig.fwd.handle_packet(PUB, rig.pub_protect.protect_rtcp(sr + sdes), 0) == rtp.OK
    assert rig.to_sub.sent == []
    for i in range(3):
        rig.publish(rtp_packet(seq=i, timestamp=400_000 + 3000 * i, ssrc=PUB_SSRC,
                               payload=KEY if i == 0 else DELTA))
    rig.received()
    assert rig.fwd.handle_packet(PUB, rig.pub_protect.protect_rtcp(sr + sdes), 0) == rtp.OK
    (report,) = [rig.sub_unprotect.unprotect_rtcp(d) for d, _ in rig.to_sub.sent]
    octets = len(KEY) + 2 * len(DELTA)
    assert report == struct.pack("!BBHI", 0x80, packets.RTCP_SR, 6, SUB_SSRC) + struct.pack(
        "!IIIII", 0xE000_0000, 0x8000_0000, 500_000 - 400_000 + 1_000_000, 3, octets)
    counters = rig.fwd.counters()
    assert counters["sr_in"] == 2 and counters["sr_sent"] == 1
    short = struct.pack("!BBHI", 0x80, packets.RTCP_SR, 1, PUB_SSRC)
    assert rig.fwd.handle_packet(PUB, rig.pub_protect.protect_rtcp(short), 0) == (
        rtp.DROP_BAD_RTCP)


def test_receive_reports_count_loss_jitter_and_sr_delay(impl: Any) -> None:
    rig = make_rig(impl)
    assert rig.fwd.receive_report(PRODUCER, 0) is None  # nothing received yet
    # 90 kHz video, packets 20 ms apart; seq 65534..3 with 65535 and 1 lost.
    arrivals = [(65534, 0), (0, 40_000), (2, 80_000), (3, 100_000)]
    for seq, at in arrivals:
        rig.publish(rtp_packet(seq=seq, timestamp=(seq - 65534) % 65536 * 1800, ssrc=PUB_SSRC,
                               payload=DELTA), at + 5_000 * (seq == 2))  # one late by 5 ms
    ssrc, fraction, lost, highest, jitter, lsr, dlsr = rig.fwd.receive_report(PRODUCER, 0)
    assert (ssrc, lost, highest) == (PUB_SSRC, 2, 0x20003)
    assert fraction == (2 << 8) // 6  # 2 of 6 expected
    expected_jitter = 0
    transits = [(at + 5_000 * (s == 2)) * 90 // 1000 - (s - 65534) % 65536 * 1800
                for s, at in arrivals]
    for previous, transit in itertools.pairwise(transits):
        expected_jitter += abs(transit - previous) - ((expected_jitter + 8) >> 4)
    assert jitter == expected_jitter >> 4 and jitter > 0
    assert (lsr, dlsr) == (0, 0)
    # The next interval: nothing lost; an SR arrived 0.5 s before the report.
    rig.publish(rtp_packet(seq=4, timestamp=1800 * 6, ssrc=PUB_SSRC, payload=DELTA), 120_000)
    sr = struct.pack("!BBHIIIIII", 0x80, packets.RTCP_SR, 6, PUB_SSRC, 0x00012345, 0x6789ABCD,
                     0, 0, 0)
    rig.fwd.handle_packet(PUB, rig.pub_protect.protect_rtcp(sr), 1_000_000)
    _, fraction, lost, highest, _, lsr, dlsr = rig.fwd.receive_report(PRODUCER, 1_500_000)
    assert (fraction, lost, highest) == (0, 2, 0x20004)
    assert lsr == 0x23456789 and dlsr == 65536 // 2


def nack(sender: int, media: int, pid: int, blp: int) -> bytes:
    return struct.pack("!BBHIIHH", 0x80 | packets.RTPFB_NACK, packets.RTCP_RTPFB, 3, sender, media,
                       pid, blp)


def test_nack_is_answered_from_history(impl: Any) -> None:
    rig = make_rig(impl, seq_base=65534)
    for i in range(4):  # out 65534, 65535, 0, 1
        rig.publish(rtp_packet(seq=10 + i, timestamp=90 * i, ssrc=PUB_SSRC,
                               payload=(KEY if i == 0 else DELTA) + bytes([i])))
    sent = [data for data, _ in rig.to_sub.sent]
    rig.to_sub.sent.clear()
    # 65535 and 0 were lost on the way: the subscriber asks for them, and for 2 (not sent
    # yet), through the bitmask.
    request = nack(0xABC, SUB_SSRC, 65535, 0b101)
    assert rig.fwd.handle_packet(SUB, rig.sub_protect.protect_rtcp(request), 0) == rtp.OK
    resent = [data for data, _ in rig.to_sub.sent]
    assert resent == sent[1:3]  # the same SRTP bytes: same packet, same index
    assert [header(p)[1] for p in rig.received()] == [65535, 0]
    counters = rig.fwd.counters()
    assert (counters["retransmitted"], counters["nack_out_of_history"]) == (2, 1)
    assert counters["nack_in"] == 1 and counters["retransmit_missed"] == 0
    # Beyond the history, a slot holds a newer packet: not resent, not a wrong packet.
    for i in range(4, 4 + rtp.HISTORY_SIZE):
        rig.publish(rtp_packet(seq=10 + i, timestamp=90 * i, ssrc=PUB_SSRC, payload=DELTA))
    rig.received()
    rig.fwd.handle_packet(SUB, rig.sub_protect.protect_rtcp(nack(1, SUB_SSRC, 65535, 0)), 0)
    assert rig.received() == []
    assert rig.fwd.counters()["nack_out_of_history"] == 2


def test_publisher_losses_are_asked_for_with_retries_and_rtt(impl: Any) -> None:
    rig = make_rig(impl)
    # 65533, then 2: 65534, 65535, 0, 1 are missing across the wrap.
    for seq, at in ((65533, 0), (2, 1_000)):
        rig.publish(rtp_packet(seq=seq, timestamp=0, ssrc=PUB_SSRC, payload=DELTA), at)
    fwd = rig.fwd
    assert fwd.nack_due(PRODUCER, 3_000) == []  # reordering gets 5 ms first
    assert fwd.nack_due(PRODUCER, 7_000) == [65534, 65535, 0, 1]
    assert fwd.nack_due(PRODUCER, 8_000) == []  # next ask one (default) RTT later
    # 65535 is retransmitted 30 ms after the ask: it is forgotten, and RTT measured.
    rig.publish(rtp_packet(seq=65535, timestamp=0, ssrc=PUB_SSRC, payload=DELTA), 37_000)
    assert fwd.nack_due(PRODUCER, 107_000) == [65534, 0, 1]
    # Now retries are 30 ms apart, until 8 tries or 1 s.
    assert fwd.nack_due(PRODUCER, 130_000) == []
    assert fwd.nack_due(PRODUCER, 137_000) == [65534, 0, 1]
    for at in range(200_000, 1_200_000, 40_000):
        fwd.nack_due(PRODUCER, at)
    assert fwd.nack_due(PRODUCER, 1_300_000) == []
    counters = fwd.counters()
    assert counters["nack_recovered"] == 1 and counters["nack_gave_up"] == 3
    assert counters["nack_requested"] == 4 + 3 + 3 * 6
    # A gap too large to ask for is left to keyframes.
    rig.publish(rtp_packet(seq=1000, timestamp=0, ssrc=PUB_SSRC, payload=DELTA), 1_400_000)
    assert fwd.nack_due(PRODUCER, 2_000_000) == []


def test_keyframe_wait_is_counted(impl: Any) -> None:
    rig = make_rig(impl)
    rig.publish(rtp_packet(seq=1, timestamp=0, ssrc=PUB_SSRC, payload=DELTA), 1_000)
    rig.publish(rtp_packet(seq=2, timestamp=0, ssrc=PUB_SSRC, payload=DELTA), 30_000)
    rig.publish(rtp_packet(seq=3, timestamp=0, ssrc=PUB_SSRC, payload=KEY), 251_000)
    counters = rig.fwd.counters()
    assert (counters["keyframe_waits"], counters["keyframe_wait_us"]) == (1, 250_000)


def rr(sender: int, blocks: list[tuple[int, int, int, int, int, int]]) -> bytes:
    """An RR with (ssrc, fraction, cumulative lost, jitter, lsr, dlsr) blocks."""
    body = b"".join(struct.pack("!IB3sIIII", ssrc, fraction,
                                (lost & 0xFFFFFF).to_bytes(3, "big"), 0, jitter, lsr, dlsr)
                    for ssrc, fraction, lost, jitter, lsr, dlsr in blocks)
    return struct.pack("!BBHI", 0x80 | len(blocks), packets.RTCP_RR, 1 + 6 * len(blocks),
                       sender) + body


def test_subscriber_reports_give_loss_jitter_and_rtt(impl: Any) -> None:
    rig = make_rig(impl)
    rig.publish(rtp_packet(seq=1, timestamp=0, ssrc=PUB_SSRC, payload=KEY), 0)
    sr = struct.pack("!BBHIIIIII", 0x80, packets.RTCP_SR, 6, PUB_SSRC, 0x00012345, 0x6789ABCD,
                     0, 1, 1)
    rig.fwd.handle_packet(PUB, rig.pub_protect.protect_rtcp(sr), 1_000_000)
    assert rig.fwd.consumer_report(CONSUMER) is None
    # The subscriber got that SR (LSR 0x23456789), held it 0.25 s, and answers 0.3 s
    # after we sent it: the round trip is 50 ms.
    report = rr(9, [(SUB_SSRC, 64, -3, 120, 0x23456789, 65536 // 4), (0x999, 0, 0, 0, 0, 0)])
    rig.fwd.handle_packet(SUB, rig.sub_protect.protect_rtcp(report), 1_300_000)
    assert rig.fwd.consumer_report(CONSUMER) == (64, -3, 120, 50_000)
    # A report without a usable LSR keeps the last round trip.
    rig.fwd.handle_packet(SUB, rig.sub_protect.protect_rtcp(
        rr(9, [(SUB_SSRC, 0, 2, 80, 0, 0)])), 2_000_000)
    assert rig.fwd.consumer_report(CONSUMER) == (0, 2, 80, 50_000)
    short = rr(9, [(SUB_SSRC, 0, 0, 0, 0, 0)])[:-4]
    assert rig.fwd.handle_packet(SUB, rig.sub_protect.protect_rtcp(short), 0) == (
        rtp.DROP_BAD_RTCP)


def big_nack(media: int, entries: list[tuple[int, int]]) -> bytes:
    """A generic NACK with many (pid, bitmask) entries (RFC 4585 §6.2.1)."""
    fci = b"".join(struct.pack("!HH", pid & 0xFFFF, blp) for pid, blp in entries)
    return struct.pack("!BBHII", 0x80 | packets.RTPFB_NACK, packets.RTCP_RTPFB, 2 + len(entries),
                       0xBAD, media) + fci


def resent(rig: Rig) -> list[int]:
    """Sequence numbers of what reached the subscriber (in the clear in SRTP: a resent
    packet is a replay its receiver would refuse); clears the capture."""
    out = [struct.unpack_from("!H", data, 2)[0] for data, _ in rig.to_sub.sent]
    rig.to_sub.sent.clear()
    return out


def nack_outcomes(fwd: Any) -> dict[str, int]:
    counters = fwd.counters()
    return {name: counters[name] for name in (
        "retransmitted", "retransmit_missed", "nack_out_of_history", "nack_too_soon",
        "nack_budget_exceeded")}


def publish_stream(rig: Rig, count: int, every_us: int, payload_size: int = 40,
                   first_seq: int = 100) -> None:
    """``count`` packets, a keyframe first, ``every_us`` apart from time 0."""
    for i in range(count):
        payload = (KEY if i == 0 else DELTA)[:6] + bytes(payload_size)
        assert rig.publish(rtp_packet(seq=first_seq + i, timestamp=90 * i, ssrc=PUB_SSRC,
                                      payload=payload), i * every_us) == rtp.OK
    assert len(resent(rig)) == count


def test_a_hostile_nack_gets_no_more_than_the_budget(impl: Any) -> None:
    """335 entries of (recent seq, 0xFFFF) ask for 5,695 packets in one SRTCP datagram;
    the consumer's budget is half its forward rate (200/s here), and the bucket starts
    with one second of it."""
    rig = make_rig(impl, seq_base=1000)
    published = [0]

    def stream_until(now: int) -> int:
        """200 packets/s up to ``now``; the last sequence number sent to the subscriber."""
        while published[0] * 5_000 < now:
            i = published[0]
            rig.publish(rtp_packet(seq=100 + i, timestamp=90 * i, ssrc=PUB_SSRC,
                                   payload=KEY if i == 0 else DELTA), i * 5_000)
            published[0] += 1
        rig.to_sub.sent.clear()
        return 1000 + published[0] - 1

    def hostile(highest: int) -> bytes:
        # Spread over the last 512 sent: every one is in the history.
        return rig.sub_protect.protect_rtcp(big_nack(
            SUB_SSRC, [(highest - 16 - 17 * (k % 30), 0xFFFF) for k in range(335)]))

    assert len(hostile(1000)) == 1366  # as in the issue
    assert len(packets.nack_sequences(big_nack(SUB_SSRC, [(0, 0xFFFF)] * 335)[12:])) == 5695
    budget = 200 * retransmit.RETRANSMIT_SHARE_PERCENT // 100
    assert budget > retransmit.RETRANSMIT_MIN_PACKETS_PER_S
    rig.fwd.handle_packet(SUB, hostile(stream_until(3_000_000)), 3_000_000)
    sequences = resent(rig)
    assert len(sequences) == budget and len(set(sequences)) == budget
    assert nack_outcomes(rig.fwd) == {
        "retransmitted": budget, "retransmit_missed": 0, "nack_out_of_history": 0,
        "nack_too_soon": 0, "nack_budget_exceeded": 5695 - budget}
    # Half a second later the bucket holds half a second of budget again.
    rig.fwd.handle_packet(SUB, hostile(stream_until(3_500_000)), 3_500_000)
    assert len(resent(rig)) == budget // 2
    # However often it comes, a second brings no more than a second's budget.
    before = rig.fwd.counters()["retransmitted"]
    for at in range(3_510_000, 4_510_000, 10_000):
        rig.fwd.handle_packet(SUB, hostile(stream_until(at)), at)
    assert rig.fwd.counters()["retransmitted"] - before == budget
    assert rig.fwd.counters()["nack_too_soon"] > 0  # resent within 100 ms: not again


def test_the_byte_budget_holds_for_large_packets(impl: Any) -> None:
    """25 packets/s of 1.3 kB: the packet floor (50/s) would allow 50, the byte floor
    (60 kB/s) allows 45 of these."""
    rig = make_rig(impl, seq_base=1000)
    publish_stream(rig, 100, 40_000, payload_size=1300)  # out 1000..1099
    kept = 12 + 6 + 1300
    rig.fwd.handle_packet(SUB, rig.sub_protect.protect_rtcp(
        big_nack(SUB_SSRC, [(1000 + 17 * k, 0xFFFF) for k in range(6)])), 4_000_000)
    allowed = retransmit.RETRANSMIT_MIN_BYTES_PER_S // kept
    assert allowed < retransmit.RETRANSMIT_MIN_PACKETS_PER_S
    assert resent(rig) == list(range(1000, 1000 + allowed))
    assert nack_outcomes(rig.fwd) == {
        "retransmitted": allowed, "retransmit_missed": 0,
        "nack_out_of_history": 2,  # 1100 and 1101: not sent yet
        "nack_too_soon": 0, "nack_budget_exceeded": 100 - allowed}


def test_a_packet_is_resent_once_per_round_trip(impl: Any) -> None:
    rig = make_rig(impl, seq_base=1000)
    publish_stream(rig, 10, 20_000)  # out 1000..1009

    def ask(seq: int, at: int, blp: int = 0) -> list[int]:
        rig.fwd.handle_packet(SUB, rig.sub_protect.protect_rtcp(
            big_nack(SUB_SSRC, [(seq, blp)])), at)
        return resent(rig)

    # Asked for twice in one NACK (1003, then 1003 again through 1002's bitmask): once.
    rig.fwd.handle_packet(SUB, rig.sub_protect.protect_rtcp(
        big_nack(SUB_SSRC, [(1003, 0), (1002, 0b1)])), 1_000_000)
    assert resent(rig) == [1003, 1002]
    assert rig.fwd.counters()["nack_too_soon"] == 1
    # No report from the subscriber yet: the interval is the default round trip.
    assert ask(1003, 1_000_000 + retransmit.RETRANSMIT_DEFAULT_RTT_US - 1) == []
    assert ask(1003, 1_000_000 + retransmit.RETRANSMIT_DEFAULT_RTT_US) == [1003]
    assert rig.fwd.counters()["nack_too_soon"] == 2
    # The subscriber's reports give a 300 ms round trip (see the RTT test above).
    sr = struct.pack("!BBHIIIIII", 0x80, packets.RTCP_SR, 6, PUB_SSRC, 0x00012345, 0x6789ABCD,
                     0, 1, 1)
    rig.fwd.handle_packet(PUB, rig.pub_protect.protect_rtcp(sr), 2_000_000)
    resent(rig)  # the SR, translated
    rig.fwd.handle_packet(SUB, rig.sub_protect.protect_rtcp(
        rr(9, [(SUB_SSRC, 0, 0, 0, 0x23456789, 65536 // 2)])), 2_800_000)
    assert rig.fwd.consumer_report(CONSUMER) == (0, 0, 0, 300_000)
    assert ask(1005, 3_000_000) == [1005]
    assert ask(1005, 3_299_999) == []
    assert ask(1005, 3_300_000) == [1005]
    # A round trip shorter than RETRANSMIT_MIN_INTERVAL_US counts as that.
    rig.fwd.handle_packet(PUB, rig.pub_protect.protect_rtcp(sr), 4_000_000)
    resent(rig)
    rig.fwd.handle_packet(SUB, rig.sub_protect.protect_rtcp(
        rr(9, [(SUB_SSRC, 0, 0, 0, 0x23456789, 65536 // 2 - 65536 // 1000)])), 4_501_000)
    assert 0 <= rig.fwd.consumer_report(CONSUMER)[3] < retransmit.RETRANSMIT_MIN_INTERVAL_US // 2
    assert ask(1006, 5_000_000) == [1006]
    assert ask(1006, 5_000_000 + retransmit.RETRANSMIT_MIN_INTERVAL_US - 1) == []
    assert ask(1006, 5_000_000 + retransmit.RETRANSMIT_MIN_INTERVAL_US) == [1006]
    # A slot that takes a new packet forgets when the old one was resent.
    assert ask(1007, 6_000_000) == [1007]
    for i in range(rtp.HISTORY_SIZE):
        rig.publish(rtp_packet(seq=110 + i, timestamp=0, ssrc=PUB_SSRC, payload=DELTA),
                    6_000_000)
    resent(rig)
    assert ask(1007 + rtp.HISTORY_SIZE, 6_000_001) == [1007 + rtp.HISTORY_SIZE]


def test_nacks_outside_the_history_resend_nothing(impl: Any) -> None:
    rig = make_rig(impl, seq_base=1000)
    request = big_nack(SUB_SSRC, [(1000, 0xFFFF), (5, 0xFFFF), (40000, 0x0001)])
    # Before the first packet is sent to it, a consumer holds nothing.
    rig.fwd.handle_packet(SUB, rig.sub_protect.protect_rtcp(request), 0)
    assert nack_outcomes(rig.fwd)["nack_out_of_history"] == 17 + 17 + 2
    publish_stream(rig, 600, 5_000)  # out 1000..1599: the history holds 1088..1599
    rig.fwd.handle_packet(SUB, rig.sub_protect.protect_rtcp(big_nack(SUB_SSRC, [
        (1600, 0xFFFF),  # not sent yet
        (1599 - 600, 0xFFFF),  # long gone
        (1599 - 520, 0xFFFF),  # 1079..1095: the last 8 are still held
        (1599 - 40000, 0x8001),  # far away, either way round
        (1599 + 30000, 0x8001),
    ])), 3_000_000)
    assert resent(rig) == list(range(1088, 1096))
    assert nack_outcomes(rig.fwd) == {
        "retransmitted": 8, "retransmit_missed": 0, "nack_too_soon": 0,
        "nack_out_of_history": 36 + 17 + 17 + 9 + 3 + 3, "nack_budget_exceeded": 0}
    # Inside the window but never sent (a packet lost on the way in): a miss.
    rig.publish(rtp_packet(seq=702, timestamp=0, ssrc=PUB_SSRC, payload=DELTA), 3_000_000)
    resent(rig)  # out 1602; 1600 and 1601 never were
    rig.fwd.handle_packet(SUB, rig.sub_protect.protect_rtcp(
        big_nack(SUB_SSRC, [(1600, 0b11)])), 3_000_000)
    assert resent(rig) == [1602]
    assert nack_outcomes(rig.fwd)["retransmit_missed"] == 2


def test_audio_consumers_keep_no_history(impl: Any) -> None:
    rig = make_rig(impl, is_video=False, codec=rtp.CODEC_OPUS)
    rig.publish(rtp_packet(seq=1, timestamp=0, ssrc=PUB_SSRC, payload=b"\x01" * 20), 0)
    resent(rig)
    rig.fwd.handle_packet(SUB, rig.sub_protect.protect_rtcp(
        big_nack(SUB_SSRC, [(1000, 0xFFFF)])), 0)
    assert resent(rig) == []
    assert nack_outcomes(rig.fwd)["nack_out_of_history"] == 17
