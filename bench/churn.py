"""Churn soak: participants come and go, a third of them abruptly; what is left over?

    python -m sfu_bench.churn [--rounds N] [--killed K]

An in-process server; clients in other processes (bench/churn_driver.py): each round
three participants join, publish audio and receive each other, then two leave and one
vanishes (its WebSocket cut, no `leave`); K more processes are SIGKILLed mid-call.
Afterwards the server must hold no rooms or participants; the report compares its
file descriptors, UDP sockets, asyncio tasks and RSS with where they started (after a
warm-up round). tests/test_churn.py runs a bounded version with stated bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import signal
import sys
import time
from typing import Any

from sfu.config import Config
from sfu.server import Server


def snapshot() -> dict[str, int]:
    """What this process holds: the server's, since the clients run elsewhere."""
    fds = os.listdir("/proc/self/fd")
    sockets = 0
    for fd in fds:
        with contextlib.suppress(OSError):
            sockets += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    with open("/proc/self/net/udp") as udp, open("/proc/self/net/udp6") as udp6:
        udp_sockets = len(udp.readlines()) - 1 + len(udp6.readlines()) - 1
    with open("/proc/self/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return {"fds": len(fds), "sockets": sockets, "udp_sockets": udp_sockets,
            "tasks": len(asyncio.all_tasks()), "rss_kib": rss}


async def drive(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sfu_bench.churn_driver", *args,
        stdout=asyncio.subprocess.PIPE,
    )


async def settle(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while server.participants or server.rooms:
        if time.monotonic() > deadline:
            raise AssertionError(f"left behind: {list(server.participants.values())}")
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # let closing transports finish
    gc.collect()


async def soak(rounds: int, killed: int) -> dict[str, Any]:
    config = Config()
    config.server.port = 0
    config.liveness.reconnect_grace_s = 1
    config.liveness.ping_interval_s = 1
    config.liveness.timeout_s = 3
    server = Server(config)
    await server.start()
    url = f"ws://127.0.0.1:{server.port}/ws"
    try:
        warmup = await drive(url, "1")  # imports, caches and pools warm up here
        if await warmup.wait() != 0:
            raise RuntimeError("warm-up round failed")
        await settle(server, 10)
        before = snapshot()
        started = time.monotonic()
        churn = await drive(url, str(rounds))
        hanging = [await drive(url, "hang", f"k{i}") for i in range(killed)]
        for process in hanging:
            assert process.stdout is not None
            if (await asyncio.wait_for(process.stdout.readline(), 30)).strip() != b"ready":
                raise RuntimeError("a client to be killed did not get ready")
        in_room = len(server.rooms["killed"].participants) if killed else 0
        for process in hanging:
            process.send_signal(signal.SIGKILL)  # the laptop lid closes
            await process.wait()
        if await asyncio.wait_for(churn.wait(), 60 + 5 * rounds) != 0:
            raise RuntimeError("the churn driver failed")
        await settle(server, 15)
        after = snapshot()
        seconds = time.monotonic() - started
    finally:
        await server.stop()
    return {"rounds": rounds, "participants": 3 * rounds + killed, "killed": killed,
            "killed_in_room_before_kill": in_room, "seconds": round(seconds, 1),
            "before": before, "after": after}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--killed", type=int, default=10)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(soak(args.rounds, args.killed)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
