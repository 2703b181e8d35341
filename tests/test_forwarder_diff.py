"""The Cython forwarder against its pure-Python twin, on the same packets.

Hypothesis generates sequences of publisher RTP (random payloads and sizes, CSRCs,
one- and two-byte header extensions, padding, sequence and timestamp wraps,
reordering, duplicates, loss), garbage and truncated packets, subscriber RTCP (NACKs,
answered from history within each consumer's budget: a few near the numbering, floods
of the largest NACK an SRTCP datagram holds, entries anywhere; among it), the
publisher's sender reports, receiver-report
statistics, pausing and resuming the producer, and moving it to a new source (the
publisher reconnected: new SSRC, numbering and timestamps). Both forwarders get the same bytes
with the same keys; they must return the same statuses and reports, send
byte-identical SRTP and end with identical counters. Run on every SRTP profile.
"""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass
from typing import Any

import pylibsrtp
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from sfu import _fastpath_fallback, rtp
from sfu.fastpath import cython_unavailable_reason
from sfu.rtcp import packets, retransmit
from tests.srtp_helpers import PROFILES, Capture, rtp_packet, session_pair

REASON = cython_unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no Cython forwarder: {REASON}")

if REASON is None:
    from sfu import _fastpath

PUB, SUB_A, SUB_B = 1, 2, 3
PRODUCER = 10
PUB_SSRC = 0xCAFE0001
PUB_SSRC_AFTER_MOVE = 0xCAFE0002
# (consumer, endpoint, ssrc, payload types, ext map, mid id, abs-send-time id, seq, ts)
CONSUMERS = [
    (20, SUB_A, 0xA0000001, {96: 100, 97: 101}, {1: 4, 3: 9, 5: 14}, 4, 9, 65530, 2**32 - 5000),
    (21, SUB_A, 0xA0000002, {96: 96}, {1: 1, 2: 200}, 1, 0, 0, 0),  # id 200: two-byte form
    (22, SUB_B, 0xB0000001, {96: 111}, {}, 0, 0, 32768, 12345),
]


def note(value: str) -> None:
    """A Hypothesis event, when run by Hypothesis (run and compare serve fixed cases too)."""
    if currently_in_test_context():
        event(value)


@dataclass
class Side:
    fwd: Any
    captures: dict[int, Capture]


def build(impl: Any, keys: dict[int, tuple[bytes, bytes]], profile: str) -> Side:
    fwd = impl(200_000)
    captures = {}
    for endpoint, (rx_key, tx_key) in keys.items():
        _, rx = session_pair(profile, rx_key)
        tx, _ = session_pair(profile, tx_key)
        captures[endpoint] = Capture()
        fwd.add_endpoint(endpoint, rx, tx, captures[endpoint], -1, ("127.0.0.1", 5000 + endpoint))
    fwd.add_producer(PRODUCER, PUB, PUB_SSRC, rtp.CODEC_VP8)
    for consumer, endpoint, ssrc, pts, ext_map, mid_id, ast_id, seq, ts in CONSUMERS:
        fwd.add_consumer(consumer, PRODUCER, endpoint, ssrc, True, pts, ext_map,
                         f"m{consumer}".encode(), mid_id, ast_id, seq, ts)
    return Side(fwd, captures)


# -- strategies ---------------------------------------------------------------------------

one_byte_elements = st.lists(
    st.tuples(st.integers(1, 14), st.binary(min_size=1, max_size=16)), max_size=6
)
two_byte_elements = st.lists(
    st.tuples(st.integers(1, 255), st.binary(min_size=0, max_size=40)), max_size=4
)


@st.composite
def extension_blocks(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["none", "one", "two", "odd"]))
    if kind == "none":
        return b""
    if kind == "odd":  # an unknown profile, or a length that lies
        profile = draw(st.integers(0, 0xFFFF))
        body = draw(st.binary(max_size=24))
        words = draw(st.integers(0, 8))
        return struct.pack("!HH", profile, words) + body
    elements = draw(one_byte_elements if kind == "one" else two_byte_elements)
    return rtp.write_extensions(elements) or b"\xbe\xde\x00\x00"


VP8_KEY = b"\x10\x00\x00\x9d\x01\x2a"
VP8_DELTA = b"\x10\x01\x00"


