"""The control channel of a live server: replies, errors, and isolation between sessions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgpack
import orjson
import pytest

from sfu.server import Server


class Ws:
    """A raw WebSocket client that speaks JSON or msgpack frames."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, message: Any, binary: bool = False) -> None:
        if binary:
            await self.ws.send_bytes(msgpack.packb(message))
        else:
            await self.ws.send_str(orjson.dumps(message).decode())

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        frame = await self.ws.receive(timeout=timeout)
        if frame.type == aiohttp.WSMsgType.BINARY:
            return msgpack.unpackb(frame.data)  # type: ignore[no-any-return]
        assert frame.type == aiohttp.WSMsgType.TEXT, f"unexpected frame {frame}"
        return orjson.loads(frame.data)  # type: ignore[no-any-return]

    async def request(self, message: dict[str, Any], binary: bool = False) -> dict[str, Any]:
        await self.send(message, binary)
        return await self.recv()


@pytest.fixture
async def connect(server: Server) -> AsyncIterator[Any]:
    session = aiohttp.ClientSession()
    sockets: list[aiohttp.ClientWebSocketResponse] = []

    async def open_ws() -> Ws:
        ws = await session.ws_connect(f"http://127.0.0.1:{server.port}/ws")
        sockets.append(ws)
        return Ws(ws)

    yield open_ws
    for ws in sockets:
        await ws.close()
    await session.close()


async def test_ping_and_ids_are_echoed(connect: Any) -> None:
    ws = await connect()
    assert await ws.request({"type": "ping", "id": 7}) == {"type": "pong", "id": 7}
    assert await ws.request({"type": "ping", "id": "x"}, binary=True) == {"type": "pong", "id": "x"}


@pytest.mark.parametrize(
    ("frame", "code", "field"),
    [
        ("{not json", "bad_message", None),
        ("[1, 2]", "bad_message", None),
        ('{"type": 5}', "bad_field", "type"),
        ('{"type": "dance"}', "unknown_type", "type"),
        ('{"type": "join", "name": "a"}', "bad_field", "room"),
        ('{"type": "join", "room": "a b", "name": "a"}', "bad_field", "room"),
        ('{"type": "join", "room": "r", "name": ""}', "bad_field", "name"),
        ('{"type": "ping", "id": true}', "bad_field", "id"),
        ('{"type": "publish", "sdp": "v=0"}', "not_joined", None),
        ('{"type": "subscribe", "tracks": []}', "bad_field", "tracks"),
    ],
)
async def test_malformed_messages_get_errors_and_the_session_stays_open(
    connect: Any, frame: str, code: str, field: str | None
) -> None:
    ws = await connect()
    await ws.ws.send_str(frame)
    error = await ws.recv()
    assert error["type"] == "error" and error["code"] == code, error
    assert error.get("field") == field
    assert error["message"]
    assert await ws.request({"type": "ping"}) == {"type": "pong"}


async def test_bad_msgpack_and_oversize_frames(connect: Any, server: Server) -> None:
    ws = await connect()
    await ws.ws.send_bytes(b"\xc1")  # never used in msgpack
    assert (await ws.recv())["code"] == "bad_message"
    await ws.send({"type": "ping", "pad": "x" * (server.config.server.max_message_bytes + 10)})
    # What docs/protocol.md says: a frame over max_message_bytes closes the socket with
    # 1009 (Message Too Big), and nobody else is affected.
    frame = await ws.ws.receive(timeout=5)
    assert frame.type == aiohttp.WSMsgType.CLOSE and frame.data == 1009, frame
    other = await connect()
    assert await other.request({"type": "ping"}) == {"type": "pong"}


async def test_join_events_and_leave(connect: Any, server: Server) -> None:
    alice, bob = await connect(), await connect()
    joined = await alice.request({"type": "join", "room": "r1", "name": "alice", "id": 1})
    assert joined["type"] == "joined" and joined["id"] == 1
    assert joined["participant"]["name"] == "alice" and joined["participants"] == []
    assert joined["tracks"] == [] and joined["ice_servers"] == []
    bob_joined = await bob.request({"type": "join", "room": "r1", "name": "bob"}, binary=True)
    assert bob_joined["participants"] == [joined["participant"]]
    assert await alice.recv() == {"type": "participant_joined",
                                  "participant": bob_joined["participant"]}
    again = await alice.request({"type": "join", "room": "r1", "name": "alice"})
    assert again["code"] == "already_joined"
    unknown = await alice.request({"type": "subscribe", "tracks": ["TR_nope"]})
    assert unknown["code"] == "unknown_track"
    assert joined["simulcast"] is True  # the server takes simulcast (rtc.simulcast)
    preference = await alice.request({"type": "set_subscription", "track": "TR_nope",
                                      "max_width": 320})
    assert preference["code"] == "unknown_track"
    assert preference["ref"] == "set_subscription"
    nothing = await alice.request({"type": "set_subscription", "track": "TR_nope"})
    assert nothing["code"] in ("unknown_track", "bad_field")
    assert (await bob.request({"type": "leave", "id": 9}, binary=True)) == {"type": "left", "id": 9}
    assert await alice.recv() == {"type": "participant_left",
                                  "participant": bob_joined["participant"]["id"]}
    assert list(server.rooms) == ["r1"] and len(server.participants) == 1


