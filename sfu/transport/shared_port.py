"""One UDP port for every participant (``[rtc] udp_port``), as mediasoup's WebRtcServer
and LiveKit's ``rtc.udp_port``: a firewall or a pod opens one port, not a range.

The server owns one socket per listen address. aioice still runs each connection's
ICE, over a ``SharedEndpoint``: a transport that sends through the shared socket and
to which the socket hands what is the connection's. A datagram is the connection's
when it comes from an address the connection has sent to or taken a binding request
from (RFC 8445: the peer's checks reach us before anything else); a binding request
from a new address names its connection in USERNAME, ``<our ufrag>:<theirs>``
(RFC 8445 §7.2.2). Everything else is dropped and counted.

The forwarder reads the socket itself (``Forwarder.receive``: recvmmsg(2) in C, a batch
per call), once per readiness: SRTP and SRTCP from an endpoint's selected pair never
become Python objects. What it hands back (STUN, DTLS, media from an address it has no
endpoint for) is routed here, and media among it goes through the connection's
protocol, where ``sfu.transport.peer`` checks it comes from a validated pair (a path
change) as with a port each.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import sys
import time
from collections import Counter
from typing import Any, Protocol

STUN_MAGIC_COOKIE = 0x2112A442
BINDING_REQUEST = 0x0001
USERNAME = 0x0006
# Addresses one connection may be reached from (its peer's candidates, a TURN relay, a
# path change): enough for any client, and a bound on what a peer can make us hold.
MAX_ADDRESSES = 32
SOCKET_BUFFER_BYTES = 4 << 20  # every participant's media arrives on this one socket


logger = logging.getLogger(__name__)
_SO_SNDBUFFORCE, _SO_RCVBUFFORCE = 32, 33  # Linux's (asm-generic); Python does not name them


def set_buffers(sock: socket.socket, size: int, *, send: bool = True) -> int:
    """Ask for ``size``-byte receive (and send) buffers; returns the receive buffer the
    kernel granted (it reports twice what it grants, the bookkeeping share). As root
    (CAP_NET_ADMIN) the *FORCE options pass ``net.core.rmem_max``, which is 208 KiB on
    a stock kernel: too little for a burst of video."""
    pairs = [(socket.SO_RCVBUF, _SO_RCVBUFFORCE)]
    if send:
        pairs.append((socket.SO_SNDBUF, _SO_SNDBUFFORCE))
    for option, forced in pairs:
        try:
            if not sys.platform.startswith("linux"):
                raise OSError("no *FORCE options")
            sock.setsockopt(socket.SOL_SOCKET, forced, size)
        except OSError:  # not root: capped at net.core.[rw]mem_max
            sock.setsockopt(socket.SOL_SOCKET, option, size)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2


class BatchReader(Protocol):
    """The forwarder's side: reads a socket, keeps its endpoints' media, returns the rest."""

    def receive(self, sock: socket.socket, now_us: int
                ) -> list[tuple[bytes, tuple[Any, ...]]]: ...


class DatagramReceiver(Protocol):
    """What an endpoint hands datagrams to: aioice's StunProtocol (maybe diverted)."""

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...


def request_ufrag(data: bytes) -> str | None:
    """Our ufrag, from a STUN binding request's USERNAME; None for anything else."""
    if len(data) < 20 or data[0] > 3:
        return None
    kind, length, cookie = struct.unpack_from("!HHI", data)
    if kind != BINDING_REQUEST or cookie != STUN_MAGIC_COOKIE or 20 + length > len(data):
        return None
    at, end = 20, 20 + length
    while at + 4 <= end:
        attribute, size = struct.unpack_from("!HH", data, at)
        if attribute == USERNAME:
            if at + 4 + size > end:
                return None
            ours, colon, _ = data[at + 4:at + 4 + size].partition(b":")
            return ours.decode("ascii", "replace") if colon and ours else None
        at += 4 + (size + 3) // 4 * 4
    return None