@st.composite
def media_packets(draw: st.DrawFn, seq: int, timestamp: int, source: int) -> bytes:
    start = draw(st.sampled_from([VP8_KEY, VP8_DELTA, b"\x90\x80\x81\x23\x00", b""]))
    payload = start + draw(st.binary(max_size=draw(st.sampled_from([16, 200, 1300]))))
    return rtp_packet(
        seq=seq & 0xFFFF,
        timestamp=timestamp & 0xFFFFFFFF,
        ssrc=draw(st.sampled_from([source, source, source, 0x0BAD0BAD, PUB_SSRC])),
        payload_type=draw(st.sampled_from([96, 96, 97, 98])),
        marker=draw(st.booleans()),
        payload=payload,
        csrcs=tuple(draw(st.lists(st.integers(0, 2**32 - 1), max_size=3))),
        extensions=draw(extension_blocks()),
        padding=draw(st.sampled_from([0, 0, 1, 4, 17])),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> list[tuple[str, Any, int]]:
    """(kind, data, now_us) events: media, stream, raw, truncate, tamper, rtcp, nack,
    pause, resume, move."""
    source = PUB_SSRC
    seq = draw(st.integers(0, 0xFFFF))
    timestamp = draw(st.integers(0, 2**32 - 1))
    now = draw(st.integers(0, 2**40))
    events: list[tuple[str, Any, int]] = []
    packets = 0  # media sent so far: about how far consumers' numbering has gone
    for _ in range(draw(st.integers(1, 40))):
        # 100 ms: the resend interval before a subscriber's round trip is known.
        now += draw(st.sampled_from([0, 1_000, 20_000, 100_000, 300_000]))
        kind = draw(st.sampled_from(["media"] * 6 + ["nack"] * 3 + ["stream"] * 2 + [
            "raw", "truncate", "tamper", "rtcp", "pause", "resume", "sr", "report",
            "move"]))
        if kind == "move":  # a new source: its own SSRC, numbering and timestamps
            source = PUB_SSRC_AFTER_MOVE if source == PUB_SSRC else PUB_SSRC
            seq = draw(st.integers(0, 0xFFFF))
            timestamp = draw(st.integers(0, 2**32 - 1))
            events.append((kind, source, now))
        elif kind in ("pause", "resume", "report"):
            events.append((kind, None, now))
        elif kind == "sr":  # the publisher's sender report, to be translated per consumer
            blocks = draw(st.integers(0, 2))
            report = struct.pack("!BBHI", 0x80 | blocks, 200, 6 + 6 * blocks,
                                 draw(st.sampled_from([source, source, 0x0BAD0BAD])))
            # NTP whose middle bits are 0x23456789 half the time: what the RRs echo.
            ntp = draw(st.sampled_from([bytes.fromhex("0001234567890000"),
                                        draw(st.binary(min_size=8, max_size=8))]))
            report += ntp + draw(st.binary(min_size=12 + 24 * blocks,
                                           max_size=12 + 24 * blocks))
            if draw(st.booleans()):
                report = report[: draw(st.integers(4, len(report)))]  # lies about its size
            events.append((kind, report, now))
        elif kind == "media":
            seq += draw(st.sampled_from([1, 1, 1, 2, 5, 0, -1, -3, 3000, 40000]))
            timestamp += draw(st.sampled_from([0, 3000, 90000, 2**31]))
            packets += 1
            events.append((kind, draw(media_packets(seq, timestamp, source)), now))
        elif kind == "stream":  # enough packets in a row for NACKs to exhaust a budget
            size = draw(st.sampled_from([16, 1200]))
            for i in range(draw(st.integers(20, 150))):
                seq += 1
                timestamp += 3000
                now += 5_000
                packets += 1
                events.append(("media", rtp_packet(
                    seq=seq & 0xFFFF, timestamp=timestamp & 0xFFFFFFFF, ssrc=source,
                    payload=(VP8_KEY if i == 0 else VP8_DELTA) + bytes(size)), now))
        elif kind == "raw":
            events.append((kind, draw(st.binary(max_size=1600)), now))
        elif kind == "nack":  # a subscriber's generic NACK, sent as RTCP
            consumer = draw(st.sampled_from(CONSUMERS))
            base = consumer[7] + draw(st.integers(-20, packets + 20))  # near its numbering
            style = draw(st.sampled_from(["few", "flood", "anywhere"]))
            if style == "few":
                pairs = [(base + draw(st.integers(-3, 30)), draw(st.integers(0, 0xFFFF)))
                         for _ in range(draw(st.integers(1, 3)))]
            elif style == "flood":  # up to 335 entries of 0xFFFF: 1,352 bytes, as hostile
                spread = draw(st.integers(1, 40))
                pairs = [(base - 17 * (k % spread), 0xFFFF)
                         for k in range(draw(st.integers(1, 335)))]
            else:
                pairs = draw(st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)),
                                      min_size=1, max_size=60))
            fci = b"".join(struct.pack("!HH", pid & 0xFFFF, blp) for pid, blp in pairs)
            packet = struct.pack("!BBHII", 0x81, 205, 2 + len(pairs), 7, consumer[2]) + fci
            events.append(("rtcp", (consumer[1], packet), now))
        elif kind == "rtcp":
            # 0 here: a generic NACK (RTPFB 1); 2: a receiver report
            fmt = draw(st.sampled_from([1, 4, 15, 0, 2]))
            target = draw(st.sampled_from([c[2] for c in CONSUMERS] + [PUB_SSRC]))
            if fmt == 2:  # a receiver report on this subscriber's consumers
                consumer = draw(st.sampled_from(CONSUMERS))
                lsr = draw(st.sampled_from([0, 0x23456789, draw(st.integers(0, 2**32 - 1))]))
                block = struct.pack("!IIIIII", consumer[2], draw(st.integers(0, 2**32 - 1)),
                                    0, draw(st.integers(0, 2**32 - 1)), lsr,
                                    draw(st.integers(0, 2**20)))
                packet = struct.pack("!BBHI", 0x81, 201, 7, 9) + block
                events.append((kind, (consumer[1], packet), now))
                continue
            if fmt == 0:  # one consumer's, near where its numbering starts: hits, misses
                consumer = draw(st.sampled_from(CONSUMERS))
                entries = b"".join(
                    struct.pack("!HH", (consumer[7] + draw(st.integers(-3, 30))) & 0xFFFF,
                                draw(st.integers(0, 0xFFFF)))
                    for _ in range(draw(st.integers(1, 3))))
                packet = struct.pack("!BBHII", 0x81, 205, 2 + len(entries) // 4, 7,
                                     consumer[2]) + entries
                events.append((kind, (consumer[1], packet), now))
                continue
            elif fmt == 4:
                packet = struct.pack("!BBHII", 0x84, 206, 4, 7, 0) + struct.pack(
                    "!IB3x", target, 1)
            else:
                packet = struct.pack("!BBHII", 0x80 | fmt, 206, 2, 7, target)
            extra = draw(st.sampled_from([b"", struct.pack("!BBHI", 0x80, 201, 1, 7), b"\x80"]))
            endpoint = draw(st.sampled_from([SUB_A, SUB_B]))
            events.append((kind, (endpoint, packet + extra), now))
        else:
            events.append((kind, draw(media_packets(seq, timestamp, source)), now))
    return events


