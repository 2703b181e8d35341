"""The admin HTTP API: every endpoint, authorized and refused; JSON and msgpack."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jwt
import msgpack
import pytest

from sfu.control.admin import mint_admin_token
from sfu.control.auth import mint_token
from sfu.server import Server
from tests.conftest import jwt_config, running
from tests.test_control import Ws

SECRET = "a" * 32


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with running(jwt_config(SECRET)) as instance:
        yield instance


class Admin:
    def __init__(self, session: aiohttp.ClientSession, base: str, token: str | None) -> None:
        self.session, self.base, self.token = session, base, token

    async def call(self, method: str, path: str, body: Any = None,
                   msgpack_format: bool = False) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        kwargs: dict[str, Any] = {}
        if msgpack_format:
            headers["Accept"] = headers["Content-Type"] = "application/msgpack"
            if body is not None:
                kwargs["data"] = msgpack.packb(body)
        elif body is not None:
            kwargs["json"] = body
        async with self.session.request(method, self.base + path, headers=headers,
                                        **kwargs) as response:
            raw = await response.read()
            if not raw:
                return response.status, None
            if response.content_type == "application/msgpack":
                return response.status, msgpack.unpackb(raw)
            return response.status, await response.json()


@pytest.fixture
async def admin(server: Server) -> AsyncIterator[Admin]:
    async with aiohttp.ClientSession() as session:
        yield Admin(session, f"http://127.0.0.1:{server.port}/admin",
                    mint_admin_token(SECRET))


async def test_rooms_lifecycle(admin: Admin, server: Server) -> None:
    assert await admin.call("GET", "/rooms") == (200, {"rooms": []})
    status, room = await admin.call("POST", "/rooms", {"name": "board", "max_participants": 3,
                                                        "auto_subscribe": False})
    assert status == 201 and room["max_participants"] == 3 and room["auto_subscribe"] is False
    assert (await admin.call("POST", "/rooms", {"name": "board"}))[0] == 409
    status, listed = await admin.call("GET", "/rooms", msgpack_format=True)
    assert listed == {"rooms": [{"name": "board", "participants": 0, "tracks": 0}]}
    # An API-created room stays when empty, and applies its own limit.
    token = (await admin.call("POST", "/tokens", {"room": "board", "identity": "ann"}))[1]
    async with aiohttp.ClientSession() as session:
        ws = Ws(await session.ws_connect(f"http://127.0.0.1:{server.port}/ws"))
        joined = await ws.request({"type": "join", "room": "board", "name": "Ann",
                                   "token": token["token"]})
        assert joined["type"] == "joined"
        info = (await admin.call("GET", "/rooms/board"))[1]
        assert [(p["identity"], p["connected"]) for p in info["participants"]] == [("ann", True)]
        assert (await admin.call("DELETE", "/rooms/board")) == (204, None)
        assert (await ws.recv())["code"] == "room_closed"
    assert server.rooms == {} and server.participants == {}
    assert (await admin.call("GET", "/rooms/board"))[0] == 404


async def test_kick_and_permissions(admin: Admin, server: Server) -> None:
    async with aiohttp.ClientSession() as session:
        ws = Ws(await session.ws_connect(f"http://127.0.0.1:{server.port}/ws"))
        joined = await ws.request({"type": "join", "room": "r", "name": "Bo",
                                   "token": mint_token(SECRET, room="r", identity="bo")})
        participant = joined["participant"]["id"]
        path = f"/rooms/r/participants/{participant}"
        assert (await admin.call("POST", path + "/permissions",
                                 {"can_publish": False}))[0] == 204
        refused = await ws.request({"type": "publish", "sdp": "v=0\r\n"})
        assert refused["code"] == "forbidden"
        assert (await admin.call("POST", path + "/permissions", {"can_publish": "yes"}))[0] == 400
        assert (await admin.call("DELETE", path)) == (204, None)
        assert (await ws.recv())["code"] == "kicked"
        assert (await admin.call("DELETE", path))[0] == 404
    assert server.participants == {}


async def test_tokens_and_errors(admin: Admin) -> None:
    before = time.time()
    status, body = await admin.call("POST", "/tokens", {"room": "x", "identity": "y", "ttl": 60,
                                                         "can_subscribe": False},
                                    msgpack_format=True)
    assert status == 201
    claims = jwt.decode(body["token"], SECRET, algorithms=["HS256"])
    assert (claims["room"], claims["sub"]) == ("x", "y")
    assert (claims["can_publish"], claims["can_subscribe"]) == (True, False)
    assert claims["exp"] - claims["iat"] == 60
    assert int(before) <= claims["iat"] <= time.time()
    assert (await admin.call("POST", "/tokens", {"room": "x"}))[0] == 400
    assert (await admin.call("POST", "/rooms/none/tracks/TR_x/mute", {"muted": True}))[0] == 404
    status, _ = await admin.call("POST", "/rooms", "not an object")
    assert status == 400


@pytest.mark.parametrize(
    ("token", "status"),
    [
        (None, 401),
        ("garbage", 401),
        (mint_admin_token("wrong" * 8), 401),
        (mint_admin_token(SECRET, ttl_seconds=-5), 401),
        (mint_token(SECRET, room="r", identity="u"), 403),  # a join token is not admin
    ],
)
async def test_refused(admin: Admin, token: str | None, status: int) -> None:
    intruder = Admin(admin.session, admin.base, token)
    for method, path, body in [
        ("GET", "/rooms", None), ("POST", "/rooms", {"name": "n"}), ("GET", "/rooms/n", None),
        ("DELETE", "/rooms/n", None), ("DELETE", "/rooms/n/participants/p", None),
        ("POST", "/rooms/n/participants/p/permissions", {}),
        ("POST", "/rooms/n/tracks/t/mute", {"muted": True}),
        ("POST", "/tokens", {"room": "n", "identity": "i"}),
    ]:
        got, reply = await intruder.call(method, path, body)
        assert got == status, (method, path, reply)


@pytest.mark.parametrize("msgpack_format", [False, True])
async def test_every_error_is_the_envelope(
    admin: Admin, server: Server, monkeypatch: pytest.MonkeyPatch, msgpack_format: bool
) -> None:
    """aiohttp's own errors too (no route, wrong method, body too large), and a bug."""
    def broken() -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(server, "rooms_info", broken)
    for method, path, body, status, code in [
        ("GET", "/nope", None, 404, "not_found"),
        ("GET", "", None, 404, "not_found"),
        ("PUT", "/rooms", {}, 405, "method_not_allowed"),
        ("DELETE", "/tokens", None, 405, "method_not_allowed"),
        ("POST", "/rooms", {"name": "x" * 2_000_000}, 413, "too_large"),
        ("POST", "/rooms", {"name": 5}, 400, "bad_field"),
        ("GET", "/rooms", None, 500, "internal_error"),
    ]:
        got, reply = await admin.call(method, path, body, msgpack_format=msgpack_format)
        assert (got, reply["error"]["code"]) == (status, code), (method, path, reply)
        assert set(reply["error"]) == {"code", "message"}
        assert reply["error"]["message"]
    allow = await admin.session.put(admin.base + "/rooms",
                                    headers={"Authorization": f"Bearer {admin.token}"})
    assert set(allow.headers["Allow"].split(",")) == {"GET", "HEAD", "POST"}
    allow.release()
