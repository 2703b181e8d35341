"""The sans-IO Room state machine (sfu/router/room.py): commands, the changes they return,
grants, errors."""

from __future__ import annotations

import itertools
import zlib
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

from sfu.media import CodecInfo, PublishedMedia
from sfu.router.room import (
    Change,
    Participant,
    ParticipantAdded,
    ParticipantRemoved,
    Room,
    RoomError,
    Subscription,
    SubscriptionAdded,
    SubscriptionRemoved,
    Track,
    TrackAdded,
    TrackRemoved,
)

ROOM = "room-1"

Summary = tuple[object, ...]

OPUS = CodecInfo(111, "audio/opus", 48000, {"minptime": 10, "useinbandfec": 1})
VP8 = CodecInfo(96, "video/VP8", 90000, {})
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"


def media(kind: str) -> PublishedMedia:
    """What a publish offer's m-line of this kind says (any kind, even an invalid one)."""
    codec = OPUS if kind == "audio" else VP8
    return PublishedMedia("0", kind, 1111 if kind == "audio" else 2222, codec, {MID_URI: 1})


def producer_of(track_id: str) -> int:
    """The forwarder Producer id the unit tests give a track: stable, and distinct per id."""
    return zlib.crc32(track_id.encode())


def make_room(*, auto_subscribe: bool = True, max_participants: int = 25) -> Room:
    return Room(ROOM, itertools.count(1), auto_subscribe=auto_subscribe,
                max_participants=max_participants)


def person(pid: str, name: str, *, can_publish: bool = True,
           can_subscribe: bool = True) -> Participant:
    return Participant(pid, name, f"user-{pid}", can_publish=can_publish,
                       can_subscribe=can_subscribe)


def join(room: Room, pid: str, name: str, *, can_publish: bool = True,
         can_subscribe: bool = True) -> list[Change]:
    return room.join(person(pid, name, can_publish=can_publish, can_subscribe=can_subscribe))


def pub(pid: str, tid: str, kind: str) -> tuple[str, str, int, PublishedMedia]:
    """The arguments of Room.publish for a track of this kind."""
    return pid, tid, producer_of(tid), media(kind)


def publish(room: Room, pid: str, tid: str, kind: str) -> list[Change]:
    return room.publish(*pub(pid, tid, kind))


def track(tid: str, pid: str, kind: str) -> Track:
    """The Track that publish(room, pid, tid, kind) creates."""
    return Track(tid, pid, kind, producer_of(tid), media(kind))


def summarize(room: Room, changes: list[Change], *, consumers: bool = False) -> list[Summary]:
    """Changes as plain tuples, checking on the way that each is whole. With ``consumers``,
    a subscription's tuple ends with its forwarder Consumer id."""
    out: list[Summary] = []
    for change in changes:
        if isinstance(change, ParticipantAdded):
            assert isinstance(change.participant, Participant)
            out.append(("joined", change.participant.id, change.participant.name))
        elif isinstance(change, ParticipantRemoved):
            assert isinstance(change.participant, Participant)
            assert change.participant.id not in room.participants
            out.append(("left", change.participant.id))
        elif isinstance(change, TrackAdded):
            t = change.track
            assert isinstance(t, Track)
            assert t.media.kind == t.kind
            out.append(("published", t.id, t.participant, t.kind))
        elif isinstance(change, TrackRemoved):
            assert isinstance(change.track, Track)
            out.append(("unpublished", change.track.id, change.track.participant))
        elif isinstance(change, (SubscriptionAdded, SubscriptionRemoved)):
            s = change.subscription
            assert isinstance(s, Subscription)
            assert isinstance(s.track, Track)
            assert isinstance(s.consumer, int)
            assert s.track.participant != change.subscriber
            label = "subscribed" if isinstance(change, SubscriptionAdded) else "unsubscribed"
            if isinstance(change, SubscriptionAdded):
                # A new subscription is not yet negotiated.
                assert (s.slot, s.active, s.failed) == (None, False, False)
            summary: Summary = (label, change.subscriber, s.track.id)
            out.append((*summary, s.consumer) if consumers else summary)
        else:  # pragma: no cover - Change is a closed union
            raise AssertionError(f"unexpected change {change!r}")
    return out


Snapshot = tuple[dict[str, tuple[object, ...]], dict[str, tuple[object, ...]]]


def snapshot(room: Room) -> Snapshot:
    """A deep, comparable copy of a room's state (the dataclasses are mutable)."""
    participants: dict[str, tuple[object, ...]] = {
        pid: (
            p.id, p.name, p.identity, p.can_publish, p.can_subscribe, tuple(p.tracks),
            tuple((tid, s.consumer, s.slot, s.active, s.failed, id(s.track))
                  for tid, s in p.subscriptions.items()),
        )
        for pid, p in room.participants.items()
    }
    tracks: dict[str, tuple[object, ...]] = {
        tid: (t.id, t.participant, t.kind, t.producer, t.media, t.muted, id(t))
        for tid, t in room.tracks.items()
    }
    return participants, tracks


def subscriptions(room: Room, participant_id: str) -> set[str]:
    return set(room.participants[participant_id].subscriptions)


def consumers(room: Room, participant_id: str) -> dict[str, int]:
    return {t: s.consumer for t, s in room.participants[participant_id].subscriptions.items()}


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


def test_join_returns_participant_added() -> None:
    room = make_room()
    alice = Participant("a", "Alice", "alice@example")
    changes = room.join(alice)
    assert changes == [ParticipantAdded(alice)]
    assert isinstance(changes[0], ParticipantAdded) and changes[0].participant is alice
    assert alice.describe() == {"id": "a", "name": "Alice", "metadata": {}}
    assert (alice.identity, alice.can_publish, alice.can_subscribe) == ("alice@example", True, True)
    assert room.participants["a"] is alice
    assert room.participant("a") is alice
    assert room.participants["a"].tracks == []
    assert room.participants["a"].subscriptions == {}


