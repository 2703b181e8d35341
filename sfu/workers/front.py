"""``sfu serve --workers N``: the front process. It serves the public HTTP port (TLS
too), keeps N workers running (sfu.workers.supervisor), places each room on one
(sfu.workers.placement), relays each participant's WebSocket to its room's worker
(sfu.workers.relay) — media goes straight to the worker's own UDP/TCP port, named in
its ICE candidates — and answers for all of them: one /metrics scrape, one admin API
(sfu.workers.admin_proxy). Webhooks leave each worker directly. With [cluster]
redis_url it is a node (sfu.cluster.registry): a room another node holds is relayed
there, node to node.

Relaying, not handing the socket over: the front must read the `join` to know the
room, and an upgraded WebSocket cannot be passed to another process's aiohttp; control
messages are a few a second per participant, so the extra hop costs little.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, generate_latest

from sfu.cluster.registry import NodeRegistry, NodeState, advertise_url_of, node_id_of
from sfu.config import Config
from sfu.control.admission import (
    ConnectionLimiter,
    connection_budget,
    http_limiter,
)
from sfu.control.listener import GatedListener
from sfu.control.tls import Tls, make_tls
from sfu.control.websocket import accept
from sfu.workers import admin_proxy
from sfu.workers.load import LoadSampler
from sfu.workers.metrics_merge import merge
from sfu.workers.placement import Placement
from sfu.workers.relay import (
    RELAYED_HEADER,
    ROOM_MOVED,
    copy_downstream,
    forward,
    open_upstream,
    room_of,
)
from sfu.workers.supervisor import Supervisor

logger = logging.getLogger(__name__)
CLOSED = (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR)
RELAYS = Counter("sfu_front_relays", "WebSockets this front relayed, to a worker of its own "
                 "or to the node holding the room", ["to"])


class Unreachable(Exception):
    """The room's worker or node did not take the WebSocket."""


