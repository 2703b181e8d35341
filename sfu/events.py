"""Events a backend hears from an embedded server, and how they reach it.

Events are flat dataclasses. ``EventBus.publish`` never blocks or raises: each
listener has a bounded queue drained by its own task (async callbacks) or by its
``async for`` loop (iterators); when a listener falls behind, its oldest events are
dropped and counted, so a slow backend can never stall the media path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    room: str
    at: float = field(default_factory=time.time, kw_only=True)
    """Wall-clock time of the event (seconds since the epoch)."""

    @property
    def type(self) -> str:
        return EVENT_TYPES[type(self)]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **asdict(self)}


@dataclass(frozen=True)
class RoomStarted(Event):
    pass


@dataclass(frozen=True)
class RoomFinished(Event):
    pass


@dataclass(frozen=True)
class ParticipantJoined(Event):
    participant: str
    identity: str
    name: str


@dataclass(frozen=True)
class ParticipantLeft(Event):
    participant: str
    identity: str
    reason: str
    """"left", "disconnected" (grace period over), "replaced", "kicked", "failed"
    (ICE/DTLS) or "room_closed"."""


@dataclass(frozen=True)
class TrackPublished(Event):
    participant: str
    track: str
    kind: str


@dataclass(frozen=True)
class TrackUnpublished(Event):
    participant: str
    track: str
    kind: str


@dataclass(frozen=True)
class TrackMuted(Event):
    participant: str
    track: str
    muted: bool


@dataclass(frozen=True)
class ConnectionStateChanged(Event):
    participant: str
    connection: str  # "publish" | "subscribe"
    state: str  # aiortc's connectionState
    local_candidate: str | None = None  # host, srflx, prflx, relay (once connected)
    remote_candidate: str | None = None


@dataclass(frozen=True)
class ParticipantRestarted(Event):
    """The participant replaced its peer connections (``restart``); it stayed in the room."""

    participant: str
    relay_only: bool


@dataclass(frozen=True)
class SubscriptionFailed(Event):
    """A subscriber cannot receive a track: its client took none of the track's codecs."""

    participant: str  # the subscriber
    track: str
    codec: str


@dataclass(frozen=True)
class ActiveSpeakersChanged(Event):
    """Who is speaking changed: (participant, level in dBov, 0 the loudest), loudest
    first; empty when nobody is."""

    speakers: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class ParticipantUpdated(Event):
    """A participant's metadata changed (set by itself or by the backend)."""

    participant: str
    identity: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class DataReceived(Event):
    """A participant sent a data channel message to the room (or to ``to``). For the
    embedding API only: never a webhook, as there may be many."""

    participant: str
    payload: Any
    topic: str | None
    reliable: bool
    to: tuple[str, ...] = ()  # empty: everyone else


EVENT_TYPES: dict[type[Event], str] = {
    RoomStarted: "room_started",
    RoomFinished: "room_finished",
    ParticipantJoined: "participant_joined",
    ParticipantLeft: "participant_left",
    TrackPublished: "track_published",
    TrackUnpublished: "track_unpublished",
    TrackMuted: "track_muted",
    ConnectionStateChanged: "connection_state_changed",
    ParticipantRestarted: "participant_restarted",
    SubscriptionFailed: "subscription_failed",
    ActiveSpeakersChanged: "active_speakers_changed",
    ParticipantUpdated: "participant_updated",
    DataReceived: "data_received",
}

Listener = Callable[[Event], Awaitable[None]]


class Subscription:
    """One listener's bounded queue; ``dropped`` counts what overflowed it."""

    def __init__(self, capacity: int) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue(capacity)
        self.dropped = 0
        self.task: asyncio.Task[None] | None = None
        self.bus: EventBus | None = None

    def remove(self) -> None:
        """Stop delivering to this listener."""
        if self.task is not None:
            self.task.cancel()
        if self.bus is not None and self in self.bus._subscriptions:
            self.bus._subscriptions.remove(self)

    def offer(self, event: Event) -> None:
        if self.queue.full():
            self.queue.get_nowait()  # the oldest goes: the newest tells the current state
            self.dropped += 1
        self.queue.put_nowait(event)


class EventBus:
    def __init__(self, capacity: int = 1000) -> None:
        self.capacity = capacity
        self._subscriptions: list[Subscription] = []

    @property
    def dropped(self) -> int:
        """Events dropped because a listener fell behind (all listeners)."""
        return sum(s.dropped for s in self._subscriptions)

    def publish(self, event: Event) -> None:
        for subscription in self._subscriptions:
            subscription.offer(event)

    def add_listener(self, listener: Listener, capacity: int | None = None) -> Subscription:
        """Call ``await listener(event)`` for every event, in order, on its own task, with
        up to ``capacity`` events waiting. ``.remove()`` on the result stops it."""
        subscription = Subscription(capacity or self.capacity)
        subscription.bus = self
        self._subscriptions.append(subscription)

        async def deliver() -> None:
            while True:
                event = await subscription.queue.get()
                try:
                    await listener(event)
                except Exception:  # a failing listener must not stop the others
                    logger.exception("event listener failed on %s", event.type)

        subscription.task = asyncio.create_task(deliver())
        return subscription

    async def events(self) -> AsyncIterator[Event]:
        """``async for event in bus.events()``: every event from now on."""
        subscription = Subscription(self.capacity)
        self._subscriptions.append(subscription)
        try:
            while True:
                yield await subscription.queue.get()
        finally:
            self._subscriptions.remove(subscription)

    async def close(self) -> None:
        for subscription in list(self._subscriptions):
            subscription.remove()
