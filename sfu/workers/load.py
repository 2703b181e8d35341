"""A node's load for its heartbeat: CPU of the front and its workers (from /proc), and
packets forwarded per second (the workers' sfu_forwarded_packets_total)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from typing import Protocol

import aiohttp

from sfu.workers.supervisor import Supervisor

FORWARDED = re.compile(r"^sfu_forwarded_packets_total\{[^}]*\} (\S+)$", re.M)
TICKS = os.sysconf("SC_CLK_TCK")


class Front(Protocol):
    supervisor: Supervisor
    session: aiohttp.ClientSession | None

    def port_of(self, index: int) -> int: ...


def cpu_seconds(pid: int) -> float:
    """On-CPU time (user + system) of a process's threads; OSError once it is gone.

    Per-thread schedstat counts nanoseconds; /proc/PID/stat counts 10 ms ticks, too
    coarse for a few seconds of a lightly loaded server. Ticks are the fallback.
    """
    try:
        total = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as schedstat:
                total += int(schedstat.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def _cpu_seconds_if_running(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:  # a worker that died since: the supervisor starts another
        return 0.0


class LoadSampler:
    def __init__(self, front: Front) -> None:
        self.front = front
        self.cpu = 0.0  # cores, over the last interval
        self.forwarded_pps = 0.0
        self._last: tuple[float, float, float] | None = None  # (time, cpu s, packets)
        self._task: asyncio.Task[None] | None = None

    def start(self, interval_s: float) -> None:
        async def keep() -> None:
            while True:
                await asyncio.sleep(interval_s)
                await self.sample()

        self._task = asyncio.create_task(keep())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def sample(self) -> None:
        workers = self.front.supervisor.workers
        cpu = cpu_seconds(os.getpid()) + sum(_cpu_seconds_if_running(w.pid)
                                              for w in workers if w.pid)
        packets = sum(await asyncio.gather(*(self._forwarded(w.index) for w in workers)))
        now = time.monotonic()
        if self._last is not None:
            elapsed = max(1e-3, now - self._last[0])
            self.cpu = max(0.0, cpu - self._last[1]) / elapsed
            self.forwarded_pps = max(0.0, packets - self._last[2]) / elapsed
        self._last = (now, cpu, packets)

    async def _forwarded(self, index: int) -> float:
        session = self.front.session
        if session is None or not self.front.port_of(index):
            return 0.0
        with contextlib.suppress(aiohttp.ClientError, OSError):
            url = f"http://127.0.0.1:{self.front.port_of(index)}/metrics"
            async with session.get(url) as response:
                return sum(float(v) for v in FORWARDED.findall(await response.text()))
        return 0.0
