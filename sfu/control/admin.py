"""The admin HTTP API: the embedding API for backends in other languages.

All routes under ``/admin``; bodies and replies are JSON, or msgpack when the request
says ``Content-Type: application/msgpack`` (body) or ``Accept: application/msgpack``
(reply). Requests carry ``Authorization: Bearer <token>``, an HS256 JWT signed with
``auth.secret`` whose claims include ``"admin": true`` (``sfu token --admin``). In
development mode without a secret (loopback only) no token is needed. Every error,
aiohttp's own (no route, wrong method) included, is ``{"error": {"code", "message"}}``.

    GET    /admin/rooms                                          list rooms
    POST   /admin/rooms {name, max_participants?, auto_subscribe?}  create (201)
    GET    /admin/rooms/{room}                                   participants, tracks, stats
    DELETE /admin/rooms/{room}                                   close: everyone removed
    DELETE /admin/rooms/{room}/participants/{participant}        kick
    POST   /admin/rooms/{room}/participants/{participant}/permissions
           {can_publish?, can_subscribe?}
    POST   /admin/rooms/{room}/tracks/{track}/mute {muted}       server-side mute
    POST   /admin/tokens {room, identity, ttl?, can_publish?, can_subscribe?}  → {token}
    GET    /admin/traversal   peer connections by the NAT type clients reported at join
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import jwt
import msgpack
import orjson
from aiohttp import web

from sfu.config import Config
from sfu.control.auth import ALGORITHM

MSGPACK = "application/msgpack"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Error codes for the HTTP errors aiohttp raises (routing, body size, a bad body).
HTTP_ERROR_CODES = {400: "bad_message", 404: "not_found", 405: "method_not_allowed",
                    413: "too_large"}

logger = logging.getLogger(__name__)


def mint_admin_token(secret: str, ttl_seconds: int = 3600, now: float | None = None) -> str:
    import time

    issued = int(time.time() if now is None else now)
    return jwt.encode({"admin": True, "sub": "admin", "iat": issued,
                       "exp": issued + ttl_seconds}, secret, algorithm=ALGORITHM)


def reply(request: web.Request, body: Any, status: int = 200) -> web.Response:
    if MSGPACK in request.headers.get("Accept", ""):
        return web.Response(body=msgpack.packb(body), status=status, content_type=MSGPACK)
    return web.Response(body=orjson.dumps(body), status=status,
                        content_type="application/json")


def problem(request: web.Request, status: int, code: str, message: str) -> web.Response:
    return reply(request, {"error": {"code": code, "message": message}}, status)


async def read_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        if request.content_type == MSGPACK:
            body = msgpack.unpackb(raw, raw=False, max_ext_len=0)
        else:
            body = orjson.loads(raw)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise web.HTTPBadRequest(text=f"body is not valid: {exc}") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="body must be an object")
    return body


def field(body: dict[str, Any], name: str, kind: type, required: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        if required:
            raise FieldError(name, "is required")
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FieldError(name, f"must be {kind.__name__}")
    return value


class FieldError(ValueError):
    def __init__(self, name: str, problem_text: str) -> None:
        super().__init__(f"{name} {problem_text}")
        self.name = name


class AdminApi(Protocol):
    """What the admin API calls: the server's embedding API."""

    config: Config

    def rooms_info(self) -> list[dict[str, Any]]: ...
    def traversal(self) -> dict[str, dict[str, Any]]: ...
    def create_room(self, name: str, *, max_participants: int | None = None,
                    auto_subscribe: bool | None = None) -> Any: ...
    def room_info(self, name: str) -> dict[str, Any]: ...
    async def close_room(self, name: str) -> None: ...
    async def kick(self, room: str, participant: str) -> None: ...
    def update_permissions(self, room: str, participant: str, *,
                           can_publish: bool | None = None,
                           can_subscribe: bool | None = None,
                           can_publish_data: bool | None = None,
                           can_update_metadata: bool | None = None) -> None: ...
    def set_metadata(self, room: str, participant: str, metadata: dict[str, Any]) -> None: ...
    def send_data(self, room: str, payload: Any, *, to: list[str] | None = None,
                  topic: str | None = None, reliable: bool = True) -> int: ...
    def mute(self, room: str, track: str, muted: bool) -> None: ...
    def mint_token(self, room: str, identity: str, *, ttl_seconds: int = 3600,
                   can_publish: bool = True, can_subscribe: bool = True,
                   can_publish_data: bool = True, can_update_metadata: bool = False,
                   metadata: dict[str, Any] | None = None) -> str: ...


