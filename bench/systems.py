"""Systems under test: how the bench starts, addresses, measures and stops each one.

Each system runs as its own process(es); the bench reads their CPU time and memory
from /proc, so the load generator's cost is never counted as the server's. A system's
processes are its process and every descendant (`sfu serve --workers N`'s workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import platform
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp

# The server's own measure of a process's CPU (its front reports load with it).
from sfu.workers.load import cpu_seconds


class System(Protocol):
    name: str

    def skip_reason(self, address: str) -> str | None:
        """Why this system cannot run here (missing binary, no root, ...), or None."""

    async def start(self, address: str) -> None: ...

    def job(self, room: str) -> dict[str, Any]:
        """What the load generator needs: ``signalling`` ("module:Class" of a
        sfu_bench.signalling.Signalling) and ``signalling_args`` (its keyword arguments)."""

    def pids(self) -> list[int]:
        """The processes whose CPU and memory count as the system's."""

    async def stop(self) -> None: ...


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float
    rss_bytes: int
    peak_rss_bytes: int


def usage(pids: list[int]) -> Usage:
    """Total CPU, RSS and peak RSS of processes (threads included); a process that has
    exited meanwhile counts nothing."""
    cpu = 0.0
    rss = peak = 0
    for pid in pids:
        try:
            seconds = cpu_seconds(pid)
            with open(f"/proc/{pid}/status") as status:
                lines = status.readlines()
        except OSError:
            continue
        cpu += seconds
        for line in lines:
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                peak += int(line.split()[1]) * 1024
    return Usage(cpu, rss, peak)


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """Each process's on-CPU seconds (those that have exited left out)."""
    out = {}
    for pid in pids:
        try:
            out[pid] = cpu_seconds(pid)
        except OSError:
            continue
    return out


def _children(pid: int) -> list[int] | None:
    """A process's children from /proc/PID/task/*/children, or None where the kernel
    has no such file (CONFIG_PROC_CHILDREN off)."""
    children: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as listing:
                children += [int(child) for child in listing.read().split()]
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                continue  # the thread has gone
            return None
        except OSError:
            continue
    return children


def _parents() -> dict[int, int]:
    """Every process's parent, from /proc/*/stat."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])  # after the name: state, ppid
    return parents


def descendants(pid: int) -> list[int]:
    """A process's children, their children and so on (breadth first)."""
    found: list[int] = []
    queue = [pid]
    parents: dict[int, int] | None = None
    while queue:
        parent = queue.pop(0)
        children = _children(parent) if parents is None else None
        if children is None:
            if parents is None:
                parents = _parents()
            children = sorted(p for p, pp in parents.items() if pp == parent)
        found += children
        queue += children
    return found


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo
                          if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "python": sys.version.split()[0],
            "platform": platform.platform()}


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_http(url: str, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout), aiohttp.ClientSession() as session:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as response:
                    if response.status < 500:
                        return
            await asyncio.sleep(0.1)


class ProcessSystem:
    """A system under test that runs as one child process (and whatever it starts)."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None

    def pids(self) -> list[int]:
        """The process, then its descendants (e.g. `sfu serve`'s workers)."""
        assert self._process is not None
        return [self._process.pid, *descendants(self._process.pid)]

    async def stop(self) -> None:
        """Terminate the process; kill it if it has not gone after 10 s."""
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), 10)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        self._process = None


