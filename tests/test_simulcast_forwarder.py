"""Simulcast and transport-wide congestion control in the forwarder: both
implementations, and the Cython one against its twin on the same packets.

A publisher's three layers are three producers; two are named by RID and learn their
SSRC from their first packet. Consumers switch layers at keyframes, pause and resume,
and stamp transport-wide sequence numbers that retransmissions and probes renew.
Hypothesis drives the differential test over layer switches, losses, reordering,
pauses, NACKs, feedback and probes.
"""

from __future__ import annotations

import itertools
import os
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sfu import _fastpath_fallback, rtp
from sfu.fastpath import cython_unavailable_reason
from tests.srtp_helpers import Capture, implementations, rtp_packet, session_pair

PUB, SUB_A, SUB_B = 1, 2, 3
LAYERS = [10, 11, 12]  # low, middle, high
LAYER_SSRCS = [0x51000001, 0x51000002, 0x51000003]
RIDS = [b"q", b"h", b"f"]
RID_ID, MID_ID = 4, 1
# consumer, endpoint, ssrc, twcc id (200: the two-byte form), starting layer
CONSUMERS = [(20, SUB_A, 0xA1, 5, 0), (21, SUB_A, 0xA2, 200, 2), (22, SUB_B, 0xB1, 0, 1)]
PROFILE = "AEAD_AES_128_GCM"
VP8_KEY = b"\x10\x00\x00\x00\x9d\x01\x2a\x40\x01\xf0\x00"  # a 320x240 keyframe
VP8_DELTA = b"\x10\x01\x00"


class Side:
    def __init__(self, impl: Any, keys: dict[int, tuple[bytes, bytes]]) -> None:
        self.fwd = impl(200_000)
        self.captures: dict[int, Capture] = {}
        self.feedback: list[tuple[int, bytes]] = []
        for endpoint, (rx_key, tx_key) in keys.items():
            _, rx = session_pair(PROFILE, rx_key)
            tx, _ = session_pair(PROFILE, tx_key)
            self.captures[endpoint] = Capture()
            self.fwd.add_endpoint(endpoint, rx, tx, self.captures[endpoint], -1,
                                  ("127.0.0.1", 6000 + endpoint))
        for layer, producer in enumerate(LAYERS):
            # The low and middle layers are named by RID only; the high one by SSRC too.
            ssrc = LAYER_SSRCS[layer] if layer == 2 else 0
            self.fwd.add_producer(producer, PUB, ssrc, rtp.CODEC_VP8, RIDS[layer], RID_ID,
                                  b"v0", MID_ID)
        for consumer, endpoint, ssrc, twcc_id, layer in CONSUMERS:
            self.fwd.add_consumer(consumer, LAYERS[layer], endpoint, ssrc, True, {96: 100},
                                  {MID_ID: 3}, b"m", 3, 0, 1000 * consumer, 7, twcc_id)
        self.fwd.set_feedback_listener(lambda ep, packet: self.feedback.append((ep, packet)))


def keys() -> dict[int, tuple[bytes, bytes]]:
    return {e: (os.urandom(28), os.urandom(28)) for e in (PUB, SUB_A, SUB_B)}


def layer_packet(layer: int, seq: int, timestamp: int, key: bool, named: bool = True,
                 size: int = 100, marker: bool = False) -> bytes:
    elements = [(MID_ID, b"v0"), (RID_ID, RIDS[layer])] if named else []
    return rtp_packet(seq=seq & 0xFFFF, timestamp=timestamp & 0xFFFFFFFF,
                      ssrc=LAYER_SSRCS[layer], payload=(VP8_KEY if key else VP8_DELTA)
                      + bytes(size), extensions=rtp.write_extensions(elements), marker=marker)


def twcc_feedback(media_ssrc: int, base: int, count: int) -> bytes:
    """A transport-wide feedback packet's header and a run-length chunk (enough for the
    forwarder, which hands it on whole)."""
    return struct.pack("!BBHIIHHIHH", 0x8F, 205, 5, 9, media_ssrc, base & 0xFFFF, count,
                       0, 0x2000 | count, 0)


# -- the differential test ----------------------------------------------------------------

