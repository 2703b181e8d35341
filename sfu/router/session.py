"""One control WebSocket: its messages turned into commands to its room's router
(docs/protocol.md)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from sfu.control.auth import AuthError
from sfu.control.schema import ProtocolError
from sfu.control.websocket import ControlConnection
from sfu.router.participants import ParticipantLink
from sfu.router.room import RoomError
from sfu.router.router import Router

# Finds or starts the room a `join` names and admits the participant there.
Joiner = Callable[[ControlConnection, dict[str, Any]], Awaitable[tuple[Router, ParticipantLink]]]


class Session:
    """One WebSocket client: before ``join`` it has no room.

    A client that has not joined within ``join_timeout_s`` of connecting (or of
    leaving), or whose join is refused, is told why and the socket is closed: sockets
    that never become participants do not pile up."""

    def __init__(self, control: ControlConnection, join: Joiner, join_timeout_s: float,
                 refused: Counter[str]) -> None:
        self.control = control
        self._join = join
        self._join_timeout_s = join_timeout_s
        self._refused = refused  # the server's count of connections closed early
        self.router: Router | None = None
        self.link: ParticipantLink | None = None
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
        except (ProtocolError, RoomError, AuthError) as exc:
            error = exc if isinstance(exc, ProtocolError) else ProtocolError(exc.code, str(exc))
            self.control.send_error(error, msg_type, msg_id)
            if msg_type == "join" and self.link is None:
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
            if self.link is not None:
                raise ProtocolError("already_joined", "this connection has joined already")
            self.router, self.link = await self._join(self.control, message)
            self._cancel_join_deadline()
            return None  # the router sent `joined` before the changes it caused
        router, link = self.router, self.link
        if router is None or link is None:
            raise ProtocolError("not_joined", f"send join before {msg_type}")
        if msg_type == "publish":
            return await router.publish(link, message["sdp"], message.get("tracks"))
        if msg_type == "unpublish":
            return router.unpublish_own(link, message["track"])
        if msg_type == "set_metadata":
            return router.set_own_metadata(link, message["metadata"])
        if msg_type == "answer":
            await router.negotiation.answer(link, message["sdp"])
            return None
        if msg_type == "candidate":
            await router.add_candidate(link, message["pc"], message["candidate"])
            return None
        if msg_type in ("subscribe", "unsubscribe"):
            router.change_subscriptions(link, message["tracks"], msg_type == "subscribe")
            return None
        if msg_type == "set_subscription":
            router.set_subscription(link, message)
            return None
        if msg_type == "mute":
            router.mute_own(link, message["track"], message["muted"])
            return None
        if msg_type == "restart":
            return await router.restart(link, bool(message.get("relay_only")))
        if msg_type == "leave":
            await router.leave(link, "left")
            self.router = self.link = None
            self._arm_join_deadline()
            return {"type": "left"}
        raise ProtocolError("unknown_type", f"unknown message type {msg_type!r}", "type")

    def _arm_join_deadline(self) -> None:
        self._cancel_join_deadline()
        self._join_deadline = asyncio.get_running_loop().call_later(
            self._join_timeout_s, self._join_deadline_passed)

    def _cancel_join_deadline(self) -> None:
        if self._join_deadline is not None:
            self._join_deadline.cancel()
            self._join_deadline = None

    def _join_deadline_passed(self) -> None:
        self._join_deadline = None
        if self.link is None and not self.ended:
            self.control.send_error(ProtocolError(
                "join_timeout", f"no join within {self._join_timeout_s} s"))
            self._end("join_timeout")

    def _end(self, reason: str) -> None:
        """Close the socket after what is queued (the error saying why)."""
        self.ended = True
        self._refused[reason] += 1
        self.control.finish()

    async def closed(self) -> None:
        """The WebSocket ended without `leave`: the participant may resume."""
        self._cancel_join_deadline()
        if self.router is not None and self.link is not None:
            await self.router.disconnected(self.link, self.control)
            self.router = self.link = None