class SfuSystem(ProcessSystem):
    """This project's server, as `sfu serve --workers N` (N = ``workers``, always
    explicit: one process, as before the workers, unless asked; `sfu serve`'s own
    default is one per core) in its own process(es): with N > 1 a front and N worker
    processes, named ``sfu-<forwarder>-wN``. With ``tree``, the server of another
    checkout (its extension built in place), e.g. the previous main, to compare side by
    side in one run."""

    def __init__(self, forwarder: str, tree: str | None = None, workers: int = 1) -> None:
        super().__init__()
        self.forwarder = forwarder
        self.tree = tree
        self.workers = workers
        self.name = (f"sfu-{forwarder}" + (f"-w{workers}" if workers != 1 else "")
                     + ("-baseline" if tree else ""))
        self._url = ""

    def _tree_has_workers(self) -> bool:
        """Whether the checkout's `sfu serve` knows --workers (older ones are one process)."""
        return self.tree is None or Path(self.tree, "sfu", "workers").is_dir()

    def skip_reason(self, address: str) -> str | None:
        if self.tree is not None:
            built = list(Path(self.tree, "sfu").glob("_fastpath*.so"))
            if not built:
                return f"{self.tree}/sfu has no built _fastpath extension"
            if self.workers != 1 and not self._tree_has_workers():
                return f"{self.tree}'s sfu serve has no --workers"
            return None
        if self.forwarder == "cython":
            from sfu.fastpath import cython_unavailable_reason

            return cython_unavailable_reason()
        return None

    async def start(self, address: str) -> None:
        port = free_port(address)
        env = {
            **os.environ,
            "SFU_SERVER_HOST": address if address.startswith("127.") else "127.0.0.1",
            "SFU_SERVER_PORT": str(port),
            "SFU_SERVER_LOG_LEVEL": "warning",
            "SFU_RTC_FORWARDER": self.forwarder,
            "SFU_RTC_LISTEN_IPS": address,
            "SFU_ROOMS_MAX_PARTICIPANTS": "1000",
        }
        env.pop("SFU_PUREPYTHON", None)
        isolated: list[str] = []
        if self.tree is not None:  # -P: the tree's sfu, not the one beside the bench
            env["PYTHONPATH"] = self.tree
            isolated = ["-P"]
        # An older tree without --workers is one process anyway.
        workers = ["--workers", str(self.workers)] if self._tree_has_workers() else []
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, *isolated, "-m", "sfu", "serve", *workers, env=env,
            stdout=asyncio.subprocess.DEVNULL,
        )
        host = env["SFU_SERVER_HOST"]
        # A front answers /healthz at once, /readyz once its workers listen.
        await wait_http(f"http://{host}:{port}/" + ("readyz" if self.workers > 1 else "healthz"))
        self._url = f"ws://{host}:{port}/ws"

    def job(self, room: str) -> dict[str, Any]:
        return {"signalling": "sfu_bench.signalling:SfuSignalling",
                "signalling_args": {"url": self._url, "room": room}}



# Systems that live in their own modules: name → "module:Class".
OTHER_SYSTEMS = {
    "janus": "sfu_bench.janus:JanusSystem",
    "mediarelay": "sfu_bench.mediarelay:MediaRelaySystem",
}


class Unavailable:
    """A system whose module cannot be imported: always skipped, with the reason."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason

    def skip_reason(self, address: str) -> str | None:
        return self.reason

    async def start(self, address: str) -> None:
        raise RuntimeError(self.reason)

    def job(self, room: str) -> dict[str, Any]:
        raise RuntimeError(self.reason)

    def pids(self) -> list[int]:
        return []

    async def stop(self) -> None:
        return None


def all_systems(baseline: str | None = None,
                workers: tuple[int, ...] = (1,)) -> dict[str, System]:
    """Every system; with ``baseline`` (a checkout), also that tree's server. Each sfu
    system once per count in ``workers`` (sfu-cython, sfu-cython-w2, ...)."""
    servers: list[tuple[str, str | None]] = [("cython", None), ("python", None)]
    if baseline is not None:
        servers.append(("cython", baseline))
    systems: dict[str, System] = {}
    for forwarder, tree in servers:
        for count in workers:
            system = SfuSystem(forwarder, tree, count)
            systems[system.name] = system
    for name, target in OTHER_SYSTEMS.items():
        module_name, class_name = target.split(":")
        try:
            systems[name] = getattr(importlib.import_module(module_name), class_name)()
        except (ImportError, AttributeError) as exc:
            systems[name] = Unavailable(name, f"{target} cannot be loaded: {exc}")
    return systems