@st.composite
def scenarios(draw: st.DrawFn) -> list[tuple[str, Any, int]]:
    seqs = [draw(st.integers(0, 0xFFFF)) for _ in LAYERS]
    stamps = [draw(st.integers(0, 2**32 - 1)) for _ in LAYERS]
    now = draw(st.integers(0, 2**40))
    events: list[tuple[str, Any, int]] = []
    for _ in range(draw(st.integers(1, 60))):
        now += draw(st.sampled_from([0, 1_000, 20_000, 300_000]))
        kind = draw(st.sampled_from(["media"] * 8 + [
            "switch", "switch", "pause", "resume", "nack", "feedback", "probe", "sent",
            "raw"]))
        if kind == "media":
            layer = draw(st.integers(0, 2))
            seqs[layer] += draw(st.sampled_from([1, 1, 1, 2, 0, -2, 900]))
            stamps[layer] += draw(st.sampled_from([0, 3000, 3000, 90000]))
            events.append((kind, layer_packet(
                layer, seqs[layer], stamps[layer], draw(st.booleans()),
                named=draw(st.sampled_from([True, True, False])),
                size=draw(st.sampled_from([10, 300, 1200])), marker=draw(st.booleans())), now))
        elif kind in ("switch", "pause", "resume", "probe"):
            arg = draw(st.integers(0, 2)) if kind == "switch" else draw(st.integers(0, 40))
            events.append((kind, (draw(st.sampled_from(CONSUMERS))[0], arg), now))
        elif kind == "nack":
            nacked = draw(st.sampled_from(CONSUMERS))
            pid = (1000 * nacked[0] + draw(st.integers(-2, 60))) & 0xFFFF
            packet = struct.pack("!BBHIIHH", 0x81, 205, 3, 9, nacked[2], pid,
                                 draw(st.integers(0, 0xFFFF)))
            events.append(("rtcp", (nacked[1], packet), now))
        elif kind == "feedback":
            fed = draw(st.sampled_from(CONSUMERS))
            events.append(("rtcp", (fed[1], twcc_feedback(
                fed[2], draw(st.integers(0, 80)), draw(st.integers(1, 40)))), now))
        elif kind == "sent":
            events.append((kind, (draw(st.sampled_from([SUB_A, SUB_B])),
                                  draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 90))), now))
        else:
            events.append((kind, draw(st.binary(max_size=200)), now))
    return events


def run(sides: list[Side], keys: dict[int, tuple[bytes, bytes]],
        events: list[tuple[str, Any, int]]) -> None:
    publisher, _ = session_pair(PROFILE, keys[PUB][0])
    subscribers = {e: session_pair(PROFILE, keys[e][0])[0] for e in (SUB_A, SUB_B)}
    for kind, data, now in events:
        if kind == "switch":
            for side in sides:
                side.fwd.set_consumer_source(data[0], LAYERS[data[1]])
        elif kind in ("pause", "resume"):
            for side in sides:
                side.fwd.set_consumer_paused(data[0], kind == "pause")
        elif kind == "probe":
            sent = [side.fwd.probe(data[0], data[1], now) for side in sides]
            assert sent[0] == sent[1]
        elif kind == "sent":
            records = [side.fwd.sent_packets(*data) for side in sides]
            assert records[0] == records[1]
        else:
            if kind == "rtcp":
                endpoint, datagram = data[0], subscribers[data[0]].protect_rtcp(data[1])
            elif kind == "raw":
                endpoint, datagram = PUB, data
            else:
                endpoint, datagram = PUB, publisher.protect(data)
            statuses = [side.fwd.handle_packet(endpoint, datagram, now) for side in sides]
            assert statuses[0] == statuses[1], (kind, statuses)
        for consumer, *_ in CONSUMERS:
            sources = [side.fwd.consumer_source(consumer) for side in sides]
            assert sources[0] == sources[1]


@pytest.mark.skipif(cython_unavailable_reason() is not None, reason="no Cython forwarder")
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=scenarios())
def test_cython_matches_twin_over_layer_switches(events: list[tuple[str, Any, int]]) -> None:
    from sfu import _fastpath

    k = keys()
    sides = [Side(impl, k) for impl in (_fastpath_fallback.Forwarder, _fastpath.Forwarder)]
    run(sides, k, events)
    twin, fast = sides
    assert fast.fwd.counters() == twin.fwd.counters()
    for endpoint in k:
        assert fast.captures[endpoint].sent == twin.captures[endpoint].sent, endpoint
    assert fast.feedback == twin.feedback
    for producer in LAYERS:
        assert fast.fwd.producer_stats(producer) == twin.fwd.producer_stats(producer)


