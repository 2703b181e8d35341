"""One control WebSocket: its messages dispatched to the server (docs/protocol.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sfu import rooms
from sfu.auth import AuthError
from sfu.control.schema import ProtocolError
from sfu.control.websocket import ControlConnection
from sfu.participants import Peer

if TYPE_CHECKING:
    from sfu.server import Server


class Session:
    """One WebSocket client: before ``join`` it has no Peer."""

    def __init__(self, server: Server, control: ControlConnection) -> None:
        self.server = server
        self.control = control
        self.peer: Peer | None = None

    async def handle(self, message: dict[str, Any]) -> None:
        msg_type = message["type"]
        msg_id = message.get("id")
        try:
            reply = await self._dispatch(msg_type, message)
        except ProtocolError as exc:
            self.control.send_error(exc, msg_type, msg_id)
            return
        except (rooms.RoomError, AuthError) as exc:
            self.control.send_error(ProtocolError(exc.code, str(exc)), msg_type, msg_id)
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
            return {"type": "left"}
        raise ProtocolError("unknown_type", f"unknown message type {msg_type!r}", "type")

    async def closed(self) -> None:
        """The WebSocket ended without `leave`: the participant may resume."""
        if self.peer is not None:
            await self.server.disconnected(self.peer, self.control)
            self.peer = None
