"""One room's state: participants with their grants, tracks, subscriptions. Sans-IO.

Commands take ids chosen by the caller and return the changes they caused; nothing here
does I/O or reads a clock. This is the one record of who is in the room, what they may
do, what they publish and what they receive: the router (``sfu.router.router``) carries
the changes out as control messages, peer-connection changes and forwarder tables.
Vocabulary as mediasoup's: a track is a Producer; a subscription a Consumer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sfu.media import DEFAULT_SOURCE, SOURCES, PublishedMedia
from sfu.router.layers import Preferences


class RoomError(ValueError):
    """A command that the room refuses; ``code`` is the control protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Track:
    """A published track, and the forwarder Producer that carries it."""

    id: str
    participant: str
    kind: str  # "audio" | "video"
    producer: int  # the first (lowest) layer's, for simulcast
    media: PublishedMedia
    muted: bool = False  # server-side: forwarding paused
    layers: tuple[int, ...] = ()  # simulcast: a producer per layer, low to high
    source: str = ""  # one of SOURCES; "" takes the kind's default
    name: str = ""  # as the publisher named it, for display

    def __post_init__(self) -> None:
        self.source = self.source or DEFAULT_SOURCE.get(self.kind, "")

    @property
    def producers(self) -> tuple[int, ...]:
        """Every forwarder producer of the track: its layers, or its one stream."""
        return self.layers or (self.producer,)

    def describe(self) -> dict[str, str | bool]:
        """As `joined.tracks` and `track_published` carry it: muted too, so a late
        joiner sees a camera that is off."""
        return {"id": self.id, "participant": self.participant, "kind": self.kind,
                "muted": self.muted, "source": self.source, "name": self.name}


@dataclass
class Subscription:
    """A participant receiving a track through a forwarder Consumer."""

    track: Track
    consumer: int
    # The subscribe connection's slot (m-line) for it: chosen when an offer first
    # carries the subscription, so the m-lines the last answer made inactive can be
    # recycled. None until then.
    slot: int | None = None
    active: bool = False  # negotiated: the Consumer forwards
    failed: bool = False  # the subscriber's answer took none of the publisher's codecs
    preferences: Preferences = field(default_factory=Preferences)  # set_subscription
    layer: int | None = None  # simulcast: the layer chosen for it (None: paused)
    reported: tuple[int | None, bool] | None = None  # (layer, paused) last told


@dataclass
class Participant:
    id: str
    name: str
    identity: str  # the token's subject; "" for a token-less development join
    can_publish: bool = True
    can_subscribe: bool = True
    can_publish_data: bool = True
    can_update_metadata: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)  # set by it or the backend
    tracks: list[str] = field(default_factory=list)
    subscriptions: dict[str, Subscription] = field(default_factory=dict)  # by track id

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "metadata": self.metadata}


# -- changes: what a command did, for the router to carry out -------------------------


@dataclass(frozen=True)
class ParticipantAdded:
    participant: Participant


@dataclass(frozen=True)
class ParticipantRemoved:
    participant: Participant


@dataclass(frozen=True)
class TrackAdded:
    track: Track


@dataclass(frozen=True)
class TrackRemoved:
    track: Track


@dataclass(frozen=True)
class SubscriptionAdded:
    subscriber: str
    subscription: Subscription


@dataclass(frozen=True)
class SubscriptionRemoved:
    subscriber: str
    subscription: Subscription


Change = (ParticipantAdded | ParticipantRemoved | TrackAdded | TrackRemoved
          | SubscriptionAdded | SubscriptionRemoved)


