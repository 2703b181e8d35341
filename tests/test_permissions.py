"""Grants changed while a participant is in the room: the room records subscriptions
only for a participant allowed to subscribe, so a later grant subscribes it to every
track published before (issue: two sources of truth)."""

from __future__ import annotations

import asyncio

from aiortc import VideoStreamTrack

from sfu.client import Client
from sfu.control.auth import mint_token
from tests.conftest import jwt_config, requires_isolated_network, running

pytestmark = requires_isolated_network

SECRET = "p" * 32


async def test_a_subscribe_grant_brings_the_tracks_published_before_it() -> None:
    config = jwt_config(SECRET)
    config.rooms.auto_subscribe = True
    async with running(config) as server:
        url = f"ws://127.0.0.1:{server.port}/ws"
        alice = Client(url, room="r", name="alice",
                       token=mint_token(SECRET, room="r", identity="alice"))
        bob = Client(url, room="r", name="bob",
                     token=mint_token(SECRET, room="r", identity="bob", can_subscribe=False))
        try:
            await bob.join()
            await alice.join()
            (track,) = (await alice.publish([VideoStreamTrack()]))["tracks"]
            await bob.next_event("track_published")
            # Not allowed yet: no offer, no track.
            await asyncio.sleep(0.5)
            assert bob.subscribe_pc is None and bob.tracks.empty()
            assert server.room_info("r")["participants"][0]["subscriptions"] == []

            server.update_permissions("r", bob.participant_id or "", can_subscribe=True)
            info, remote = await bob.next_track(timeout=10)
            assert info.track_id == track["id"]
            await asyncio.wait_for(remote.recv(), 10)
            (bob_info,) = [p for p in server.room_info("r")["participants"]
                           if p["id"] == bob.participant_id]
            assert [s["track"] for s in bob_info["subscriptions"]] == [track["id"]]
        finally:
            await alice.close()
            await bob.close()