# -- what a subscriber sees ---------------------------------------------------------------

def opened(side: Side, k: dict[int, tuple[bytes, bytes]], endpoint: int) -> list[bytes]:
    """The RTP an endpoint was sent, in plain; a fresh receiver each, since resent
    packets repeat an SRTP index (a subscriber's replay check drops the copy)."""
    return [session_pair(PROFILE, k[endpoint][1])[1].unprotect(d)
            for d, _ in side.captures[endpoint].sent if not 192 <= d[1] <= 223]


def of_consumer(packets: list[bytes], ssrc: int) -> list[bytes]:
    return [p for p in packets if struct.unpack_from("!I", p, 8)[0] == ssrc]


def publish_frames(side: Side, publisher: Any, frames: range, now: int,
                   key_at: dict[int, set[int]] | None = None) -> int:
    """Every layer sends frames (two packets each) at 30/s; ``key_at[layer]`` are the
    frames that layer starts with a keyframe. Returns the time after the last."""
    for frame in frames:
        for layer in range(3):
            key = frame in (key_at or {}).get(layer, {0})
            for part in range(2):
                packet = layer_packet(layer, 2 * frame + part, 3000 * frame + 777 * layer,
                                      key and part == 0, size=100 * (layer + 1),
                                      marker=part == 1)
                assert side.fwd.handle_packet(PUB, publisher.protect(packet), now) == rtp.OK
        now += 33_333
    return now


@pytest.mark.parametrize("impl", implementations())
def test_layers_named_by_rid_learn_their_ssrc(impl: Any) -> None:
    k = keys()
    side = Side(impl, k)
    publisher, _ = session_pair(PROFILE, k[PUB][0])
    assert side.fwd.producer_stats(LAYERS[0])[0] == 0
    # Unnamed packets of an unknown SSRC are dropped; the first named one binds it.
    unnamed = layer_packet(0, 1, 0, True, named=False)
    assert side.fwd.handle_packet(PUB, publisher.protect(unnamed), 0) == rtp.DROP_UNKNOWN_SSRC
    wrong_mid = rtp_packet(seq=2, timestamp=0, ssrc=LAYER_SSRCS[0], extensions=rtp.write_extensions(
        [(MID_ID, b"v9"), (RID_ID, b"q")]))
    assert side.fwd.handle_packet(PUB, publisher.protect(wrong_mid), 0) == rtp.DROP_UNKNOWN_SSRC
    assert side.fwd.handle_packet(PUB, publisher.protect(layer_packet(0, 3, 0, True)), 0) == rtp.OK
    assert side.fwd.producer_stats(LAYERS[0])[0] == LAYER_SSRCS[0]
    # From then on the SSRC alone is enough (browsers stop sending RID once acknowledged).
    later = layer_packet(0, 4, 3000, False, named=False)
    assert side.fwd.handle_packet(PUB, publisher.protect(later), 1) == rtp.OK
    _, packets, _, width, height = side.fwd.producer_stats(LAYERS[0])
    assert (packets, width, height) == (2, 320, 240)
    assert side.fwd.counters()["rid_bound"] == 1
    assert side.fwd.receive_report(LAYERS[1], 0) is None  # not bound yet: nothing to report


