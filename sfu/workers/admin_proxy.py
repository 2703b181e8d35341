"""The admin API (sfu.control.admin) in front of several workers: a room's routes go to
the worker holding it; the room list and the traversal table are every worker's put
together; the rest (tokens) any worker answers. The bearer token is checked with the
admin API's own guard, so a refused request is refused as one server would refuse it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from typing import Any, Protocol

import aiohttp
import msgpack
import orjson
from aiohttp import web

from sfu.cluster.registry import NodeRegistry
from sfu.config import Config
from sfu.control import admin
from sfu.control.admin import MSGPACK
from sfu.diagnostics.traversal import OUTCOMES
from sfu.workers.placement import Placement
from sfu.workers.supervisor import Supervisor

FORWARDED_HEADERS = ("Authorization", "Content-Type", "Accept")


class Workers(Protocol):
    config: Config
    placement: Placement
    supervisor: Supervisor
    session: aiohttp.ClientSession | None
    cluster: NodeRegistry | None

    def port_of(self, index: int) -> int: ...
    def any_worker(self) -> int: ...


async def _forward(front: Workers, request: web.Request, worker: int,
                   body: bytes | None = None) -> tuple[int, bytes, str]:
    """The worker's answer; a worker that is not there (it just died) a 503."""
    return await _request(front, request, f"http://127.0.0.1:{front.port_of(worker)}",
                          f"worker {worker}", body)


async def _to_node(front: Workers, request: web.Request, url: str) -> tuple[int, bytes, str]:
    return await _request(front, request, url, f"node {url}")


async def _request(front: Workers, request: web.Request, base: str, what: str,
                   body: bytes | None = None) -> tuple[int, bytes, str]:
    assert front.session is not None
    headers = {k: request.headers[k] for k in FORWARDED_HEADERS if k in request.headers}
    try:
        async with front.session.request(
                request.method, f"{base}{request.path_qs}",
                data=await request.read() if body is None else body,
                headers=headers) as upstream:
            return upstream.status, await upstream.read(), upstream.content_type
    except aiohttp.ClientError as exc:
        error = {"error": {"code": "unavailable", "message": f"{what}: {exc}"}}
        return 503, orjson.dumps(error), "application/json"


def _response(status: int, body: bytes, content_type: str) -> web.Response:
    if status == 204:
        return web.Response(status=204)
    return web.Response(status=status, body=body, content_type=content_type)


def routes(front: Workers) -> web.Application:
    # The token is checked here as a single process checks it (the workers check it
    # again): the front answers some routes itself (the cluster).
    app = web.Application(middlewares=[admin.guard(front.config)])

    def owner(room: str) -> int:
        worker = front.placement.worker_of(room, time.monotonic())
        # No such room: any worker says so (after checking the token), as one would.
        return front.any_worker() if worker is None else worker

    async def everyone(request: web.Request) -> list[tuple[int, int, Any]]:
        """The request answered by every live worker: (worker, status, body); one that
        is not there (dying, not yet noticed) is left out."""
        live = sorted(front.placement.live)
        replies = await asyncio.gather(*(_forward(front, request, w) for w in live))
        return [(w, status, orjson.loads(body) if status == 200 else body)
                for w, (status, body, _) in zip(live, replies, strict=True) if status != 503]

    async def list_rooms(request: web.Request) -> web.Response:
        rooms: list[dict[str, Any]] = []
        for worker, status, body in await everyone(request):
            if status != 200:
                return web.Response(status=status, body=body, content_type="application/json")
            pid = front.supervisor.workers[worker].pid
            rooms += [{**room, "worker": worker, "pid": pid} for room in body["rooms"]]
        return web.json_response({"rooms": sorted(rooms, key=lambda r: str(r.get("name")))})

    async def traversal(request: web.Request) -> web.Response:
        """Outcomes summed over workers; connect-time percentiles per worker (they do
        not add up)."""
        summed: dict[str, dict[str, Any]] = {}
        by_worker: dict[str, Any] = {}
        for worker, status, body in await everyone(request):
            if status != 200:
                return web.Response(status=status, body=body, content_type="application/json")
            by_worker[str(worker)] = body["nat_types"]
            for nat_type, row in body["nat_types"].items():
                into = summed.setdefault(nat_type, dict.fromkeys(OUTCOMES, 0))
                for outcome in OUTCOMES:
                    into[outcome] += row[outcome]
        for row in summed.values():
            done = row["direct"] + row["relayed"]
            row["relayed_share"] = row["relayed"] / done if done else 0.0
        return web.json_response({"nat_types": summed, "workers": by_worker})

    async def create_room(request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = (msgpack.unpackb(raw, raw=False, max_ext_len=0)
                    if request.content_type == MSGPACK else orjson.loads(raw))
            name = body.get("name")
        except (ValueError, AttributeError, TypeError, msgpack.UnpackException):
            name = None
        if not isinstance(name, str):  # a worker explains what is wrong
            return _response(*await _forward(front, request, front.any_worker(), raw))
        worker = front.placement.place(name, time.monotonic())
        status, body, content_type = await _forward(front, request, worker, raw)
        if status == 201:
            front.placement.keep(name, True, time.monotonic())
        return _response(status, body, content_type)

    async def room_route(request: web.Request) -> web.Response:
        room = request.match_info["room"]
        if front.placement.worker_of(room, time.monotonic()) is None and front.cluster:
            # Held by another node? Its admin API answers (the same token works there).
            held = await front.cluster.holder(room)
            if held is not None and held.id != front.cluster.node_id:
                return _response(*await _to_node(front, request, held.url))
        status, body, content_type = await _forward(front, request, owner(room))
        if request.method == "DELETE" and request.match_info["tail"] == "" and status == 204:
            front.placement.keep(room, False, time.monotonic())
        return _response(status, body, content_type)

    async def any_worker(request: web.Request) -> web.Response:
        return _response(*await _forward(front, request, front.any_worker()))

    async def cluster(request: web.Request) -> web.Response:
        """Every live node with its rooms and load."""
        if front.cluster is None:
            return web.json_response({"nodes": []})
        return web.json_response({"nodes": [asdict(n) for n in await front.cluster.nodes()]})

    app.router.add_get("/cluster", cluster)
    app.router.add_get("/rooms", list_rooms)
    app.router.add_post("/rooms", create_room)
    app.router.add_get("/traversal", traversal)
    app.router.add_route("*", "/rooms/{room}{tail:(/.*)?}", room_route)
    app.router.add_route("*", "/{tail:.*}", any_worker)
    return app