def run(sides: list[Side], keys: dict[int, tuple[bytes, bytes]], profile: str,
        events: list[tuple[str, Any, int]]) -> None:
    publisher, _ = session_pair(profile, keys[PUB][0])
    subscribers = {e: session_pair(profile, keys[e][0])[0] for e in (SUB_A, SUB_B)}
    for kind, data, now in events:
        if kind in ("pause", "resume"):
            for side in sides:
                side.fwd.set_producer_paused(PRODUCER, kind == "pause")
            continue
        if kind == "move":
            for side in sides:
                side.fwd.move_producer(PRODUCER, PUB, data)
            continue
        if kind == "report":  # receiver-report statistics and NACK requests agree too
            reports = [side.fwd.receive_report(PRODUCER, now) for side in sides]
            assert reports[0] == reports[1], reports
            nacks = [side.fwd.nack_due(PRODUCER, now + 10_000) for side in sides]
            assert nacks[0] == nacks[1], nacks
            for consumer, *_ in CONSUMERS:
                heard = [side.fwd.consumer_report(consumer) for side in sides]
                assert heard[0] == heard[1], heard
                if heard[0] is not None and heard[0][3] >= 0:
                    note("subscriber RTT measured")
            if nacks[0]:
                note("NACK requested")
            continue
        if kind == "rtcp":
            endpoint, packet = data
            datagram = subscribers[endpoint].protect_rtcp(packet)
        elif kind == "sr":
            endpoint = PUB
            try:
                datagram = publisher.protect_rtcp(data)
            except (pylibsrtp.Error, ValueError):  # too short for libsrtp: send it raw
                datagram = data
        elif kind == "raw":
            endpoint, datagram = PUB, data
        else:
            endpoint = PUB
            try:
                datagram = publisher.protect(data)
            except (pylibsrtp.Error, ValueError):  # libsrtp will not protect it: send it raw
                datagram = data
            if kind == "truncate":
                datagram = datagram[: len(datagram) // 2]
            elif kind == "tamper" and datagram:
                datagram = datagram[:-1] + bytes([datagram[-1] ^ 0x40])
        statuses = [side.fwd.handle_packet(endpoint, datagram, now) for side in sides]
        assert statuses[0] == statuses[1], (kind, statuses)


def opened(receiver: Any, datagram: bytes) -> bytes | str:
    """The plaintext, or libsrtp's refusal."""
    try:
        result: bytes = (receiver.unprotect_rtcp if packets.is_rtcp(datagram)
                         else receiver.unprotect)(datagram)
    except pylibsrtp.Error as exc:
        return f"refused: {exc}"
    return result


def compare(sides: list[Side], keys: dict[int, tuple[bytes, bytes]], profile: str) -> None:
    twin, fast = sides
    assert fast.fwd.counters() == twin.fwd.counters()
    for endpoint in keys:
        sent_twin = [d for d, _ in twin.captures[endpoint].sent]
        sent_fast = [d for d, _ in fast.captures[endpoint].sent]
        assert sent_fast == sent_twin, f"endpoint {endpoint} got different SRTP"
        # And the plaintext the subscriber sees (the criterion) is the same.
        _, receiver_twin = session_pair(profile, keys[endpoint][1])
        _, receiver_fast = session_pair(profile, keys[endpoint][1])
        # A retransmission is the same SRTP bytes again: decrypt each packet once.
        unique = list(dict.fromkeys(zip(sent_twin, sent_fast, strict=True)))
        for a, b in unique:
            # A publisher jumping its numbering by more than half the range can make two
            # different packets share a forwarded sequence number; the subscriber's
            # libsrtp then rejects the second as a replay. Same outcome both sides.
            assert opened(receiver_fast, b) == opened(receiver_twin, a)
    for name in ("retransmitted", "nack_too_soon", "nack_budget_exceeded",
                 "nack_out_of_history", "retransmit_missed"):
        if twin.fwd.counters()[name]:
            note(f"NACK outcome: {name}")
    for consumer, *_ in CONSUMERS:
        assert fast.fwd.consumer_stats(consumer) == twin.fwd.consumer_stats(consumer)
        assert fast.fwd.consumer_started(consumer) == twin.fwd.consumer_started(consumer)


@pytest.mark.parametrize("profile", sorted(PROFILES))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=scenarios())
def test_cython_matches_twin(profile: str, events: list[tuple[str, Any, int]]) -> None:
    key_length = PROFILES[profile][1]
    keys = {e: (os.urandom(key_length), os.urandom(key_length)) for e in (PUB, SUB_A, SUB_B)}
    sides = [build(impl, keys, profile) for impl in (_fastpath_fallback.Forwarder,
                                                    _fastpath.Forwarder)]
    run(sides, keys, profile, events)
    compare(sides, keys, profile)


