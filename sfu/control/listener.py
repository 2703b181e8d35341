"""The HTTP listening sockets, with connections shed at accept.

aiohttp's own site accepts whatever arrives and holds each connection until a request
on it has been read, so a flood of connections takes every file descriptor before the
application sees one. Here the server accepts itself: a connection over the caps
(``sfu.control.admission``) is closed in the same call that accepted it, so a flood
costs no descriptor for longer than that, and one that is admitted goes to aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
import struct
from collections.abc import Callable
from typing import Any

from sfu.control.admission import ConnectionLimiter

logger = logging.getLogger(__name__)

# Connections taken off one listening socket per wake-up: enough to drain a burst
# quickly, few enough that the event loop gets back to media in between.
ACCEPT_BATCH = 64
BACKLOG = 128
# SO_LINGER 0: a shed connection is reset, leaving no TIME_WAIT behind.
_RESET = struct.pack("ii", 1, 0)


class _Counted(asyncio.Protocol):
    """aiohttp's protocol for one connection, released from the caps when it ends."""

    def __init__(self, inner: asyncio.Protocol, release: Callable[[], None]) -> None:
        self._inner = inner
        self._release = release

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        self._inner.connection_lost(exc)


class GatedListener:
    """Listening sockets on ``host``:``port`` whose connections pass ``limiter``."""

    def __init__(self, protocol_factory: Callable[[], Any], limiter: ConnectionLimiter,
                 ssl_context: ssl.SSLContext | None = None,
                 unlimited: frozenset[str] = frozenset()) -> None:
        """``ssl_context``: TLS on every connection; ``unlimited``: addresses (trusted
        reverse proxies, which carry many clients) not held to the per-address cap."""
        self._factory = protocol_factory
        self.limiter = limiter
        self._ssl = ssl_context
        self._unlimited = unlimited
        self.sockets: list[socket.socket] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    def listen(self, host: str, port: int) -> int:
        """Bind and listen (OSError if the address is taken); return the port."""
        addresses = {info[4][:2]: info for info in socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)}
        loop = asyncio.get_running_loop()
        try:
            for family, kind, proto, _, address in addresses.values():
                sock = socket.socket(family, kind, proto)
                self.sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                # Port 0: every address on the port the first one was given.
                sock.bind((address[0], port or self._bound_port() or 0, *address[2:]))
                sock.listen(BACKLOG)
                sock.setblocking(False)
                loop.add_reader(sock.fileno(), self._accept, sock)
        except OSError:
            self.close()
            raise
        return self._bound_port()

    def _bound_port(self) -> int:
        port: int = self.sockets[0].getsockname()[1] if self.sockets else 0
        return port

    def _accept(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peer = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # Out of descriptors (EMFILE/ENFILE) or the peer gave up: the connection
                # waits in the backlog, or is gone; the loop keeps serving.
                self.limiter.refused["accept_failed"] += 1
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ECONNABORTED):
                    logger.warning("accept failed: %s", exc)
                return
            address = str(peer[0])
            if self.limiter.admit(address, address not in self._unlimited) is not None:
                with contextlib.suppress(OSError):
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                conn.close()
                continue
            conn.setblocking(False)
            task = loop.create_task(self._hand_over(conn, address))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _hand_over(self, conn: socket.socket, address: str) -> None:
        loop = asyncio.get_running_loop()

        def protocol() -> asyncio.Protocol:
            return _Counted(self._factory(), lambda: self.limiter.release(address))

        try:
            await loop.connect_accepted_socket(protocol, conn, ssl=self._ssl)
        except (OSError, ssl.SSLError):  # a TLS handshake that fails is the peer's loss
            self.limiter.release(address)
            conn.close()

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self.sockets:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(sock.fileno())
            sock.close()
        self.sockets = []
        for task in self._tasks:
            task.cancel()