@pytest.mark.parametrize("impl", implementations())
def test_a_switch_waits_for_a_keyframe_and_keeps_numbering_continuous(impl: Any) -> None:
    k = keys()
    side = Side(impl, k)
    publisher, _ = session_pair(PROFILE, k[PUB][0])
    now = publish_frames(side, publisher, range(0, 10), 1_000_000)
    side.fwd.set_consumer_source(20, LAYERS[2])  # low → high
    assert side.fwd.consumer_source(20) == (LAYERS[0], LAYERS[2])
    plis_before = len([d for d, _ in side.captures[PUB].sent])
    # No keyframe of the high layer for ten frames: the low layer keeps flowing, and the
    # high layer's encoder is asked for a keyframe.
    now = publish_frames(side, publisher, range(10, 20), now, {2: set()})
    assert side.fwd.consumer_source(20) == (LAYERS[0], LAYERS[2])
    assert len([d for d, _ in side.captures[PUB].sent]) > plis_before
    now = publish_frames(side, publisher, range(20, 30), now, {2: {25}})
    assert side.fwd.consumer_source(20) == (LAYERS[2], -1)
    received = of_consumer(opened(side, k, SUB_A), 0xA1)
    seqs = [struct.unpack_from("!H", p, 2)[0] for p in received]
    stamps = [struct.unpack_from("!I", p, 4)[0] for p in received]
    # Continuous numbering from the first packet on, with no gap at the switch.
    assert seqs == [(20_000 + i) & 0xFFFF for i in range(len(seqs))]
    # Timestamps never go back, and at the switch they move on by the time since the
    # last packet sent (the same instant here: one tick), never by the layers' offset.
    switch = next(i for i, p in enumerate(received) if len(p) > 300)
    assert all((b - a) & 0xFFFFFFFF < 2**31 for a, b in itertools.pairwise(stamps))
    assert (stamps[switch] - stamps[switch - 1]) & 0xFFFFFFFF == 1
    assert received[switch][-300 - len(VP8_KEY):].startswith(VP8_KEY)  # a keyframe first
    # 2 packets per frame: frames 0–25 low (52 packets: the low layer's frame 25 came
    # first), then the high layer's frames 25–29.
    assert len(received) == 52 + 10
    assert side.fwd.counters()["layer_switches"] == 1


@pytest.mark.parametrize("impl", implementations())
def test_a_paused_consumer_gets_nothing_and_resumes_at_a_keyframe(impl: Any) -> None:
    k = keys()
    side = Side(impl, k)
    publisher, _ = session_pair(PROFILE, k[PUB][0])
    now = publish_frames(side, publisher, range(0, 5), 0)
    side.fwd.set_consumer_paused(22, True)
    count = len(of_consumer(opened(side, k, SUB_B), 0xB1))
    now = publish_frames(side, publisher, range(5, 15), now)
    assert len(of_consumer(opened(side, k, SUB_B), 0xB1)) == count
    side.fwd.set_consumer_paused(22, False)
    now = publish_frames(side, publisher, range(15, 20), now, {1: {18}})
    received = of_consumer(opened(side, k, SUB_B), 0xB1)
    resumed = received[count:]
    assert len(resumed) == 4  # frames 18 and 19
    assert resumed[0][-200 - len(VP8_KEY):].startswith(VP8_KEY)
    seqs = [struct.unpack_from("!H", p, 2)[0] for p in received]
    assert seqs == [(22_000 + i) & 0xFFFF for i in range(len(seqs))]
    assert side.fwd.counters()["skip_consumer_paused"] > 0


