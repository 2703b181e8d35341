"""The sans-IO Room state machine (sfu/rooms.py): commands, the events they return, errors."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from sfu.rooms import (
    Event,
    Participant,
    ParticipantJoined,
    ParticipantLeft,
    Room,
    RoomError,
    Subscribed,
    Track,
    TrackPublished,
    TrackUnpublished,
    Unsubscribed,
)

ROOM = "room-1"

Summary = tuple[str, ...]


def summarize(room: Room, events: list[Event]) -> list[Summary]:
    """Events as plain tuples, checking on the way that each names the room and is whole."""
    out: list[Summary] = []
    for event in events:
        assert event.room == room.name
        if isinstance(event, ParticipantJoined):
            assert isinstance(event.participant, Participant)
            out.append(("joined", event.participant.id, event.participant.name))
        elif isinstance(event, ParticipantLeft):
            assert isinstance(event.participant, str)
            out.append(("left", event.participant))
        elif isinstance(event, TrackPublished):
            t = event.track
            out.append(("published", t.id, t.participant, t.kind))
        elif isinstance(event, TrackUnpublished):
            out.append(("unpublished", event.track.id, event.track.participant))
        elif isinstance(event, Subscribed):
            out.append(("subscribed", event.subscriber, event.track.id))
        elif isinstance(event, Unsubscribed):
            out.append(("unsubscribed", event.subscriber, event.track.id))
        else:  # pragma: no cover - Event is a closed union
            raise AssertionError(f"unexpected event {event!r}")
    return out


Snapshot = tuple[dict[str, tuple[str, tuple[str, ...], frozenset[str]]], dict[str, Track]]


def snapshot(room: Room) -> Snapshot:
    """A deep, comparable copy of a room's state."""
    participants = {
        pid: (p.name, tuple(p.tracks), frozenset(p.subscriptions))
        for pid, p in room.participants.items()
    }
    return participants, dict(room.tracks)


def subscriptions(room: Room, participant_id: str) -> set[str]:
    return set(room.participants[participant_id].subscriptions)


def assert_refused(room: Room, code: str, command: str, *args: object) -> RoomError:
    """The command raises RoomError(code) and leaves the room exactly as it was."""
    before = snapshot(room)
    with pytest.raises(RoomError) as info:
        getattr(room, command)(*args)
    assert info.value.code == code, str(info.value)
    assert str(info.value)
    assert snapshot(room) == before
    return info.value


# -- join ---------------------------------------------------------------------------


def test_join_returns_participant_joined() -> None:
    room = Room(ROOM)
    events = room.join("a", "Alice")
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, ParticipantJoined)
    assert event.room == ROOM
    assert event.participant.id == "a"
    assert event.participant.name == "Alice"
    assert event.participant.describe() == {"id": "a", "name": "Alice"}
    assert room.participants["a"] is event.participant
    assert room.participants["a"].tracks == []
    assert room.participants["a"].subscriptions == set()


def test_late_joiner_is_subscribed_to_existing_tracks_in_publish_order() -> None:
    room = Room(ROOM)
    room.join("a", "Alice")
    room.publish("a", "a-video", "video")
    room.publish("a", "a-audio", "audio")
    room.join("b", "Bob")
    room.publish("b", "b-audio", "audio")
    events = room.join("c", "Carol")
    assert summarize(room, events) == [
        ("joined", "c", "Carol"),
        ("subscribed", "c", "a-video"),
        ("subscribed", "c", "a-audio"),
        ("subscribed", "c", "b-audio"),
    ]
    subscribed = [e for e in events if isinstance(e, Subscribed)]
    assert [e.track for e in subscribed] == [
        Track("a-video", "a", "video"),
        Track("a-audio", "a", "audio"),
        Track("b-audio", "b", "audio"),
    ]
    assert subscriptions(room, "c") == {"a-video", "a-audio", "b-audio"}


def test_late_joiner_without_auto_subscribe_gets_nothing() -> None:
    room = Room(ROOM, auto_subscribe=False)
    room.join("a", "Alice")
    room.publish("a", "a-video", "video")
    events = room.join("b", "Bob")
    assert summarize(room, events) == [("joined", "b", "Bob")]
    assert subscriptions(room, "b") == set()


