"""The floor at room rates: what any forwarder pays per packet for a `sfu bench` room.

    python -m sfu_bench.roomfloor [--scenario 2x2] [--seconds 20] [--rate 1] [--json PATH]

A process runs ``_fastpath.floor_relay``: one UDP socket read with one blocking
``recvmmsg`` per wake-up, and per datagram one libsrtp unprotect and, per subscriber,
a copy and a protect, all sent with one ``sendmmsg`` per batch read. No event loop, no
Python per packet, no ICE consent, RTCP or timers. This driver replays the scenario's
room as the load generator does (the recording, every publisher's packets
SRTP-protected before the timed phase, sent in the same per-millisecond bursts, at
``--rate`` times real time), and reads every subscriber's socket as `sfu bench` does:
at real time as each datagram arrives, above it every millisecond
(bench/_receiver.pyx). So the floor pays the same kernel work per packet as a server
in that bench: being woken, receiving, and on loopback delivering each datagram into
the receiver's socket (and at real time waking it). Its CPU per forwarded packet, set
beside a server's in the same room, bounds how far that server's cost can fall (#16:
"2x lower at room rates", "300,000 packets per second per core").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import socket
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

from pylibsrtp import Policy

from . import recording as recordings
from .fastpath import session
from .peer import PACING_SLOT_S, POLL_S, RECEIVE_BUFFER
from .run import load_scenarios

PROFILE = Policy.SRTP_PROFILE_AEAD_AES_128_GCM  # what aiortc and browsers negotiate
KEY_LENGTH = 28
PAYLOAD_TYPES = {"audio": 111, "video": 96}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def serve(sock: socket.socket, inbound_key: bytes, routes: list[tuple[Any, bytes, Any]],
          seconds: float, results: Connection) -> None:
    """The floor process: relay for ``seconds``, then report its CPU."""
    from sfu import _fastpath

    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, (0).to_bytes(8, "little")
                    + (100_000).to_bytes(8, "little"))  # wake at least every 100 ms
    c_routes = [(_fastpath._sockaddr(source), session(key, PROFILE, True),
                 _fastpath._sockaddr(destination)) for source, key, destination in routes]
    started = cpu_seconds()
    received, forwarded = _fastpath.floor_relay(sock.fileno(), session(inbound_key, PROFILE, False),
                                                c_routes, seconds)
    results.send({"received": received, "forwarded": forwarded,
                  "cpu_seconds": cpu_seconds() - started})


def plan(recording: recordings.Recording, sockets: list[socket.socket], key: bytes,
         seconds: float, rate: float) -> list[tuple[float, socket.socket, bytes]]:
    """Every publisher's packets for ``seconds`` at ``rate`` times real time, protected,
    in the order they are due."""
    packets = []
    for index, sock in enumerate(sockets):
        tx = session(key, PROFILE, True)
        seqs = {"audio": 0, "video": 0}
        for offset, _, packet, timestamp in recording.looped(seconds * 1e6 * rate):
            ssrc = 0x1000 * (index + 1) + (packet.kind == "video")
            header = bytes([0x80, (0x80 if packet.marker else 0) | PAYLOAD_TYPES[packet.kind]])
            header += seqs[packet.kind].to_bytes(2, "big") + timestamp.to_bytes(4, "big")
            header += ssrc.to_bytes(4, "big")
            seqs[packet.kind] = (seqs[packet.kind] + 1) & 0xFFFF
            packets.append((offset / rate / 1e6, sock, tx.protect(header + packet.payload)))
    packets.sort(key=lambda p: p[0])
    return packets


async def replay(packets: list[tuple[float, socket.socket, bytes]],
                 receivers: list[socket.socket], poll: bool) -> tuple[int, list[list[bytes]]]:
    """Send on time in per-slot bursts (bench/peer.py's Publisher.run); read each
    subscriber socket as datagrams arrive, or with ``poll`` every POLL_S. Returns the
    RTP packets received, and each receiver's first packet (to check it was protected
    for that subscriber)."""
    from . import _receiver

    loop = asyncio.get_running_loop()
    readers = [_receiver.Receiver(sock.fileno(), 1 << 30) for sock in receivers]
    firsts: list[list[bytes]] = [[] for _ in receivers]

    def read(index: int) -> None:
        _, samples = readers[index].drain()
        firsts[index] += [data for _, data in samples]

    async def poll_all() -> None:
        while True:
            await asyncio.sleep(POLL_S)
            for index in range(len(receivers)):
                read(index)

    poller = asyncio.create_task(poll_all()) if poll else None
    for index, sock in enumerate(receivers):
        if not poll:
            loop.add_reader(sock.fileno(), read, index)
    start = time.monotonic()
    for due, sock, datagram in packets:
        now = time.monotonic() - start
        if due > now + PACING_SLOT_S:
            await asyncio.sleep(due - now)
        sock.send(datagram)
    await asyncio.sleep(0.5)  # the last packets through
    if poller is not None:
        poller.cancel()
    for index, sock in enumerate(receivers):
        loop.remove_reader(sock.fileno())
        read(index)
    return sum(len(reader.records()[0]) // 4 for reader in readers), firsts


def run(scenario: dict[str, Any], seconds: float, address: str,
        rate: float = 1.0) -> dict[str, Any]:
    """One run of the scenario's room, ``rate`` times real time, against a fresh floor
    process."""
    publishers = scenario["publishers"]
    listeners = scenario["listeners"]
    recording = recordings.load()
    floor_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    floor_sock.bind((address, 0))
    participants = []  # one socket each, as one bundled connection: sends and receives
    for _ in range(publishers + listeners):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((address, 0))
        sock.connect(floor_sock.getsockname())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        participants.append(sock)
    inbound_key = os.urandom(KEY_LENGTH)
    subscriber_keys = [os.urandom(KEY_LENGTH) for _ in participants]
    routes = [(participants[p].getsockname(), subscriber_keys[s], participants[s].getsockname())
              for p in range(publishers) for s in range(len(participants)) if s != p]
    # The floor runs past the replay, so that it is waiting when the first packet comes.
    results_in, results_out = multiprocessing.Pipe(duplex=False)
    floor = multiprocessing.get_context("fork").Process(
        target=serve, args=(floor_sock, inbound_key, routes, seconds + 2.0, results_out))
    floor.start()
    packets = plan(recording, participants[:publishers], inbound_key, seconds, rate)
    driver_started = cpu_seconds()
    received, firsts = asyncio.run(replay(packets, participants, rate > 1))
    driver_cpu = cpu_seconds() - driver_started
    verified = 0
    for key, samples in zip(subscriber_keys, firsts, strict=True):
        for sample in samples:
            session(key, PROFILE, False).unprotect(sample)  # raises unless protected with its key
            verified += 1
    result = results_in.recv()
    floor.join()
    for sock in [floor_sock, *participants]:
        sock.close()
    forwarded = result["forwarded"]
    return {
        "scenario": scenario["name"], "seconds": seconds, "rate": rate,
        "sent_packets": len(packets), "floor_received": result["received"],
        "forwarded_packets": forwarded, "received_packets": received,
        "verified_samples": verified,
        "forwarded_pps": round(forwarded / seconds, 1),
        "floor_cpu_seconds": round(result["cpu_seconds"], 4),
        "floor_cpu_cores": round(result["cpu_seconds"] / seconds, 3),
        "floor_cpu_us_per_forwarded_packet": round(
            result["cpu_seconds"] * 1e6 / max(forwarded, 1), 2),
        "driver_cpu_seconds": round(driver_cpu, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="2x2", help="a room from bench/scenarios.toml")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=1.0,
                        help="times real time (above 1 the receivers are polled)")
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    scenarios, _ = load_scenarios()
    if args.scenario not in scenarios:
        parser.error(f"unknown scenario {args.scenario!r}: {', '.join(scenarios)}")
    result = run(scenarios[args.scenario], args.seconds, args.address, args.rate)
    print(f"{result['scenario']}: {result['forwarded_pps']} forwarded pkt/s, floor "
          f"{result['floor_cpu_us_per_forwarded_packet']} CPU-µs per forwarded packet "
          f"({result['received_packets']} of {result['forwarded_packets']} received)",
          file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