class SharedSocket:
    """The one UDP socket of a listen address, and the connections that use it."""

    def __init__(self, sock: socket.socket, reader: BatchReader, drops: Counter[str]) -> None:
        self.socket = sock
        self.drops = drops  # server-wide: unknown_ufrag, unknown_source, send_failed
        self._reader = reader
        self._by_ufrag: dict[str, SharedEndpoint] = {}
        self._by_address: dict[tuple[Any, ...], SharedEndpoint] = {}
        host, port = sock.getsockname()[:2]
        self.address: tuple[str, int] = (host, port)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)

    @classmethod
    def open(cls, host: str, port: int, reader: BatchReader, drops: Counter[str]
             ) -> SharedSocket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            granted = set_buffers(sock, SOCKET_BUFFER_BYTES)
            if granted < SOCKET_BUFFER_BYTES:
                logger.warning("the UDP port's receive buffer is %d KiB, not the %d KiB asked:"
                               " bursts may be dropped; raise net.core.rmem_max (sysctl)",
                               granted >> 10, SOCKET_BUFFER_BYTES >> 10)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        return cls(sock, reader, drops)

    def _readable(self) -> None:
        """One call per readiness: the forwarder reads a batch, hands back the rest."""
        for data, addr in self._reader.receive(self.socket, time.monotonic_ns() // 1000):
            self.datagram_received(data, addr)

    def sendto(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            self.socket.sendto(data, addr)
        except OSError:  # a full buffer (a STUN or DTLS packet: retransmitted) or gone
            self.drops["send_failed"] += 1

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        addr = addr[:2]
        # A binding request goes by its ufrag even from a known address: a client may
        # reuse the port of one that vanished, whose connection still holds it.
        ufrag = request_ufrag(data) if data and data[0] < 4 else None
        endpoint = self._by_ufrag.get(ufrag) if ufrag else None
        if endpoint is not None:
            if not endpoint.learn(addr):
                self.drops["too_many_addresses"] += 1
                return
        else:
            endpoint = self._by_address.get(addr)
            if endpoint is None:
                self.drops["unknown_ufrag" if ufrag else "unknown_source"] += 1
                return
        endpoint.receiver.datagram_received(data, addr)

    def endpoint(self, ufrag: str, receiver: DatagramReceiver) -> SharedEndpoint:
        """A transport for the connection whose local ufrag is ``ufrag``."""
        endpoint = SharedEndpoint(self, ufrag, receiver)
        self._by_ufrag[ufrag] = endpoint
        return endpoint

    def _forget(self, endpoint: SharedEndpoint) -> None:
        if self._by_ufrag.get(endpoint.ufrag) is endpoint:
            del self._by_ufrag[endpoint.ufrag]
        for addr in endpoint.addresses:
            if self._by_address.get(addr) is endpoint:
                del self._by_address[addr]

    def close(self) -> None:
        if self.socket.fileno() >= 0:
            self._loop.remove_reader(self.socket.fileno())
            self.socket.close()


class SharedEndpoint(asyncio.DatagramTransport):
    """One connection's view of the shared socket: aioice's protocol transport."""

    def __init__(self, shared: SharedSocket, ufrag: str, receiver: DatagramReceiver) -> None:
        super().__init__()
        self.shared = shared
        self.ufrag = ufrag
        self.receiver = receiver
        self.addresses: set[tuple[Any, ...]] = set()
        self._closing = False

    def learn(self, addr: tuple[Any, ...]) -> bool:
        """Datagrams from ``addr`` are this connection's from now on (the latest
        connection to claim an address has it)."""
        if addr not in self.addresses:
            if len(self.addresses) >= MAX_ADDRESSES or self._closing:
                return False
            self.addresses.add(addr)
        self.shared._by_address[addr] = self
        return True

    def sendto(self, data: Any, addr: Any = None) -> None:
        addr = tuple(addr[:2])
        if self._closing or (addr not in self.addresses and not self.learn(addr)):
            return
        self.shared.sendto(data, addr)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self.shared.address
        if name == "socket":
            return self.shared.socket
        return default

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """The connection is done with it: its addresses and ufrag are forgotten, the
        shared socket stays."""
        if self._closing:
            return
        self._closing = True
        self.shared._forget(self)
        asyncio.get_running_loop().call_soon(self.receiver.connection_lost, None)

    def abort(self) -> None:
        self.close()