def test_join_twice_is_already_joined() -> None:
    room = Room(ROOM)
    room.join("a", "Alice")
    assert_refused(room, "already_joined", "join", "a", "Alice again")
    assert room.participants["a"].name == "Alice"


def test_room_full_at_max_participants() -> None:
    room = Room(ROOM, max_participants=2)
    room.join("a", "Alice")
    room.join("b", "Bob")
    error = assert_refused(room, "room_full", "join", "c", "Carol")
    assert ROOM in str(error)
    # A participant already in a full room is told it is already joined, not that it is full.
    assert_refused(room, "already_joined", "join", "a", "Alice")
    # Leaving frees a place.
    room.leave("a")
    assert summarize(room, room.join("c", "Carol")) == [("joined", "c", "Carol")]


def test_room_of_one() -> None:
    room = Room(ROOM, max_participants=1)
    room.join("a", "Alice")
    assert_refused(room, "room_full", "join", "b", "Bob")


def test_rejoin_after_leave_starts_afresh() -> None:
    room = Room(ROOM)
    room.join("a", "Alice")
    room.join("b", "Bob")
    room.publish("b", "b-audio", "audio")
    room.publish("a", "a-audio", "audio")
    room.leave("a")
    events = room.join("a", "Alice 2")
    assert summarize(room, events) == [("joined", "a", "Alice 2"), ("subscribed", "a", "b-audio")]
    assert room.participants["a"].tracks == []
    assert set(room.tracks) == {"b-audio"}
    assert subscriptions(room, "b") == set()


# -- publish / unpublish ------------------------------------------------------------


def test_publish_alone_is_only_track_published() -> None:
    room = Room(ROOM)
    room.join("a", "Alice")
    events = room.publish("a", "a-video", "video")
    assert events == [TrackPublished(ROOM, Track("a-video", "a", "video"))]
    assert room.tracks == {"a-video": Track("a-video", "a", "video")}
    assert room.participants["a"].tracks == ["a-video"]
    assert subscriptions(room, "a") == set()


def test_publish_subscribes_every_other_participant_in_join_order() -> None:
    room = Room(ROOM)
    room.join("a", "Alice")
    room.join("b", "Bob")
    room.join("c", "Carol")
    events = room.publish("b", "b-audio", "audio")
    track = Track("b-audio", "b", "audio")
    assert events == [
        TrackPublished(ROOM, track),
        Subscribed(ROOM, "a", track),
        Subscribed(ROOM, "c", track),
    ]
    assert subscriptions(room, "a") == {"b-audio"}
    assert subscriptions(room, "b") == set()  # never to one's own track
    assert subscriptions(room, "c") == {"b-audio"}


def test_publish_without_auto_subscribe_subscribes_nobody() -> None:
    room = Room(ROOM, auto_subscribe=False)
    room.join("a", "Alice")
    room.join("b", "Bob")
    events = room.publish("a", "a-video", "video")
    assert events == [TrackPublished(ROOM, Track("a-video", "a", "video"))]
    assert subscriptions(room, "a") == set()
    assert subscriptions(room, "b") == set()


def test_publish_several_tracks_keeps_their_order() -> None:
    room = Room(ROOM)
    room.join("a", "Alice")
    room.publish("a", "t2", "video")
    room.publish("a", "t1", "audio")
    assert room.participants["a"].tracks == ["t2", "t1"]


@pytest.mark.parametrize("kind", ["", "Audio", "VIDEO", "data", "screen", "audio "])
def test_publish_bad_kind_is_bad_field(kind: str) -> None:
    room = Room(ROOM)
    room.join("a", "Alice")
    assert_refused(room, "bad_field", "publish", "a", "t", kind)
    assert room.tracks == {}


def test_publish_duplicate_track_id_is_bad_field() -> None:
    room = Room(ROOM)
    room.join("a", "Alice")
    room.join("b", "Bob")
    room.publish("a", "t", "audio")
    assert_refused(room, "bad_field", "publish", "a", "t", "audio")
    assert_refused(room, "bad_field", "publish", "a", "t", "video")
    # Track ids are unique in the room, not per participant.
    assert_refused(room, "bad_field", "publish", "b", "t", "video")
    assert room.tracks["t"] == Track("t", "a", "audio")


