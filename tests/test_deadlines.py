"""A room's RTCP timer wakes when something is due, not at a fixed rate: a room without
tracks arms nothing; a room whose media flows without loss wakes once per report
interval (the old design polled every 20 ms over every publication)."""

from __future__ import annotations

import asyncio

from sfu.client import Client
from sfu.server import Server
from tests.conftest import make_config, publisher_and_subscriber, requires_isolated_network

pytestmark = requires_isolated_network

WATCH_S = 3.0


async def test_a_room_without_tracks_arms_no_timer() -> None:
    server = Server(make_config())
    await server.start()
    url = f"ws://127.0.0.1:{server.port}/ws"
    clients = [Client(url, room="quiet", name=name) for name in ("alice", "bob")]
    try:
        for client in clients:
            await client.join()
        router = server.routers["quiet"]
        await asyncio.sleep(WATCH_S)
        assert router.feedback.next_deadline() == -1
        assert router.feedback.wakeups == 0
    finally:
        for client in clients:
            await client.close()
        await server.stop()


async def test_flowing_media_wakes_the_timer_once_per_report_interval() -> None:
    config = make_config()
    interval_s = config.rtc.feedback_interval_ms / 1000
    server = Server(config)
    await server.start()
    try:
        async with publisher_and_subscriber(server, "flowing"):
            router = server.routers["flowing"]
            before, reports_before = router.feedback.wakeups, server.stats.rtcp_sent["rr"]
            await asyncio.sleep(WATCH_S)
            wakeups = router.feedback.wakeups - before
            reports = server.stats.rtcp_sent["rr"] - reports_before
        lost = server.forwarder.counters()["nack_requested"]
        print(f"{wakeups} wakeups and {reports} receiver reports in {WATCH_S} s; "
              f"{lost} packets asked for again")
        # One per interval, one more at most for each loss (none is expected on loopback);
        # polling every 20 ms would be 150.
        assert reports >= WATCH_S / interval_s - 1
        assert wakeups <= WATCH_S / interval_s + 1 + lost
    finally:
        await server.stop()
