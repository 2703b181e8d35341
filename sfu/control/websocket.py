"""One client's WebSocket: frames in, validated messages out, ordered non-blocking sends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from sfu.config import Config
from sfu.control import codec
from sfu.control.admission import REFUSALS, ConnectionLimiter, client_address
from sfu.control.ratelimit import TokenBucket
from sfu.control.schema import ProtocolError, validate

logger = logging.getLogger(__name__)

# A client that does not read its socket must not make the server buffer without
# bound: past this many queued messages the connection is closed.
MAX_QUEUED_MESSAGES = 1024


@dataclass(frozen=True)
class ConnectionLimits:
    max_message_bytes: int
    messages_per_second: int
    message_burst: int
    ping_interval_s: float
    timeout_s: float


class ControlConnection:
    """Frames in and out of one WebSocket, rate-limited, with liveness.

    The server pings every ``ping_interval_s``; a client that sends nothing (no
    message, no pong) for ``timeout_s`` is disconnected.
    """

    def __init__(self, ws: web.WebSocketResponse, limits: ConnectionLimits) -> None:
        self.ws = ws
        self.limits = limits
        self.max_message_bytes = limits.max_message_bytes
        # Replies use the encoding of the client's latest frame: msgpack or JSON.
        self.binary = False
        loop = asyncio.get_running_loop()
        self._bucket = TokenBucket(limits.messages_per_second, limits.message_burst, loop.time())
        self.last_seen = loop.time()
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_loop())
        self._watchdog = asyncio.create_task(self._watch())

    def send(self, message: dict[str, Any]) -> None:
        """Queue a message; never blocks the caller (media and room logic call this)."""
        if self._writer.done():
            return
        if self._queue.qsize() >= MAX_QUEUED_MESSAGES:
            logger.warning("control connection not reading; closing it")
            self.finish()
            return
        self._queue.put_nowait(message)

    def finish(self) -> None:
        """Close the socket once what is queued has been sent (the reader then ends)."""
        if not self._writer.done():
            self._queue.put_nowait(None)

    def send_error(self, error: ProtocolError, ref: Any = None, msg_id: Any = None) -> None:
        message: dict[str, Any] = {"type": "error", "code": error.code, "message": str(error)}
        if error.field is not None:
            message["field"] = error.field
        if isinstance(ref, str):
            message["ref"] = ref[:64]
        if msg_id is not None:
            message["id"] = msg_id
        self.send(message)

    async def messages(self) -> AsyncIterator[dict[str, Any]]:
        """Valid messages, in order; malformed ones are answered with ``error`` here."""
        loop = asyncio.get_running_loop()
        async for frame in self.ws:
            self.last_seen = loop.time()
            if frame.type == WSMsgType.TEXT:
                self.binary = False
                data: str | bytes = frame.data
            elif frame.type == WSMsgType.BINARY:
                self.binary = True
                data = frame.data
            elif frame.type == WSMsgType.PING:
                await self.ws.pong(frame.data)
                continue
            else:
                continue
            if not self._bucket.allow(self.last_seen):
                self.send_error(ProtocolError(
                    "rate_limited",
                    f"more than {self.limits.messages_per_second} messages per second",
                ))
                continue
            try:
                raw = codec.decode(data, self.max_message_bytes)
            except ProtocolError as exc:
                self.send_error(exc)
                continue
            try:
                yield validate(raw)
            except ProtocolError as exc:
                ref = raw.get("type") if isinstance(raw, dict) else None
                msg_id = raw.get("id") if isinstance(raw, dict) else None
                if not isinstance(msg_id, (str, int)) or isinstance(msg_id, bool):
                    msg_id = None
                self.send_error(exc, ref, msg_id)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.ws.closed:
            await asyncio.sleep(self.limits.ping_interval_s)
            if loop.time() - self.last_seen > self.limits.timeout_s:
                logger.info("control connection silent for %ss: closing", self.limits.timeout_s)
                await self.ws.close(code=1001, message=b"timeout")
                return
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.ping()

    async def close(self) -> None:
        """Flush what is queued, then close the socket."""
        self._watchdog.cancel()
        self._queue.put_nowait(None)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._writer), timeout=2)
        self._writer.cancel()
        await self.ws.close()

    async def _write_loop(self) -> None:
        while True:
            message = await self._queue.get()
            if message is None:
                break
            try:
                frame = codec.encode(message, self.binary)
                if isinstance(frame, bytes):
                    await self.ws.send_bytes(frame)
                else:
                    await self.ws.send_str(frame)
            except (ConnectionError, RuntimeError):
                break
        await self.ws.close()


async def accept(request: web.Request, config: Config, limiter: ConnectionLimiter,
                 serve: Callable[[web.WebSocketResponse, str], Awaitable[None]]
                 ) -> web.WebSocketResponse:
    """A control WebSocket: a foreign Origin refused before the upgrade; then the
    client (its address: the last X-Forwarded-For entry from a trusted proxy) held to
    the connection caps, and ``serve(ws, address)`` run while it is open."""
    allowed, origin = config.auth.allowed_origins, request.headers.get("Origin")
    if allowed and origin not in allowed:
        raise web.HTTPForbidden(text=f"origin {origin!r} is not allowed")
    max_bytes = config.server.max_message_bytes
    # autoping off: pongs are the liveness signal ControlConnection watches.
    ws = web.WebSocketResponse(max_msg_size=max_bytes + 1, autoping=False)
    await ws.prepare(request)
    # Counted once the handshake is done: a handshake that fails is never released.
    address = client_address(request.remote or "", request.headers.get("X-Forwarded-For"),
                             config.server.trusted_proxies)
    refusal = limiter.admit(address)
    if refusal is not None:
        # Told why, then closed at once: a flood holds no descriptors.
        await ws.send_json({"type": "error", "code": refusal, "message": REFUSALS[refusal]})
        await ws.close(code=WSCloseCode.TRY_AGAIN_LATER)
        return ws
    try:
        await serve(ws, address)
    finally:
        limiter.release(address)
    return ws
