"""Embedding: the example backend, events, admin actions on the wire, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiortc import VideoStreamTrack
from prometheus_client.parser import text_string_to_metric_families

from examples import backend
from sfu import Config
from sfu.client import Client
from tests.conftest import requires_isolated_network

pytestmark = requires_isolated_network


class FrameCounter:
    """Counts the frames a remote track decodes, in the background."""

    def __init__(self, track: Any) -> None:
        self.frames = 0
        self._task = asyncio.create_task(self._run(track))

    async def _run(self, track: Any) -> None:
        try:
            while True:
                await track.recv()
                self.frames += 1
        except Exception:
            return  # the track ended

    async def gained(self, seconds: float) -> int:
        before = self.frames
        await asyncio.sleep(seconds)
        return self.frames - before

    def stop(self) -> None:
        self._task.cancel()


@pytest.fixture
async def backend_url() -> AsyncIterator[str]:
    config = Config()
    config.auth.mode = "jwt"
    config.auth.secret = "e" * 32
    app = backend.create_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def get_json(url: str, method: str = "GET") -> Any:
    async with aiohttp.ClientSession() as session, session.request(method, url) as response:
        assert response.status < 300, await response.text()
        return await response.json() if response.status != 204 else None


async def test_example_backend_events_and_kick(backend_url: str) -> None:
    ws_url = backend_url.replace("http", "ws") + "/sfu/ws"
    clients = {}
    for user in ("alice", "bob"):
        token = (await get_json(f"{backend_url}/token?room=standup&user={user}"))["token"]
        clients[user] = Client(ws_url, room="standup", name=user.title(), token=token)
        await clients[user].join()
    alice, bob = clients["alice"], clients["bob"]
    try:
        await alice.publish([VideoStreamTrack()])
        _, track = await bob.next_track()
        counter = FrameCounter(track)
        assert await counter.gained(1.5) >= 10
        await get_json(f"{backend_url}/rooms/standup/kick/alice", "POST")
        left = await bob.next_event("participant_left")
        assert left["participant"] == alice.participant_id
        await asyncio.sleep(0.5)  # what was in flight
        assert await counter.gained(1.5) == 0, "kicked publisher's media still arrives"
        counter.stop()

        events = [e for e in await get_json(f"{backend_url}/events")
                  if e["type"] != "connection_state_changed"]
        summary = [(e["type"], e.get("identity") or e.get("participant")) for e in events]
        assert summary[:5] == [
            ("room_started", None),
            ("participant_joined", "alice"),
            ("participant_joined", "bob"),
            ("track_published", alice.participant_id),
            ("track_unpublished", alice.participant_id),
        ], summary
        assert events[5]["type"] == "participant_left" and events[5]["reason"] == "kicked"
        states = [e for e in await get_json(f"{backend_url}/events")
                  if e["type"] == "connection_state_changed" and e["state"] == "connected"]
        assert {(e["connection"], e["local_candidate"]) for e in states} >= {
            ("publish", "host"), ("subscribe", "host")}
    finally:
        await alice.close()
        await bob.close()


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
    }


async def test_mute_and_metrics_move_with_media() -> None:
    from sfu.server import Server
    from tests.conftest import make_config

    server = Server(make_config())
    await server.start()
    url = f"ws://127.0.0.1:{server.port}/ws"
    metrics_url = f"http://127.0.0.1:{server.port}/metrics"
    alice = Client(url, room="m", name="alice")
    bob = Client(url, room="m", name="bob")
    try:
        await alice.join()
        await bob.join()
        answer = await alice.publish([VideoStreamTrack()])
        track_id = answer["tracks"][0]["id"]
        _, track = await bob.next_track()
        counter = FrameCounter(track)
        assert await counter.gained(1.0) >= 5
        first = await scrape(metrics_url)
        await asyncio.sleep(1.0)
        second = await scrape(metrics_url)
        video = ("sfu_forwarded_packets_total", (("kind", "video"),))
        assert second[video] > first[video] > 0
        assert second[("sfu_forwarded_bytes_total", (("kind", "video"),))] > 0
        connected = ("sfu_ice_connections_total", (("local_candidate", "host"), (
            "outcome", "connected"), ("remote_candidate", "host")))
        assert second[connected] >= 2
        assert second[("sfu_ice_connect_seconds_count", ())] >= 2
        assert second[("sfu_participants", ())] == 2
        assert second[("sfu_event_loop_lag_seconds", ())] < 1.0

        server.mute("m", track_id, True)
        assert (await bob.next_event("track_muted")) == {
            "type": "track_muted", "track": track_id, "muted": True}
        await asyncio.sleep(0.3)
        assert await counter.gained(1.2) == 0, "muted track still flows"
        assert server.forwarder.counters()["skip_paused"] > 0
        server.mute("m", track_id, False)
        assert (await bob.next_event("track_muted"))["muted"] is False
        assert await counter.gained(1.5) >= 5, "unmuted track does not resume"
        counter.stop()
    finally:
        await alice.close()
        await bob.close()
        await server.stop()