def test_late_joiner_is_subscribed_to_existing_tracks_in_publish_order() -> None:
    room = make_room()
    join(room, "a", "Alice")
    publish(room, "a", "a-video", "video")
    publish(room, "a", "a-audio", "audio")
    join(room, "b", "Bob")  # consumers 1, 2
    publish(room, "b", "b-audio", "audio")  # consumer 3 (Alice)
    changes = join(room, "c", "Carol")
    assert summarize(room, changes) == [
        ("joined", "c", "Carol"),
        ("subscribed", "c", "a-video"),
        ("subscribed", "c", "a-audio"),
        ("subscribed", "c", "b-audio"),
    ]
    added = [c for c in changes if isinstance(c, SubscriptionAdded)]
    assert [c.subscription for c in added] == [
        Subscription(track("a-video", "a", "video"), 4),
        Subscription(track("a-audio", "a", "audio"), 5),
        Subscription(track("b-audio", "b", "audio"), 6),
    ]
    # The changes carry the room's own objects.
    for c in added:
        assert c.subscription is room.participants["c"].subscriptions[c.subscription.track.id]
        assert c.subscription.track is room.tracks[c.subscription.track.id]
    assert subscriptions(room, "c") == {"a-video", "a-audio", "b-audio"}


def test_late_joiner_without_auto_subscribe_gets_nothing() -> None:
    room = make_room(auto_subscribe=False)
    join(room, "a", "Alice")
    publish(room, "a", "a-video", "video")
    changes = join(room, "b", "Bob")
    assert summarize(room, changes) == [("joined", "b", "Bob")]
    assert subscriptions(room, "b") == set()


def test_join_twice_is_already_joined() -> None:
    room = make_room()
    join(room, "a", "Alice")
    assert_refused(room, "already_joined", "join", person("a", "Alice again"))
    assert room.participants["a"].name == "Alice"


def test_room_full_at_max_participants() -> None:
    room = make_room(max_participants=2)
    join(room, "a", "Alice")
    join(room, "b", "Bob")
    error = assert_refused(room, "room_full", "join", person("c", "Carol"))
    assert ROOM in str(error)
    # A participant already in a full room is told it is already joined, not that it is full.
    assert_refused(room, "already_joined", "join", person("a", "Alice"))
    # Leaving frees a place.
    room.leave("a")
    assert summarize(room, join(room, "c", "Carol")) == [("joined", "c", "Carol")]


def test_room_of_one() -> None:
    room = make_room(max_participants=1)
    join(room, "a", "Alice")
    assert_refused(room, "room_full", "join", person("b", "Bob"))


def test_rejoin_after_leave_starts_afresh() -> None:
    room = make_room()
    join(room, "a", "Alice")
    join(room, "b", "Bob")
    publish(room, "b", "b-audio", "audio")
    publish(room, "a", "a-audio", "audio")
    room.leave("a")
    changes = join(room, "a", "Alice 2")
    assert summarize(room, changes) == [("joined", "a", "Alice 2"), ("subscribed", "a", "b-audio")]
    assert room.participants["a"].tracks == []
    assert set(room.tracks) == {"b-audio"}
    assert subscriptions(room, "b") == set()


# -- publish / unpublish ------------------------------------------------------------


def test_publish_alone_is_only_track_added() -> None:
    room = make_room()
    join(room, "a", "Alice")
    video = media("video")
    changes = room.publish("a", "a-video", 7, video)
    assert changes == [TrackAdded(Track("a-video", "a", "video", 7, video))]
    assert room.tracks == {"a-video": Track("a-video", "a", "video", 7, video)}
    # The track keeps the caller's Producer and media, and starts unmuted.
    assert room.tracks["a-video"].media is video
    assert room.tracks["a-video"].producer == 7
    assert room.tracks["a-video"].muted is False
    assert room.track("a-video") is room.tracks["a-video"]
    assert room.tracks["a-video"].describe() == {"id": "a-video", "participant": "a",
                                                 "kind": "video", "muted": False,
                                                 "source": "camera", "name": ""}
    assert room.participants["a"].tracks == ["a-video"]
    assert subscriptions(room, "a") == set()


def test_publish_takes_the_kind_from_the_media() -> None:
    room = make_room()
    join(room, "a", "Alice")
    room.publish("a", "t", 1, media("audio"))
    assert room.tracks["t"].kind == "audio"


def test_publish_subscribes_every_other_participant_in_join_order() -> None:
    room = make_room()
    join(room, "a", "Alice")
    join(room, "b", "Bob")
    join(room, "c", "Carol")
    changes = publish(room, "b", "b-audio", "audio")
    t = track("b-audio", "b", "audio")
    assert changes == [
        TrackAdded(t),
        SubscriptionAdded("a", Subscription(t, 1)),
        SubscriptionAdded("c", Subscription(t, 2)),
    ]
    assert subscriptions(room, "a") == {"b-audio"}
    assert subscriptions(room, "b") == set()  # never to one's own track
    assert subscriptions(room, "c") == {"b-audio"}


def test_publish_without_auto_subscribe_subscribes_nobody() -> None:
    room = make_room(auto_subscribe=False)
    join(room, "a", "Alice")
    join(room, "b", "Bob")
    changes = publish(room, "a", "a-video", "video")
    assert changes == [TrackAdded(track("a-video", "a", "video"))]
    assert subscriptions(room, "a") == set()
    assert subscriptions(room, "b") == set()


def test_publish_several_tracks_keeps_their_order() -> None:
    room = make_room()
    join(room, "a", "Alice")
    publish(room, "a", "t2", "video")
    publish(room, "a", "t1", "audio")
    assert room.participants["a"].tracks == ["t2", "t1"]


@pytest.mark.parametrize("kind", ["", "Audio", "VIDEO", "data", "screen", "audio "])
def test_publish_bad_kind_is_bad_field(kind: str) -> None:
    room = make_room()
    join(room, "a", "Alice")
    assert_refused(room, "bad_field", "publish", *pub("a", "t", kind))
    assert room.tracks == {}


