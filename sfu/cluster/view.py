"""The cluster as a backend sees it (the embedding API's cluster view): every node's
rooms and participants from Redis, and room operations sent to the node holding the
room through its admin API, with an admin token minted from the shared secret.

    view = ClusterView("redis://10.0.0.9:6379/0", secret=auth_secret)
    for room in await view.rooms(): ...            # [{name, node, participants}]
    await view.kick("standup", "PA_...")           # wherever the room is
    await view.close()
"""

from __future__ import annotations

from typing import Any

import aiohttp

from sfu.cluster.registry import NodeRegistry, NodeState
from sfu.config import ClusterConfig
from sfu.control.admin import mint_admin_token


class ClusterError(RuntimeError):
    """No node holds the room, or its node refused the request (the message says why)."""


class ClusterView:
    def __init__(self, redis_url: str, secret: str = "") -> None:
        # The view reads and places nothing: a registry that never beats.
        self._registry = NodeRegistry(ClusterConfig(redis_url=redis_url), "", "",
                                      lambda: NodeState("", ""))
        self._secret = secret
        self._http = aiohttp.ClientSession()

    async def close(self) -> None:
        await self._http.close()
        await self._registry.redis.aclose()

    async def nodes(self) -> list[NodeState]:
        return await self._registry.nodes()

    async def rooms(self) -> list[dict[str, Any]]:
        """Every room on every live node, with its node and participants."""
        return sorted(({"name": name, "node": node.id, "participants": participants}
                       for node in await self.nodes() for name, participants in node.rooms.items()),
                      key=lambda room: (room["name"], room["node"]))

    async def room_info(self, room: str) -> dict[str, Any]:
        info: dict[str, Any] = await self._admin(room, "GET", "")
        return info

    async def kick(self, room: str, participant: str) -> None:
        await self._admin(room, "DELETE", f"/participants/{participant}")

    async def mute(self, room: str, track: str, muted: bool) -> None:
        await self._admin(room, "POST", f"/tracks/{track}/mute", {"muted": muted})

    async def close_room(self, room: str) -> None:
        await self._admin(room, "DELETE", "")

    async def _admin(self, room: str, method: str, tail: str,
                     body: dict[str, Any] | None = None) -> Any:
        node = await self._registry.holder(room)
        if node is None:
            raise ClusterError(f"no live node holds room {room!r}")
        headers = ({"Authorization": f"Bearer {mint_admin_token(self._secret, 60)}"}
                   if self._secret else {})
        url = f"{node.url}/admin/rooms/{room}{tail}"
        async with self._http.request(method, url, json=body, headers=headers) as response:
            if response.status >= 400:
                raise ClusterError(f"{node.id}: {response.status} {await response.text()}")
            return await response.json() if response.status == 200 else None
