"""Grants, limits and liveness of the control channel: refused with the right error
code, and nobody else affected."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import pytest

from sfu.config import Config, ConfigError
from sfu.control.auth import mint_token
from sfu.server import Server
from tests.conftest import jwt_config, make_config, running
from tests.test_control import Ws

SECRET = "s" * 32


def token(room: str = "r", identity: str = "alice", **claims: Any) -> str:
    return mint_token(SECRET, room=room, identity=identity, **claims)


@pytest.fixture
async def jwt_server() -> AsyncIterator[Server]:
    async with running(jwt_config(SECRET)) as server:
        yield server


@pytest.fixture
async def connect(jwt_server: Server) -> AsyncIterator[Any]:
    session = aiohttp.ClientSession()

    async def open_ws(**kwargs: Any) -> Ws:
        return Ws(await session.ws_connect(f"http://127.0.0.1:{jwt_server.port}/ws", **kwargs))

    yield open_ws
    await session.close()


async def join(ws: Ws, tok: str | None, room: str = "r", name: str = "n") -> dict[str, Any]:
    message: dict[str, Any] = {"type": "join", "room": room, "name": name}
    if tok is not None:
        message["token"] = tok
    return await ws.request(message)


@pytest.mark.parametrize(
    ("make_token", "code"),
    [
        (lambda: None, "unauthorized"),
        (lambda: "not-a-jwt", "unauthorized"),
        (lambda: jwt.encode({"sub": "a", "room": "r", "exp": time.time() + 60}, "x" * 32,
                            algorithm="HS256"), "unauthorized"),  # wrong secret
        (lambda: token(ttl_seconds=-10), "unauthorized"),  # expired
        (lambda: jwt.encode({"sub": "a", "room": "r", "exp": time.time() + 600,
                             "nbf": time.time() + 300}, SECRET, algorithm="HS256"),
         "unauthorized"),  # not yet valid
        (lambda: jwt.encode({"sub": "a", "room": "r"}, SECRET, algorithm="HS256"),
         "unauthorized"),  # no expiry
        (lambda: jwt.encode({"sub": "a", "room": "r", "exp": time.time() + 60}, SECRET,
                            algorithm="HS512"), "unauthorized"),  # algorithm not allowed
        (lambda: token(room="other"), "forbidden"),
    ],
)
async def test_join_refused(connect: Any, make_token: Any, code: str) -> None:
    bystander = await connect()
    assert (await join(bystander, token(identity="bystander")))["type"] == "joined"
    ws = await connect()
    reply = await join(ws, make_token())
    assert reply["type"] == "error" and reply["code"] == code, reply
    # Refused: closed at once, so refused sockets cannot pile up.
    assert (await ws.ws.receive(timeout=5)).type in (
        aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    assert await bystander.request({"type": "ping"}) == {"type": "pong"}


async def test_grants_are_checked_per_action(connect: Any, jwt_server: Server) -> None:
    viewer = await connect()
    assert (await join(viewer, token(identity="viewer", can_publish=False)))["type"] == "joined"
    refused = await viewer.request({"type": "publish", "sdp": "v=0\r\n"})
    assert refused["code"] == "forbidden"
    speaker = await connect()
    assert (await join(speaker, token(identity="speaker", can_subscribe=False)))["type"] == (
        "joined")
    assert (await viewer.recv())["type"] == "participant_joined"
    refused = await speaker.request({"type": "subscribe", "tracks": ["TR_x"]})
    assert refused["code"] == "forbidden"
    identities = sorted(p.participant.identity for p in jwt_server.participants.values())
    assert identities == ["speaker", "viewer"]  # the token's subject, not the name


async def test_message_rate_limit(connect: Any, jwt_server: Server) -> None:
    limits = jwt_server.config.limits
    flooder, bystander = await connect(), await connect()
    for _ in range(limits.message_burst + 40):
        await flooder.send({"type": "ping"})
    replies = [await flooder.recv() for _ in range(limits.message_burst + 40)]
    limited = [r for r in replies if r.get("code") == "rate_limited"]
    assert len(limited) >= 30, f"{len(limited)} of {len(replies)} limited"
    assert sum(r["type"] == "pong" for r in replies) <= limits.message_burst + 10
    assert await bystander.request({"type": "ping"}) == {"type": "pong"}
    await asyncio.sleep(1.0)  # the bucket refills
    assert await flooder.request({"type": "ping"}) == {"type": "pong"}


async def test_room_count_limit(connect: Any, jwt_server: Server) -> None:
    jwt_server.config.limits.max_rooms = 1
    a, b = await connect(), await connect()
    assert (await join(a, token(room="one", identity="a"), room="one"))["type"] == "joined"
    reply = await join(b, token(room="two", identity="b"), room="two")
    assert reply["code"] == "too_many_rooms"
    again = await connect()  # a refused join's socket is closed
    assert (await join(again, token(room="one", identity="b"), room="one"))["type"] == "joined"


def sdp_with(media_lines: int, kind: str = "video", padding: int = 0) -> str:
    lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0"]
    for i in range(media_lines):
        lines += [f"m={kind} 9 UDP/TLS/RTP/SAVPF 96", f"a=mid:{i}", "a=sendonly"]
    return "\r\n".join(lines) + "\r\n" + "a=x:" + "y" * padding + "\r\n"


@pytest.mark.parametrize(
    ("sdp", "code", "field"),
    [
        (sdp_with(9), "too_many_tracks", "sdp"),  # default max 8 tracks
        (sdp_with(33, kind="application"), "bad_field", "sdp"),  # default max 32 m-lines
        (sdp_with(1, padding=70_000), "bad_field", "sdp"),  # larger than max_sdp_bytes
    ],
)
async def test_sdp_limits(connect: Any, sdp: str, code: str, field: str) -> None:
    ws = await connect(max_msg_size=0)
    await join(ws, token())
    reply = await ws.request({"type": "publish", "sdp": sdp})
    assert (reply["code"], reply.get("field")) == (code, field), reply


async def test_allowed_origins(jwt_server: Server) -> None:
    jwt_server.config.auth.allowed_origins = ["https://app.example"]
    url = f"http://127.0.0.1:{jwt_server.port}/ws"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(url, headers={"Origin": "https://evil.example"})
        assert refused.value.status == 403
        ws = await session.ws_connect(url, headers={"Origin": "https://app.example"})
        assert await Ws(ws).request({"type": "ping"}) == {"type": "pong"}
        await ws.close()


async def test_silent_connection_is_dropped() -> None:
    config = make_config()
    config.liveness.ping_interval_s = 1
    config.liveness.timeout_s = 2
    config.liveness.reconnect_grace_s = 0
    server = Server(config)
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            # autoping off and never reading: the server's pings go unanswered.
            ws = await session.ws_connect(f"http://127.0.0.1:{server.port}/ws", autoping=False)
            await ws.send_json({"type": "join", "room": "quiet", "name": "q"})
            started = time.monotonic()
            while server.participants or time.monotonic() - started < 0.5:
                await asyncio.sleep(0.1)
                assert time.monotonic() - started < 8, "silent participant was not dropped"
            elapsed = time.monotonic() - started
            print(f"silent participant removed after {elapsed:.1f} s (timeout 2 s)")
            assert 1.5 < elapsed < 6
            assert server.rooms == {}
    finally:
        await server.stop()


def test_non_loopback_bind_needs_a_secret() -> None:
    config = Config()
    config.server.host = "0.0.0.0"
    with pytest.raises(ConfigError, match=r"server\.host"):
        Server(config)
    config.auth.mode = "jwt"
    config.auth.secret = "short"
    with pytest.raises(ConfigError, match=r"auth\.secret"):
        Server(config)
