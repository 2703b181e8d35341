"""The RTCP the SFU sends a publisher is understood by a real one (aiortc's sender):
its receiver reports yield remote-inbound-rtp stats with a round-trip time, which
aiortc computes only when our LSR echoes one of its own sender reports."""

from __future__ import annotations

import asyncio

from aiortc import VideoStreamTrack

from sfu.client import Client
from sfu.server import Server
from tests.conftest import make_config, publisher_and_subscriber, requires_isolated_network

pytestmark = requires_isolated_network


async def test_publisher_gets_receiver_reports() -> None:
    config = make_config()
    config.rtc.feedback_interval_ms = 300
    server = Server(config)
    await server.start()
    alice = Client(f"ws://127.0.0.1:{server.port}/ws", room="fb", name="alice")
    try:
        await alice.join()
        await alice.publish([VideoStreamTrack()])
        assert alice.publish_pc is not None
        (sender,) = alice.publish_pc.getSenders()
        remote: list[object] = []
        for _ in range(40):  # aiortc sends its SRs every 0.5-1.5 s
            await asyncio.sleep(0.25)
            report = await sender.getStats()
            remote = [s for s in report.values() if s.type == "remote-inbound-rtp"]
            if remote and getattr(remote[0], "roundTripTime", None):
                break
        assert remote, "the publisher never got a receiver report"
        stats = remote[0]
        print("publisher's remote-inbound-rtp:", stats)
        assert 0 < stats.roundTripTime < 0.5  # type: ignore[attr-defined]
        assert stats.packetsLost == 0  # type: ignore[attr-defined]
        assert server.stats.rtcp_sent["rr"] > 0 and server.stats.rtcp_sent["remb"] > 0
        assert server.forwarder.counters()["sr_in"] > 0
    finally:
        await alice.close()
        await server.stop()


async def test_subscriber_reports_reach_room_info() -> None:
    """A subscriber's RRs (aiortc's receiver) become loss, jitter and RTT per
    subscription; RTT needs our translated SRs, so the publisher must send SRs too."""
    server = Server(make_config())
    await server.start()
    try:
        async with publisher_and_subscriber(server, "rr"):
            entry: dict[str, object] = {}
            for _ in range(40):
                await asyncio.sleep(0.25)
                info = server.room_info("rr")
                (bob_info,) = [p for p in info["participants"] if p["name"] == "bob"]
                entry = bob_info["subscriptions"][0] if bob_info["subscriptions"] else {}
                if entry.get("rtt_ms") is not None:
                    break
        print("bob's subscription:", entry)
        assert entry.get("packets_lost") == 0 and entry.get("fraction_lost") == 0
        rtt = entry.get("rtt_ms")
        assert isinstance(rtt, float) and 0 <= rtt < 100
    finally:
        await server.stop()