@pytest.mark.parametrize("impl", implementations())
def test_transport_wide_numbers_feedback_and_probes(impl: Any) -> None:
    k = keys()
    side = Side(impl, k)
    publisher, _ = session_pair(PROFILE, k[PUB][0])
    publish_frames(side, publisher, range(0, 3), 5_000)
    # SUB_A's two consumers share one transport-wide numbering: 0, 1, 2, ... in send order.
    packets = opened(side, k, SUB_A)
    numbers = [struct.unpack_from("!H", p, rtp.twcc_value_offset(p))[0] for p in packets]
    assert numbers == list(range(len(packets))) and len(packets) == 12
    # The two-byte form for id 200, the one-byte form for id 5.
    assert {struct.unpack_from("!H", p, 12)[0] for p in packets} == {0xBEDE, 0x1000}
    records = side.fwd.sent_packets(SUB_A, 0, 14)
    assert [r[0] for r in records[:12] if r] == list(range(12)) and records[12:] == [None, None]
    assert all(r[2] == len(d) for r, (d, _) in zip(records, side.captures[SUB_A].sent,
                                                    strict=False) if r)
    # A NACKed packet goes again under a new number.
    subscriber, _ = session_pair(PROFILE, k[SUB_A][0])
    nack = struct.pack("!BBHIIHH", 0x81, 205, 3, 9, 0xA1, 20_000, 0)
    side.fwd.handle_packet(SUB_A, subscriber.protect_rtcp(nack), 200_000)
    again = opened(side, k, SUB_A)[-1]
    assert struct.unpack_from("!H", again, rtp.twcc_value_offset(again))[0] == 12
    assert struct.unpack_from("!H", again, 2)[0] == 20_000
    # Feedback reaches the listener whole; a probe resends the latest packets.
    feedback = twcc_feedback(0xA1, 0, 13)
    side.fwd.handle_packet(SUB_A, subscriber.protect_rtcp(feedback), 210_000)
    assert side.feedback == [(SUB_A, feedback)]
    # A probe: padding-only packets under the next sequence and transport-wide numbers,
    # the media numbering on after them.
    assert side.fwd.probe(20, 4, 220_000) > 0
    assert side.fwd.counters()["probe_packets"] == 4
    probed = opened(side, k, SUB_A)[-4:]
    assert [struct.unpack_from("!H", p, rtp.twcc_value_offset(p))[0] for p in probed] == [
        13, 14, 15, 16]
    assert all(p[0] & 0x20 and p[-1] == len(p) - 20 == rtp.PROBE_PADDING for p in probed)
    before = [struct.unpack_from("!H", p, 2)[0] for p in of_consumer(packets, 0xA1)]
    assert [struct.unpack_from("!H", p, 2)[0] for p in probed] == [
        (before[-1] + i) & 0xFFFF for i in range(1, 5)]
    publish_frames(side, publisher, range(3, 4), 240_000)
    after = of_consumer(opened(side, k, SUB_A), 0xA1)[-2:]
    assert [struct.unpack_from("!H", p, 2)[0] for p in after] == [
        (before[-1] + i) & 0xFFFF for i in range(5, 7)]
    # No transport-wide numbers (consumer 22): nothing to probe with.
    assert side.fwd.probe(22, 4, 250_000) == 0
    # In the middle of a frame (its last packet had no marker): it waits.
    subscriber_packet = layer_packet(0, 1000, 999_000, False, size=10)  # marker off
    side.fwd.handle_packet(PUB, publisher.protect(subscriber_packet), 260_000)
    assert side.fwd.probe(20, 4, 270_000) == 0
    # A listener that raises is counted, not propagated.
    side.fwd.set_feedback_listener(lambda ep, packet: 1 / 0)
    side.fwd.handle_packet(SUB_A, subscriber.protect_rtcp(feedback), 230_000)
    assert side.fwd.counters()["feedback_listener_errors"] == 1


@pytest.mark.parametrize("impl", implementations())
def test_switching_needs_the_same_codec_and_known_ids(impl: Any) -> None:
    fwd = impl(200_000)
    fwd.add_producer(1, PUB, 0x1, rtp.CODEC_VP8)
    fwd.add_producer(2, PUB, 0x2, rtp.CODEC_H264)
    fwd.add_consumer(3, 1, SUB_A, 0x3, True, {96: 96}, {}, b"m", 0, 0, 0, 0)
    with pytest.raises(ValueError):
        fwd.set_consumer_source(3, 2)
    with pytest.raises(ValueError):
        fwd.set_consumer_source(3, 99)
    with pytest.raises(ValueError):
        fwd.add_producer(4, PUB, 0, rtp.CODEC_VP8, b"q", 0)  # a RID without its id
    with pytest.raises(ValueError):
        fwd.add_consumer(5, 1, SUB_A, 0x5, True, {96: 96}, {1: 7}, b"m", 0, 0, 0, 0, 7)
    # Not started yet: nothing is on screen, so the switch is at once.
    fwd.add_producer(6, PUB, 0x6, rtp.CODEC_VP8)
    fwd.set_consumer_source(3, 6)
    assert fwd.consumer_source(3) == (6, -1)


@pytest.mark.parametrize("impl", implementations())
def test_removing_the_target_layer_leaves_the_consumer_where_it_was(impl: Any) -> None:
    k = keys()
    side = Side(impl, k)
    publisher, _ = session_pair(PROFILE, k[PUB][0])
    publish_frames(side, publisher, range(0, 3), 0)
    side.fwd.set_consumer_source(20, LAYERS[1])
    side.fwd.remove_producer(LAYERS[1])
    assert side.fwd.consumer_source(20) == (LAYERS[0], -1)
    side.fwd.set_consumer_source(21, LAYERS[0])
    side.fwd.remove_consumer(21)
    assert side.fwd.producer_stats(LAYERS[0]) is not None
