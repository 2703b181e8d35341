"""Explicit subscribe/unsubscribe with auto-subscribe off, and keyframes for late joiners."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiortc import VideoStreamTrack

from sfu.client import Client
from sfu.server import Server
from tests.conftest import make_config, requires_isolated_network

pytestmark = requires_isolated_network


async def test_subscribe_unsubscribe_resubscribe() -> None:
    config = make_config()
    config.rooms.auto_subscribe = False
    server = Server(config)
    await server.start()
    url = f"ws://127.0.0.1:{server.port}/ws"
    alice = Client(url, room="subs", name="alice")
    bob = Client(url, room="subs", name="bob")
    try:
        await alice.join()
        await bob.join()
        answer = await alice.publish([VideoStreamTrack()])
        (track,) = answer["tracks"]
        published = await bob.next_event("track_published")
        assert published["track"] == track
        await asyncio.sleep(3.0)  # the publisher's first keyframe is long gone
        assert bob.subscribe_pc is None and bob.tracks.empty()  # nothing without subscribe

        started = time.monotonic()
        await bob.subscribe([track["id"]])
        info, remote = await bob.next_track()
        assert info.track_id == track["id"]
        await asyncio.wait_for(remote.recv(), 5)
        first_frame_s = time.monotonic() - started
        print(f"late subscriber: first decoded frame {first_frame_s:.2f} s after subscribe")
        # Subscribe, offer/answer, ICE, DTLS, keyframe request, keyframe, decode.
        assert first_frame_s < 1.0
        counters = server.forwarder.counters()
        assert counters["keyframe_requests_sent"] >= 1

        bob_peer = server.participants[bob.participant_id or ""]
        subscription = bob_peer.participant.subscriptions[track["id"]]
        sent_before = server.forwarder.consumer_stats(subscription.consumer)[0]
        assert sent_before > 0
        await bob.unsubscribe([track["id"]])
        for _ in range(50):
            await asyncio.sleep(0.05)
            if (not bob_peer.offer_outstanding
                    and track["id"] not in bob_peer.participant.subscriptions):
                break
        assert track["id"] not in bob_peer.participant.subscriptions
        assert server.forwarder.consumer_stats(subscription.consumer) == (0, 0)  # removed
        assert subscription.slot is not None and bob_peer.subscribe is not None
        assert bob_peer.subscribe.direction(subscription.slot) == "inactive"

        await bob.subscribe([track["id"]])
        info2, remote2 = await bob.next_track()
        # The m-line it left, recycled (docs/protocol.md, "Recycled m-lines"): the same
        # mid, a new track.
        assert info2.track_id == track["id"] and info2.mid == info.mid and remote2 is not remote
        await asyncio.wait_for(remote2.recv(), 5)
    finally:
        await alice.close()
        await bob.close()
        await server.stop()


class SlowAnswerClient(Client):
    """Answers subscribe offers half a second late, so more tracks arrive meanwhile."""

    async def send(self, message: dict[str, Any]) -> None:
        if message.get("type") == "answer":
            await asyncio.sleep(0.5)
        await super().send(message)


async def test_track_published_while_an_offer_is_outstanding_arrives_next(
        server: Server) -> None:
    """A subscription added after the outstanding offer was made is not in its answer:
    it waits for the next offer (and is not judged by an answer it was not in)."""
    url = f"ws://127.0.0.1:{server.port}/ws"
    bob = SlowAnswerClient(url, room="late", name="bob")
    alice = Client(url, room="late", name="alice")
    carol = Client(url, room="late", name="carol")
    try:
        for client in (bob, alice, carol):
            await client.join()
        await alice.publish([VideoStreamTrack()])
        async with asyncio.timeout(10):  # bob's first offer is out, his answer pending
            while not server.participants[bob.participant_id or ""].offer_outstanding:
                await asyncio.sleep(0.01)
        await carol.publish([VideoStreamTrack()])
        got = set()
        for _ in range(2):
            info, track = await bob.next_track(timeout=15)
            await asyncio.wait_for(track.recv(), 10)
            got.add(info.participant)
        assert got == {alice.participant_id, carol.participant_id}
        bob_link = server.participants[bob.participant_id or ""]
        subscriptions = bob_link.participant.subscriptions.values()
        assert all(s.active and not s.failed for s in subscriptions)
    finally:
        for client in (bob, alice, carol):
            await client.close()
