"""A participant's control WebSocket, relayed by the front to its room's worker.

The front reads the first message (a `join` names the room), opens a WebSocket to the
room's worker on loopback with the client's address in X-Forwarded-For, and copies
frames both ways as they are — text, binary, pings and pongs (the worker's liveness
pings reach the client and its pongs come back). A later `join` for a room on another
worker (after `leave`) moves the relay there. When the worker dies, the client gets
`error {code: "room_moved"}` and the socket closes: it joins again, and the room is
placed on a live worker.
"""

from __future__ import annotations

from typing import Any

from aiohttp import ClientSession, ClientWebSocketResponse, WSMsgType, web

from sfu.control import codec
from sfu.control.schema import ProtocolError

ROOM_MOVED = {"type": "error", "code": "room_moved",
              "message": "the room's worker stopped: join again to continue the room"}


def room_of(message: Any, max_bytes: int) -> str | None:
    """The room a client frame joins, if it is a `join` (JSON text or msgpack)."""
    if message.type == WSMsgType.TEXT and '"join"' not in message.data:
        return None  # cheap: most frames are not joins
    if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
        return None
    try:
        body = codec.decode(message.data, max_bytes)
    except ProtocolError:  # the worker answers it as it would alone
        return None
    if isinstance(body, dict) and body.get("type") == "join" and isinstance(body.get("room"), str):
        room: str = body["room"]
        return room
    return None


async def forward(message: Any, to: ClientWebSocketResponse | web.WebSocketResponse) -> bool:
    """Copy a frame to the other side as it is; False for the end of the socket (close,
    error)."""
    if message.type == WSMsgType.TEXT:
        await to.send_str(message.data)
    elif message.type == WSMsgType.BINARY:
        await to.send_bytes(message.data)
    elif message.type == WSMsgType.PING:
        await to.ping(message.data)
    elif message.type == WSMsgType.PONG:
        await to.pong(message.data)
    else:  # CLOSE, CLOSING, CLOSED, ERROR
        return False
    return True


async def copy_downstream(upstream: ClientWebSocketResponse, ws: web.WebSocketResponse
                          ) -> int | None:
    """Copy the worker's frames to the client until the worker's socket ends: the close
    code the worker sent, or None when it ended without one (the worker died)."""
    async for message in upstream:
        if not await forward(message, ws):
            break
    code = upstream.close_code
    return None if code is None or code == 1006 else code


# On a WebSocket one node relays to another: the room's node serves it itself.
RELAYED_HEADER = "X-Sfu-Relayed"


async def open_upstream(session: ClientSession, url: str, request: web.Request,
                        address: str, max_bytes: int, node: str | None = None
                        ) -> ClientWebSocketResponse:
    """The WebSocket to the room's worker (or, with ``node``, to the room's node,
    saying which node relays)."""
    headers = {"X-Forwarded-For": address}
    if "Origin" in request.headers:
        headers["Origin"] = request.headers["Origin"]
    if node is not None:
        headers[RELAYED_HEADER] = node
    return await session.ws_connect(url, headers=headers, autoping=False, autoclose=False,
                                    max_msg_size=max_bytes + 1)