def test_a_nack_flood_is_answered_alike() -> None:
    """The issue's attack on both forwarders: 200 packets/s published for 4 s; from the
    second second on, subscriber A sends 100 NACKs/s of 335 entries (mostly a recent
    sequence number, all 0xFFFF) on consumer 20 and its receiver reports give a round trip. Same
    bytes out, same counters, and every outcome of a NACK entry happens."""
    profile = "AEAD_AES_128_GCM"
    key_length = PROFILES[profile][1]
    keys = {e: (os.urandom(key_length), os.urandom(key_length)) for e in (PUB, SUB_A, SUB_B)}
    sides = [build(impl, keys, profile) for impl in (_fastpath_fallback.Forwarder,
                                                    _fastpath.Forwarder)]
    _, _, ssrc, *_, seq_base, _ = CONSUMERS[0]
    events: list[tuple[str, Any, int]] = []
    for i in range(800):
        now = 1_000_000 + 5_000 * i
        events.append(("media", rtp_packet(seq=(40000 + i) & 0xFFFF, timestamp=3000 * (i // 6),
                                           ssrc=PUB_SSRC, payload_type=96,
                                           payload=(VP8_KEY if i == 0 else VP8_DELTA)
                                           + bytes(i % 900)), now))
        if i % 100 == 50:  # an SR, and the subscriber's report on it 40 ms later
            sr = struct.pack("!BBHI", 0x80, 200, 6, PUB_SSRC) + bytes.fromhex(
                "0001234567890000") + bytes(12)
            events.append(("sr", sr, now))
            block = struct.pack("!IIIIII", ssrc, 0, 0, 0, 0x23456789, 65536 // 100)
            events.append(("rtcp", (SUB_A, struct.pack("!BBHI", 0x81, 201, 7, 9) + block),
                           now + 40_000))
        if i >= 200 and i % 2 == 0:  # every 10 ms: asks for 5,695 packets
            highest = seq_base + i
            # The last five entries reach back past the history.
            fci = b"".join(struct.pack("!HH", (highest - 16 - 17 * (k % 30 if k < 330 else k))
                                       & 0xFFFF, 0xFFFF) for k in range(335))
            nack = struct.pack("!BBHII", 0x81, 205, 2 + 335, 7, ssrc) + fci
            events.append(("rtcp", (SUB_A, nack), now))
    events.sort(key=lambda e: e[2])
    run(sides, keys, profile, events)
    compare(sides, keys, profile)
    counters = sides[0].fwd.counters()
    assert counters["nack_in"] == 300
    assert all(counters[name] for name in ("retransmitted", "nack_too_soon",
                                           "nack_budget_exceeded", "nack_out_of_history"))
    # 3 s of flood: at most a full bucket plus three seconds' refill.
    budget = max(retransmit.RETRANSMIT_MIN_PACKETS_PER_S,
                 200 * retransmit.RETRANSMIT_SHARE_PERCENT // 100)
    assert counters["retransmitted"] <= budget * (1 + 3)


def test_cython_sends_from_c_on_a_real_socket() -> None:
    """With an fd the Cython path calls sendto(2) itself; the twin sends through Python.
    Both reach a real UDP socket with the same bytes."""
    profile = "AEAD_AES_128_GCM"
    key_length = PROFILES[profile][1]
    keys = {e: (os.urandom(key_length), os.urandom(key_length)) for e in (PUB, SUB_A, SUB_B)}
    received: list[list[bytes]] = []

    def sendto_of(sock: socket.socket) -> Any:
        return lambda data, addr: sock.sendto(data, addr)

    for impl in (_fastpath_fallback.Forwarder, _fastpath.Forwarder):
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.bind(("127.0.0.1", 0))
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        sink.settimeout(2)
        fwd = impl(200_000)
        for endpoint, (rx_key, tx_key) in keys.items():
            _, rx = session_pair(profile, rx_key)
            tx, _ = session_pair(profile, tx_key)
            fwd.add_endpoint(endpoint, rx, tx, sendto_of(sender), sender.fileno(),
                             sink.getsockname())
        fwd.add_producer(PRODUCER, PUB, PUB_SSRC, rtp.CODEC_OPUS)
        fwd.add_consumer(20, PRODUCER, SUB_A, 0xA1, False, {96: 111}, {1: 3}, b"0", 3, 0, 7, 9)
        publisher, _ = session_pair(profile, keys[PUB][0])
        for i in range(50):
            ext = rtp.write_extensions([(1, b"x")])
            packet = rtp_packet(seq=(65510 + i) & 0xFFFF, timestamp=960 * i, ssrc=PUB_SSRC,
                                payload=bytes([i]) * 100, extensions=ext)
            assert fwd.handle_packet(PUB, publisher.protect(packet), i * 20_000) == rtp.OK
        received.append([sink.recv(2048) for _ in range(50)])
        sender.close()
        sink.close()
    assert received[0] == received[1]
    _, receiver = session_pair(profile, keys[SUB_A][1])
    seqs = [struct.unpack_from("!H", receiver.unprotect(p), 2)[0] for p in received[1]]
    assert seqs == list(range(7, 57))
