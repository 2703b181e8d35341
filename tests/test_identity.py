"""A participant is held to its token's identity: an empty identity is refused wherever
a token is minted or verified, and only the same identity replaces or resumes a
participant, under the grants of the token it comes with (issue: identity takeover)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest

from sfu.control.admin import mint_admin_token
from sfu.control.auth import AuthError, mint_token, verify_token
from sfu.server import Server
from tests.conftest import jwt_config, running
from tests.test_control import Ws

SECRET = "i" * 32


def token(identity: str, **grants: Any) -> str:
    return mint_token(SECRET, room="r", identity=identity, **grants)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    config = jwt_config(SECRET)
    config.liveness.reconnect_grace_s = 30
    async with running(config) as instance:
        yield instance


@pytest.fixture
async def connect(server: Server) -> AsyncIterator[Any]:
    async with aiohttp.ClientSession() as session:
        async def open_ws() -> Ws:
            return Ws(await session.ws_connect(f"http://127.0.0.1:{server.port}/ws"))

        yield open_ws


async def join(ws: Ws, tok: str, name: str, **extra: Any) -> dict[str, Any]:
    return await ws.request({"type": "join", "room": "r", "name": name, "token": tok, **extra})


async def dropped(server: Server, participant: str) -> None:
    """Wait until the server has seen ``participant``'s WebSocket go."""
    for _ in range(100):
        if server.participants[participant].control is None:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{participant} still connected")


@pytest.mark.parametrize("identity", ["", "   "])
async def test_an_empty_identity_is_refused_wherever_a_token_is_made_or_read(
        server: Server, connect: Any, identity: str) -> None:
    with pytest.raises(ValueError):
        mint_token(SECRET, room="r", identity=identity)
    with pytest.raises(ValueError):
        server.mint_token("r", identity)
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            f"http://127.0.0.1:{server.port}/admin/tokens",
            json={"room": "r", "identity": identity, "can_publish": False},
            headers={"Authorization": f"Bearer {mint_admin_token(SECRET)}"})
        assert response.status == 400
        assert (await response.json())["error"]["code"] == "bad_request"
    forged = jwt.encode({"sub": identity, "room": "r", "exp": time.time() + 60}, SECRET,
                        algorithm="HS256")
    with pytest.raises(AuthError):
        verify_token(SECRET, forged, "r")
    refused = await join(await connect(), forged, "alice")
    assert refused["type"] == "error" and refused["code"] == "unauthorized"
    assert not server.participants


async def test_the_same_identity_replaces_the_connected_session(server: Server,
                                                                connect: Any) -> None:
    alice, carol, carol_again = await connect(), await connect(), await connect()
    await join(alice, token("alice"), "alice")
    first = await join(carol, token("carol"), "carol")
    assert (await alice.recv())["type"] == "participant_joined"
    second = await join(carol_again, token("carol"), "Carol on her phone")
    assert second["type"] == "joined" and "resumed" not in second
    assert second["participant"]["id"] != first["participant"]["id"]
    replaced = await carol.recv()
    assert replaced["type"] == "error" and replaced["code"] == "replaced"
    assert (await carol.ws.receive(timeout=5)).type in (
        aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    assert [await alice.recv(), await alice.recv()] == [
        {"type": "participant_left", "participant": first["participant"]["id"]},
        {"type": "participant_joined", "participant": second["participant"]},
    ]


async def test_a_fresh_join_replaces_a_disconnected_participant(server: Server,
                                                                connect: Any) -> None:
    """Without `resume`, the same identity gets a fresh participant: the ghost's peer
    connections are not handed to a client that never had them."""
    alice, bob = await connect(), await connect()
    await join(alice, token("alice"), "alice")
    first = await join(bob, token("bob"), "bob")
    await alice.recv()
    await bob.ws.close()
    await dropped(server, first["participant"]["id"])
    fresh = await join(await connect(), token("bob"), "bob")
    assert "resumed" not in fresh and fresh["participant"]["id"] != first["participant"]["id"]
    assert await alice.recv() == {"type": "participant_left",
                                  "participant": first["participant"]["id"]}
    assert len(server.participants) == 2


async def test_another_identity_takes_over_nobody(server: Server, connect: Any) -> None:
    """Alice's WebSocket is down. Mallory, with a valid token of her own, joins with
    alice's name and alice's participant id (which everyone in the room knows), then
    even with alice's resume token: she is a new participant each time, never alice,
    and alice's place, grants and tracks stay hers to resume."""
    alice, bob = await connect(), await connect()
    first = await join(alice, token("alice"), "alice")
    alice_id = first["participant"]["id"]
    await join(bob, token("bob"), "bob")
    await alice.ws.close()
    await dropped(server, alice_id)
    mallory_token = token("mallory", can_publish=False)
    for resume in (alice_id, first["resume_token"]):
        attempt = await join(await connect(), mallory_token, "alice", resume=resume)
        assert attempt["type"] == "joined" and "resumed" not in attempt
        assert attempt["participant"]["id"] != alice_id
        assert server.participants[attempt["participant"]["id"]].participant.can_publish is False
        assert server.participants[alice_id].participant.identity == "alice"
        assert server.participants[alice_id].control is None  # not handed to mallory
    back = await join(await connect(), token("alice"), "alice", resume=first["resume_token"])
    assert back["resumed"] is True and back["participant"]["id"] == alice_id


async def test_a_resume_keeps_the_new_tokens_grants(server: Server, connect: Any) -> None:
    alice = await connect()
    first = await join(alice, token("alice"), "alice")
    alice_id = first["participant"]["id"]
    await alice.ws.close()
    await dropped(server, alice_id)
    again = await connect()
    back = await join(again, token("alice", can_publish=False), "alice",
                      resume=first["resume_token"])
    assert back["resumed"] is True and back["participant"]["id"] == alice_id
    assert server.participants[alice_id].participant.can_publish is False
    refused = await again.request({"type": "publish", "sdp": "v=0\r\n"})
    assert refused["type"] == "error" and refused["code"] == "forbidden"
