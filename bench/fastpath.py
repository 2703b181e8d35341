"""Forwarding micro-benchmark: the pure-Python twin, the Cython forwarder, and the floor.

In one run, the same recorded stream (1200-byte VP8-like RTP packets carrying mid and
abs-send-time extensions, SRTP-protected by a publisher once, before timing) is
forwarded to 1, 4 and 9 subscribers over loopback UDP by:

- ``twin``: sfu._fastpath_fallback.Forwarder (pure Python, pylibsrtp's Python API);
- ``cython``: sfu._fastpath.Forwarder (libsrtp and sendto called from C);
- ``floor``: a C loop doing only what cannot be avoided per outgoing packet: copy,
  libsrtp protect, sendto (no unprotect, no parsing, no rewrite).

CPU time is this process's user+system time (``time.process_time``); a separate
process drains the receiving socket. Every case is repeated and the runs of all
systems are interleaved, so machine noise hits them alike; medians are reported.

    python -m sfu_bench.fastpath [--packets N] [--repeat R] [--json PATH]
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import os
import resource
import socket
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from pylibsrtp import Policy, Session

from sfu import _fastpath_fallback, rtp
from sfu.fastpath import cython_unavailable_reason

from .systems import machine

PROFILES = {
    "AEAD_AES_128_GCM": (Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 28),
    "AES128_CM_SHA1_80": (Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 30),
}
SUBSCRIBER_COUNTS = (1, 4, 9)
PACKET_SIZE = 1200
PUB_SSRC = 0x5EED0001


@dataclass
class Result:
    system: str
    profile: str
    subscribers: int
    packets_out: int
    cpu_us_per_packet: float
    user_us_per_packet: float  # the part an implementation controls
    system_us_per_packet: float  # mostly the kernel's UDP send, the same for all
    packets_per_second_per_core: float
    runs: list[float]


def session(key: bytes, profile: int, outbound: bool) -> Session:
    policy = Policy(
        key=key,
        ssrc_type=Policy.SSRC_ANY_OUTBOUND if outbound else Policy.SSRC_ANY_INBOUND,
        srtp_profile=profile,
    )
    policy.allow_repeat_tx = True
    policy.window_size = 1024
    return Session(policy)


def recorded_stream(count: int) -> list[bytes]:
    """Plaintext RTP: a keyframe start, then interframes; 30 fps timestamps."""
    ext = rtp.write_extensions([(1, b"0"), (3, b"\x00\x00\x00")])
    packets = []
    for i in range(count):
        descriptor = b"\x90\x80\x80\x01" + (b"\x00" if i == 0 else b"\x01")
        header = bytes([0x90, 96 | (0x80 if i % 8 == 7 else 0)]) + (i & 0xFFFF).to_bytes(
            2, "big") + ((3000 * (i // 8)) & 0xFFFFFFFF).to_bytes(4, "big") + (
            PUB_SSRC.to_bytes(4, "big"))
        body = descriptor + os.urandom(PACKET_SIZE - len(header) - len(ext) - len(descriptor))
        packets.append(header + ext + body)
    return packets


def drain(sock: socket.socket, stop: Any) -> None:
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            while True:
                sock.recv(2048)
        except OSError:
            pass


def measure(run: Callable[[], int]) -> tuple[float, float, int]:
    """(user seconds, system seconds, packets sent) of one run, in this process."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    sent = run()
    after = resource.getrusage(resource.RUSAGE_SELF)
    return after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime, sent


def make_forwarder_run(
    impl: Any, key: bytes, profile: int, protected: list[bytes], subscribers: int,
    sender: socket.socket, sink_addr: tuple[str, int],
) -> Callable[[], int]:
    """A fresh forwarder (fresh SRTP replay state) fed the protected stream."""
    fwd = impl(500_000)
    rx = session(key, profile, outbound=False)
    fwd.add_endpoint(1, rx, session(os.urandom(len(key)), profile, True), sender.sendto,
                     sender.fileno(), sink_addr)
    fwd.add_producer(10, 1, PUB_SSRC, rtp.CODEC_VP8)
    for i in range(subscribers):
        tx = session(os.urandom(len(key)), profile, outbound=True)
        fwd.add_endpoint(100 + i, session(os.urandom(len(key)), profile, False), tx,
                         sender.sendto, sender.fileno(), sink_addr)
        fwd.add_consumer(200 + i, 10, 100 + i, 0x7000 + i, True, {96: 96 + i % 3},
                         {1: 1, 3: 2}, str(i).encode(), 1, 2, 1000 * i, 90_000 * i)

    def run() -> int:
        handle = fwd.handle_packet
        for n, datagram in enumerate(protected):
            handle(1, datagram, n * 1000)
        counters = fwd.counters()
        assert counters["accepted"] == len(protected), counters
        return int(counters["sent"])

    return run


