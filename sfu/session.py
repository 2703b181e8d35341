"""One control WebSocket: its messages dispatched to the server (docs/protocol.md)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from sfu import rooms
from sfu.auth import AuthError
from sfu.control.schema import ProtocolError
from sfu.control.websocket import ControlConnection
from sfu.participants import Peer

if TYPE_CHECKING:
    from sfu.server import Server


class Session:
    """One WebSocket client: before ``join`` it has no Peer.

    A client that has not joined within ``limits.join_timeout_s`` of connecting (or of
    leaving), or whose join is refused, is told why and the socket is closed: sockets
    that never become participants do not pile up."""

    def __init__(self, server: Server, control: ControlConnection) -> None:
        self.server = server
        self.control = control
        self.peer: Peer | None = None
        self.ended = False  # closing: later messages are ignored
        self._join_deadline: asyncio.TimerHandle | None = None
        self._arm_join_deadline()

    async def handle(self, message: dict[str, Any]) -> None:
        if self.ended:
            return
        msg_type = message["type"]
        msg_id = message.get("id")
        try:
            reply = await self._dispatch(msg_type, message)
        except (ProtocolError, rooms.RoomError, AuthError) as exc:
            error = exc if isinstance(exc, ProtocolError) else ProtocolError(exc.code, str(exc))
            self.control.send_error(error, msg_type, msg_id)
            if msg_type == "join" and self.peer is None:
                self._end("join_refused")
            return
        if reply is not None:
            if msg_id is not None:
                reply["id"] = msg_id
            self.control.send(reply)

    async def _dispatch(self, msg_type: str, message: dict[str, Any]) -> dict[str, Any] | None:
        if msg_type == "ping":
            return {"type": "pong"}
        if msg_type == "join":
            if self.peer is not None:
                raise ProtocolError("already_joined", "this connection has joined already")
            self.peer = await self.server.join(self, message)
            self._cancel_join_deadline()
            return None  # join() sent `joined` before the events it caused
        peer = self.peer
        if peer is None:
            raise ProtocolError("not_joined", f"send join before {msg_type}")
        if msg_type == "publish":
            return await self.server.publish(peer, message["sdp"])
        if msg_type == "answer":
            await self.server.subscribe_answer(peer, message["sdp"])
            return None
        if msg_type == "candidate":
            await self.server.add_candidate(peer, message["pc"], message["candidate"])
            return None
        if msg_type == "subscribe":
            self.server.change_subscriptions(peer, message["tracks"], subscribe=True)
            return None
        if msg_type == "unsubscribe":
            self.server.change_subscriptions(peer, message["tracks"], subscribe=False)
            return None
        if msg_type == "restart":
            return await self.server.restart(peer, bool(message.get("relay_only")))
        if msg_type == "leave":
            await self.server.leave(peer, "left")
            self.peer = None
            self._arm_join_deadline()
            return {"type": "left"}
        raise ProtocolError("unknown_type", f"unknown message type {msg_type!r}", "type")

    def _arm_join_deadline(self) -> None:
        self._cancel_join_deadline()
        timeout = self.server.config.limits.join_timeout_s
        self._join_deadline = asyncio.get_running_loop().call_later(
            timeout, self._join_deadline_passed)

    def _cancel_join_deadline(self) -> None:
        if self._join_deadline is not None:
            self._join_deadline.cancel()
            self._join_deadline = None

    def _join_deadline_passed(self) -> None:
        self._join_deadline = None
        if self.peer is None and not self.ended:
            timeout = self.server.config.limits.join_timeout_s
            self.control.send_error(ProtocolError("join_timeout", f"no join within {timeout} s"))
            self._end("join_timeout")

    def _end(self, reason: str) -> None:
        """Close the socket after what is queued (the error saying why)."""
        self.ended = True
        self.server.control_connections.refused[reason] += 1
        self.control.finish()

    async def closed(self) -> None:
        """The WebSocket ended without `leave`: the participant may resume."""
        self._cancel_join_deadline()
        if self.peer is not None:
            await self.server.disconnected(self.peer, self.control)
            self.peer = None
