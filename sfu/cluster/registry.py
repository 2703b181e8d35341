"""Nodes and room placements in Redis (``[cluster] redis_url``).

Keys (all with a time to live, so that a node that stops is forgotten by itself):
- ``sfu:node:<id>``: JSON ``{id, url, rooms: {name: participants}, participants,
  forwarded_pps, cpu, updated}``, written every ``heartbeat_s``, expiring after
  ``node_ttl_s``; the set ``sfu:nodes`` lists the ids ever seen (stale ones pruned).
- ``sfu:room:<name>``: the id of the node holding the room; set once (SET NX) by the
  first node a joiner reaches, renewed by the holder with every heartbeat (taken
  again if Redis lost it, never from a node that holds it now).

Every heartbeat writes the node's whole state again, so a Redis that restarted empty
has it all back within one heartbeat; running calls never wait on Redis (media and
relayed WebSockets go node to node). While Redis cannot be reached, a node places new
rooms on itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from sfu.config import ClusterConfig

logger = logging.getLogger(__name__)
NODES = "sfu:nodes"
# Delete the room's placement only if it still names the node found dead.
_DELETE_IF = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
              "return redis.call('del', KEYS[1]) else return 0 end")
# Renew a placement that names us, or take one nobody holds (Redis restarted empty);
# never one another node holds now (the room moved while we were thought gone).
_RENEW = ("local holder = redis.call('get', KEYS[1]) "
          "if holder == false or holder == ARGV[1] then "
          "return redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) end return 0")


def node_key(node: str) -> str:
    return f"sfu:node:{node}"


def room_key(room: str) -> str:
    return f"sfu:room:{room}"


@dataclass
class NodeState:
    id: str
    url: str
    rooms: dict[str, int] = field(default_factory=dict)  # name → participants
    participants: int = 0
    forwarded_pps: float = 0.0
    cpu: float = 0.0  # cores in use
    updated: float = 0.0


def least_loaded(nodes: list[NodeState]) -> NodeState:
    """Where a new room goes: the fewest participants, then rooms, then CPU (then id)."""
    return min(nodes, key=lambda n: (n.participants, len(n.rooms), n.cpu, n.id))


class NodeRegistry:
    def __init__(self, config: ClusterConfig, node_id: str, url: str,
                 state: Callable[[], NodeState]) -> None:
        self.config = config
        self.node_id = node_id
        self.url = url
        self._state = state  # this node's rooms and load, now
        self.redis = aioredis.from_url(config.redis_url, decode_responses=True,
                                       socket_timeout=1.0, socket_connect_timeout=1.0)
        self._task: asyncio.Task[None] | None = None
        self._reachable = True
        self.heartbeats = 0

    async def start(self) -> None:
        await self._beat()
        self._task = asyncio.create_task(self._keep_beating())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(RedisError, OSError):
            await self.redis.delete(node_key(self.node_id))
        await self.redis.aclose()

    async def _keep_beating(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_s)
            await self._beat()

    async def _beat(self) -> None:
        state = self._state()
        state.updated = time.time()
        ttl = max(1, round(self.config.node_ttl_s * 1000))
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(node_key(self.node_id), json.dumps(asdict(state)), px=ttl)
                pipe.sadd(NODES, self.node_id)
                for room in state.rooms:
                    pipe.eval(_RENEW, 1, room_key(room), self.node_id, ttl)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            if self._reachable:
                logger.warning("cluster: Redis unreachable (%s); calls go on, new rooms "
                               "stay on this node until it is back", exc)
            self._reachable = False
            return
        if not self._reachable:
            logger.info("cluster: Redis reachable again; this node re-registered")
        self._reachable = True
        self.heartbeats += 1

    async def nodes(self) -> list[NodeState]:
        """The live nodes (their last heartbeat), pruning ids whose key has expired."""
        # redis-py types its commands for both clients (result | Awaitable): ignore[misc].
        ids = sorted(await self.redis.smembers(NODES))  # type: ignore[misc]
        if not ids:
            return []
        records = await self.redis.mget([node_key(i) for i in ids])
        gone = [i for i, r in zip(ids, records, strict=True) if r is None]
        if gone:
            await self.redis.srem(NODES, *gone)  # type: ignore[misc]
        return [NodeState(**json.loads(r)) for r in records if r is not None]

    async def holder(self, room: str) -> NodeState | None:
        """The live node holding ``room`` now, if any (placing nothing)."""
        holder = await self.redis.get(room_key(room))
        if holder is None:
            return None
        record = await self.redis.get(node_key(holder))
        return None if record is None else NodeState(**json.loads(record))

    async def owner(self, room: str, avoid: set[str] | None = None) -> NodeState | None:
        """The live node holding ``room`` (placing it if none does), or None (Redis
        unreachable: the caller holds the room itself). ``avoid``: nodes the caller
        found unreachable though their heartbeat has not expired yet (one that holds
        the room gives it up to another)."""
        try:
            return await self._owner(room, avoid or set())
        except (RedisError, OSError) as exc:
            logger.warning("cluster: cannot place room %s through Redis (%s): here", room, exc)
            return None

    async def _owner(self, room: str, avoid: set[str]) -> NodeState:
        nodes = {n.id: n for n in await self.nodes() if n.id not in avoid}
        for _ in range(3):
            holder = await self.redis.get(room_key(room))
            if holder is not None and holder in nodes:
                return nodes[holder]
            if holder is not None:  # its node has gone: the room moves
                await self.redis.eval(  # type: ignore[misc]
                    _DELETE_IF, 1, room_key(room), holder)
            chosen = least_loaded(list(nodes.values())) if nodes else NodeState(
                self.node_id, self.url)
            ttl = max(1, round(self.config.node_ttl_s * 1000))
            if await self.redis.set(room_key(room), chosen.id, nx=True, px=ttl):
                nodes.setdefault(chosen.id, chosen)
                return chosen
        raise RedisError(f"room {room}: placement kept changing")


def node_id_of(config: ClusterConfig, port: int) -> str:
    import socket

    return config.node_id or f"{socket.gethostname()}:{port}"


def advertise_url_of(config: ClusterConfig, host: str, port: int, tls: bool) -> str:
    if config.advertise_url:
        return config.advertise_url.rstrip("/")
    scheme = "https" if tls else "http"
    shown = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
    return f"{scheme}://{shown}:{port}"