def make_floor_run(
    key_length: int, profile: int, plain: list[bytes], subscribers: int,
    sender: socket.socket, sink_addr: tuple[str, int],
) -> Callable[[], int]:
    from sfu import _fastpath

    sessions = [session(os.urandom(key_length), profile, True) for _ in range(subscribers)]

    def run() -> int:
        return _fastpath.floor_forward(plain, sessions, [sender.fileno()] * subscribers,
                                       [sink_addr] * subscribers)

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=20_000, help="incoming packets per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs per case (median taken)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    reason = cython_unavailable_reason()
    if reason is not None:
        print(f"cython: skipped ({reason}); floor: skipped (it lives in the extension)")
    plain = recorded_stream(args.packets)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    stop = multiprocessing.Event()
    drainer = multiprocessing.Process(target=drain, args=(sink, stop), daemon=True)
    drainer.start()
    sink_addr = sink.getsockname()

    results: list[Result] = []
    try:
        for profile_name, (profile, key_length) in PROFILES.items():
            key = os.urandom(key_length)
            publisher = session(key, profile, outbound=True)
            protected = [publisher.protect(p) for p in plain]
            for subscribers in SUBSCRIBER_COUNTS:
                case = (key, profile, protected, subscribers, sender, sink_addr)
                systems: dict[str, Callable[[], Callable[[], int]]] = {
                    "twin": functools.partial(make_forwarder_run, _fastpath_fallback.Forwarder,
                                              *case),
                }
                if reason is None:
                    from sfu import _fastpath

                    systems["cython"] = functools.partial(make_forwarder_run,
                                                          _fastpath.Forwarder, *case)
                    systems["floor"] = functools.partial(make_floor_run, key_length, profile,
                                                         plain, subscribers, sender, sink_addr)
                runs: dict[str, list[tuple[float, float]]] = {name: [] for name in systems}
                sent: dict[str, int] = {}
                for _ in range(args.repeat):
                    for name, factory in systems.items():  # interleaved: same noise for all
                        user, system, sent[name] = measure(factory())
                        per = 1e6 / max(sent[name], 1)
                        runs[name].append((user * per, system * per))
                for name, samples in runs.items():
                    totals = [u + s for u, s in samples]
                    median = statistics.median(totals)
                    results.append(Result(
                        name, profile_name, subscribers, sent[name], round(median, 3),
                        round(statistics.median(u for u, _ in samples), 3),
                        round(statistics.median(s for _, s in samples), 3),
                        round(1e6 / median), [round(x, 3) for x in totals],
                    ))
                    print(f"  {profile_name:18} {subscribers} subscribers  {name:6} "
                          f"{median:6.2f} CPU-us/packet", file=sys.stderr, flush=True)
    finally:
        stop.set()
        drainer.join(2)

    report = {"machine": machine(), "packet_size": PACKET_SIZE,
              "incoming_packets_per_run": args.packets, "repeat": args.repeat,
              "results": [asdict(r) for r in results], "ratios": ratios(results)}
    print_table(results, report["ratios"])
    print(json.dumps(report))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
    return 0


def ratios(results: list[Result]) -> list[dict[str, Any]]:
    by_case: dict[tuple[str, int], dict[str, float]] = {}
    user: dict[tuple[str, int, str], float] = {}
    for r in results:
        by_case.setdefault((r.profile, r.subscribers), {})[r.system] = r.cpu_us_per_packet
        user[(r.profile, r.subscribers, r.system)] = max(r.user_us_per_packet, 1e-3)
    out = []
    for (profile, subscribers), systems in by_case.items():
        if "cython" in systems:
            out.append({
                "profile": profile, "subscribers": subscribers,
                "twin_over_cython": round(systems["twin"] / systems["cython"], 2),
                "cython_over_floor": round(systems["cython"] / systems["floor"], 2),
                "twin_over_cython_user": round(user[(profile, subscribers, "twin")]
                                               / user[(profile, subscribers, "cython")], 2),
            })
    return out


def print_table(results: list[Result], ratio_rows: list[dict[str, Any]]) -> None:
    print(f"\n{'profile':18} {'subs':>4} {'system':7} {'CPU-us/pkt':>10} {'user':>6} "
          f"{'sys':>6} {'pkts/s/core':>12}")
    for r in results:
        print(f"{r.profile:18} {r.subscribers:>4} {r.system:7} {r.cpu_us_per_packet:>10.2f} "
              f"{r.user_us_per_packet:>6.2f} {r.system_us_per_packet:>6.2f} "
              f"{r.packets_per_second_per_core:>12,}")
    if ratio_rows:
        print(f"\n{'profile':18} {'subs':>4} {'twin/cython':>12} {'cython/floor':>13} "
              f"{'twin/cython (user CPU)':>23}")
        for row in ratio_rows:
            print(f"{row['profile']:18} {row['subscribers']:>4} {row['twin_over_cython']:>12.2f}"
                  f" {row['cython_over_floor']:>13.2f} {row['twin_over_cython_user']:>23.2f}")
    print()


if __name__ == "__main__":
    sys.exit(main())
