"""``Forwarder.receive``: the forwarder reading a shared UDP socket itself (recvmmsg(2)
in C, recvfrom in the twin), the same datagrams into both: an endpoint's SRTP from its
own peer handled, everything else — STUN, DTLS, junk, media from a stranger, a
datagram too long — handed back with its address; at most a bounded number per call."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import pytest

from sfu import rtp
from tests.srtp_helpers import Capture, implementations, rtp_packet, session_pair
from tests.test_shared_port import binding_request

PUB, SUB, PRODUCER, CONSUMER = 1, 2, 10, 20
PUB_SSRC, SUB_SSRC = 0x1111, 0x2222
KEY = b"\x10\x00\x00\x9d\x01\x2a" + bytes(40)  # VP8 keyframe
DELTA = b"\x10\x01\x00\x00" + bytes(40)


def udp(bound: bool = True) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


class Side:
    """One forwarder with its shared socket: the publisher's endpoint on it, the
    subscriber's sent to a Capture (fd -1), so both sides' output can be compared."""

    def __init__(self, impl: Any, keys: list[bytes], publisher: tuple[str, int]) -> None:
        self.sock = udp()
        self.fwd = impl(500_000)
        self.to_sub = Capture()
        rx_pub, tx_pub, rx_sub, tx_sub = (session_pair(key=k)[i] for k, i in zip(
            keys, (1, 0, 1, 0), strict=True))
        self.fwd.add_endpoint(PUB, rx_pub, tx_pub, Capture(), self.sock.fileno(), publisher)
        self.fwd.add_endpoint(SUB, rx_sub, tx_sub, self.to_sub, -1, ("127.0.0.1", 9))
        self.fwd.add_producer(PRODUCER, PUB, PUB_SSRC, rtp.CODEC_VP8)
        self.fwd.add_consumer(CONSUMER, PRODUCER, SUB, SUB_SSRC, True, {96: 96}, {}, b"0",
                              0, 0, 1000, 5000)

    def receive_all(self) -> list[list[tuple[bytes, Any]]]:
        """Call receive until a call reads nothing; what each call handed back."""
        calls: list[list[tuple[bytes, Any]]] = []
        while True:
            before = self.fwd.counters()["rtp_in"]
            leftovers = self.fwd.receive(self.sock, time.monotonic_ns() // 1000)
            if not leftovers and self.fwd.counters()["rtp_in"] == before:
                return calls
            calls.append(leftovers)


@pytest.mark.skipif(len([p for p in implementations() if p.values[0] is not None]) < 2,
                    reason="the Cython forwarder is not built")
def test_the_cython_and_python_forwarders_read_a_socket_alike() -> None:
    keys = [os.urandom(30) for _ in range(4)]
    publisher, stranger = udp(), udp()
    sides = [Side(p.values[0], keys, publisher.getsockname()) for p in implementations()]
    protect = session_pair(key=keys[0])[0]
    datagrams: list[tuple[socket.socket, bytes]] = []
    for seq in range(300):  # more than one call reads (8 batches of 32)
        packet = rtp_packet(seq=seq, timestamp=3000 * seq, ssrc=PUB_SSRC, payload_type=96,
                            payload=KEY if seq == 0 else DELTA, marker=True)
        datagrams.append((publisher, protect.protect(packet)))
        if seq == 150:
            datagrams += [
                (publisher, binding_request("ours:theirs")),  # STUN: ICE's
                (publisher, b"\x16\xfe\xfd" + bytes(30)),  # a DTLS record: aioice's
                (publisher, b"\x80" + bytes(1599)),  # too long for the forwarder
                (publisher, b"\x80\x60"),  # too short
                (stranger, protect.protect(rtp_packet(seq=999, timestamp=0, ssrc=PUB_SSRC,
                                                      payload_type=96, payload=DELTA))),
            ]
    for sender, datagram in datagrams:
        for side in sides:
            sender.sendto(datagram, side.sock.getsockname())
    time.sleep(0.2)  # loopback: all queued at both sockets
    results = [side.receive_all() for side in sides]
    python, cython = results
    assert python == cython
    # Two calls: the first read 256 (8 batches of 32, the five among them), the second
    # the other 49 RTP packets.
    assert [len(leftovers) for leftovers in python] == [5, 0]
    handed_back = python[0]
    assert [data[:2] for data, _ in handed_back] == [b"\x00\x01", b"\x16\xfe", b"\x80\x00",
                                                     b"\x80\x60", b"\x80\x60"]
    assert handed_back[-1][1] == stranger.getsockname()
    assert {addr for _, addr in handed_back[:-1]} == {publisher.getsockname()}
    assert len(handed_back[2][0]) == 1600  # handed back whole
    counters = [side.fwd.counters() for side in sides]
    assert counters[0] == counters[1]
    assert counters[0]["rtp_in"] == 300 and counters[0]["sent"] == 300
    assert sides[0].to_sub.sent == sides[1].to_sub.sent
    for side in sides:
        side.sock.close()
    publisher.close()
    stranger.close()


@pytest.mark.parametrize("impl", implementations())
def test_media_before_any_endpoint_is_handed_back(impl: Any) -> None:
    """SRTP may arrive before its endpoint is added (the peer's DTLS finished first):
    a forwarder with no endpoint yet hands it back (the C table once spun on it)."""
    server, sender = udp(), udp()
    fwd = impl(500_000)
    packet = b"\x80\x60" + bytes(98)
    sender.sendto(packet, server.getsockname())
    time.sleep(0.05)
    assert fwd.receive(server, 0) == [(packet, sender.getsockname())]
    server.close()
    sender.close()


@pytest.mark.skipif(len([p for p in implementations() if p.values[0] is not None]) < 2,
                    reason="the Cython forwarder is not built")
@pytest.mark.parametrize("refused", [False, True], ids=["all-sendable", "one-refused"])
def test_what_one_batch_forwards_goes_out_in_one_sendmmsg(refused: bool) -> None:
    """Three subscribers on the shared socket (with ``refused``, the second at an
    address the socket cannot send to: IPv6 on an IPv4 socket). The C forwarder sends
    a batch's fan-out with sendmmsg(2), the twin one sendto per datagram; the
    subscribers get the same datagrams in the same order, and refused ones are
    counted alike (a send error each, not sent)."""
    keys = [os.urandom(30) for _ in range(2 + 3)]
    publisher = udp()
    protect = session_pair(key=keys[0])[0]
    sides = []
    for impl in (p.values[0] for p in implementations()):
        sock = udp()
        fwd = impl(500_000)
        receivers = [udp(), udp(), udp()]
        addrs = [r.getsockname() for r in receivers]
        if refused:
            addrs[1] = ("::1", 9)
        fwd.add_endpoint(PUB, session_pair(key=keys[0])[1], session_pair(key=keys[1])[0],
                         sock.sendto, sock.fileno(), publisher.getsockname())
        fwd.add_producer(PRODUCER, PUB, PUB_SSRC, rtp.CODEC_VP8)
        for i, addr in enumerate(addrs):
            fwd.add_endpoint(SUB + i, session_pair(key=keys[2 + i])[1],
                             session_pair(key=keys[2 + i])[0], sock.sendto, sock.fileno(), addr)
            fwd.add_consumer(CONSUMER + i, PRODUCER, SUB + i, SUB_SSRC + i, True, {96: 96},
                             {}, b"0", 0, 0, 1000, 5000)
        sides.append((fwd, sock, receivers))
    for seq in range(20):
        datagram = protect.protect(rtp_packet(seq=seq, timestamp=3000 * seq, ssrc=PUB_SSRC,
                                              payload_type=96, marker=True,
                                              payload=KEY if seq == 0 else DELTA))
        for _, sock, _ in sides:
            publisher.sendto(datagram, sock.getsockname())
    time.sleep(0.2)  # loopback: all queued, so one recvmmsg reads them
    received = []
    for fwd, sock, receivers in sides:
        assert fwd.receive(sock, time.monotonic_ns() // 1000) == []
        time.sleep(0.05)
        got = []
        for receiver in receivers:
            datagrams = []
            while True:
                try:
                    datagrams.append(receiver.recv(2048))
                except BlockingIOError:
                    break
            got.append(datagrams)
        received.append(got)
    python, cython = received
    assert python == cython
    sendable = 40 if refused else 60
    assert [len(d) for d in python] == ([20, 0, 20] if refused else [20, 20, 20])
    (twin, _, _), (fast, _, _) = sides
    assert twin.counters() == fast.counters()
    assert fast.counters()["sent"] == sendable
    assert fast.counters()["send_error"] == 60 - sendable
    assert twin.send_calls() == (60, sendable)  # a call per datagram
    calls, datagrams = fast.send_calls()
    assert datagrams == sendable
    if refused:  # each refused datagram is a call that failed, between two that sent
        assert calls == 2 * 20 + 1
    else:  # the 60 in one call (one recvmmsg read the 20, under SEND_BATCH)
        assert calls == 1
    for _, sock, receivers in sides:
        for s in (sock, *receivers):
            s.close()
    publisher.close()
