"""`restart`: a participant replaces its peer connections and keeps its place.

What a client does when ICE fails or takes too long (the browser then comes back
through TURN, tests/test_turn_topologies.py): here with aiortc participants on
loopback, so the room-state side is checked on its own. Nobody sees a leave or a join,
track ids stay, media resumes on the same subscriber track, and the old connections'
sockets and tasks are gone.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiortc import VideoStreamTrack

from sfu.client import Client
from sfu.server import Server
from tests.conftest import make_config, requires_isolated_network

pytestmark = requires_isolated_network


@dataclass
class Room:
    server: Server
    alice: Client  # publishes video
    bob: Client  # receives it
    frames: list[int]  # frames bob decoded, across tracks


async def count_frames(client: Client, frames: list[int]) -> None:
    """Count frames on every track the client is given, as they come."""
    async def drain(track: object) -> None:
        while True:
            await track.recv()  # type: ignore[attr-defined]
            frames[0] += 1

    tasks = []
    try:
        while True:
            _, track = await client.tracks.get()
            tasks.append(asyncio.create_task(drain(track)))
    finally:
        for task in tasks:
            task.cancel()


async def frames_within(room: Room, count: int, seconds: float) -> bool:
    target = room.frames[0] + count
    async with asyncio.timeout(seconds):
        while room.frames[0] < target:
            await asyncio.sleep(0.05)
    return True


@pytest.fixture(params=["cython", "python"])
async def room(request: pytest.FixtureRequest) -> AsyncIterator[Room]:
    server = Server(make_config(forwarder=request.param))
    if server.forwarder.implementation != request.param:
        pytest.skip(f"no {request.param} forwarder")
    await server.start()
    url = f"ws://127.0.0.1:{server.port}/ws"
    alice = Client(url, room="restart", name="alice")
    bob = Client(url, room="restart", name="bob")
    await alice.join()
    await bob.join()
    await alice.publish([VideoStreamTrack()])
    frames = [0]
    counter = asyncio.create_task(count_frames(bob, frames))
    state = Room(server, alice, bob, frames)
    assert await frames_within(state, 3, 10)
    yield state
    counter.cancel()
    await alice.close()
    await bob.close()
    await server.stop()


def sockets_open() -> int:
    return sum(os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
               for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}"))


def unexpected_events(client: Client) -> list[str]:
    seen = []
    while not client.events.empty():
        seen.append(client.events.get_nowait()["type"])
    return [t for t in seen if t in ("participant_left", "participant_joined",
                                     "track_unpublished", "track_published", "error")]


async def test_publisher_restart_keeps_its_track_and_subscribers(room: Room) -> None:
    server = room.server
    (track_id,) = server.tracks
    (first,) = server.participants[room.bob.participant_id or ""].participant.subscriptions.values()
    before = server.forwarder.consumer_stats(first.consumer)
    unexpected_events(room.bob)  # what came before: alice's track_published
    reply = await room.alice.restart(relay_only=True)
    assert reply["type"] == "restarted" and reply["relay_only"] is True
    assert await frames_within(room, 10, 10)  # bob's same track goes on
    assert list(server.tracks) == [track_id]
    assert unexpected_events(room.bob) == []
    bob = server.participants[room.bob.participant_id or ""]
    (subscription,) = bob.participant.subscriptions.values()
    after = server.forwarder.consumer_stats(subscription.consumer)
    assert after[0] > before[0]  # the same consumer forwards the new connection's media
    assert server.stats.restarts[True] == 1


async def test_subscriber_restart_gets_the_room_again(room: Room) -> None:
    server = room.server
    unexpected_events(room.alice)
    reply = await room.bob.restart()
    assert reply["relay_only"] is False
    assert await frames_within(room, 10, 10)  # through a new subscribe connection
    assert unexpected_events(room.alice) == []
    bob = server.participants[room.bob.participant_id or ""]
    assert bob.subscribe is not None and bob.subscribe.connected.is_set()
    (subscription,) = bob.participant.subscriptions.values()
    assert subscription.active and server.forwarder.consumer_started(subscription.consumer)


async def test_restarts_leave_no_sockets_or_tasks_behind(room: Room) -> None:
    server = room.server
    await room.alice.restart()
    await room.bob.restart()
    assert await frames_within(room, 5, 10)
    await asyncio.sleep(0.5)  # closing transports finish
    sockets, tasks = sockets_open(), len(asyncio.all_tasks())
    for _ in range(3):
        await room.alice.restart()
        await room.bob.restart()
        assert await frames_within(room, 5, 10)
    await asyncio.sleep(0.5)
    assert sockets_open() <= sockets
    assert len(asyncio.all_tasks()) <= tasks
    transports = [t for link in server.participants.values()
                  for t in (link.publish, link.subscribe) if t is not None]
    assert len(transports) == 2  # alice publishes, bob receives


async def test_malformed_restart_is_refused(room: Room) -> None:
    url = f"ws://127.0.0.1:{room.server.port}/ws"
    carol = Client(url, room="restart", name="carol")
    await carol.join()
    with pytest.raises(Exception, match="bad_field"):
        await carol.request({"type": "restart", "relay_only": "yes"})
    await carol.leave()


async def test_publications_not_published_again_are_unpublished(room: Room) -> None:
    """alice had published video; after her restart she publishes audio instead: the
    video track is unpublished for bob, the audio is new."""
    from aiortc import AudioStreamTrack

    (video_id,) = room.server.tracks
    unexpected_events(room.bob)
    reply = await room.alice.restart(tracks=[AudioStreamTrack()])
    assert reply["type"] == "restarted"
    seen: dict[str, dict[str, object]] = {}
    async with asyncio.timeout(10):
        while len(seen) < 2:
            event = await room.bob.events.get()
            if event["type"] in ("track_unpublished", "track_published"):
                seen[event["type"]] = event
    assert seen["track_unpublished"]["track"] == video_id
    assert seen["track_published"]["track"]["kind"] == "audio"  # type: ignore[index]
    assert [t.kind for t in room.server.tracks.values()] == ["audio"]
    assert room.server.participants[room.alice.participant_id or ""].detached == []


async def test_a_track_unpublished_during_a_restart_is_not_carried_on(room: Room) -> None:
    """alice restarts; before her publish offer comes, her publish grant is revoked (her
    track goes) and given back: the offer publishes a new track rather than carrying on
    the one that is gone."""
    server, alice = room.server, room.alice
    (old_id,) = server.tracks
    publish = alice.publish

    async def publish_after_a_revoke(tracks: list[Any], **options: Any) -> dict[str, Any]:
        server.update_permissions("restart", alice.participant_id or "", can_publish=False)
        server.update_permissions("restart", alice.participant_id or "", can_publish=True)
        return await publish(tracks, **options)

    alice.publish = publish_after_a_revoke  # type: ignore[method-assign]
    await alice.restart()
    (new_id,) = server.tracks
    assert new_id != old_id
    assert await frames_within(room, 10, 10)  # bob is subscribed to it (auto-subscribe)
