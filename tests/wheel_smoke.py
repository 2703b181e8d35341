"""Run by an installed wheel's own Python (tests/test_wheel.py): against a server at
URL, two participants join one room, one publishes video and the other decodes frames.

    python wheel_smoke.py ws://127.0.0.1:PORT/ws

Prints the file `sfu` was imported from, then the number of frames decoded.
"""

from __future__ import annotations

import asyncio
import sys

from aiortc import VideoStreamTrack

import sfu
from sfu.client import Client


async def exchange(url: str, frames: int = 10) -> int:
    alice = Client(url, room="smoke", name="alice")
    bob = Client(url, room="smoke", name="bob")
    try:
        await alice.join()
        await bob.join()
        await alice.publish([VideoStreamTrack()])
        _, track = await asyncio.wait_for(bob.next_track(), 20)
        for _ in range(frames):
            await asyncio.wait_for(track.recv(), 10)
        return frames
    finally:
        await alice.close()
        await bob.close()


if __name__ == "__main__":
    print(sfu.__file__, flush=True)
    print(asyncio.run(exchange(sys.argv[1])), flush=True)