def test_publish_duplicate_track_id_is_bad_field() -> None:
    room = make_room()
    join(room, "a", "Alice")
    join(room, "b", "Bob")
    publish(room, "a", "t", "audio")
    assert_refused(room, "bad_field", "publish", *pub("a", "t", "audio"))
    assert_refused(room, "bad_field", "publish", *pub("a", "t", "video"))
    # Track ids are unique in the room, not per participant.
    assert_refused(room, "bad_field", "publish", *pub("b", "t", "video"))
    assert room.tracks["t"] == track("t", "a", "audio")


def test_publish_by_stranger_is_not_joined() -> None:
    room = make_room()
    join(room, "a", "Alice")
    assert_refused(room, "not_joined", "publish", *pub("z", "t", "audio"))
    # not_joined wins over a bad kind: the participant is checked first.
    assert_refused(room, "not_joined", "publish", *pub("z", "t", "data"))


def test_unpublish_unsubscribes_subscribers_then_unpublishes() -> None:
    room = make_room()
    for pid in ("a", "b", "c"):
        join(room, pid, pid.upper())
    publish(room, "b", "b-video", "video")  # consumers 1 (a), 2 (c)
    publish(room, "b", "b-audio", "audio")  # consumers 3 (a), 4 (c)
    changes = room.unpublish("b-video")
    t = track("b-video", "b", "video")
    assert changes == [
        SubscriptionRemoved("a", Subscription(t, 1)),
        SubscriptionRemoved("c", Subscription(t, 2)),
        TrackRemoved(t),
    ]
    assert set(room.tracks) == {"b-audio"}
    assert room.participants["b"].tracks == ["b-audio"]
    assert subscriptions(room, "a") == {"b-audio"}
    assert subscriptions(room, "c") == {"b-audio"}


def test_unpublish_skips_those_not_subscribed() -> None:
    room = make_room()
    for pid in ("a", "b", "c"):
        join(room, pid, pid.upper())
    publish(room, "a", "t", "audio")  # consumers 1 (b), 2 (c)
    room.unsubscribe("b", ["t"])
    t = track("t", "a", "audio")
    assert room.unpublish("t") == [SubscriptionRemoved("c", Subscription(t, 2)), TrackRemoved(t)]


def test_unpublish_unknown_track() -> None:
    room = make_room()
    join(room, "a", "Alice")
    publish(room, "a", "t", "audio")
    assert_refused(room, "unknown_track", "unpublish", "nope")
    room.unpublish("t")
    assert_refused(room, "unknown_track", "unpublish", "t")


def test_track_id_is_reusable_after_unpublish() -> None:
    room = make_room()
    join(room, "a", "Alice")
    join(room, "b", "Bob")
    publish(room, "a", "t", "audio")  # consumer 1 (b)
    room.unpublish("t")
    changes = publish(room, "b", "t", "video")
    t = track("t", "b", "video")
    assert changes == [TrackAdded(t), SubscriptionAdded("a", Subscription(t, 2))]


# -- subscribe / unsubscribe --------------------------------------------------------


def manual_room() -> Room:
    """Alice publishes audio and video, Bob publishes audio; nobody is subscribed."""
    room = make_room(auto_subscribe=False)
    join(room, "a", "Alice")
    join(room, "b", "Bob")
    join(room, "c", "Carol")
    publish(room, "a", "a-audio", "audio")
    publish(room, "a", "a-video", "video")
    publish(room, "b", "b-audio", "audio")
    return room


def test_subscribe_returns_subscription_added_in_request_order() -> None:
    room = manual_room()
    changes = room.subscribe("c", ["b-audio", "a-video", "a-audio"])
    assert changes == [
        SubscriptionAdded("c", Subscription(track("b-audio", "b", "audio"), 1)),
        SubscriptionAdded("c", Subscription(track("a-video", "a", "video"), 2)),
        SubscriptionAdded("c", Subscription(track("a-audio", "a", "audio"), 3)),
    ]
    assert subscriptions(room, "c") == {"a-audio", "a-video", "b-audio"}
    assert subscriptions(room, "a") == set()


def test_subscribe_twice_yields_no_second_change() -> None:
    room = manual_room()
    assert len(room.subscribe("c", ["a-video"])) == 1
    assert room.subscribe("c", ["a-video"]) == []
    # Only the new one of a mixed request is reported.
    assert summarize(room, room.subscribe("c", ["a-video", "a-audio"])) == [
        ("subscribed", "c", "a-audio")
    ]
    assert subscriptions(room, "c") == {"a-video", "a-audio"}
    # The existing subscription was left as it was: same object, same Consumer.
    assert consumers(room, "c") == {"a-video": 1, "a-audio": 2}


def test_subscribe_same_track_twice_in_one_request() -> None:
    room = manual_room()
    assert summarize(room, room.subscribe("c", ["a-video", "a-video"]), consumers=True) == [
        ("subscribed", "c", "a-video", 1)
    ]


def test_subscribe_with_auto_subscribe_already_on_is_a_no_op() -> None:
    room = make_room()
    join(room, "a", "Alice")
    join(room, "b", "Bob")
    publish(room, "a", "t", "audio")
    before = room.participants["b"].subscriptions["t"]
    assert room.subscribe("b", ["t"]) == []
    assert room.participants["b"].subscriptions["t"] is before


def test_subscribe_empty_list() -> None:
    room = manual_room()
    assert room.subscribe("c", []) == []
    assert room.unsubscribe("c", []) == []


def test_subscribe_own_track_is_bad_field() -> None:
    room = manual_room()
    error = assert_refused(room, "bad_field", "subscribe", "a", ["a-audio"])
    assert "a-audio" in str(error)


def test_refused_subscribe_changes_nothing() -> None:
    """A refused command is all or nothing: the caller gets no changes, so no state may change."""
    room = manual_room()
    assert_refused(room, "bad_field", "subscribe", "a", ["b-audio", "a-audio"])
    assert_refused(room, "unknown_track", "subscribe", "c", ["a-audio", "nope"])
    assert_refused(room, "unknown_track", "subscribe", "c", ["nope", "a-audio"])
    assert subscriptions(room, "a") == set()
    assert subscriptions(room, "c") == set()
    # Nor did a refused subscribe use up a Consumer id.
    assert summarize(room, room.subscribe("c", ["a-audio"]), consumers=True) == [
        ("subscribed", "c", "a-audio", 1)
    ]


