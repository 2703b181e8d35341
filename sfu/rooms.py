"""Rooms, participants, tracks and subscriptions: sans-IO state machines.

Commands take ids chosen by the caller and return the events they caused; nothing
here does I/O or reads a clock. The server turns events into control messages and
forwarder tables. Vocabulary as mediasoup's: a track is a Producer; a subscription
becomes a Consumer in the forwarder.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class RoomError(ValueError):
    """A command that the room refuses; ``code`` is the control protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Track:
    id: str
    participant: str
    kind: str  # "audio" | "video"

    def describe(self) -> dict[str, str]:
        return {"id": self.id, "participant": self.participant, "kind": self.kind}


@dataclass
class Participant:
    id: str
    name: str
    tracks: list[str] = field(default_factory=list)
    subscriptions: set[str] = field(default_factory=set)

    def describe(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name}


# -- events -------------------------------------------------------------------------


@dataclass(frozen=True)
class ParticipantJoined:
    room: str
    participant: Participant


@dataclass(frozen=True)
class ParticipantLeft:
    room: str
    participant: str
    """Id of the participant that left."""


@dataclass(frozen=True)
class TrackPublished:
    room: str
    track: Track


@dataclass(frozen=True)
class TrackUnpublished:
    room: str
    track: Track


@dataclass(frozen=True)
class Subscribed:
    room: str
    subscriber: str
    track: Track


@dataclass(frozen=True)
class Unsubscribed:
    room: str
    subscriber: str
    track: Track


Event = (
    ParticipantJoined | ParticipantLeft | TrackPublished | TrackUnpublished | Subscribed
    | Unsubscribed
)


class Room:
    def __init__(self, name: str, *, auto_subscribe: bool = True, max_participants: int = 25):
        self.name = name
        self.auto_subscribe = auto_subscribe
        self.max_participants = max_participants
        self.participants: dict[str, Participant] = {}
        self.tracks: dict[str, Track] = {}

    def join(self, participant_id: str, name: str) -> list[Event]:
        """Add a participant; with auto-subscribe it receives every published track."""
        if participant_id in self.participants:
            raise RoomError("already_joined", f"{participant_id} is already in the room")
        if len(self.participants) >= self.max_participants:
            raise RoomError("room_full", f"room {self.name} has {self.max_participants} people")
        participant = Participant(participant_id, name)
        self.participants[participant_id] = participant
        events: list[Event] = [ParticipantJoined(self.name, participant)]
        if self.auto_subscribe:
            others = [t.id for t in self.tracks.values() if t.participant != participant_id]
            events += self.subscribe(participant_id, others)
        return events

    def leave(self, participant_id: str) -> list[Event]:
        """Remove a participant: its subscriptions end, its tracks are unpublished."""
        participant = self._participant(participant_id)
        events: list[Event] = self.unsubscribe(participant_id, sorted(participant.subscriptions))
        for track_id in list(participant.tracks):
            events += self.unpublish(track_id)
        del self.participants[participant_id]
        events.append(ParticipantLeft(self.name, participant_id))
        return events

    def publish(self, participant_id: str, track_id: str, kind: str) -> list[Event]:
        participant = self._participant(participant_id)
        if kind not in ("audio", "video"):
            raise RoomError("bad_field", f"kind {kind!r} is not audio or video")
        if track_id in self.tracks:
            raise RoomError("bad_field", f"track {track_id} exists")
        track = Track(track_id, participant_id, kind)
        self.tracks[track_id] = track
        participant.tracks.append(track_id)
        events: list[Event] = [TrackPublished(self.name, track)]
        if self.auto_subscribe:
            for other in self.participants.values():
                if other.id != participant_id:
                    events += self.subscribe(other.id, [track_id])
        return events

    def unpublish(self, track_id: str) -> list[Event]:
        track = self._track(track_id)
        events: list[Event] = []
        for other in self.participants.values():
            if track_id in other.subscriptions:
                events += self.unsubscribe(other.id, [track_id])
        del self.tracks[track_id]
        self.participants[track.participant].tracks.remove(track_id)
        events.append(TrackUnpublished(self.name, track))
        return events

    def subscribe(self, participant_id: str, track_ids: list[str]) -> list[Event]:
        """Subscribe to tracks; already-subscribed ones are left as they are."""
        participant = self._participant(participant_id)
        tracks = [self._track(t) for t in track_ids]
        for track in tracks:
            if track.participant == participant_id:
                raise RoomError("bad_field", f"cannot subscribe to own track {track.id}")
        events: list[Event] = []
        for track in tracks:
            if track.id not in participant.subscriptions:
                participant.subscriptions.add(track.id)
                events.append(Subscribed(self.name, participant_id, track))
        return events

    def unsubscribe(self, participant_id: str, track_ids: list[str]) -> list[Event]:
        participant = self._participant(participant_id)
        tracks = [self._track(t) for t in track_ids]
        events: list[Event] = []
        for track in tracks:
            if track.id in participant.subscriptions:
                participant.subscriptions.discard(track.id)
                events.append(Unsubscribed(self.name, participant_id, track))
        return events

    def _participant(self, participant_id: str) -> Participant:
        participant = self.participants.get(participant_id)
        if participant is None:
            raise RoomError("not_joined", f"{participant_id} is not in room {self.name}")
        return participant

    def _track(self, track_id: str) -> Track:
        track = self.tracks.get(track_id)
        if track is None:
            raise RoomError("unknown_track", f"no track {track_id} in room {self.name}")
        return track