class Room:
    def __init__(self, name: str, consumer_ids: Iterator[int], *, auto_subscribe: bool = True,
                 max_participants: int = 25) -> None:
        """``consumer_ids`` is an iterator of fresh forwarder Consumer ids."""
        self.name = name
        self.auto_subscribe = auto_subscribe
        self.max_participants = max_participants
        self.participants: dict[str, Participant] = {}
        self.tracks: dict[str, Track] = {}
        self._consumer_ids = consumer_ids

    def join(self, participant: Participant) -> list[Change]:
        """Add a participant; with auto-subscribe, one allowed to subscribe receives
        every published track."""
        if participant.id in self.participants:
            raise RoomError("already_joined", f"{participant.id} is already in the room")
        if len(self.participants) >= self.max_participants:
            raise RoomError("room_full", f"room {self.name} has {self.max_participants} people")
        self.participants[participant.id] = participant
        changes: list[Change] = [ParticipantAdded(participant)]
        if self.auto_subscribe and participant.can_subscribe:
            changes += self.subscribe(participant.id, self._others(participant.id))
        return changes

    def leave(self, participant_id: str) -> list[Change]:
        """Remove a participant: its subscriptions end, its tracks are unpublished."""
        participant = self.participant(participant_id)
        changes = self.unsubscribe(participant_id, sorted(participant.subscriptions))
        for track_id in list(participant.tracks):
            changes += self.unpublish(track_id)
        del self.participants[participant_id]
        changes.append(ParticipantRemoved(participant))
        return changes

    def publish(self, participant_id: str, track_id: str, producer: int,
                media: PublishedMedia, layers: tuple[int, ...] = (), source: str = "",
                name: str = "") -> list[Change]:
        """Publish a track; ``source`` ("" for the kind's default) must be of its kind."""
        participant = self.participant(participant_id)
        if not participant.can_publish:
            raise RoomError("forbidden", "the token does not allow publishing")
        if media.kind not in ("audio", "video"):
            raise RoomError("bad_field", f"kind {media.kind!r} is not audio or video")
        if track_id in self.tracks:
            raise RoomError("bad_field", f"track {track_id} exists")
        if source and SOURCES.get(source) != media.kind:
            raise RoomError("bad_field", f"source {source!r} is not a {media.kind} source")
        track = Track(track_id, participant_id, media.kind, producer, media, layers=layers,
                      source=source, name=name)
        self.tracks[track_id] = track
        participant.tracks.append(track_id)
        changes: list[Change] = [TrackAdded(track)]
        if self.auto_subscribe:
            for other in self.participants.values():
                if other.id != participant_id and other.can_subscribe:
                    changes += self.subscribe(other.id, [track_id])
        return changes

    def unpublish(self, track_id: str) -> list[Change]:
        track = self.track(track_id)
        changes: list[Change] = []
        for other in self.participants.values():
            if track_id in other.subscriptions:
                changes += self.unsubscribe(other.id, [track_id])
        del self.tracks[track_id]
        self.participants[track.participant].tracks.remove(track_id)
        changes.append(TrackRemoved(track))
        return changes

    def subscribe(self, participant_id: str, track_ids: list[str]) -> list[Change]:
        """Subscribe to tracks; already-subscribed ones are left as they are."""
        participant = self.participant(participant_id)
        if not participant.can_subscribe:
            raise RoomError("forbidden", "the token does not allow subscribing")
        tracks = [self.track(t) for t in track_ids]
        for track in tracks:
            if track.participant == participant_id:
                raise RoomError("bad_field", f"cannot subscribe to own track {track.id}")
        changes: list[Change] = []
        for track in tracks:
            if track.id not in participant.subscriptions:
                subscription = Subscription(track, next(self._consumer_ids))
                participant.subscriptions[track.id] = subscription
                changes.append(SubscriptionAdded(participant_id, subscription))
        return changes

    def unsubscribe(self, participant_id: str, track_ids: list[str]) -> list[Change]:
        participant = self.participant(participant_id)
        tracks = [self.track(t) for t in track_ids]
        changes: list[Change] = []
        for track in tracks:
            subscription = participant.subscriptions.pop(track.id, None)
            if subscription is not None:
                changes.append(SubscriptionRemoved(participant_id, subscription))
        return changes

    def grant(self, participant_id: str, *, can_publish: bool, can_subscribe: bool,
              subscribe_all: bool) -> list[Change]:
        """Hold a participant to new grants: what it may no longer do stops now. With
        ``subscribe_all`` and auto-subscribe, it is subscribed to the room's tracks."""
        participant = self.participant(participant_id)
        participant.can_publish, participant.can_subscribe = can_publish, can_subscribe
        changes: list[Change] = []
        if not can_publish:
            for track_id in list(participant.tracks):
                changes += self.unpublish(track_id)
        if not can_subscribe:
            changes += self.unsubscribe(participant_id, sorted(participant.subscriptions))
        elif subscribe_all and self.auto_subscribe:
            changes += self.subscribe(participant_id, self._others(participant_id))
        return changes

    def participant(self, participant_id: str) -> Participant:
        participant = self.participants.get(participant_id)
        if participant is None:
            raise RoomError("not_joined", f"{participant_id} is not in room {self.name}")
        return participant

    def track(self, track_id: str) -> Track:
        track = self.tracks.get(track_id)
        if track is None:
            raise RoomError("unknown_track", f"no track {track_id} in room {self.name}")
        return track

    def _others(self, participant_id: str) -> list[str]:
        return [t.id for t in self.tracks.values() if t.participant != participant_id]
