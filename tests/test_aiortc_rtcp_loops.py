"""aiortc's own RTCP loops do not run on the server's connections (the SFU sends RTCP
itself: internals.silence_rtcp). Each would wake every 0.5-1.5 s per sender and per
receiver to build reports that go nowhere."""

from __future__ import annotations

import asyncio
from typing import Any

from sfu.server import Server
from tests.conftest import publisher_and_subscriber


def rtcp_loop_owners() -> list[Any]:
    """The aiortc senders and receivers whose own RTCP loop is running now."""
    owners = []
    for task in asyncio.all_tasks():
        coroutine: Any = task.get_coro()
        if getattr(coroutine, "__qualname__", "") in ("RTCRtpSender._run_rtcp",
                                                       "RTCRtpReceiver._run_rtcp"):
            owners.append(coroutine.cr_frame.f_locals["self"])
    return owners


async def test_the_servers_transceivers_run_no_rtcp_loop(server: Server) -> None:
    async with publisher_and_subscriber(server, "quiet") as (alice, bob, _):
        pcs = [transport.pc for link in server.participants.values()
               for transport in (link.publish, link.subscribe) if transport is not None]
        parts = [part for pc in pcs for transceiver in pc.getTransceivers()
                 for part in (transceiver.sender, transceiver.receiver)]
        assert len(parts) >= 4  # alice's published video, bob's subscription to it
        running = rtcp_loop_owners()
        # The clients are aiortc with its RTCP on: their loops run (the check sees them).
        assert any(owner is alice.publish_pc.getTransceivers()[0].sender for owner in running)
        assert not [part for part in parts if any(part is owner for owner in running)]
        await alice.leave()
        await bob.leave()
    # Leaving closes the server's connections: aiortc's stop() of each sender and
    # receiver waits on the events the replaced loops set, and returns.
    async with asyncio.timeout(10):
        while server.participants:
            await asyncio.sleep(0.05)
        for pc in pcs:
            await asyncio.shield(pc.close())  # returns once that close has finished
    assert not [part for part in parts if any(part is owner for owner in rtcp_loop_owners())]
