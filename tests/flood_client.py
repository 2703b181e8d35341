"""A connection flood against a server, from its own process (so that it does not
compete with the measuring test's event loop): tests/test_flood.py runs it.

    python -m tests.flood_client URL ROOM JOINERS IDLE HOLD_S ADDRESSES

JOINERS WebSockets each send `join` to ROOM, IDLE more never send anything; they come
from ADDRESSES loopback addresses from 127.0.0.10 upwards, in turn. Every socket is
held until the server closes it or HOLD_S passes. Prints one JSON object: the first
reply's type/code per socket, and how many the server had closed by the end.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections import Counter
from typing import Any

import aiohttp


async def one(session: aiohttp.ClientSession, url: str, join: dict[str, Any] | None,
              hold_s: float, results: Counter[str], closed_after: list[float]) -> None:
    try:
        ws = await session.ws_connect(url, autoping=True, timeout=aiohttp.ClientWSTimeout())
    except (aiohttp.ClientError, OSError) as exc:
        results[f"connect_failed:{type(exc).__name__}"] += 1
        return
    start = time.monotonic()  # closed_after counts from the open WebSocket
    async with ws:
        if join is not None:
            await ws.send_str(json.dumps(join))
        deadline = start + hold_s
        first = True
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = await ws.receive(timeout=left)
            except TimeoutError:
                break
            if frame.type == aiohttp.WSMsgType.TEXT:
                if first:
                    message = json.loads(frame.data)
                    results[f"{message['type']}:{message.get('code', '')}"] += 1
                    first = False
                continue
            if frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                              aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                closed_after.append(time.monotonic() - start)
                break
        if first:
            results["no_reply"] += 1


async def flood(url: str, room: str, joiners: int, idle: int, hold_s: float,
                addresses: int) -> dict[str, Any]:
    results: Counter[str] = Counter()
    closed_after: list[float] = []
    sessions = [aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, local_addr=(f"127.0.0.{10 + i}", 0)))
        for i in range(addresses)]
    # Joining and silent sockets interleaved, the same order every run.
    joins = [True] * joiners + [False] * idle
    random.Random(0).shuffle(joins)
    tasks = []
    for i, joining in enumerate(joins):
        join = {"type": "join", "room": room, "name": f"flood{i}"} if joining else None
        tasks.append(asyncio.create_task(
            one(sessions[i % addresses], url, join, hold_s, results, closed_after)))
    await asyncio.gather(*tasks)
    for session in sessions:
        await session.close()
    closed_after.sort()
    return {"replies": dict(results), "closed": len(closed_after),
            "closed_after_p90": closed_after[int(len(closed_after) * 0.9)] if closed_after
            else None}


if __name__ == "__main__":
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    url, room, joiners, idle, hold, addresses = sys.argv[1:7]
    print(json.dumps(asyncio.run(
        flood(url, room, int(joiners), int(idle), float(hold), int(addresses)))))
