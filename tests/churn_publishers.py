"""Publishers that come and go, from their own process (so that what they leave in
memory is not counted against the server and subscriber the test measures):
tests/test_recycling.py runs it.

    python -m tests.churn_publishers URL ROOM rounds ROUNDS AT_ONCE
    python -m tests.churn_publishers URL ROOM flood CYCLES TRACKS HOLD_S

``rounds``: each round AT_ONCE publishers join ROOM and publish audio and video, print
one JSON line ``{"round": n, "publishers": [ids]}`` and wait for a line on stdin (the
test sends one once its subscriber has been offered their tracks); then they go, every
third by vanishing (its sockets cut, no `leave`), the others with `leave`, and
``{"left": n}`` is printed.

``flood``: CYCLES times over, one participant joins, publishes TRACKS tracks (audio and
video in turn), stays HOLD_S seconds and leaves; then ``{"flooded": seconds}``.

Published tracks send nothing: the churn costs no encoding.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av.frame import Frame

from sfu.client import Client


class Idle(MediaStreamTrack):
    """A track that sends nothing and ends when stopped (the client's relay task for
    it ends with it)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._stopped = asyncio.Event()

    async def recv(self) -> Frame:
        await self._stopped.wait()
        raise MediaStreamError

    def stop(self) -> None:
        super().stop()
        self._stopped.set()


async def vanish(client: Client) -> None:
    """Gone without a word: the WebSocket's TCP connection just ends."""
    ws = client._ws
    connection = ws._response.connection if ws is not None else None
    if connection is not None and connection.transport is not None:
        connection.transport.abort()
    await client.close()


async def rounds(url: str, room: str, count: int, at_once: int) -> None:
    stdin = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    for n in range(count):
        clients = [Client(url, room=room, name=f"p{n}-{i}") for i in range(at_once)]
        tracks: list[list[MediaStreamTrack]] = [[Idle("audio"), Idle("video")]
                                                for _ in clients]
        await asyncio.gather(*(c.join() for c in clients))
        await asyncio.gather(*(c.publish(t) for c, t in zip(clients, tracks, strict=True)))
        print(json.dumps({"round": n, "publishers": [c.participant_id for c in clients]}),
              flush=True)
        if not await stdin.readline():
            return  # the test is gone
        await asyncio.gather(*(vanish(c) if i % 3 == 2 else c.leave()
                               for i, c in enumerate(clients)))
        for track in (t for pair in tracks for t in pair):
            track.stop()
        print(json.dumps({"left": n}), flush=True)


async def flood(url: str, room: str, cycles: int, count: int, hold_s: float) -> None:
    started = time.monotonic()
    for n in range(cycles):
        client = Client(url, room=room, name=f"mallory{n}")
        tracks: list[MediaStreamTrack] = [Idle(("audio", "video")[i % 2]) for i in range(count)]
        await client.join()
        await client.publish(tracks)
        await asyncio.sleep(hold_s)
        await client.leave()
        for track in tracks:
            track.stop()
    print(json.dumps({"flooded": round(time.monotonic() - started, 1)}), flush=True)


def main() -> None:
    url, room, mode, *args = sys.argv[1:]
    if mode == "rounds":
        asyncio.run(rounds(url, room, int(args[0]), int(args[1])))
    elif mode == "flood":
        asyncio.run(flood(url, room, int(args[0]), int(args[1]), float(args[2])))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