class Front:
    def __init__(self, config: Config, workers: int) -> None:
        self.config = config
        liveness = config.liveness
        self.placement = Placement(liveness.reconnect_grace_s + liveness.restart_grace_s)
        self.supervisor = Supervisor(config, workers, self._worker_up, self._worker_lost)
        limits = config.limits
        self.control_connections = ConnectionLimiter(
            connection_budget(limits.max_connections, 1), limits.max_connections_per_address)
        self.http_connections = http_limiter(self.control_connections)
        # Per worker: the client sockets relayed to it (closed when the front stops).
        self.relayed: dict[int, set[web.WebSocketResponse]] = {i: set() for i in range(workers)}
        self.session: aiohttp.ClientSession | None = None
        self.cluster: NodeRegistry | None = None  # with [cluster] redis_url
        self.load = LoadSampler(self)
        self.tls: Tls | None = None
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._listener: GatedListener | None = None
        self._next = 0
        # Set once every worker has started: requests wait for it (the port listens
        # first, so that a port in use fails at once).
        self.workers_started = asyncio.Event()
        self.app = web.Application(middlewares=[self._wait_for_workers])
        self.app.router.add_get("/ws", self._websocket)
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        self.app.add_subapp("/admin", admin_proxy.routes(self))
        self.app.router.add_get("/{tail:.*}", self._any_worker)

    @web.middleware
    async def _wait_for_workers(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path != "/healthz":
            await self.workers_started.wait()
        response: web.StreamResponse = await handler(request)
        return response

    # -- workers ----------------------------------------------------------------------

    def _worker_up(self, index: int) -> None:
        self.placement.worker_up(index)

    def _worker_lost(self, index: int) -> None:
        rooms = self.placement.worker_lost(index)
        logger.warning("worker %d lost with %d room(s): %s", index, len(rooms),
                       ", ".join(rooms) or "none")

    def port_of(self, index: int) -> int:
        return self.supervisor.workers[index].port

    def any_worker(self) -> int:
        """A live worker, in turn (for what any of them can answer)."""
        live = sorted(self.placement.live)
        if not live:
            raise web.HTTPServiceUnavailable(text="no worker is running")
        self._next = (self._next + 1) % len(live)
        return live[self._next]

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Listen (OSError if the port is taken), then start the workers (WorkerError if
        one cannot start: its ports taken, say)."""
        self.session = aiohttp.ClientSession()
        self._runner = web.AppRunner(self.app)
        await self._runner.setup()
        assert self._runner.server is not None
        self.tls = make_tls(self.config)
        self._listener = GatedListener(
            self._runner.server, self.http_connections, self.tls.context if self.tls else None,
            frozenset(self.config.server.trusted_proxies))
        self.port = self._listener.listen(self.config.server.host, self.config.server.port)
        await self.supervisor.start()
        cluster = self.config.cluster
        if cluster.redis_url:
            self.cluster = NodeRegistry(
                cluster, node_id_of(cluster, self.port),
                advertise_url_of(cluster, self.config.server.host, self.port, bool(self.tls)),
                self.node_state)
            await self.load.sample()
            await self.cluster.start()
            self.load.start(cluster.heartbeat_s)
        self.workers_started.set()
        logger.info("sfu front on %s:%s, %d workers (pids %s)", self.config.server.host,
                    self.port, len(self.supervisor.workers),
                    ", ".join(str(w.pid) for w in self.supervisor.workers))

    def reload_tls(self) -> None:
        """As ``Server.reload_tls``: the front holds the public port's TLS."""
        if self.tls is not None:
            self.tls.reload_or_keep()

    def node_state(self) -> NodeState:
        """This node's rooms and load, for its heartbeat in Redis."""
        assert self.cluster is not None
        rooms = self.placement.occupancy()
        return NodeState(self.cluster.node_id, self.cluster.url, rooms, sum(rooms.values()),
                         self.load.forwarded_pps, self.load.cpu)

    async def stop(self) -> None:
        self.load.stop()
        if self.cluster is not None:
            await self.cluster.stop()
        if self._listener is not None:
            self._listener.close()
        for sockets in self.relayed.values():
            for ws in list(sockets):
                await ws.close(code=WSCloseCode.GOING_AWAY)
        await self.supervisor.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        if self.session is not None:
            await self.session.close()

    # -- HTTP -------------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        live = len(self.placement.live)
        return web.json_response({"ready": live > 0, "workers": live},
                                 status=200 if live else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        assert self.session is not None

        async def scrape(index: int) -> tuple[str, str]:
            assert self.session is not None
            async with self.session.get(f"http://127.0.0.1:{self.port_of(index)}/metrics") as r:
                return str(index), await r.text()

        texts = await asyncio.gather(*(scrape(i) for i in sorted(self.placement.live)),
                                     return_exceptions=True)
        expositions = [t for t in texts if isinstance(t, tuple)]
        expositions.append(("front", generate_latest(REGISTRY).decode()))
        return web.Response(body=merge(expositions), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _any_worker(self, request: web.Request) -> web.StreamResponse:
        """The page, its scripts, /nat-test.json: what every worker serves alike."""
        assert self.session is not None
        url = f"http://127.0.0.1:{self.port_of(self.any_worker())}{request.path_qs}"
        async with self.session.get(url) as upstream:
            return web.Response(body=await upstream.read(), status=upstream.status,
                                content_type=upstream.content_type)

    # -- WebSocket relay --------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        # Checked here as one process checks it: a worker could only refuse the relayed
        # socket, which the client would take for a lost worker.
        return await accept(request, self.config, self.control_connections,
                            lambda ws, address: self._relay(request, ws, address))

    async def _relay(self, request: web.Request, ws: web.WebSocketResponse, address: str) -> None:
        timeout = self.config.limits.join_timeout_s
        try:
            message: Any = await ws.receive(timeout=timeout)
        except TimeoutError:  # as a worker would say it
            await ws.send_json({"type": "error", "code": "join_timeout",
                                "message": f"no join within {timeout} s"})
            await ws.close()
            return
        # Relayed by another node: the room is ours, whatever Redis said meanwhile.
        relayed_in = (RELAYED_HEADER in request.headers
                      and request.remote in self.config.server.trusted_proxies)
        unreachable: set[str] = set()  # nodes this socket could not reach
        while message is not None and message.type not in CLOSED:
            # Not a join: any worker answers it as it would alone.
            room = room_of(message, self.config.server.max_message_bytes)
            try:
                if room and self.cluster is not None and not relayed_in:
                    owner = await self.cluster.owner(room, avoid=unreachable)
                    if owner is not None and owner.id != self.cluster.node_id:
                        try:
                            message = await self._relay_to(
                                request, ws, address, f"{owner.url}/ws", None, room, message)
                        except Unreachable:  # gone before its heartbeat expired: elsewhere
                            unreachable.add(owner.id)
                        continue
                worker = (self.placement.place(room, time.monotonic()) if room
                          else self.any_worker())
                message = await self._relay_to(
                    request, ws, address, f"http://127.0.0.1:{self.port_of(worker)}/ws",
                    worker, room, message)
            except (LookupError, web.HTTPServiceUnavailable, Unreachable):
                # No worker (or one dying): the client joins again in a moment.
                await ws.send_json(ROOM_MOVED)
                await ws.close(code=WSCloseCode.TRY_AGAIN_LATER)
                return

    async def _relay_to(self, request: web.Request, ws: web.WebSocketResponse, address: str,
                        url: str, worker: int | None, room: str | None, first: Any) -> Any:
        """Relay to a local ``worker`` (or, None, to another node) at ``url`` until either
        side ends; returns a client `join` for another room (the caller routes it
        afresh), else None."""
        assert self.session is not None
        node = None if worker is not None or self.cluster is None else self.cluster.node_id
        try:
            upstream = await open_upstream(self.session, url, request, address,
                                           self.config.server.max_message_bytes, node)
        except aiohttp.ClientError as exc:
            raise Unreachable(url) from exc
        RELAYS.labels("worker" if worker is not None else "node").inc()
        local_room = room if worker is not None else None
        if local_room:
            self.placement.connected(local_room)
        if worker is not None:
            self.relayed[worker].add(ws)
        downstream = asyncio.create_task(copy_downstream(upstream, ws))
        moved_to: Any = None
        try:
            await forward(first, upstream)
            while not downstream.done():
                receiving = asyncio.ensure_future(ws.receive())
                await asyncio.wait({receiving, downstream}, return_when=asyncio.FIRST_COMPLETED)
                if not receiving.done():
                    receiving.cancel()
                    break
                message = receiving.result()
                other = room_of(message, self.config.server.max_message_bytes)
                if other and other != room:
                    moved_to = message
                    break
                if not await forward(message, upstream):
                    break
            code = await downstream if downstream.done() else None
            if downstream.done() and code is None and not ws.closed:
                await ws.send_json(ROOM_MOVED)  # the worker (or node) died under the room
                await ws.close(code=WSCloseCode.TRY_AGAIN_LATER)
            elif downstream.done() and not ws.closed:
                await ws.close(code=code or WSCloseCode.OK)
        except (ConnectionResetError, aiohttp.ClientError):
            pass
        finally:
            downstream.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await downstream
            await upstream.close()
            if worker is not None:
                self.relayed[worker].discard(ws)
            if local_room:
                self.placement.disconnected(local_room, time.monotonic())
        return moved_to