def test_subscribe_unknown_track_or_stranger() -> None:
    room = manual_room()
    assert_refused(room, "unknown_track", "subscribe", "c", ["nope"])
    assert_refused(room, "not_joined", "subscribe", "z", ["a-audio"])


def test_unsubscribe_returns_subscription_removed() -> None:
    room = manual_room()
    room.subscribe("c", ["a-audio", "a-video", "b-audio"])  # consumers 1, 2, 3
    subscribed = room.participants["c"].subscriptions["b-audio"]
    changes = room.unsubscribe("c", ["b-audio", "a-audio"])
    assert changes == [
        SubscriptionRemoved("c", Subscription(track("b-audio", "b", "audio"), 3)),
        SubscriptionRemoved("c", Subscription(track("a-audio", "a", "audio"), 1)),
    ]
    # The removal carries the very subscription that was added.
    assert isinstance(changes[0], SubscriptionRemoved)
    assert changes[0].subscription is subscribed
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
    room = make_room()
    join(room, "a", "Alice")
    join(room, "b", "Bob")
    publish(room, "a", "t1", "audio")
    room.unsubscribe("b", ["t1"])
    changes = publish(room, "a", "t2", "video")
    assert summarize(room, changes) == [("published", "t2", "a", "video"),
                                        ("subscribed", "b", "t2")]
    assert subscriptions(room, "b") == {"t2"}


# -- leave --------------------------------------------------------------------------


def test_leave_alone() -> None:
    room = make_room()
    alice = person("a", "Alice")
    room.join(alice)
    changes = room.leave("a")
    assert changes == [ParticipantRemoved(alice)]
    assert isinstance(changes[0], ParticipantRemoved) and changes[0].participant is alice
    assert room.participants == {}


