"""``Server``: HTTP and WebSocket serving, and the rooms' routers.

Each room is a ``Router`` (``sfu.router``); each WebSocket's messages reach its room's
router through a ``Session``. Everything within a room — joining, publishing,
negotiation, RTCP timers — is the router's; this module starts and stops, and finds the
room. The embedding API (also behind the admin API) is ``sfu.embedding``'s.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sfu import events
from sfu.config import Config
from sfu.control import admin
from sfu.control.admission import (
    ConnectionLimiter,
    connection_budget,
    http_limiter,
)
from sfu.control.auth import AuthError, Grants, verify_token
from sfu.control.listener import GatedListener
from sfu.control.tls import Tls, make_tls
from sfu.control.websocket import ConnectionLimits, ControlConnection, accept
from sfu.embedding import Embedding
from sfu.fastpath import make_forwarder
from sfu.metrics import registry
from sfu.router.context import RouterContext
from sfu.router.participants import ParticipantLink
from sfu.router.room import Room, RoomError, Track
from sfu.router.router import Router
from sfu.router.session import Session
from sfu.webhooks import Webhooks

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"


class Server(Embedding):
    """The SFU. ``await start()`` serves HTTP/WebSocket; ``await stop()`` ends everything."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.config.validate()
        rtc = self.config.rtc
        self.events = events.EventBus()
        forwarder = make_forwarder(rtc.forwarder, rtc.keyframe_request_interval_ms * 1000)
        self.ctx = RouterContext(self.config, forwarder, self.events)
        forwarder.set_loss_listener(self.ctx.on_loss)
        forwarder.set_feedback_listener(self.ctx.on_feedback)
        self.routers: dict[str, Router] = {}
        self._kept_rooms: set[str] = set()
        self.webhooks = Webhooks(self.config.webhooks, self.events, self._webhook_outcome,
                                 self.config.auth.secret)
        self.webhook_outcomes: Counter[str] = Counter()
        self.loop_lag = 0.0
        self._ready = False
        limits = self.config.limits
        self.control_connections = ConnectionLimiter(
            connection_budget(limits.max_connections, len(rtc.listen_ips)),
            limits.max_connections_per_address)
        self.http_connections = http_limiter(self.control_connections)
        self._listener: GatedListener | None = None
        self._runner: web.AppRunner | None = None
        self.tls: Tls | None = None  # HTTPS, once started (reload_tls() on SIGHUP)
        self.port: int | None = None
        self._registry = registry(self)
        self.app = self._make_app()

    @property
    def participants(self) -> dict[str, ParticipantLink]:
        """Every joined participant's links, by participant id."""
        return {pid: link for router in self.routers.values()
                for pid, link in router.links.items()}

    @property
    def rooms(self) -> dict[str, Room]:
        """Every room's state, by name."""
        return {name: router.room for name, router in self.routers.items()}

    @property
    def tracks(self) -> dict[str, Track]:
        """Every published track, by track id."""
        return {tid: track for router in self.routers.values()
                for tid, track in router.room.tracks.items()}

    def counts(self) -> tuple[int, int, int]:
        """Rooms, participants and tracks."""
        rooms = self.routers.values()
        return (len(self.routers), sum(len(r.links) for r in rooms),
                sum(len(r.room.tracks) for r in rooms))

    # -- HTTP -----------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.add_subapp("/admin", admin.routes(self))
        app.router.add_get("/", self._index)
        app.router.add_get("/nat-test.json", self._nat_test)
        app.router.add_get(r"/{name:[A-Za-z0-9_-]+\.(?:js|css|html)}", self._web_file)
        return app

    async def start(self, serve: bool = True) -> None:
        """Start the server in the running event loop.

        With ``serve`` False no HTTP site is opened: mount ``server.app`` into your own
        aiohttp application (``your_app.add_subapp("/sfu", server.app)``) instead.
        """
        await self.ctx.open_ports()
        self.ctx.spawn(self._watch_loop_lag())
        self.ctx.turn_pool.start()
        self.webhooks.start()
        if serve:
            self._runner = web.AppRunner(self.app)
            await self._runner.setup()
            assert self._runner.server is not None  # set up above
            self.tls = make_tls(self.config)
            self._listener = GatedListener(
                self._runner.server, self.http_connections,
                self.tls.context if self.tls else None,
                frozenset(self.config.server.trusted_proxies))
            self.port = self._listener.listen(self.config.server.host, self.config.server.port)
            logger.info(
                "sfu listening on %s://%s:%s, media on %s (forwarder: %s)",
                "https" if self.tls else "http", self.config.server.host, self.port,
                f"UDP {self.ctx.udp_port}" if self.ctx.udp_port else "a UDP port per connection",
                self.forwarder.implementation,
            )
        self._ready = True

    def reload_tls(self) -> None:
        """Load the TLS certificate and key again (SIGHUP): new connections get the new
        ones. One that does not load is logged, and the old one stays."""
        if self.tls is not None:
            self.tls.reload_or_keep()

    async def stop(self) -> None:
        self._ready = False
        for router in list(self.routers.values()):
            for link in list(router.links.values()):
                control = link.control
                await router.leave(link, "server_stopped")
                if control is not None:
                    await control.close()
            router.stop()
        await self.webhooks.stop()
        await self.events.close()
        await self.ctx.turn_pool.stop()
        self.ctx.cancel_tasks()
        self.ctx.close_ports()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _webhook_outcome(self, outcome: str) -> None:
        self.webhook_outcomes[outcome] += 1

    async def _readyz(self, request: web.Request) -> web.Response:
        """Ready to take participants: started, and not stopping."""
        status = 200 if self._ready else 503
        rooms, participants, _ = self.counts()
        return web.json_response({"ready": self._ready, "rooms": rooms,
                                  "participants": participants}, status=status)

    async def _watch_loop_lag(self) -> None:
        """How late the event loop wakes: the cost a slow callback puts on every packet."""
        loop = asyncio.get_running_loop()
        worst: list[float] = []
        while True:
            started = loop.time()
            await asyncio.sleep(0.25)
            worst = [*worst[-11:], max(0.0, loop.time() - started - 0.25)]
            self.loop_lag = max(worst)

    async def _metrics(self, request: web.Request) -> web.Response:
        # The whole content type: the exposition format's version and the charset too.
        return web.Response(body=generate_latest(self._registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "forwarder": self.forwarder.implementation})

    async def _index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB_DIR / "index.html")

    async def _nat_test(self, request: web.Request) -> web.Response:
        """The STUN URLs of the browser's NAT mapping test (sfu/web/nat-test.js): the
        primary address, the other address on the primary port, the other address."""
        stun = self.config.diagnostics.stun
        if not stun:
            return web.json_response({"stun": []})
        primary, other = stun
        other_host, primary_port = other.rpartition(":")[0], primary.rpartition(":")[2]
        return web.json_response({"stun": [f"stun:{primary}", f"stun:{other_host}:{primary_port}",
                                           f"stun:{other}"]})

    async def _web_file(self, request: web.Request) -> web.StreamResponse:
        path = WEB_DIR / request.match_info["name"]
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        return await accept(request, self.config, self.control_connections,
                            lambda ws, _: self._serve_control(ws))

    async def _serve_control(self, ws: web.WebSocketResponse) -> None:
        limits, liveness = self.config.limits, self.config.liveness
        control = ControlConnection(ws, ConnectionLimits(
            max_message_bytes=self.config.server.max_message_bytes,
            messages_per_second=limits.messages_per_second,
            message_burst=limits.message_burst,
            ping_interval_s=liveness.ping_interval_s,
            timeout_s=liveness.timeout_s,
        ))
        session = Session(control, self.join, limits.join_timeout_s,
                          self.control_connections.refused)
        try:
            async for message in control.messages():
                await session.handle(message)
        finally:
            await session.closed()
            await control.close()


    # -- joining -----------------------------------------------------------------------

    async def join(self, control: ControlConnection, message: dict[str, Any]
                   ) -> tuple[Router, ParticipantLink]:
        """A `join`: the token says who and what may be done; the room's router admits."""
        room_name: str = message["room"]
        grants = self._authorize(room_name, message.get("token"))
        router = self.routers.get(room_name) or self._start_room(room_name)
        try:
            return router, await router.join(control, message, grants)
        except RoomError:
            if not router.links:
                self._router_empty(router)
            raise

    def _authorize(self, room: str, token: str | None) -> Grants:
        """The grants of a join. The identity is the token's subject and nothing else: a
        development join without a token has none, so it never resumes or replaces
        anyone. Display names are not identities; two participants may share one."""
        auth = self.config.auth
        if auth.mode == "development" and token is None:
            return Grants(identity="", room=room, can_update_metadata=True)
        if token is None:
            raise AuthError("a token is required to join")
        return verify_token(auth.secret, token, room)