def test_publish_by_stranger_is_not_joined() -> None:
    room = Room(ROOM)
    room.join("a", "Alice")
    assert_refused(room, "not_joined", "publish", "z", "t", "audio")
    # not_joined wins over a bad kind: the participant is checked first.
    assert_refused(room, "not_joined", "publish", "z", "t", "data")


def test_unpublish_unsubscribes_subscribers_then_unpublishes() -> None:
    room = Room(ROOM)
    for pid in ("a", "b", "c"):
        room.join(pid, pid.upper())
    room.publish("b", "b-video", "video")
    room.publish("b", "b-audio", "audio")
    events = room.unpublish("b-video")
    track = Track("b-video", "b", "video")
    assert events == [
        Unsubscribed(ROOM, "a", track),
        Unsubscribed(ROOM, "c", track),
        TrackUnpublished(ROOM, track),
    ]
    assert set(room.tracks) == {"b-audio"}
    assert room.participants["b"].tracks == ["b-audio"]
    assert subscriptions(room, "a") == {"b-audio"}
    assert subscriptions(room, "c") == {"b-audio"}


def test_unpublish_skips_those_not_subscribed() -> None:
    room = Room(ROOM)
    for pid in ("a", "b", "c"):
        room.join(pid, pid.upper())
    room.publish("a", "t", "audio")
    room.unsubscribe("b", ["t"])
    track = Track("t", "a", "audio")
    assert room.unpublish("t") == [Unsubscribed(ROOM, "c", track), TrackUnpublished(ROOM, track)]


def test_unpublish_unknown_track() -> None:
    room = Room(ROOM)
    room.join("a", "Alice")
    room.publish("a", "t", "audio")
    assert_refused(room, "unknown_track", "unpublish", "nope")
    room.unpublish("t")
    assert_refused(room, "unknown_track", "unpublish", "t")


def test_track_id_is_reusable_after_unpublish() -> None:
    room = Room(ROOM)
    room.join("a", "Alice")
    room.join("b", "Bob")
    room.publish("a", "t", "audio")
    room.unpublish("t")
    events = room.publish("b", "t", "video")
    track = Track("t", "b", "video")
    assert events == [TrackPublished(ROOM, track), Subscribed(ROOM, "a", track)]


# -- subscribe / unsubscribe --------------------------------------------------------


def manual_room() -> Room:
    """Alice publishes audio and video, Bob publishes audio; nobody is subscribed."""
    room = Room(ROOM, auto_subscribe=False)
    room.join("a", "Alice")
    room.join("b", "Bob")
    room.join("c", "Carol")
    room.publish("a", "a-audio", "audio")
    room.publish("a", "a-video", "video")
    room.publish("b", "b-audio", "audio")
    return room


def test_subscribe_returns_subscribed_in_request_order() -> None:
    room = manual_room()
    events = room.subscribe("c", ["b-audio", "a-video", "a-audio"])
    assert events == [
        Subscribed(ROOM, "c", Track("b-audio", "b", "audio")),
        Subscribed(ROOM, "c", Track("a-video", "a", "video")),
        Subscribed(ROOM, "c", Track("a-audio", "a", "audio")),
    ]
    assert subscriptions(room, "c") == {"a-audio", "a-video", "b-audio"}
    assert subscriptions(room, "a") == set()


def test_subscribe_twice_yields_no_second_event() -> None:
    room = manual_room()
    assert len(room.subscribe("c", ["a-video"])) == 1
    assert room.subscribe("c", ["a-video"]) == []
    # Only the new one of a mixed request is reported.
    assert summarize(room, room.subscribe("c", ["a-video", "a-audio"])) == [
        ("subscribed", "c", "a-audio")
    ]
    assert subscriptions(room, "c") == {"a-video", "a-audio"}


def test_subscribe_same_track_twice_in_one_request() -> None:
    room = manual_room()
    assert summarize(room, room.subscribe("c", ["a-video", "a-video"])) == [
        ("subscribed", "c", "a-video")
    ]


