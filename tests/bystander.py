"""How tests judge a bystander in a call under attack: the frames it decodes, and how
fast the server's /healthz answers."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time

import aiohttp
from aiortc import MediaStreamTrack


class FrameCounter:
    """Decodes ``track`` in a task of its own, noting when each frame came."""

    def __init__(self, track: MediaStreamTrack) -> None:
        self.times: list[float] = []
        self._task = asyncio.create_task(self._count(track))

    async def _count(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(Exception):  # the track ended
            while True:
                await track.recv()
                self.times.append(time.monotonic())

    @property
    def total(self) -> int:
        return len(self.times)

    def count(self, start: float, end: float) -> int:
        return sum(start <= t < end for t in self.times)

    def fps(self, start: float, end: float) -> float:
        return self.count(start, end) / (end - start)

    def longest_gap(self, start: float) -> float:
        """The longest time without a frame since ``start``, up to now."""
        times = [start, *(t for t in self.times if t >= start), time.monotonic()]
        return max(b - a for a, b in itertools.pairwise(times))

    async def reach(self, frames: int, timeout: float = 10.0) -> None:
        """Wait until ``frames`` frames have been decoded in all."""
        async with asyncio.timeout(timeout):
            while self.total < frames:
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        self._task.cancel()


async def healthz_latencies(port: int, until: float) -> list[float]:
    """/healthz asked every 0.2 s until ``until`` (monotonic): how long each answer took;
    a failed one counts as infinitely slow."""
    latencies = []
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < until:
            start = time.monotonic()
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz",
                                    timeout=aiohttp.ClientTimeout(total=5)) as response:
                    ok = response.status == 200
                latencies.append(time.monotonic() - start if ok else float("inf"))
            except (TimeoutError, aiohttp.ClientError):
                latencies.append(float("inf"))
            await asyncio.sleep(0.2)
    return latencies