async def test_bad_sdp_is_an_error_not_a_crash(connect: Any) -> None:
    ws = await connect()
    await ws.request({"type": "join", "room": "r2", "name": "a"})
    reply = await ws.request({"type": "publish", "sdp": "v=0\r\nnonsense\r\n", "id": 3})
    assert reply["type"] == "error" and reply["code"] == "negotiation_failed" and reply["id"] == 3
    reply = await ws.request({"type": "answer", "sdp": "v=0\r\n"})
    assert reply["code"] == "negotiation_failed"
    assert await ws.request({"type": "ping"}) == {"type": "pong"}


async def test_room_full(connect: Any, server: Server) -> None:
    server.config.rooms.max_participants = 1
    first, second = await connect(), await connect()
    await first.request({"type": "join", "room": "small", "name": "a"})
    assert (await second.request({"type": "join", "room": "small", "name": "b"}))["code"] == (
        "room_full")


async def test_disconnect_without_leave_cleans_up(connect: Any, server: Server) -> None:
    server.config.liveness.reconnect_grace_s = 0  # no resume: removed at once
    alice, bob = await connect(), await connect()
    await alice.request({"type": "join", "room": "r3", "name": "alice"})
    await bob.request({"type": "join", "room": "r3", "name": "bob"})
    await alice.recv()  # participant_joined
    await bob.ws.close()
    left = await alice.recv()
    assert left["type"] == "participant_left"
    await alice.ws.close()
    for _ in range(50):
        if not server.rooms:
            break
        await asyncio.sleep(0.05)
    assert server.rooms == {} and server.participants == {}


async def test_resume_within_grace_keeps_the_participant(connect: Any, server: Server) -> None:
    server.config.liveness.reconnect_grace_s = 1
    alice, bob = await connect(), await connect()
    await alice.request({"type": "join", "room": "g", "name": "alice"})
    first = await bob.request({"type": "join", "room": "g", "name": "bob"})
    await alice.recv()  # participant_joined
    await bob.ws.close()
    await asyncio.sleep(0.3)
    assert len(server.participants) == 2  # still there, disconnected
    again = await connect()
    resumed = await again.request({"type": "join", "room": "g", "name": "bob",
                                   "resume": first["resume_token"]})
    assert resumed["resumed"] is True
    assert resumed["participant"]["id"] == first["participant"]["id"]
    assert resumed["participants"] == [{"id": server.participants[next(
        p for p in server.participants if p != first["participant"]["id"])].id, "name": "alice",
            "metadata": {}}]
    # A resume token serves once: the reply carries the next one.
    assert resumed["resume_token"] != first["resume_token"]
    # alice saw neither a leave nor a join.
    assert await alice.request({"type": "ping"}) == {"type": "pong"}
    # Gone for longer than the grace period: removed, and alice is told.
    await again.ws.close()
    left = await alice.recv(timeout=5)
    assert left == {"type": "participant_left", "participant": first["participant"]["id"]}
    assert len(server.participants) == 1


async def test_a_display_name_is_not_an_identity(connect: Any, server: Server) -> None:
    """Without tokens nobody has an identity: a second "carol" is another participant
    (told apart by id), and the first is neither replaced nor resumed by her name or id."""
    server.config.liveness.reconnect_grace_s = 30
    alice, carol, other_carol = await connect(), await connect(), await connect()
    await alice.request({"type": "join", "room": "dup", "name": "alice"})
    first = await carol.request({"type": "join", "room": "dup", "name": "carol"})
    assert (await alice.recv())["type"] == "participant_joined"
    second = await other_carol.request({"type": "join", "room": "dup", "name": "carol",
                                        "resume": first["participant"]["id"]})
    assert second["type"] == "joined" and "resumed" not in second
    assert second["participant"]["id"] != first["participant"]["id"]
    assert await alice.recv() == {"type": "participant_joined",
                                  "participant": second["participant"]}
    assert await carol.recv() == {"type": "participant_joined",  # still in
                                  "participant": second["participant"]}
    assert [p.participant.name for p in server.participants.values()].count("carol") == 2
    # The first carol's WebSocket drops: her participant id does not resume her.
    await carol.ws.close()
    await asyncio.sleep(0.2)
    third = await (await connect()).request({"type": "join", "room": "dup", "name": "carol",
                                             "resume": first["participant"]["id"]})
    assert "resumed" not in third and third["participant"]["id"] != first["participant"]["id"]
    assert len(server.participants) == 4


async def test_resume_while_the_old_socket_still_looks_open(connect: Any, server: Server) -> None:
    """A phone that changes networks leaves its old WebSocket half-open: the server
    learns it is dead only when pings go unanswered. A resume does not wait for that:
    the old socket is closed and the participant carries on."""
    alice, bob = await connect(), await connect()
    await alice.request({"type": "join", "room": "h", "name": "alice"})
    first = await bob.request({"type": "join", "room": "h", "name": "bob"})
    await alice.recv()  # participant_joined
    again = await connect()
    resumed = await again.request({"type": "join", "room": "h", "name": "bob",
                                   "resume": first["resume_token"]})
    assert resumed["resumed"] is True
    assert resumed["participant"]["id"] == first["participant"]["id"]
    frame = await bob.ws.receive(timeout=5)  # the old socket is closed by the server
    assert frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), frame
    assert len(server.participants) == 2
    assert await again.request({"type": "ping"}) == {"type": "pong"}
    # alice saw neither a leave nor a join.
    assert await alice.request({"type": "ping"}) == {"type": "pong"}
