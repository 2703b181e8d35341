"""Churning participants for bench/churn.py, run as separate processes.

    python -m sfu_bench.churn_driver URL ROUNDS           # join, publish, receive, go
    python -m sfu_bench.churn_driver URL hang             # join, publish, wait to be killed

Each round, three participants join one room, publish audio, and wait until each
receives the other two; then two leave properly and one vanishes: its WebSocket is
cut without `leave` and its peer connections are abandoned.
"""

from __future__ import annotations

import asyncio
import sys

from aiortc import AudioStreamTrack

from sfu.client import Client


async def round_trip(url: str, room: str) -> None:
    clients = [Client(url, room=room, name=f"p{i}") for i in range(3)]
    for client in clients:
        await client.join()
        await client.publish([AudioStreamTrack()])
    ids = {client.participant_id for client in clients}
    for client in clients:
        # Tracks of this round's others (a ghost of an earlier round may still be
        # published when we join, until a newcomer with its name replaces it).
        waiting = ids - {client.participant_id}
        while waiting:
            info, track = await client.next_track(timeout=20)
            if info.participant in waiting:
                await asyncio.wait_for(track.recv(), 20)  # media really flows
                waiting.discard(info.participant)
    await clients[0].leave()
    await clients[1].leave()
    vanished = clients[2]
    ws = vanished._ws
    assert ws is not None
    transport = ws._response.connection.transport if ws._response.connection else None
    if transport is not None:
        transport.abort()  # no close frame, no leave: the TCP connection just ends
    for task in (vanished._reader, vanished._offer_task):
        if task is not None:
            task.cancel()
    # Its peer connections are abandoned without a goodbye; freed at exit.
    await asyncio.sleep(0.1)


async def main() -> None:
    url, mode = sys.argv[1], sys.argv[2]
    if mode == "hang":
        client = Client(url, room="killed", name=sys.argv[3])
        await client.join()
        await client.publish([AudioStreamTrack()])
        print("ready", flush=True)
        await asyncio.Event().wait()
    for n in range(int(mode)):
        await round_trip(url, f"churn{n % 3}")
        print(f"round {n} done", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
