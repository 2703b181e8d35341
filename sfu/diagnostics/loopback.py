"""Video through the SFU and back (``sfu doctor --server``): two clients of this
machine join a room of their own, one publishes a test video, the other receives it
for a few seconds. Frames per second and loss as the receiver counts them, and the
round-trip time the publisher measures from the SFU's receiver reports (RFC 3550
§6.4.1: LSR and DLSR)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any

from sfu.client import Client, pattern_track

SECONDS = 4.0


@dataclass(frozen=True)
class LoopbackReport:
    fps: float
    packets: int
    loss: float
    rtt_ms: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        rtt = "?" if self.rtt_ms is None else f"{self.rtt_ms:.1f} ms"
        return (f"loopback           {self.fps:.1f} frames/s through the SFU, "
                f"{self.loss:.1%} lost, round trip {rtt}")


def _inbound(stats: Any) -> tuple[int, int]:
    """(packets received, packets lost) of a receiver's getStats()."""
    for s in stats.values():
        if s.type == "inbound-rtp":
            return s.packetsReceived, s.packetsLost
    return 0, 0


async def _rtt_ms(sender_client: Client) -> float | None:
    assert sender_client.publish_pc is not None
    for sender in sender_client.publish_pc.getSenders():
        for s in (await sender.getStats()).values():
            if s.type == "remote-inbound-rtp" and s.roundTripTime is not None:
                return float(s.roundTripTime) * 1000
    return None


async def loopback(ws_url: str, room: str, tokens: tuple[str | None, str | None],
                   seconds: float = SECONDS) -> LoopbackReport:
    sender = Client(ws_url, room=room, name="doctor-send", token=tokens[0])
    receiver = Client(ws_url, room=room, name="doctor-receive", token=tokens[1])
    try:
        await sender.join()
        await receiver.join()
        await sender.publish([pattern_track()])
        _, track = await receiver.next_track(15)
        await asyncio.wait_for(track.recv(), 15)
        rtp = next(t for t in receiver.subscribe_pc.getReceivers()  # type: ignore[union-attr]
                   if t.track is track)
        before, started, frames = _inbound(await rtp.getStats()), time.monotonic(), 0
        while (elapsed := time.monotonic() - started) < seconds:
            await asyncio.wait_for(track.recv(), 5)
            frames += 1
        after = _inbound(await rtp.getStats())
        received, lost = after[0] - before[0], max(0, after[1] - before[1])
        return LoopbackReport(frames / elapsed, received,
                              lost / (received + lost) if received + lost else 0.0,
                              await _rtt_ms(sender))
    finally:
        await sender.close()
        await receiver.close()
