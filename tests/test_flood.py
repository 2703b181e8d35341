"""A connection flood does not lock anyone out (issue: 1,000 WebSockets from one host
exhausted the server's descriptors; then /healthz failed and joiners were dropped).

`sfu serve` runs with a descriptor limit of 512 while a call runs in it; another
process opens WebSockets as fast as it can, held until the server closes them: joining
and silent ones from one host (development mode), silent ones from one host (JWT mode,
where they cannot join), and a flood from 30 addresses. Measured at the same time: the
call's video frame rate at its subscriber, /healthz latency, the server's open
descriptors, and whether a newcomer can join.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import VideoStreamTrack
from av import VideoFrame

from sfu.client import Client
from sfu.control.auth import mint_token
from tests.bystander import FrameCounter, healthz_latencies
from tests.conftest import requires_isolated_network

pytestmark = requires_isolated_network

ROOT = Path(__file__).resolve().parent.parent
FD_LIMIT = 512
JOIN_TIMEOUT_S = 3
HOLD_S = 8.0
SECRET = "f" * 32


@dataclass(frozen=True)
class Flood:
    mode: str  # the server's auth.mode
    joiners: int
    idle: int
    addresses: int

    @property
    def one_host(self) -> bool:
        return self.addresses == 1


FLOODS = {
    "one-host-joining": Flood("development", joiners=1000, idle=500, addresses=1),
    "one-host-silent-jwt": Flood("jwt", joiners=0, idle=1100, addresses=1),
    "thirty-hosts": Flood("development", joiners=1000, idle=500, addresses=30),
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


@contextlib.asynccontextmanager
async def sfu_serve(port: int, mode: str) -> AsyncIterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "SFU_SERVER_PORT": str(port), "SFU_AUTH_MODE": mode,
           "SFU_AUTH_SECRET": SECRET, "SFU_LIMITS_JOIN_TIMEOUT_S": str(JOIN_TIMEOUT_S)}
    process = subprocess.Popen([sys.executable, "-m", "sfu", "serve"], env=env, cwd=ROOT,
                               preexec_fn=limit_descriptors, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                        if response.status == 200:
                            break
                assert process.poll() is None, "sfu serve exited"
                await asyncio.sleep(0.1)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)


class SentFrames(VideoStreamTrack):
    """A small picture (cheap to encode and decode: the test's own CPU, which the
    flooding process competes for, should not decide the frame rate), noting when each
    frame went out."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame(width=160, height=120)
        frame.pts, frame.time_base = pts, time_base
        self.times.append(time.monotonic())
        return frame

    def count(self, start: float, end: float) -> int:
        return sum(start <= t < end for t in self.times)


async def can_join(url: str, token: str | None) -> bool:
    newcomer = Client(url, room="elsewhere", name="carol", token=token)
    try:
        joined: dict[str, Any] = await newcomer.join()
        return bool(joined["type"] == "joined")
    except (aiohttp.ClientError, OSError):
        return False
    finally:
        await newcomer.close()


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def token(identity: str, room: str, mode: str) -> str | None:
    return mint_token(SECRET, room=room, identity=identity) if mode == "jwt" else None


@pytest.mark.parametrize("name", FLOODS)
async def test_a_connection_flood_locks_nobody_out(name: str) -> None:
    flood = FLOODS[name]
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ws"
    async with sfu_serve(port, flood.mode) as server:
        alice = Client(url, room="call", name="alice", token=token("alice", "call", flood.mode))
        bob = Client(url, room="call", name="bob", token=token("bob", "call", flood.mode))
        try:
            await alice.join()
            await bob.join()
            camera = SentFrames()
            await alice.publish([camera])
            _, track = await bob.next_track()
            counter = FrameCounter(track)
            await asyncio.sleep(4)
            start = time.monotonic()
            # The share of alice's frames bob decodes, in a window: what the SFU delivers,
            # whatever CPU the test process gets.
            def delivered(begin: float, end: float) -> float:
                return counter.count(begin, end) / max(1, camera.count(begin, end))

            baseline = delivered(start - 3, start)

            flooder = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.flood_client", url, "call", str(flood.joiners),
                str(flood.idle), str(HOLD_S), str(flood.addresses), cwd=ROOT,
                stdout=asyncio.subprocess.PIPE)
            health = asyncio.create_task(healthz_latencies(port, start + HOLD_S))
            descriptors: list[int] = []
            joined_during: bool | None = None
            while flooder.returncode is None and time.monotonic() < start + HOLD_S + 30:
                descriptors.append(open_descriptors(server.pid))
                if joined_during is None and time.monotonic() > start + 1.5:
                    joined_during = await can_join(url, token("carol", "elsewhere", flood.mode))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(flooder.wait(), 0.25)
            report: dict[str, Any] = json.loads((await flooder.communicate())[0])
            latencies = await health  # runs until start + HOLD_S: the window is over
            during = delivered(start + 1, start + HOLD_S - 1)
            fps = counter.count(start + 1, start + HOLD_S - 1) / (HOLD_S - 2)
            joined_after = await can_join(url, token("dave", "elsewhere", flood.mode))
            counter.stop()
        finally:
            await alice.close()
            await bob.close()

    replies: dict[str, int] = report["replies"]
    shed = sum(count for reply, count in replies.items() if reply.startswith("connect_failed"))
    joined = replies.get("joined:", 0)
    print(f"\n{name}: bob decoded {baseline:.0%} of alice's frames before, {during:.0%} "
          f"during ({fps:.1f} fps); /healthz "
          f"worst {max(latencies) * 1000:.0f} ms; server descriptors peak {max(descriptors)} "
          f"of {FD_LIMIT}; replies {replies}; closed by the server {report['closed']} "
          f"(90 % within {report['closed_after_p90']} s)")
    # The flood never takes the descriptors the call and the health checks need.
    assert max(descriptors) < FD_LIMIT - 64, descriptors
    assert during >= 0.8 * baseline, (baseline, during)
    assert joined_after
    # Each socket that did not become a participant was shed at accept, or told why and
    # closed by the server: refused joins at once, silent ones at the join deadline.
    assert "no_reply" not in replies
    assert shed + report["closed"] == flood.joiners + flood.idle - joined
    assert report["closed_after_p90"] is None or report["closed_after_p90"] < JOIN_TIMEOUT_S + 1
    if flood.idle and not flood.one_host:
        assert replies.get("error:join_timeout", 0) > 0
    if flood.one_host:
        # One host has its own cap: everybody else still gets in at once.
        assert max(latencies) < 1.0, latencies
        assert joined_during
        assert replies.get("error:too_many_connections_from_address", 0) > 0
