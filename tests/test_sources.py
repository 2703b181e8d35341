"""Track sources (docs/protocol.md, "Track sources and screen share"): several video
tracks from one participant, each with its source, seen by the others; one of them
unpublished alone; a screen share's size limits ignored; a source of the wrong kind
refused. Screen share from browsers: tests/test_meeting_browser.py."""

from __future__ import annotations

import asyncio

import pytest
from aiortc import AudioStreamTrack, VideoStreamTrack

from sfu.client import Client, ServerError
from tests.conftest import make_config, requires_isolated_network, running

pytestmark = requires_isolated_network


async def test_camera_and_screen_from_one_participant() -> None:
    async with running(make_config()) as server:
        url = f"ws://127.0.0.1:{server.port}/ws"
        alice, bob = Client(url, room="s", name="alice"), Client(url, room="s", name="bob")
        try:
            await alice.join()
            await bob.join()
            answer = await alice.publish(
                [VideoStreamTrack(), VideoStreamTrack(), AudioStreamTrack()],
                sources=["camera", "screen", "microphone"])
            assert [(t["kind"], t["source"]) for t in answer["tracks"]] == [
                ("video", "camera"), ("video", "screen"), ("audio", "microphone")]
            published = {}
            for _ in range(3):
                track = (await bob.next_event("track_published"))["track"]
                published[track["source"]] = track
            assert set(published) == {"camera", "screen", "microphone"}
            # bob receives all three, each from its own track.
            received = {}
            for _ in range(3):
                info, track = await bob.next_track()
                received[info.track_id] = track
            assert set(received) == {t["id"] for t in published.values()}
            screen, camera = published["screen"]["id"], published["camera"]["id"]
            for track_id in (screen, camera):
                await asyncio.wait_for(received[track_id].recv(), 10)

            # A screen share is never downscaled for a small tile; a camera may be.
            for track_id in (screen, camera):
                await bob.send({"type": "set_subscription", "track": track_id,
                                "max_width": 160})
            await bob.request({"type": "ping"})  # handled in order: the above are done
            subscriptions = server.rooms["s"].participants[bob.participant_id or ""].subscriptions
            assert subscriptions[screen].preferences.max_width == 0
            assert subscriptions[camera].preferences.max_width == 160

            # The share ends: only its track goes; the camera carries on.
            reply = await alice.unpublish(screen)
            assert (reply["type"], reply["track"]) == ("unpublished", screen)
            assert (await bob.next_event("track_unpublished"))["track"] == screen
            assert set(server.tracks) == {camera, published["microphone"]["id"]}
            for _ in range(10):
                await asyncio.wait_for(received[camera].recv(), 2)
            # Only one's own tracks, and only once.
            with pytest.raises(ServerError, match="unknown_track"):
                await alice.unpublish(screen)
            with pytest.raises(ServerError, match="unknown_track"):
                await bob.unpublish(camera)
            assert server.room_info("s")["participants"][0]["tracks"][0]["source"] == "camera"
        finally:
            await alice.close()
            await bob.close()


async def test_a_source_of_the_other_kind_is_refused() -> None:
    async with running(make_config()) as server:
        alice = Client(f"ws://127.0.0.1:{server.port}/ws", room="s", name="alice")
        try:
            await alice.join()
            with pytest.raises(ServerError, match="not a video source"):
                await alice.publish([VideoStreamTrack()], sources=["microphone"])
            assert not server.tracks
        finally:
            await alice.close()
