"""A long run through each forwarder does not grow the process's memory with the
packet count.

What is measured is the resident set size of a fresh Python process that does
nothing but drive one forwarder: this module run as a script (``python -m
tests.test_memory python|cython``), which prints its figures as JSON. RSS sees what
tracemalloc cannot: the Cython forwarder's calloc'd retransmission history and
libsrtp's allocations, as well as Python objects.

The traffic is a call's: a publisher's video (VP8, a keyframe every 50 frames, 3
packets a frame) and audio (Opus), each forwarded to three subscribers, 20 ms of
media a tick. The forwarder's other per-packet and timer paths run too: 1 % of the
video is lost on the way in and asked for (``nack_due``, NACK sent to the
publisher), every tick a subscriber NACKs a packet it was sent, which is answered
from its history; once a second the publisher sends sender reports (translated to
every subscriber) and gets receive reports.

The warm-up fills every video consumer's history (512 packets) several times over
and lets the allocators settle; after it, each of the next phases of
PHASE_TICKS ticks must leave RSS where it was, within GROWTH_BOUND.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sfu import rtp
from sfu.fastpath import cython_unavailable_reason
from sfu.rtcp import packets
from tests.srtp_helpers import rtp_packet, session_pair

ROOT = Path(__file__).resolve().parents[1]
SUBSCRIBERS = 3
TICK_US = 20_000
VIDEO_PACKETS_PER_TICK = 3
WARMUP_TICKS = 3_000  # 9,000 video packets: each history (512) filled ~17 times
PHASE_TICKS = 15_000  # 60,000 incoming and 180,000 outgoing packets a phase
PHASES = 2
GROWTH_BOUND = 1 << 20  # bytes of RSS a phase may add (see the test)

VIDEO, AUDIO = 10, 11  # producer ids
VIDEO_SSRC, AUDIO_SSRC = 0x1111, 0x2222
VP8_KEY = b"\x10\x00\x00\x9d\x01\x2a"  # descriptor with S=1, then P=0: a keyframe starts
VP8_DELTA = b"\x10\x01"  # P=1: an interframe


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def new_forwarder(implementation: str) -> Any:
    if implementation == "cython":
        from sfu import _fastpath

        return _fastpath.Forwarder(500_000)
    from sfu import _fastpath_fallback

    return _fastpath_fallback.Forwarder(500_000)


def drive(implementation: str) -> dict[str, Any]:
    """Forward a call's media through one forwarder; RSS after the warm-up and after
    each phase, and the forwarder's counters."""
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))  # nobody reads it: the kernel drops what overflows
    fwd = new_forwarder(implementation)

    def endpoint(endpoint_id: int) -> Any:
        """Register an endpoint; return the session that protects what it sends us."""
        from_peer, rx = session_pair("AEAD_AES_128_GCM")
        fwd.add_endpoint(endpoint_id, rx, session_pair("AEAD_AES_128_GCM")[0],
                         sender.sendto, sender.fileno(), sink.getsockname())
        return from_peer

    publisher = endpoint(1)
    fwd.add_producer(VIDEO, 1, VIDEO_SSRC, rtp.CODEC_VP8)
    fwd.add_producer(AUDIO, 1, AUDIO_SSRC, rtp.CODEC_OPUS)
    subscribers = []
    for i in range(SUBSCRIBERS):
        subscribers.append(endpoint(2 + i))
        fwd.add_consumer(20 + i, VIDEO, 2 + i, 0x5000 + i, True, {96: 96}, {1: 1}, b"1", 1,
                         0, 0, 0)
        fwd.add_consumer(30 + i, AUDIO, 2 + i, 0x6000 + i, False, {111: 111}, {1: 1}, b"2",
                         1, 0, 0, 0)
    ext = rtp.write_extensions([(1, b"0")])
    video_payloads = (VP8_KEY + bytes(1000), VP8_DELTA + bytes(1000))

    def tick(t: int) -> None:
        now = t * TICK_US
        for k in range(VIDEO_PACKETS_PER_TICK):
            seq = (VIDEO_PACKETS_PER_TICK * t + k) & 0xFFFF
            if seq % 101 == 50:
                continue  # lost on the way in
            payload = video_payloads[k > 0 or t % 50 != 0]
            fwd.handle_packet(1, publisher.protect(rtp_packet(
                seq=seq, timestamp=3000 * t & 0xFFFFFFFF, ssrc=VIDEO_SSRC, payload_type=96,
                marker=k == VIDEO_PACKETS_PER_TICK - 1, payload=payload, extensions=ext)),
                now)
        fwd.handle_packet(1, publisher.protect(rtp_packet(
            seq=t & 0xFFFF, timestamp=960 * t & 0xFFFFFFFF, ssrc=AUDIO_SSRC,
            payload_type=111, payload=bytes(120), extensions=ext)), now)
        lost = fwd.nack_due(VIDEO, now)
        if lost:
            fwd.send_rtcp(1, packets.build_nack(packets.SFU_RTCP_SSRC, VIDEO_SSRC, lost))
        # A subscriber asks again for a packet it was sent 5 ticks ago (the consumers
        # number from 0 at the first packet, so their sequence numbers are ours).
        i = t % SUBSCRIBERS
        if t >= 5:
            asked = VIDEO_PACKETS_PER_TICK * (t - 5) & 0xFFFF
            fwd.handle_packet(2 + i, subscribers[i].protect_rtcp(
                packets.build_nack(0x7000 + i, 0x5000 + i, [asked])), now)
        if t % 50 == 0:
            for producer, ssrc, rate in ((VIDEO, VIDEO_SSRC, 90_000),
                                         (AUDIO, AUDIO_SSRC, 48_000)):
                sr = struct.pack("!BBHI", 0x80, packets.RTCP_SR, 6, ssrc) + struct.pack(
                    "!IIIII", t, 0, rtp.to_rtp_units(now, rate) & 0xFFFFFFFF, t, t)
                fwd.handle_packet(1, publisher.protect_rtcp(sr), now)
                fwd.receive_report(producer, now)

    rss = []
    start = 0
    for ticks in (WARMUP_TICKS, *[PHASE_TICKS] * PHASES):
        for t in range(start, start + ticks):
            tick(t)
        start += ticks
        gc.collect()
        rss.append(rss_bytes())
    sender.close()
    sink.close()
    return {"implementation": fwd.implementation, "rss": rss, "counters": fwd.counters()}


