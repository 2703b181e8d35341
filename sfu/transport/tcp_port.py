"""ICE over TCP on one port (``[rtc] tcp_port``), for clients whose UDP is blocked and
who have no TURN, as LiveKit's ``rtc.tcp_port``.

Each connection offers a passive TCP host candidate (RFC 6544) beside its UDP one, at
a lower priority, so a client that can use UDP does. A client connects and frames
every STUN, DTLS, RTP and RTCP packet with a two-byte length (RFC 4571). Its first
packet must be a binding request whose USERNAME names a connection of ours (RFC 8445
§7.2.2); the stream is then that connection's, keyed by the client's address, and
aioice runs ICE over it through a ``TcpEndpoint`` (aioice itself has no TCP candidates)
just as over the shared UDP socket. A stream that names nobody, or says nothing in
FIRST_PACKET_S, is closed and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any

from sfu.transport.shared_port import MAX_ADDRESSES, DatagramReceiver, request_ufrag

FIRST_PACKET_S = 10.0
# Unsent bytes one stream may hold before packets to it are dropped: a stalled TCP
# client loses media (it is late anyway) rather than the server's memory.
MAX_BUFFERED = 1 << 20
# A host TCP candidate's type preference, below UDP host's 126 (RFC 8445 §5.1.2.2
# leaves it to us; RFC 6544 §4.2 wants UDP preferred where both work).
TYPE_PREFERENCE = 90
PASSIVE_DIRECTION = 4  # RFC 6544 §4.2: local preference's direction bits, passive


def candidate_priority(component: int) -> int:
    local_preference = (PASSIVE_DIRECTION << 13) | 8191
    return (TYPE_PREFERENCE << 24) | (local_preference << 8) | (256 - component)


class TcpPort:
    """The listening socket of one address and the connections that take streams."""

    def __init__(self, drops: Counter[str]) -> None:
        self.drops = drops  # server-wide: tcp_unknown_ufrag, tcp_bad_framing, ...
        self._server: asyncio.Server | None = None
        self._by_ufrag: dict[str, TcpEndpoint] = {}
        self._streams: set[asyncio.StreamWriter] = set()

    @classmethod
    async def open(cls, host: str, port: int, drops: Counter[str]) -> TcpPort:
        tcp = cls(drops)
        tcp._server = await asyncio.start_server(tcp._serve, host, port)
        return tcp

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    def endpoint(self, ufrag: str, receiver: DatagramReceiver) -> TcpEndpoint:
        endpoint = TcpEndpoint(self, ufrag, receiver)
        self._by_ufrag[ufrag] = endpoint
        return endpoint

    def _forget(self, endpoint: TcpEndpoint) -> None:
        if self._by_ufrag.get(endpoint.ufrag) is endpoint:
            del self._by_ufrag[endpoint.ufrag]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        addr = tuple(writer.get_extra_info("peername")[:2])
        endpoint: TcpEndpoint | None = None
        self._streams.add(writer)
        try:
            while True:
                first = endpoint is None
                async with asyncio.timeout(FIRST_PACKET_S if first else None):
                    length = int.from_bytes(await reader.readexactly(2), "big")
                    data = await reader.readexactly(length)
                if endpoint is None:
                    ufrag = request_ufrag(data)
                    endpoint = self._by_ufrag.get(ufrag) if ufrag else None
                    if endpoint is None:
                        self.drops["tcp_unknown_ufrag" if ufrag else "tcp_not_stun"] += 1
                        return
                    if not endpoint.attach(addr, writer):
                        self.drops["too_many_addresses"] += 1
                        return
                endpoint.receiver.datagram_received(data, addr)
        except TimeoutError:
            self.drops["tcp_silent"] += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away
        finally:
            self._streams.discard(writer)
            if endpoint is not None:
                endpoint.detach(addr, writer)
            writer.close()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._streams):
            writer.close()


class TcpEndpoint(asyncio.DatagramTransport):
    """One connection's TCP streams, as aioice's protocol transport: ``sendto`` frames
    a packet onto the stream of that address."""

    def __init__(self, port: TcpPort, ufrag: str, receiver: DatagramReceiver) -> None:
        super().__init__()
        self.port = port
        self.ufrag = ufrag
        self.receiver = receiver
        self._streams: dict[tuple[Any, ...], asyncio.StreamWriter] = {}
        self._closing = False

    def attach(self, addr: tuple[Any, ...], writer: asyncio.StreamWriter) -> bool:
        if self._closing or (addr not in self._streams and len(self._streams) >= MAX_ADDRESSES):
            return False
        self._streams[addr] = writer
        return True

    def detach(self, addr: tuple[Any, ...], writer: asyncio.StreamWriter) -> None:
        if self._streams.get(addr) is writer:
            del self._streams[addr]

    def sendto(self, data: Any, addr: Any = None) -> None:
        writer = self._streams.get(tuple(addr[:2]))
        if writer is None or writer.is_closing():
            return  # aioice pairs us with the client's active candidates too: no stream
        if writer.transport.get_write_buffer_size() > MAX_BUFFERED:
            self.port.drops["tcp_backlog"] += 1
            return
        writer.write(len(data).to_bytes(2, "big") + bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self.port.address
        return default  # no "socket": the forwarder sends through sendto, framed

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.port._forget(self)
        for writer in self._streams.values():
            with contextlib.suppress(RuntimeError):
                writer.close()
        self._streams.clear()
        asyncio.get_running_loop().call_soon(self.receiver.connection_lost, None)

    def abort(self) -> None:
        self.close()