def test_leave_unsubscribes_unpublishes_then_left() -> None:
    room = make_room()
    join(room, "a", "Alice")
    join(room, "b", "Bob")
    join(room, "c", "Carol")
    publish(room, "c", "c-audio", "audio")
    publish(room, "b", "b-video", "video")
    publish(room, "a", "a-video", "video")
    publish(room, "a", "a-audio", "audio")
    room.unsubscribe("c", ["a-audio"])
    alice = room.participants["a"]
    changes = room.leave("a")
    assert summarize(room, changes) == [
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
    assert changes[-1] == ParticipantRemoved(alice)
    assert isinstance(changes[-1], ParticipantRemoved) and changes[-1].participant is alice
    removed = [c.track for c in changes if isinstance(c, TrackRemoved)]
    assert removed == [track("a-video", "a", "video"), track("a-audio", "a", "audio")]
    assert set(room.participants) == {"b", "c"}
    assert set(room.tracks) == {"b-video", "c-audio"}
    assert subscriptions(room, "b") == {"c-audio"}
    assert subscriptions(room, "c") == {"b-video"}


def test_leave_without_auto_subscribe() -> None:
    room = manual_room()
    room.subscribe("b", ["a-video"])
    changes = room.leave("a")
    assert summarize(room, changes) == [
        ("unpublished", "a-audio", "a"),
        ("unsubscribed", "b", "a-video"),
        ("unpublished", "a-video", "a"),
        ("left", "a"),
    ]


def test_leave_twice_or_stranger_is_not_joined() -> None:
    room = make_room()
    join(room, "a", "Alice")
    room.leave("a")
    assert_refused(room, "not_joined", "leave", "a")
    assert_refused(room, "not_joined", "leave", "z")


def test_room_error_is_a_value_error() -> None:
    error = RoomError("room_full", "full")
    assert isinstance(error, ValueError)
    assert error.code == "room_full"
    assert str(error) == "full"


def test_participant_and_track_lookups() -> None:
    room = make_room()
    join(room, "a", "Alice")
    publish(room, "a", "t", "audio")
    assert room.participant("a") is room.participants["a"]
    assert room.track("t") is room.tracks["t"]
    with pytest.raises(RoomError) as info:
        room.participant("z")
    assert info.value.code == "not_joined"
    with pytest.raises(RoomError) as info:
        room.track("nope")
    assert info.value.code == "unknown_track"


# -- grants -------------------------------------------------------------------------


def test_joiner_who_cannot_subscribe_gets_nothing_until_granted() -> None:
    """With auto-subscribe, one joining without the subscribe grant is subscribed to
    nothing; granting it with subscribe_all subscribes it to every other track."""
    room = make_room()
    join(room, "a", "Alice")
    publish(room, "a", "a-video", "video")
    publish(room, "a", "a-audio", "audio")
    join(room, "b", "Bob")  # consumers 1, 2
    publish(room, "b", "b-audio", "audio")  # consumer 3 (Alice)
    carol = person("c", "Carol", can_subscribe=False)
    assert room.join(carol) == [ParticipantAdded(carol)]
    assert room.participants["c"].subscriptions == {}
    publish(room, "c", "c-audio", "audio")  # consumers 4 (a), 5 (b)

    changes = room.grant("c", can_publish=True, can_subscribe=True, subscribe_all=True)
    assert changes == [
        SubscriptionAdded("c", Subscription(track("a-video", "a", "video"), 6)),
        SubscriptionAdded("c", Subscription(track("a-audio", "a", "audio"), 7)),
        SubscriptionAdded("c", Subscription(track("b-audio", "b", "audio"), 8)),
    ]
    assert room.participants["c"].can_subscribe
    assert subscriptions(room, "c") == {"a-video", "a-audio", "b-audio"}
    # Granting it again adds nothing.
    assert room.grant("c", can_publish=True, can_subscribe=True, subscribe_all=True) == []


def test_grant_subscribe_all_adds_only_missing_subscriptions() -> None:
    room = make_room()
    join(room, "a", "Alice")
    join(room, "b", "Bob")
    publish(room, "a", "t1", "audio")  # consumer 1 (b)
    publish(room, "a", "t2", "video")  # consumer 2 (b)
    room.unsubscribe("b", ["t1"])
    changes = room.grant("b", can_publish=True, can_subscribe=True, subscribe_all=True)
    assert summarize(room, changes, consumers=True) == [("subscribed", "b", "t1", 3)]
    assert consumers(room, "b") == {"t1": 3, "t2": 2}


def test_grant_subscribe_without_subscribe_all_adds_nothing_now() -> None:
    room = make_room()
    join(room, "a", "Alice")
    join(room, "b", "Bob", can_subscribe=False)
    publish(room, "a", "t1", "audio")
    assert room.grant("b", can_publish=True, can_subscribe=True, subscribe_all=False) == []
    assert subscriptions(room, "b") == set()
    # ... but tracks published from now on are subscribed.
    assert summarize(room, publish(room, "a", "t2", "video")) == [
        ("published", "t2", "a", "video"), ("subscribed", "b", "t2")
    ]
    # And it may now subscribe by itself.
    assert summarize(room, room.subscribe("b", ["t1"])) == [("subscribed", "b", "t1")]


def test_grant_subscribe_all_without_auto_subscribe_adds_nothing() -> None:
    room = make_room(auto_subscribe=False)
    join(room, "a", "Alice")
    join(room, "b", "Bob", can_subscribe=False)
    publish(room, "a", "t", "audio")
    assert room.grant("b", can_publish=True, can_subscribe=True, subscribe_all=True) == []
    assert subscriptions(room, "b") == set()
    assert room.participants["b"].can_subscribe


def test_track_published_while_one_cannot_subscribe_is_not_subscribed_for_it() -> None:
    room = make_room()
    join(room, "a", "Alice")
    join(room, "b", "Bob", can_subscribe=False)
    join(room, "c", "Carol")
    changes = publish(room, "a", "t", "audio")
    t = track("t", "a", "audio")
    assert changes == [TrackAdded(t), SubscriptionAdded("c", Subscription(t, 1))]
    assert subscriptions(room, "b") == set()
    # Being granted later without subscribe_all does not bring that track.
    room.grant("b", can_publish=True, can_subscribe=True, subscribe_all=False)
    assert subscriptions(room, "b") == set()


def test_joiner_who_cannot_subscribe_may_still_publish() -> None:
    room = make_room()
    join(room, "a", "Alice")
    join(room, "b", "Bob", can_subscribe=False)
    assert summarize(room, publish(room, "b", "b-audio", "audio")) == [
        ("published", "b-audio", "b", "audio"), ("subscribed", "a", "b-audio")
    ]


def test_revoking_publish_unpublishes_the_tracks() -> None:
    room = make_room()
    join(room, "a", "Alice")
    join(room, "b", "Bob")
    join(room, "c", "Carol")
    publish(room, "b", "b-audio", "audio")  # consumers 1 (a), 2 (c)
    publish(room, "a", "a-video", "video")  # consumers 3 (b), 4 (c)
    publish(room, "a", "a-audio", "audio")  # consumers 5 (b), 6 (c)
    room.unsubscribe("c", ["a-audio"])
    video, audio = track("a-video", "a", "video"), track("a-audio", "a", "audio")
    changes = room.grant("a", can_publish=False, can_subscribe=True, subscribe_all=False)
    assert changes == [
        SubscriptionRemoved("b", Subscription(video, 3)),
        SubscriptionRemoved("c", Subscription(video, 4)),
        TrackRemoved(video),
        SubscriptionRemoved("b", Subscription(audio, 5)),
        TrackRemoved(audio),
    ]
    assert not room.participants["a"].can_publish
    assert room.participants["a"].tracks == []
    assert set(room.tracks) == {"b-audio"}
    # Alice still receives what she received.
    assert consumers(room, "a") == {"b-audio": 1}
    assert subscriptions(room, "b") == set()
    assert subscriptions(room, "c") == {"b-audio"}
    # And may no longer publish.
    assert_refused(room, "forbidden", "publish", *pub("a", "a-video", "video"))


def test_revoking_subscribe_removes_the_subscriptions() -> None:
    room = make_room()
    join(room, "a", "Alice")
    join(room, "b", "Bob")
    join(room, "c", "Carol")
    publish(room, "c", "c-audio", "audio")  # consumers 1 (a), 2 (b)
    publish(room, "b", "b-video", "video")  # consumers 3 (a), 4 (c)
    publish(room, "a", "a-audio", "audio")  # consumers 5 (b), 6 (c)
    changes = room.grant("a", can_publish=True, can_subscribe=False, subscribe_all=True)
    # In track id order, as when leaving.
    assert changes == [
        SubscriptionRemoved("a", Subscription(track("b-video", "b", "video"), 3)),
        SubscriptionRemoved("a", Subscription(track("c-audio", "c", "audio"), 1)),
    ]
    assert not room.participants["a"].can_subscribe
    assert subscriptions(room, "a") == set()
    # Alice's own track is still published and received.
    assert set(room.tracks) == {"c-audio", "b-video", "a-audio"}
    assert subscriptions(room, "b") == {"c-audio", "a-audio"}
    # New tracks pass her by; she may not subscribe by herself.
    assert summarize(room, publish(room, "b", "b-audio", "audio")) == [
        ("published", "b-audio", "b", "audio"), ("subscribed", "c", "b-audio")
    ]
    assert_refused(room, "forbidden", "subscribe", "a", ["b-audio"])


def test_revoking_both_grants() -> None:
    room = make_room()
    join(room, "a", "Alice")
    join(room, "b", "Bob")
    publish(room, "a", "a-audio", "audio")  # consumer 1 (b)
    publish(room, "b", "b-audio", "audio")  # consumer 2 (a)
    changes = room.grant("a", can_publish=False, can_subscribe=False, subscribe_all=False)
    assert summarize(room, changes, consumers=True) == [
        ("unsubscribed", "b", "a-audio", 1),
        ("unpublished", "a-audio", "a"),
        ("unsubscribed", "a", "b-audio", 2),
    ]
    assert room.participants["a"].tracks == []
    assert room.participants["a"].subscriptions == {}


def test_grant_that_changes_nothing_returns_nothing() -> None:
    room = make_room()
    join(room, "a", "Alice")
    join(room, "b", "Bob")
    publish(room, "a", "t", "audio")
    before = snapshot(room)
    assert room.grant("a", can_publish=True, can_subscribe=True, subscribe_all=False) == []
    assert room.grant("b", can_publish=True, can_subscribe=True, subscribe_all=True) == []
    assert snapshot(room) == before


def test_forbidden_subscribe_and_publish() -> None:
    room = make_room(auto_subscribe=False)
    join(room, "a", "Alice")
    join(room, "b", "Bob", can_subscribe=False)
    join(room, "c", "Carol", can_publish=False)
    publish(room, "a", "t", "audio")
    error = assert_refused(room, "forbidden", "subscribe", "b", ["t"])
    assert str(error)
    error = assert_refused(room, "forbidden", "publish", *pub("c", "c-audio", "audio"))
    assert str(error)
    # Who may not subscribe may still unsubscribe: it has nothing to unsubscribe from.
    assert room.unsubscribe("b", ["t"]) == []
    # A stranger is not joined, whatever it asks.
    with pytest.raises(RoomError) as info:
        room.grant("z", can_publish=True, can_subscribe=True, subscribe_all=True)
    assert info.value.code == "not_joined"
    # A grant lifts the refusals.
    room.grant("b", can_publish=True, can_subscribe=True, subscribe_all=False)
    room.grant("c", can_publish=True, can_subscribe=True, subscribe_all=False)
    assert summarize(room, room.subscribe("b", ["t"])) == [("subscribed", "b", "t")]
    assert summarize(room, publish(room, "c", "c-audio", "audio")) == [
        ("published", "c-audio", "c", "audio")
    ]


def test_consumer_ids_are_fresh_per_subscription() -> None:
    room = make_room()
    join(room, "a", "Alice")
    join(room, "b", "Bob")
    join(room, "c", "Carol")
    publish(room, "a", "t1", "audio")  # 1 (b), 2 (c)
    publish(room, "b", "t2", "video")  # 3 (a), 4 (c)
    assert consumers(room, "a") == {"t2": 3}
    assert consumers(room, "b") == {"t1": 1}
    assert consumers(room, "c") == {"t1": 2, "t2": 4}
    # Subscribing again after an unsubscribe takes a new Consumer, never the old one.
    room.unsubscribe("c", ["t1"])
    room.subscribe("c", ["t1"])
    assert consumers(room, "c") == {"t1": 5, "t2": 4}
    # Nor does a track published again under the same id reuse one, nor a rejoin.
    room.unpublish("t1")
    publish(room, "a", "t1", "audio")  # 6 (b), 7 (c)
    room.leave("c")
    join(room, "c", "Carol")  # 8 (t2), 9 (t1)
    assert consumers(room, "b") == {"t1": 6}
    assert consumers(room, "c") == {"t2": 8, "t1": 9}


def test_consumer_ids_come_from_the_given_iterator() -> None:
    """Rooms sharing one iterator (one forwarder) never share a Consumer id."""
    ids = itertools.count(100, 10)
    first, second = Room("r1", ids), Room("r2", ids)
    for room in (first, second):
        join(room, "a", "Alice")
        join(room, "b", "Bob")
    publish(first, "a", "t", "audio")
    publish(second, "a", "t", "audio")
    publish(first, "b", "u", "audio")
    assert consumers(first, "b") == {"t": 100}
    assert consumers(second, "b") == {"t": 110}
    assert consumers(first, "a") == {"u": 120}


# -- random command sequences ---------------------------------------------------------

PARTICIPANT_IDS = [f"p{i}" for i in range(5)]
TRACK_IDS = [f"t{i}" for i in range(8)]
KINDS = ["audio", "video"]
# Built once: a strategy built inside a rule costs more than the rule's work. A grant is
# drawn True first (and shrinks to True), so that most participants may publish and
# subscribe and the room fills with tracks and subscriptions.
GRANT = st.sampled_from([True, False])
JOINER = st.tuples(st.text(min_size=1, max_size=8), st.booleans(), GRANT, GRANT)
GRANTS = st.tuples(GRANT, GRANT, GRANT)


@dataclass
class Model:
    """What the room should hold, kept independently of sfu/router/room.py."""

    auto_subscribe: bool
    max_participants: int
    names: dict[str, str] = field(default_factory=dict)  # join order
    identities: dict[str, str] = field(default_factory=dict)
    can_publish: dict[str, bool] = field(default_factory=dict)
    can_subscribe: dict[str, bool] = field(default_factory=dict)
    # id -> (owner, kind, producer), in publish order
    tracks: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    subs: dict[str, dict[str, int]] = field(default_factory=dict)  # pid -> track -> consumer
    next_consumer: int = 1
    # Some participant may lack a track auto-subscribe would have given it: an explicit
    # unsubscribe ended a subscription, or a grant let one subscribe without subscribe_all.
    partial: bool = False

    def own(self, pid: str) -> list[str]:
        return [t for t, (owner, _, _) in self.tracks.items() if owner == pid]

    def others_tracks(self, pid: str) -> list[str]:
        return [t for t, (owner, _, _) in self.tracks.items() if owner != pid]

    def publishers(self) -> list[str]:
        return sorted(p for p in self.names if self.can_publish[p])

    def subscribers(self) -> list[str]:
        return sorted(p for p in self.names if self.can_subscribe[p])

    def add(self, pid: str, tid: str) -> Summary:
        consumer = self.next_consumer
        self.next_consumer += 1
        self.subs[pid][tid] = consumer
        return ("subscribed", pid, tid, consumer)

    def remove(self, pid: str, tid: str) -> Summary:
        return ("unsubscribed", pid, tid, self.subs[pid].pop(tid))

    def unpublish(self, tid: str) -> list[Summary]:
        expected = [self.remove(other, tid) for other in self.names if tid in self.subs[other]]
        expected.append(("unpublished", tid, self.tracks.pop(tid)[0]))
        return expected


class RoomMachine(RuleBasedStateMachine):
    """Valid commands compared against an independent model; refused ones change nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.room = make_room()
        self.model = Model(True, 25)

    @initialize(auto_subscribe=st.booleans(), max_participants=st.integers(1, 5))
    def setup(self, auto_subscribe: bool, max_participants: int) -> None:
        self.room = make_room(auto_subscribe=auto_subscribe, max_participants=max_participants)
        self.model = Model(auto_subscribe, max_participants)

    def run(self, command: str, *args: object, **kwargs: object) -> list[Summary]:
        changes: list[Change] = getattr(self.room, command)(*args, **kwargs)
        return summarize(self.room, changes, consumers=True)

    # -- valid commands ------------------------------------------------------------

    @rule(data=st.data())
    def join(self, data: st.DataObject) -> None:
        m = self.model
        free = [p for p in PARTICIPANT_IDS if p not in m.names]
        if not free or len(m.names) >= m.max_participants:
            return
        pid = data.draw(st.sampled_from(free), label="pid")
        name, has_identity, can_publish, can_subscribe = data.draw(
            JOINER, label="name, has_identity, can_publish, can_subscribe")
        identity = f"user-{pid}" if has_identity else ""
        expected: list[Summary] = [("joined", pid, name)]
        m.names[pid] = name
        m.identities[pid] = identity
        m.can_publish[pid] = can_publish
        m.can_subscribe[pid] = can_subscribe
        m.subs[pid] = {}
        if m.auto_subscribe and can_subscribe:
            expected += [m.add(pid, t) for t in m.others_tracks(pid)]
        participant = Participant(pid, name, identity, can_publish=can_publish,
                                  can_subscribe=can_subscribe)
        assert self.run("join", participant) == expected
        assert self.room.participants[pid] is participant

    @precondition(lambda self: bool(self.model.names))
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        m = self.model
        pid = data.draw(st.sampled_from(sorted(m.names)), label="pid")
        expected: list[Summary] = [m.remove(pid, t) for t in sorted(m.subs[pid])]
        for t in m.own(pid):
            expected += m.unpublish(t)
        expected.append(("left", pid))
        del m.names[pid], m.identities[pid], m.can_publish[pid], m.can_subscribe[pid]
        del m.subs[pid]
        assert self.run("leave", pid) == expected

    @precondition(lambda self: bool(self.model.publishers()))
    @rule(data=st.data())
    def publish(self, data: st.DataObject) -> None:
        m = self.model
        free = [t for t in TRACK_IDS if t not in m.tracks]
        if not free:
            return
        pid = data.draw(st.sampled_from(m.publishers()), label="pid")
        tid = data.draw(st.sampled_from(free), label="tid")
        kind = data.draw(st.sampled_from(KINDS), label="kind")
        producer = data.draw(st.integers(0, 2**32 - 1), label="producer")
        expected: list[Summary] = [("published", tid, pid, kind)]
        m.tracks[tid] = (pid, kind, producer)
        if m.auto_subscribe:
            expected += [m.add(other, tid) for other in m.names
                         if other != pid and m.can_subscribe[other]]
        assert self.run("publish", pid, tid, producer, media(kind)) == expected

    @precondition(lambda self: bool(self.model.tracks))
    @rule(data=st.data())
    def unpublish(self, data: st.DataObject) -> None:
        m = self.model
        tid = data.draw(st.sampled_from(sorted(m.tracks)), label="tid")
        assert self.run("unpublish", tid) == m.unpublish(tid)

    @precondition(lambda self: bool(self.model.subscribers()))
    @rule(data=st.data())
    def subscribe(self, data: st.DataObject) -> None:
        m = self.model
        pid = data.draw(st.sampled_from(m.subscribers()), label="pid")
        candidates = m.others_tracks(pid)
        tids = data.draw(
            st.lists(st.sampled_from(candidates), max_size=4) if candidates else st.just([]),
            label="tids",
        )
        expected: list[Summary] = []
        for t in tids:
            if t not in m.subs[pid]:
                expected.append(m.add(pid, t))
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
                expected.append(m.remove(pid, t))
                m.partial = True
        assert self.run("unsubscribe", pid, tids) == expected

    @precondition(lambda self: bool(self.model.names))
    @rule(data=st.data())
    def grant(self, data: st.DataObject) -> None:
        m = self.model
        pid = data.draw(st.sampled_from(sorted(m.names)), label="pid")
        can_publish, can_subscribe, subscribe_all = data.draw(
            GRANTS, label="can_publish, can_subscribe, subscribe_all")
        expected: list[Summary] = []
        if not can_publish:
            for t in m.own(pid):
                expected += m.unpublish(t)
        if not can_subscribe:
            expected += [m.remove(pid, t) for t in sorted(m.subs[pid])]
        elif subscribe_all and m.auto_subscribe:
            expected += [m.add(pid, t) for t in m.others_tracks(pid) if t not in m.subs[pid]]
        elif not m.can_subscribe[pid]:
            m.partial = True
        m.can_publish[pid], m.can_subscribe[pid] = can_publish, can_subscribe
        assert self.run("grant", pid, can_publish=can_publish, can_subscribe=can_subscribe,
                        subscribe_all=subscribe_all) == expected

    # -- refused commands ------------------------------------------------------------

    def refuse(self, code: str, command: str, *args: object, **kwargs: object) -> None:
        before = snapshot(self.room)
        with pytest.raises(RoomError) as info:
            getattr(self.room, command)(*args, **kwargs)
        assert info.value.code == code, (command, args, str(info.value))
        assert snapshot(self.room) == before, (command, args)

    @rule(data=st.data())
    def refused(self, data: st.DataObject) -> None:
        m = self.model
        joined = sorted(m.names)
        publishers, subscribers = m.publishers(), m.subscribers()
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
        choices = ["leave", "publish_stranger", "subscribe_stranger", "unpublish_unknown",
                   "grant_stranger"]
        if joined:
            choices += ["rejoin", "unsubscribe_unknown"]
        if publishers:
            choices.append("bad_kind")
            if m.tracks:
                choices.append("duplicate")
        if subscribers:
            choices.append("subscribe_unknown")
            if any(m.own(p) for p in subscribers):
                choices.append("own")
        if len(publishers) < len(joined):
            choices.append("publish_forbidden")
        if len(subscribers) < len(joined):
            choices.append("subscribe_forbidden")
        if len(m.names) >= m.max_participants:
            choices.append("full")
        choice = data.draw(st.sampled_from(choices), label="refused command")
        if choice == "leave":
            self.refuse("not_joined", "leave", stranger)
        elif choice == "publish_stranger":
            self.refuse("not_joined", "publish", stranger, unknown, 1, media("audio"))
        elif choice == "subscribe_stranger":
            self.refuse("not_joined", "subscribe", stranger, known)
        elif choice == "unpublish_unknown":
            self.refuse("unknown_track", "unpublish", unknown)
        elif choice == "grant_stranger":
            grants = data.draw(GRANTS, label="grants")
            self.refuse("not_joined", "grant", stranger, can_publish=grants[0],
                        can_subscribe=grants[1], subscribe_all=grants[2])
        elif choice == "rejoin":
            pid = data.draw(st.sampled_from(joined), label="pid")
            self.refuse("already_joined", "join", Participant(pid, "again", ""))
        elif choice == "bad_kind":
            pid = data.draw(st.sampled_from(publishers), label="pid")
            self.refuse("bad_field", "publish", pid, unknown, 1, media("data"))
        elif choice == "duplicate":
            pid = data.draw(st.sampled_from(publishers), label="pid")
            tid = data.draw(st.sampled_from(sorted(m.tracks)), label="duplicate")
            kind = data.draw(st.sampled_from(KINDS), label="kind")
            self.refuse("bad_field", "publish", pid, tid, 1, media(kind))
        elif choice == "subscribe_unknown":
            pid = data.draw(st.sampled_from(subscribers), label="pid")
            valid = [t for t in known if m.tracks[t][0] != pid]
            tids = data.draw(st.permutations([*valid, unknown]), label="tids")
            self.refuse("unknown_track", "subscribe", pid, tids)
        elif choice == "unsubscribe_unknown":
            pid = data.draw(st.sampled_from(joined), label="pid")
            tids = data.draw(st.permutations([*known, unknown]), label="tids")
            self.refuse("unknown_track", "unsubscribe", pid, tids)
        elif choice == "own":
            owners = [p for p in subscribers if m.own(p)]
            owner = data.draw(st.sampled_from(owners), label="owner")
            valid = [t for t in known if m.tracks[t][0] != owner]
            own = data.draw(st.sampled_from(m.own(owner)), label="own track")
            tids = data.draw(st.permutations([*valid, own]), label="tids")
            self.refuse("bad_field", "subscribe", owner, tids)
        elif choice == "publish_forbidden":
            pid = data.draw(st.sampled_from([p for p in joined if not m.can_publish[p]]),
                            label="pid")
            kind = data.draw(st.sampled_from(KINDS), label="kind")
            self.refuse("forbidden", "publish", pid, unknown, 1, media(kind))
        elif choice == "subscribe_forbidden":
            pid = data.draw(st.sampled_from([p for p in joined if not m.can_subscribe[p]]),
                            label="pid")
            valid = [t for t in known if m.tracks[t][0] != pid]
            self.refuse("forbidden", "subscribe", pid, valid)
        elif choice == "full":
            self.refuse("room_full", "join", Participant(stranger, "one too many", ""))

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def subscriptions_point_to_other_participants_tracks(self) -> None:
        room = self.room
        seen: set[int] = set()
        for pid, participant in room.participants.items():
            assert participant.id == pid
            for tid, subscription in participant.subscriptions.items():
                assert tid in room.tracks
                assert subscription.track is room.tracks[tid]
                assert room.tracks[tid].participant != pid
                # Nothing here negotiates: that is the router's part.
                assert (subscription.slot, subscription.active, subscription.failed) == (
                    None, False, False)
                assert subscription.consumer not in seen  # one Consumer per subscription
                seen.add(subscription.consumer)

    @invariant()
    def tracks_belong_to_participants_that_list_them(self) -> None:
        room = self.room
        for tid, track_ in room.tracks.items():
            assert track_.id == tid
            assert track_.kind in ("audio", "video")
            assert track_.media.kind == track_.kind
            assert not track_.muted
            assert track_.participant in room.participants
            assert tid in room.participants[track_.participant].tracks
        for pid, participant in room.participants.items():
            assert len(participant.tracks) == len(set(participant.tracks))
            for tid in participant.tracks:
                assert room.tracks[tid].participant == pid

    @invariant()
    def grants_are_held(self) -> None:
        """Who may not subscribe receives nothing; who may not publish publishes nothing."""
        for participant in self.room.participants.values():
            if not participant.can_subscribe:
                assert participant.subscriptions == {}
            if not participant.can_publish:
                assert participant.tracks == []

    @invariant()
    def room_is_within_bounds(self) -> None:
        assert len(self.room.participants) <= self.room.max_participants

    @invariant()
    def room_matches_model(self) -> None:
        m = self.model
        room = self.room
        assert {pid: p.name for pid, p in room.participants.items()} == m.names
        assert {pid: p.identity for pid, p in room.participants.items()} == m.identities
        assert list(room.participants) == list(m.names)
        assert {pid: p.can_publish for pid, p in room.participants.items()} == m.can_publish
        assert {pid: p.can_subscribe for pid, p in room.participants.items()} == m.can_subscribe
        assert {t: (tr.participant, tr.kind, tr.producer)
                for t, tr in room.tracks.items()} == m.tracks
        assert list(room.tracks) == list(m.tracks)
        assert {pid: {t: s.consumer for t, s in p.subscriptions.items()}
                for pid, p in room.participants.items()} == m.subs
        for pid, participant in room.participants.items():
            assert participant.tracks == m.own(pid)
        if m.auto_subscribe and not m.partial:
            # With auto_subscribe and no explicit unsubscribe, everyone who may subscribe
            # receives every other participant's track.
            for pid, participant in room.participants.items():
                others = {t for t, tr in room.tracks.items() if tr.participant != pid}
                expected = others if participant.can_subscribe else set()
                assert set(participant.subscriptions) == expected


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
