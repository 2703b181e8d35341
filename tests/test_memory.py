"""A long run through the forwarder does not grow memory with the packet count."""

from __future__ import annotations

import socket
import tracemalloc
from typing import Any

import pytest

from sfu import rtp
from tests.srtp_helpers import implementations, rtp_packet, session_pair

PACKETS = 200_000
SUBSCRIBERS = 3


@pytest.mark.parametrize("impl", implementations())
def test_memory_stays_flat_over_200k_packets(impl: Any) -> None:
    publisher, rx = session_pair("AEAD_AES_128_GCM")
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)  # nobody reads it: the kernel drops what overflows
    fwd = impl(500_000)
    fwd.add_endpoint(1, rx, session_pair("AEAD_AES_128_GCM")[0], sender.sendto, sender.fileno(),
                     sink.getsockname())
    fwd.add_producer(10, 1, 0x1234, rtp.CODEC_OPUS)
    for i in range(SUBSCRIBERS):
        tx, _ = session_pair("AEAD_AES_128_GCM")
        fwd.add_endpoint(2 + i, session_pair()[1], tx, sender.sendto, sender.fileno(),
                         sink.getsockname())
        fwd.add_consumer(20 + i, 10, 2 + i, 0x5000 + i, False, {111: 111}, {1: 1}, b"1", 1, 0,
                         i, i)
    ext = rtp.write_extensions([(1, b"0")])
    # Protected up front, so the measured loop is the forwarder's work only.
    datagrams = [
        publisher.protect(rtp_packet(seq=i & 0xFFFF, timestamp=960 * i & 0xFFFFFFFF,
                                     ssrc=0x1234, payload_type=111, payload=bytes(120),
                                     extensions=ext))
        for i in range(PACKETS)
    ]
    half = PACKETS // 2
    tracemalloc.start()
    for i in range(1000):  # warm up caches and free lists
        fwd.handle_packet(1, datagrams[i], i * 20_000)
    first = tracemalloc.take_snapshot()
    for i in range(1000, half):
        fwd.handle_packet(1, datagrams[i], i * 20_000)
    middle = tracemalloc.take_snapshot()
    for i in range(half, PACKETS):
        fwd.handle_packet(1, datagrams[i], i * 20_000)
    last = tracemalloc.take_snapshot()
    tracemalloc.stop()

    def growth(a: tracemalloc.Snapshot, b: tracemalloc.Snapshot) -> tuple[int, int]:
        stats = b.compare_to(a, "filename")
        return sum(s.size_diff for s in stats), sum(s.count_diff for s in stats)

    bytes_1, blocks_1 = growth(first, middle)
    bytes_2, blocks_2 = growth(middle, last)
    counters = fwd.counters()
    print(f"{fwd.implementation}: {counters['sent']} packets sent; traced memory growth "
          f"{bytes_1} B / {blocks_1} blocks over the first half, {bytes_2} B / {blocks_2} "
          f"blocks over the second")
    assert counters["sent"] == SUBSCRIBERS * PACKETS - counters["send_error"]
    assert counters["accepted"] == PACKETS
    # Flat: no growth proportional to ~100k packets (a leak of even one small object
    # per packet would show as >= 100k blocks). Allow tracemalloc's own noise.
    assert blocks_1 < 200 and blocks_2 < 200
    assert bytes_1 < 64 * 1024 and bytes_2 < 64 * 1024
    sender.close()
    sink.close()