def implementations() -> list[Any]:
    reason = cython_unavailable_reason()
    return ["python", pytest.param("cython", marks=pytest.mark.skipif(
        reason is not None, reason=reason or ""))]


@pytest.mark.parametrize("implementation", implementations())
def test_rss_stays_flat_forwarding_video_and_audio(implementation: str) -> None:
    result = subprocess.run([sys.executable, "-m", "tests.test_memory", implementation],
                            cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    rss, counters = figures["rss"], figures["counters"]
    growth = [b - a for a, b in itertools.pairwise(rss)]
    print(f"\n{figures['implementation']}: RSS after warm-up {rss[0] / 2**20:.1f} MiB, "
          f"then growth per phase of {PHASE_TICKS} ticks: "
          + ", ".join(f"{g / 1024:+.0f} KiB" for g in growth)
          + f"; {counters['sent']} sent, {counters['retransmitted']} retransmitted, "
          f"{counters['nack_requested']} NACKed to the publisher")
    assert figures["implementation"] == implementation
    # The traffic went where it should: every consumer started and forwarded, the
    # histories answered NACKs, the lost packets were asked for.
    ticks = WARMUP_TICKS + PHASES * PHASE_TICKS
    assert counters["sent"] + counters["send_error"] >= SUBSCRIBERS * ticks * 3
    assert counters["retransmitted"] > ticks // 2
    assert counters["nack_requested"] > 0
    # Flat after the warm-up. Measured on a 2-core machine: +0 KiB in every phase, both
    # forwarders, over 10 runs. A leak of one small object per forwarded packet is
    # 180,000 allocations a phase, several MiB: with 16 bytes malloc'd and never freed
    # per packet in the Cython forwarder RSS grew 5.6 MiB a phase, with an int kept per
    # packet in the twin 7 MiB.
    assert all(g < GROWTH_BOUND for g in growth), growth


if __name__ == "__main__":
    print(json.dumps(drive(sys.argv[1])))
