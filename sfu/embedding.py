"""The embedding API: what a backend does to rooms and participants (docs/embedding.md),
also behind the admin HTTP API. ``Server`` inherits it; it finds the room's router and
asks it."""

from __future__ import annotations

from typing import Any

from sfu import events
from sfu.config import Config
from sfu.control.auth import mint_token
from sfu.control.schema import ProtocolError
from sfu.fastpath import Forwarder
from sfu.metrics import Statistics
from sfu.router.context import RouterContext
from sfu.router.room import Room
from sfu.router.router import Router
from sfu.transport.turn_pool import TurnPool


class Embedding:
    """Rooms by name, and the calls a backend makes on them."""

    config: Config
    ctx: RouterContext
    events: events.EventBus
    routers: dict[str, Router]
    _kept_rooms: set[str]  # created through the API: they stay, empty, until closed

    @property
    def forwarder(self) -> Forwarder:
        return self.ctx.forwarder

    @property
    def stats(self) -> Statistics:
        return self.ctx.stats

    @property
    def turn_pool(self) -> TurnPool:
        return self.ctx.turn_pool

    def _start_room(self, name: str, max_participants: int | None = None,
                    auto_subscribe: bool | None = None) -> Router:
        if len(self.routers) >= self.config.limits.max_rooms:
            raise ProtocolError("too_many_rooms",
                                f"the server has {self.config.limits.max_rooms} rooms")
        defaults = self.config.rooms
        room = Room(name, self.ctx.ids,
                    auto_subscribe=defaults.auto_subscribe if auto_subscribe is None
                    else auto_subscribe,
                    max_participants=defaults.max_participants if max_participants is None
                    else max_participants)
        router = self.routers[name] = Router(self.ctx, room, self._router_empty)
        self.events.publish(events.RoomStarted(name))
        return router

    def _router_empty(self, router: Router) -> None:
        if router.name not in self._kept_rooms:
            self._finish_room(router.name)

    def _finish_room(self, name: str) -> None:
        router = self.routers.pop(name, None)
        if router is not None:
            router.stop()
            self.events.publish(events.RoomFinished(name))

    def create_room(self, name: str, *, max_participants: int | None = None,
                    auto_subscribe: bool | None = None) -> Room:
        """Create a room with its own options; it stays, empty or not, until close_room."""
        if name in self.routers:
            raise ValueError(f"room {name!r} exists")
        router = self._start_room(name, max_participants, auto_subscribe)
        self._kept_rooms.add(name)
        return router.room

    async def close_room(self, name: str) -> None:
        """Remove everyone from a room and the room itself."""
        router = self._router(name)
        self._kept_rooms.discard(name)
        for link in list(router.links.values()):
            await router.remove(link, "room_closed")
        self._finish_room(name)

    async def kick(self, room: str, participant: str) -> None:
        """Remove a participant now: its media stops reaching everyone."""
        router = self._router(room, participant)
        await router.remove(router.links[participant], "kicked")

    def mute(self, room: str, track: str, muted: bool) -> None:
        """Pause (or resume) forwarding a track to every subscriber, server-side."""
        self._router(room).mute(track, muted)

    def update_permissions(self, room: str, participant: str, *,
                           can_publish: bool | None = None,
                           can_subscribe: bool | None = None,
                           can_publish_data: bool | None = None,
                           can_update_metadata: bool | None = None) -> None:
        """Change a participant's grants; what it may no longer do stops now. A
        subscribe grant subscribes it to the room's tracks (with auto_subscribe)."""
        router = self._router(room, participant)
        link = router.links[participant]
        current = link.participant
        if can_publish_data is not None:
            current.can_publish_data = can_publish_data
        if can_update_metadata is not None:
            current.can_update_metadata = can_update_metadata
        router.grant(link,
                     current.can_publish if can_publish is None else can_publish,
                     current.can_subscribe if can_subscribe is None else can_subscribe,
                     subscribe_all=can_subscribe is True)

    def set_metadata(self, room: str, participant: str, metadata: dict[str, Any]) -> None:
        """Replace a participant's metadata (a JSON object, at most
        ``limits.max_metadata_bytes``); everyone in the room gets `participant_updated`.
        ValueError when it is too large or not JSON."""
        router = self._router(room, participant)
        if not isinstance(metadata, dict):
            raise ValueError("metadata must be a JSON object")
        try:
            router.set_metadata(participant, metadata)
        except ProtocolError as exc:
            raise ValueError(str(exc)) from None

    def send_data(self, room: str, payload: Any, *, to: list[str] | None = None,
                  topic: str | None = None, reliable: bool = True) -> int:
        """Send a data message to a room's participants (or those named in ``to``), from
        the backend: they receive ``from: null``. Returns how many took it. What
        participants send arrives as ``DataReceived`` events."""
        return self._router(room).data.send(None, payload, tuple(to or ()), topic, reliable)

    def mint_token(self, room: str, identity: str, *, ttl_seconds: int = 3600,
                   can_publish: bool = True, can_subscribe: bool = True,
                   can_publish_data: bool = True, can_update_metadata: bool = False,
                   metadata: dict[str, Any] | None = None) -> str:
        if not self.config.auth.secret:
            raise ValueError("auth.secret is not set")
        return mint_token(self.config.auth.secret, room=room, identity=identity,
                          ttl_seconds=ttl_seconds, can_publish=can_publish,
                          can_subscribe=can_subscribe, can_publish_data=can_publish_data,
                          can_update_metadata=can_update_metadata, metadata=metadata)

    def room_info(self, name: str) -> dict[str, Any]:
        """A room's participants, tracks and per-subscription forwarding stats."""
        return self._router(name).info()

    def rooms_info(self) -> list[dict[str, Any]]:
        return [{"name": name, "participants": len(router.links),
                 "tracks": len(router.room.tracks)} for name, router in self.routers.items()]

    def traversal(self) -> dict[str, dict[str, Any]]:
        """Peer connections by the NAT type clients reported at join: attempted, direct,
        relayed, failed, the share relayed and connect-time percentiles (ms)."""
        return self.stats.traversal.table()

    def forwarded_by_kind(self) -> dict[str, tuple[int, int]]:
        """kind → (packets, bytes) forwarded to subscribers, since the start."""
        retired = self.stats.forwarded_retired
        totals = {kind: [retired[(kind, "packets")], retired[(kind, "bytes")]]
                  for kind in ("audio", "video")}
        for router in self.routers.values():
            for participant in router.room.participants.values():
                for subscription in participant.subscriptions.values():
                    packets, octets = self.forwarder.consumer_stats(subscription.consumer)
                    totals[subscription.track.kind][0] += packets
                    totals[subscription.track.kind][1] += octets
        return {kind: (p, b) for kind, (p, b) in totals.items()}

    def downlinks(self) -> tuple[list[int], dict[str, int]]:
        """Subscribers' bandwidth estimates, and simulcast subscriptions by the layer
        (RID, or "paused") they receive: for /metrics."""
        estimates: list[int] = []
        layers: dict[str, int] = {}
        for router in self.routers.values():
            router_estimates, router_layers = router.layers.view()
            estimates += router_estimates
            for rid, count in router_layers.items():
                layers[rid] = layers.get(rid, 0) + count
        return estimates, layers

    def _router(self, room: str, participant: str | None = None) -> Router:
        router = self.routers.get(room)
        if router is None:
            raise KeyError(f"no room {room!r}")
        if participant is not None and participant not in router.links:
            raise KeyError(f"no participant {participant!r} in room {room!r}")
        return router
