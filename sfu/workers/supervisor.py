"""Worker processes for ``sfu serve --workers N``: each started with its own config
(``worker_config``), watched, and started again when it dies."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sfu.config import Config

logger = logging.getLogger(__name__)
START_TIMEOUT_S = 30.0
RESTART_DELAY_S = 0.5  # after a death, before the next start (a crash loop stays cheap)


def worker_config(config: Config, index: int, workers: int) -> dict[str, Any]:
    """Worker ``index``'s config, as ``sfu.config.load`` overrides: HTTP on a loopback
    port of its own (the front serves the public one, TLS included, and relays), the
    front trusted to name clients (X-Forwarded-For), media on ports of its own: the
    UDP and ICE-TCP ports + ``index``, or a slice of the per-connection range. Local
    coturns are the front's."""
    data = dataclasses.asdict(config)
    server, rtc = data["server"], data["rtc"]
    server.update(host="127.0.0.1", port=0, tls_cert="", tls_key="", tls_self_signed=False,
                  workers=1, trusted_proxies=[*config.server.trusted_proxies, "127.0.0.1"])
    rtc["udp_port"] = config.rtc.udp_port + index
    rtc["tcp_port"] = config.rtc.tcp_port + index
    if config.rtc.port_per_connection:
        span = (config.rtc.port_max - config.rtc.port_min + 1) // workers
        rtc["port_min"] = config.rtc.port_min + index * span
        rtc["port_max"] = rtc["port_min"] + span - 1
    data["turn"]["start_local"] = False
    return data


class WorkerError(RuntimeError):
    """A worker could not start."""


@dataclass
class WorkerProcess:
    index: int
    port: int = 0  # its HTTP port on 127.0.0.1, once it listens
    pid: int = 0
    process: asyncio.subprocess.Process | None = None


class Supervisor:
    """Keeps ``workers`` processes running. ``on_up(index)`` once one listens,
    ``on_lost(index)`` when it has died (before it is started again)."""

    def __init__(self, config: Config, workers: int, on_up: Callable[[int], None],
                 on_lost: Callable[[int], None]) -> None:
        self.config = config
        self.workers = [WorkerProcess(i) for i in range(workers)]
        self._on_up, self._on_lost = on_up, on_lost
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.restarts = 0

    async def start(self) -> None:
        """Start every worker; return once each listens (RuntimeError if one cannot)."""
        first = [asyncio.get_running_loop().create_future() for _ in self.workers]
        self._tasks = [asyncio.create_task(self._keep(w, first[w.index]))
                       for w in self.workers]
        await asyncio.gather(*first)

    async def _keep(self, worker: WorkerProcess, first: asyncio.Future[None]) -> None:
        while not self._stopping:
            try:
                await self._start(worker)
            except (RuntimeError, OSError, ValueError) as exc:
                if self._stopping:  # terminated while starting
                    return
                if not first.done():
                    first.set_exception(WorkerError(f"worker {worker.index}: {exc}"))
                    return
                logger.error("worker %d did not start: %s", worker.index, exc)
            else:
                if not first.done():
                    first.set_result(None)
                self._on_up(worker.index)
                assert worker.process is not None
                status = await worker.process.wait()
                if self._stopping:
                    return
                logger.error("worker %d (pid %d) exited with status %s: its rooms are "
                             "closed, and it starts again", worker.index, worker.pid, status)
                self.restarts += 1
                self._on_lost(worker.index)
            await asyncio.sleep(RESTART_DELAY_S)

    async def _start(self, worker: WorkerProcess) -> None:
        process = worker.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sfu.workers.worker", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE)
        assert process.stdin is not None and process.stdout is not None
        config = worker_config(self.config, worker.index, len(self.workers))
        process.stdin.write(json.dumps(config).encode() + b"\n")
        await process.stdin.drain()
        try:
            line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT_S)
        except TimeoutError:
            process.kill()
            raise RuntimeError(f"not listening after {START_TIMEOUT_S:.0f} s") from None
        if not line:
            await process.wait()
            raise RuntimeError(f"exited with status {process.returncode} before listening")
        started = json.loads(line)
        worker.port, worker.pid = int(started["port"]), int(started["pid"])
        logger.info("worker %d: pid %d, HTTP 127.0.0.1:%d", worker.index, worker.pid,
                    worker.port)

    async def stop(self) -> None:
        self._stopping = True
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is None:
                worker.process.terminate()
        for worker in self.workers:
            if worker.process is not None:
                try:
                    await asyncio.wait_for(worker.process.wait(), 10)
                except TimeoutError:
                    worker.process.kill()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