def test_subscribe_with_auto_subscribe_already_on_is_a_no_op() -> None:
    room = Room(ROOM)
    room.join("a", "Alice")
    room.join("b", "Bob")
    room.publish("a", "t", "audio")
    assert room.subscribe("b", ["t"]) == []


def test_subscribe_empty_list() -> None:
    room = manual_room()
    assert room.subscribe("c", []) == []
    assert room.unsubscribe("c", []) == []


def test_subscribe_own_track_is_bad_field() -> None:
    room = manual_room()
    error = assert_refused(room, "bad_field", "subscribe", "a", ["a-audio"])
    assert "a-audio" in str(error)


def test_refused_subscribe_changes_nothing() -> None:
    """A refused command is all or nothing: the caller gets no events, so no state may change."""
    room = manual_room()
    assert_refused(room, "bad_field", "subscribe", "a", ["b-audio", "a-audio"])
    assert_refused(room, "unknown_track", "subscribe", "c", ["a-audio", "nope"])
    assert_refused(room, "unknown_track", "subscribe", "c", ["nope", "a-audio"])
    assert subscriptions(room, "a") == set()
    assert subscriptions(room, "c") == set()


def test_subscribe_unknown_track_or_stranger() -> None:
    room = manual_room()
    assert_refused(room, "unknown_track", "subscribe", "c", ["nope"])
    assert_refused(room, "not_joined", "subscribe", "z", ["a-audio"])


def test_unsubscribe_returns_unsubscribed() -> None:
    room = manual_room()
    room.subscribe("c", ["a-audio", "a-video", "b-audio"])
    events = room.unsubscribe("c", ["b-audio", "a-audio"])
    assert events == [
        Unsubscribed(ROOM, "c", Track("b-audio", "b", "audio")),
        Unsubscribed(ROOM, "c", Track("a-audio", "a", "audio")),
    ]
    assert subscriptions(room, "c") == {"a-video"}
    # The tracks stay published.
    assert set(room.tracks) == {"a-audio", "a-video", "b-audio"}


def test_unsubscribe_when_not_subscribed_yields_nothing() -> None:
    room = manual_room()
    assert room.unsubscribe("c", ["a-audio"]) == []
    room.subscribe("c", ["a-audio"])
    assert len(room.unsubscribe("c", ["a-audio", "a-audio"])) == 1
    assert room.unsubscribe("c", ["a-audio"]) == []
    # One's own track is never subscribed, so unsubscribing from it is a no-op too.
    assert room.unsubscribe("a", ["a-audio"]) == []


def test_unsubscribe_unknown_track_changes_nothing() -> None:
    room = manual_room()
    room.subscribe("c", ["a-audio"])
    assert_refused(room, "unknown_track", "unsubscribe", "c", ["a-audio", "nope"])
    assert subscriptions(room, "c") == {"a-audio"}
    assert_refused(room, "not_joined", "unsubscribe", "z", ["a-audio"])


def test_auto_subscribe_resumes_for_new_tracks_after_unsubscribe() -> None:
    room = Room(ROOM)
    room.join("a", "Alice")
    room.join("b", "Bob")
    room.publish("a", "t1", "audio")
    room.unsubscribe("b", ["t1"])
    events = room.publish("a", "t2", "video")
    assert summarize(room, events) == [("published", "t2", "a", "video"), ("subscribed", "b", "t2")]
    assert subscriptions(room, "b") == {"t2"}


# -- leave --------------------------------------------------------------------------


def test_leave_alone() -> None:
    room = Room(ROOM)
    room.join("a", "Alice")
    assert room.leave("a") == [ParticipantLeft(ROOM, "a")]
    assert room.participants == {}