def routes(server: AdminApi) -> web.Application:
    app = web.Application(middlewares=[guard(server.config)])

    async def list_rooms(request: web.Request) -> web.Response:
        return reply(request, {"rooms": server.rooms_info()})

    async def create_room(request: web.Request) -> web.Response:
        body = await read_body(request)
        name = field(body, "name", str, required=True)
        server.create_room(name, max_participants=field(body, "max_participants", int),
                           auto_subscribe=field(body, "auto_subscribe", bool))
        return reply(request, server.room_info(name), 201)

    async def traversal(request: web.Request) -> web.Response:
        return reply(request, {"nat_types": server.traversal()})

    async def get_room(request: web.Request) -> web.Response:
        return reply(request, server.room_info(request.match_info["room"]))

    async def close_room(request: web.Request) -> web.Response:
        await server.close_room(request.match_info["room"])
        return web.Response(status=204)

    async def kick(request: web.Request) -> web.Response:
        await server.kick(request.match_info["room"], request.match_info["participant"])
        return web.Response(status=204)

    async def permissions(request: web.Request) -> web.Response:
        body = await read_body(request)
        server.update_permissions(
            request.match_info["room"], request.match_info["participant"],
            can_publish=field(body, "can_publish", bool),
            can_subscribe=field(body, "can_subscribe", bool),
            can_publish_data=field(body, "can_publish_data", bool),
            can_update_metadata=field(body, "can_update_metadata", bool),
        )
        return web.Response(status=204)

    async def metadata(request: web.Request) -> web.Response:
        body = await read_body(request)
        server.set_metadata(request.match_info["room"], request.match_info["participant"],
                            field(body, "metadata", dict, required=True))
        return web.Response(status=204)

    async def data(request: web.Request) -> web.Response:
        body = await read_body(request)
        if "payload" not in body:
            raise FieldError("payload", "is required")
        delivered = server.send_data(
            request.match_info["room"], body["payload"], to=field(body, "to", list),
            topic=field(body, "topic", str), reliable=field(body, "reliable", bool) is not False)
        return reply(request, {"delivered": delivered})

    async def mute(request: web.Request) -> web.Response:
        body = await read_body(request)
        server.mute(request.match_info["room"], request.match_info["track"],
                    field(body, "muted", bool, required=True))
        return web.Response(status=204)

    async def token(request: web.Request) -> web.Response:
        body = await read_body(request)
        ttl = field(body, "ttl", int) or 3600
        minted = server.mint_token(
            field(body, "room", str, required=True), field(body, "identity", str, required=True),
            ttl_seconds=ttl,
            can_publish=field(body, "can_publish", bool) is not False,
            can_subscribe=field(body, "can_subscribe", bool) is not False,
            can_publish_data=field(body, "can_publish_data", bool) is not False,
            can_update_metadata=field(body, "can_update_metadata", bool) is True,
            metadata=field(body, "metadata", dict),
        )
        return reply(request, {"token": minted}, 201)

    app.router.add_get("/rooms", list_rooms)
    app.router.add_post("/rooms", create_room)
    app.router.add_get("/rooms/{room}", get_room)
    app.router.add_delete("/rooms/{room}", close_room)
    app.router.add_delete("/rooms/{room}/participants/{participant}", kick)
    app.router.add_post("/rooms/{room}/participants/{participant}/permissions", permissions)
    app.router.add_post("/rooms/{room}/participants/{participant}/metadata", metadata)
    app.router.add_post("/rooms/{room}/data", data)
    app.router.add_post("/rooms/{room}/tracks/{track}/mute", mute)
    app.router.add_post("/tokens", token)
    app.router.add_get("/traversal", traversal)
    return app


def guard(config: Config) -> Any:
    """The admin API's middleware: the bearer token checked, every error in one JSON
    envelope. The front of `sfu serve --workers` puts it before its own routes too."""
    @web.middleware
    async def checked(request: web.Request, handler: Handler) -> web.StreamResponse:
        secret = config.auth.secret
        if secret:
            header = request.headers.get("Authorization", "")
            if not header.startswith("Bearer "):
                return problem(request, 401, "unauthorized", "an admin bearer token is required")
            try:
                claims = jwt.decode(header[7:], secret, algorithms=[ALGORITHM],
                                    options={"require": ["exp"]})
            except jwt.PyJWTError as exc:
                return problem(request, 401, "unauthorized", f"invalid token: {exc}")
            if claims.get("admin") is not True:
                return problem(request, 403, "forbidden", "the token has no admin grant")
        elif config.auth.mode != "development":
            return problem(request, 403, "forbidden", "no auth.secret to check tokens with")
        try:
            return await handler(request)
        except KeyError as exc:
            return problem(request, 404, "not_found", str(exc.args[0]) if exc.args else "")
        except FieldError as exc:
            return problem(request, 400, "bad_field", str(exc))
        except ValueError as exc:
            status = 409 if "exists" in str(exc) else 400
            return problem(request, status, "conflict" if status == 409 else "bad_request",
                           str(exc))
        except web.HTTPException as exc:
            # aiohttp's own errors (no route, wrong method, body too large) would be plain
            # text: a backend's client parses one envelope whatever went wrong.
            if exc.status < 400:
                raise
            return _http_problem(request, exc)
        except Exception:
            logger.exception("admin API: %s %s failed", request.method, request.path)
            return problem(request, 500, "internal_error", "internal server error")

    return checked


def _http_problem(request: web.Request, exc: web.HTTPException) -> web.Response:
    if exc.status == 404:
        message = f"no route {request.method} {request.path}"
    elif exc.status == 405:
        message = (f"{request.method} is not allowed on {request.path} "
                   f"(allowed: {exc.headers.get('Allow', '')})")
    else:
        message = exc.text or exc.reason
    response = problem(request, exc.status, HTTP_ERROR_CODES.get(exc.status, "http_error"),
                       message)
    if "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response
