"""A conferencing backend that embeds sfu: run with `python examples/backend.py`.

It serves its own routes and mounts the SFU under /sfu (WebSocket at /sfu/ws, the
SFU's admin API at /sfu/admin), mints join tokens for its users, logs every SFU event,
and exposes one admin action:

    GET  /token?room=R&user=U          → {"token": ...}  (after your own login check)
    POST /rooms/{room}/kick/{user}     → 204: the user's media stops reaching others
    GET  /events                       → the events heard so far (for demos and tests)
"""

from __future__ import annotations

import logging
import os
import secrets

from aiohttp import web

from sfu import Config, Server
from sfu.events import Event

logger = logging.getLogger("backend")

SFU = web.AppKey("sfu", Server)
EVENTS = web.AppKey("events", list)


def create_app(config: Config | None = None) -> web.Application:
    if config is None:
        config = Config()
        config.auth.mode = "jwt"
        config.auth.secret = os.environ.get("SFU_AUTH_SECRET") or secrets.token_hex(32)
    sfu = Server(config)
    app = web.Application()
    app[SFU] = sfu
    app[EVENTS] = []

    async def log_event(event: Event) -> None:
        logger.info("sfu event: %s", event.to_dict())
        app[EVENTS].append(event.to_dict())

    async def start_sfu(app: web.Application) -> None:
        await sfu.start(serve=False)  # this app serves it: no site of its own
        sfu.events.add_listener(log_event)

    async def stop_sfu(app: web.Application) -> None:
        await sfu.stop()

    async def token(request: web.Request) -> web.Response:
        room, user = request.query.get("room"), request.query.get("user")
        if not room or not user:
            raise web.HTTPBadRequest(text="room and user are required")
        # A real backend checks its own session here: who may join which room.
        return web.json_response({"token": sfu.mint_token(room, user, ttl_seconds=600)})

    async def kick(request: web.Request) -> web.Response:
        room, user = request.match_info["room"], request.match_info["user"]
        participant = next(
            (p["id"] for p in sfu.room_info(room)["participants"] if p["identity"] == user),
            None,
        ) if room in sfu.rooms else None
        if participant is None:
            raise web.HTTPNotFound(text=f"{user} is not in {room}")
        await sfu.kick(room, participant)
        return web.Response(status=204)

    async def heard(request: web.Request) -> web.Response:
        return web.json_response(app[EVENTS])

    app.router.add_get("/token", token)
    app.router.add_post("/rooms/{room}/kick/{user}", kick)
    app.router.add_get("/events", heard)
    app.add_subapp("/sfu/", sfu.app)
    app.on_startup.append(start_sfu)
    app.on_cleanup.append(stop_sfu)
    return app


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    web.run_app(create_app(), host="127.0.0.1", port=8090)