def test_leave_unsubscribes_unpublishes_then_left() -> None:
    room = Room(ROOM)
    room.join("a", "Alice")
    room.join("b", "Bob")
    room.join("c", "Carol")
    room.publish("c", "c-audio", "audio")
    room.publish("b", "b-video", "video")
    room.publish("a", "a-video", "video")
    room.publish("a", "a-audio", "audio")
    room.unsubscribe("c", ["a-audio"])
    events = room.leave("a")
    assert summarize(room, events) == [
        # Alice's own subscriptions end first (in track id order) ...
        ("unsubscribed", "a", "b-video"),
        ("unsubscribed", "a", "c-audio"),
        # ... then each of her tracks, in publish order: subscribers first, then the track.
        ("unsubscribed", "b", "a-video"),
        ("unsubscribed", "c", "a-video"),
        ("unpublished", "a-video", "a"),
        ("unsubscribed", "b", "a-audio"),
        ("unpublished", "a-audio", "a"),
        ("left", "a"),
    ]
    assert isinstance(events[-1], ParticipantLeft)
    unpublished = [e.track for e in events if isinstance(e, TrackUnpublished)]
    assert unpublished == [Track("a-video", "a", "video"), Track("a-audio", "a", "audio")]
    assert set(room.participants) == {"b", "c"}
    assert set(room.tracks) == {"b-video", "c-audio"}
    assert subscriptions(room, "b") == {"c-audio"}
    assert subscriptions(room, "c") == {"b-video"}


def test_leave_without_auto_subscribe() -> None:
    room = manual_room()
    room.subscribe("b", ["a-video"])
    events = room.leave("a")
    assert summarize(room, events) == [
        ("unpublished", "a-audio", "a"),
        ("unsubscribed", "b", "a-video"),
        ("unpublished", "a-video", "a"),
        ("left", "a"),
    ]


def test_leave_twice_or_stranger_is_not_joined() -> None:
    room = Room(ROOM)
    room.join("a", "Alice")
    room.leave("a")
    assert_refused(room, "not_joined", "leave", "a")
    assert_refused(room, "not_joined", "leave", "z")


def test_room_error_is_a_value_error() -> None:
    error = RoomError("room_full", "full")
    assert isinstance(error, ValueError)
    assert error.code == "room_full"
    assert str(error) == "full"


# -- random command sequences ---------------------------------------------------------

PARTICIPANT_IDS = [f"p{i}" for i in range(5)]
TRACK_IDS = [f"t{i}" for i in range(8)]
KINDS = ["audio", "video"]


@dataclass
class Model:
    """What the room should hold, kept independently of sfu/rooms.py."""

    auto_subscribe: bool
    max_participants: int
    names: dict[str, str] = field(default_factory=dict)  # join order
    tracks: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (owner, kind)
    subs: dict[str, set[str]] = field(default_factory=dict)
    unsubscribed: bool = False  # an explicit unsubscribe ended a subscription

    def own(self, pid: str) -> list[str]:
        return [t for t, (owner, _) in self.tracks.items() if owner == pid]

    def others_tracks(self, pid: str) -> list[str]:
        return [t for t, (owner, _) in self.tracks.items() if owner != pid]


