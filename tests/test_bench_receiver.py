"""The load generator's C receive path (bench/_receiver.pyx) on a real socket."""

from __future__ import annotations

import socket
import struct
from array import array

import pytest

from sfu_bench.peer import c_receive_available

pytestmark = pytest.mark.skipif(not c_receive_available(),
                                reason="bench/_receiver.pyx is not built (SFU_PUREPYTHON)")


def rtp(ssrc: int, seq: int, size: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq, 1234, ssrc) + bytes(size - 12)


def wait_for_kernel_stamps() -> None:
    """Until the kernel stamps arrivals (a deferred switch, turned on a moment after a
    socket asks and off a moment after the last such socket closes), a datagram read
    is stamped as it is read: later than one read after the switch. Wait for it."""
    import time

    from sfu_bench._receiver import Receiver

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        receiver = Receiver(rx.fileno(), 64)
        for _ in range(100):
            sent = time.monotonic()
            tx.sendto(rtp(0xC, 0, 100), rx.getsockname())
            time.sleep(0.02)
            receiver.drain()
            times = array("d")
            times.frombytes(receiver.records()[3])
            if times[-1] < sent + 0.01:
                return
        raise AssertionError("the kernel never stamped an arrival")


def test_rtp_is_recorded_and_the_rest_handed_back() -> None:
    from sfu_bench._receiver import Receiver

    wait_for_kernel_stamps()  # else the first datagrams may be stamped as read, late
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        tx.bind(("127.0.0.1", 0))
        source = tx.getsockname()
        receiver = Receiver(rx.fileno(), 4, 8)  # capacity 8: it must grow
        sent = [(0xA, i, 100 + i) for i in range(150)] + [(0xB, 65535, 1200)]
        for ssrc, seq, size in sent:
            tx.sendto(rtp(ssrc, seq, size), rx.getsockname())
        stun = b"\x00\x01\x00\x00" + bytes(16)
        rtcp = struct.pack("!BBHI", 0x80, 201, 1, 7)  # a receiver report: not RTP
        for datagram in (stun, rtcp, b"\x80"):  # and one too short to be RTP
            tx.sendto(datagram, rx.getsockname())
        others, samples = receiver.drain()
        assert receiver.drain() == ([], [])  # nothing left
        ssrcs, seqs, lengths, times = (array(code) for code in "IHHd")
        for column, raw in zip((ssrcs, seqs, lengths, times), receiver.records(), strict=True):
            column.frombytes(raw)
    assert list(zip(ssrcs, seqs, lengths, strict=True)) == sent
    assert list(times) == sorted(times) and times[0] > 0
    assert [data for data, _ in others] == [stun, rtcp, b"\x80"]
    assert {addr for _, addr in others} == {source}
    assert [index for index, _ in samples] == list(range(0, len(sent), 4))
    assert [data for _, data in samples] == [rtp(*sent[i]) for i in range(0, len(sent), 4)]


def test_the_arrival_time_is_the_kernels_not_the_read() -> None:
    """A datagram read late keeps the time it reached the socket: the generator may
    poll its sockets without adding the wait to the latency it measures."""
    import time

    from sfu_bench._receiver import Receiver

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        receiver = Receiver(rx.fileno(), 64)
        # The kernel turns receive stamping on for everyone a moment after the first
        # socket asks (a deferred static-key switch); until then recvmsg stamps the
        # datagram as it is read. So: a few tries, each 200 ms late; without the
        # kernel's stamps every try fails.
        tries: list[tuple[float, float, float, float]] = []
        for _ in range(5):
            before = time.monotonic()
            tx.sendto(rtp(0xA, len(tries), 200), rx.getsockname())
            after = time.monotonic()
            time.sleep(0.2)
            receiver.drain()
            read = time.monotonic()
            times = array("d")
            times.frombytes(receiver.records()[3])
            tries.append((before, times[-1], after, read))
            # The two clocks are read µs apart when converting: allow 2 ms.
            if before - 0.002 <= times[-1] <= after + 0.002 < read - 0.1:
                break
    assert len(times) == len(tries)
    before, arrived, after, read = tries[-1]
    assert before - 0.002 <= arrived <= after + 0.002 < read - 0.1, tries