class RoomMachine(RuleBasedStateMachine):
    """Valid commands compared against an independent model; refused ones change nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.room = Room(ROOM)
        self.model = Model(True, 25)

    @initialize(auto_subscribe=st.booleans(), max_participants=st.integers(1, 5))
    def setup(self, auto_subscribe: bool, max_participants: int) -> None:
        self.room = Room(ROOM, auto_subscribe=auto_subscribe, max_participants=max_participants)
        self.model = Model(auto_subscribe, max_participants)

    def run(self, command: str, *args: object) -> list[Summary]:
        events: list[Event] = getattr(self.room, command)(*args)
        return summarize(self.room, events)

    # -- valid commands ------------------------------------------------------------

    @rule(data=st.data())
    def join(self, data: st.DataObject) -> None:
        m = self.model
        free = [p for p in PARTICIPANT_IDS if p not in m.names]
        if not free or len(m.names) >= m.max_participants:
            return
        pid = data.draw(st.sampled_from(free), label="pid")
        name = data.draw(st.text(min_size=1, max_size=8), label="name")
        expected: list[Summary] = [("joined", pid, name)]
        m.names[pid] = name
        m.subs[pid] = set()
        if m.auto_subscribe:
            for t in m.others_tracks(pid):
                expected.append(("subscribed", pid, t))
                m.subs[pid].add(t)
        assert self.run("join", pid, name) == expected

    @precondition(lambda self: bool(self.model.names))
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        m = self.model
        pid = data.draw(st.sampled_from(sorted(m.names)), label="pid")
        expected: list[Summary] = [("unsubscribed", pid, t) for t in sorted(m.subs[pid])]
        for t in m.own(pid):
            for other in m.names:
                if t in m.subs[other]:
                    expected.append(("unsubscribed", other, t))
                    m.subs[other].discard(t)
            expected.append(("unpublished", t, pid))
            del m.tracks[t]
        expected.append(("left", pid))
        del m.names[pid]
        del m.subs[pid]
        assert self.run("leave", pid) == expected

    @precondition(lambda self: bool(self.model.names))
    @rule(data=st.data())
    def publish(self, data: st.DataObject) -> None:
        m = self.model
        free = [t for t in TRACK_IDS if t not in m.tracks]
        if not free:
            return
        pid = data.draw(st.sampled_from(sorted(m.names)), label="pid")
        tid = data.draw(st.sampled_from(free), label="tid")
        kind = data.draw(st.sampled_from(KINDS), label="kind")
        expected: list[Summary] = [("published", tid, pid, kind)]
        m.tracks[tid] = (pid, kind)
        if m.auto_subscribe:
            for other in m.names:
                if other != pid:
                    expected.append(("subscribed", other, tid))
                    m.subs[other].add(tid)
        assert self.run("publish", pid, tid, kind) == expected

    @precondition(lambda self: bool(self.model.tracks))
    @rule(data=st.data())
    def unpublish(self, data: st.DataObject) -> None:
        m = self.model
        tid = data.draw(st.sampled_from(sorted(m.tracks)), label="tid")
        owner = m.tracks[tid][0]
        expected: list[Summary] = []
        for other in m.names:
            if tid in m.subs[other]:
                expected.append(("unsubscribed", other, tid))
                m.subs[other].discard(tid)
        expected.append(("unpublished", tid, owner))
        del m.tracks[tid]
        assert self.run("unpublish", tid) == expected

    @precondition(lambda self: bool(self.model.names))
    @rule(data=st.data())
    def subscribe(self, data: st.DataObject) -> None:
        m = self.model
        pid = data.draw(st.sampled_from(sorted(m.names)), label="pid")
        candidates = m.others_tracks(pid)
        tids = data.draw(
            st.lists(st.sampled_from(candidates), max_size=4) if candidates else st.just([]),
            label="tids",
        )
        expected: list[Summary] = []
        for t in tids:
            if t not in m.subs[pid]:
                expected.append(("subscribed", pid, t))
                m.subs[pid].add(t)
        assert self.run("subscribe", pid, tids) == expected

    @precondition(lambda self: bool(self.model.names))
    @rule(data=st.data())
    def unsubscribe(self, data: st.DataObject) -> None:
        m = self.model
        pid = data.draw(st.sampled_from(sorted(m.names)), label="pid")
        tids = data.draw(
            st.lists(st.sampled_from(sorted(m.tracks)), max_size=4) if m.tracks else st.just([]),
            label="tids",
        )
        expected: list[Summary] = []
        for t in tids:
            if t in m.subs[pid]:
                expected.append(("unsubscribed", pid, t))
                m.subs[pid].discard(t)
                m.unsubscribed = True
        assert self.run("unsubscribe", pid, tids) == expected

    # -- refused commands ------------------------------------------------------------

    def refuse(self, code: str, command: str, *args: object) -> None:
        before = snapshot(self.room)
        with pytest.raises(RoomError) as info:
            getattr(self.room, command)(*args)
        assert info.value.code == code, (command, args, str(info.value))
        assert snapshot(self.room) == before, (command, args)

    @rule(data=st.data())
    def refused(self, data: st.DataObject) -> None:
        m = self.model
        joined = sorted(m.names)
        strangers = [p for p in PARTICIPANT_IDS if p not in m.names] + ["stranger"]
        stranger = data.draw(st.sampled_from(strangers), label="stranger")
        unknown = data.draw(
            st.sampled_from([t for t in TRACK_IDS if t not in m.tracks] + ["nope"]),
            label="unknown track",
        )
        known = data.draw(
            st.lists(st.sampled_from(sorted(m.tracks)), max_size=3) if m.tracks else st.just([]),
            label="known",
        )
        choices = ["leave", "publish_stranger", "subscribe_stranger", "unpublish_unknown"]
        if joined:
            choices += ["rejoin", "bad_kind", "subscribe_unknown", "unsubscribe_unknown"]
            if m.tracks:
                choices.append("duplicate")
            if any(m.own(p) for p in joined):
                choices.append("own")
        if len(m.names) >= m.max_participants:
            choices.append("full")
        choice = data.draw(st.sampled_from(choices), label="refused command")
        pid = data.draw(st.sampled_from(joined), label="pid") if joined else stranger
        if choice == "leave":
            self.refuse("not_joined", "leave", stranger)
        elif choice == "publish_stranger":
            self.refuse("not_joined", "publish", stranger, unknown, "audio")
        elif choice == "subscribe_stranger":
            self.refuse("not_joined", "subscribe", stranger, known)
        elif choice == "unpublish_unknown":
            self.refuse("unknown_track", "unpublish", unknown)
        elif choice == "rejoin":
            self.refuse("already_joined", "join", pid, "again")
        elif choice == "bad_kind":
            self.refuse("bad_field", "publish", pid, unknown, "data")
        elif choice == "duplicate":
            tid = data.draw(st.sampled_from(sorted(m.tracks)), label="duplicate")
            self.refuse("bad_field", "publish", pid, tid, data.draw(st.sampled_from(KINDS)))
        elif choice == "subscribe_unknown":
            valid = [t for t in known if m.tracks[t][0] != pid]
            tids = data.draw(st.permutations([*valid, unknown]), label="tids")
            self.refuse("unknown_track", "subscribe", pid, tids)
        elif choice == "unsubscribe_unknown":
            tids = data.draw(st.permutations([*known, unknown]), label="tids")
            self.refuse("unknown_track", "unsubscribe", pid, tids)
        elif choice == "own":
            owner = data.draw(st.sampled_from([p for p in joined if m.own(p)]), label="owner")
            valid = [t for t in known if m.tracks[t][0] != owner]
            own = data.draw(st.sampled_from(m.own(owner)), label="own track")
            tids = data.draw(st.permutations([*valid, own]), label="tids")
            self.refuse("bad_field", "subscribe", owner, tids)
        elif choice == "full":
            self.refuse("room_full", "join", stranger, "one too many")

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def subscriptions_point_to_other_participants_tracks(self) -> None:
        room = self.room
        for pid, participant in room.participants.items():
            assert participant.id == pid
            for tid in participant.subscriptions:
                assert tid in room.tracks
                assert room.tracks[tid].participant != pid

    @invariant()
    def tracks_belong_to_participants_that_list_them(self) -> None:
        room = self.room
        for tid, track in room.tracks.items():
            assert track.id == tid
            assert track.kind in ("audio", "video")
            assert track.participant in room.participants
            assert tid in room.participants[track.participant].tracks
        for pid, participant in room.participants.items():
            assert len(participant.tracks) == len(set(participant.tracks))
            for tid in participant.tracks:
                assert room.tracks[tid].participant == pid

    @invariant()
    def room_is_within_bounds(self) -> None:
        assert len(self.room.participants) <= self.room.max_participants

    @invariant()
    def room_matches_model(self) -> None:
        m = self.model
        room = self.room
        assert {pid: p.name for pid, p in room.participants.items()} == m.names
        assert list(room.participants) == list(m.names)
        assert {t: (tr.participant, tr.kind) for t, tr in room.tracks.items()} == m.tracks
        assert {pid: p.subscriptions for pid, p in room.participants.items()} == m.subs
        for pid, participant in room.participants.items():
            assert participant.tracks == m.own(pid)
        if m.auto_subscribe and not m.unsubscribed:
            # With auto_subscribe and no explicit unsubscribe, everyone receives every
            # other participant's track.
            for pid, participant in room.participants.items():
                others = {t for t, tr in room.tracks.items() if tr.participant != pid}
                assert participant.subscriptions == others


def test_random_command_sequences_keep_the_room_consistent() -> None:
    run_state_machine_as_test(
        RoomMachine,
        settings=settings(
            max_examples=300,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )

