"""The idle cost of a room: server CPU while every track is muted server-side.

    python -m bench.idle --tree PATH [--tree PATH ...] [--seconds 10] [--participants 10]
                         [--rounds 3] [--settle 2] [--unmuted] [--quiet-sources] [--json]

Each ``--tree`` is a checkout of this repository with its Cython extension built in
place (``python setup.py build_ext --inplace`` there). For each tree, alternately
(A B A B ... for ``--rounds``, since the machine is noisy), it starts that tree's
``sfu serve`` as a child process (``PYTHONPATH=<tree> python -P -m sfu serve`` with a
config of its own: loopback, a free port, development auth), so the server's code is
the tree's while the participants are this checkout's ``sfu.client.Client`` (aiortc).

Then: N participants join one room and each publishes audio (silence, Opus) and video
(a still 160x120 picture at 10 fps, VP8); once every participant has received a
frame of every other participant's two tracks, every track is muted through the admin
API (``POST /admin/rooms/{room}/tracks/{track}/mute``: the server stops forwarding it;
the publishers keep sending, as real clients do). When ``/metrics`` shows forwarding
has stopped and ``--settle`` seconds more have passed, the server process's on-CPU
time (user + system, all threads; bench/systems.py) is read over ``--seconds``:
reported as CPU seconds per second (cores) and per participant, with the packets
forwarded in the window (~0 when the mute holds) and the RTCP the server sent.

``--unmuted`` measures the same window before muting as well, media flowing.
``--quiet-sources`` stops the publishers' sources once everyone receives everyone, so
that no media reaches the server at all: what is left is the room's fixed cost alone
(timers, RTCP, ICE consent checks).

As root, the whole run happens in a private network namespace with only loopback
(as `sfu bench` does), away from other processes' ports; ``--no-netns`` runs it here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame
from prometheus_client.parser import text_string_to_metric_families

from sfu.client import Client
from sfu.workers.load import cpu_seconds

from .systems import free_port, machine, wait_http

ROOM = "idle"
ADDRESS = "127.0.0.1"
NETNS_ENV = "SFU_BENCH_NETNS"  # as bench/run.py: set inside the namespace we made
VIDEO_SIZE = (160, 120)
VIDEO_FPS = 10
AUDIO_RATE = 48_000
AUDIO_SAMPLES = 960  # 20 ms
STEADY_TIMEOUT_S = 10.0  # how long to wait for forwarding to stop after the mute
MUTED_PACKETS_TOLERATED = 2  # forwarded in a muted window: else the exit status is 3


# --- cheap sources -------------------------------------------------------------------


class _PacedTrack(MediaStreamTrack):
    """Frames at a fixed rate while ``gate`` is set; recv() waits while it is clear
    (aiortc's sender then sends nothing)."""

    rate: float

    def __init__(self, gate: asyncio.Event) -> None:
        super().__init__()
        self._gate = gate
        self._start = 0.0
        self._count = -1

    async def _next(self) -> int:
        if self.readyState != "live":
            raise MediaStreamError
        if not self._gate.is_set():
            await self._gate.wait()
            self._count = -1  # start afresh rather than catch up
        self._count += 1
        if self._count == 0:
            self._start = time.monotonic()
        else:
            await asyncio.sleep(self._start + self._count / self.rate - time.monotonic())
        return self._count


class StillVideo(_PacedTrack):
    kind = "video"
    rate = VIDEO_FPS

    async def recv(self) -> VideoFrame:
        count = await self._next()
        frame = VideoFrame(width=VIDEO_SIZE[0], height=VIDEO_SIZE[1])
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.pts = count * 90_000 // VIDEO_FPS
        frame.time_base = Fraction(1, 90_000)
        return frame


class SilentAudio(_PacedTrack):
    kind = "audio"
    rate = AUDIO_RATE / AUDIO_SAMPLES

    async def recv(self) -> AudioFrame:
        count = await self._next()
        frame = AudioFrame(format="s16", layout="stereo", samples=AUDIO_SAMPLES)
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.pts = count * AUDIO_SAMPLES
        frame.sample_rate = AUDIO_RATE
        frame.time_base = Fraction(1, AUDIO_RATE)
        return frame


# --- the server under test -----------------------------------------------------------


def tree_commit(tree: Path) -> str:
    """The tree's commit, with "+dirty" when it has uncommitted changes."""
    try:
        commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return (commit or "?") + ("+dirty" if dirty else "")


def server_env(tree: Path) -> dict[str, str]:
    """Our environment without SFU_* settings (only the config file counts), with the
    tree first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFU_")}
    env["PYTHONPATH"] = str(tree)
    return env


def check_tree(tree: Path, forwarder: str) -> str | None:
    """Why ``tree`` cannot serve, or None."""
    if not (tree / "sfu" / "__init__.py").is_file():
        return f"{tree} is not a checkout of sfu (no sfu/__init__.py)"
    if forwarder == "cython" and not list((tree / "sfu").glob("_fastpath*.so")):
        return (f"{tree} has no built extension: cd {tree} && {sys.executable} setup.py "
                "build_ext --inplace")
    probe = subprocess.run([sys.executable, "-P", "-c", "import sfu; print(sfu.__file__)"],
                           env=server_env(tree), cwd=tempfile.gettempdir(),
                           capture_output=True, text=True, timeout=60)
    loaded = Path(probe.stdout.strip() or "?").resolve()
    if probe.returncode != 0 or not loaded.is_relative_to(tree):
        return f"with PYTHONPATH={tree}, sfu loads from {loaded} ({probe.stderr.strip()})"
    return None


class Server:
    """`sfu serve` from a tree, in a child process."""

    def __init__(self, tree: Path, forwarder: str, participants: int) -> None:
        self.tree = tree
        self.forwarder = forwarder
        self.participants = participants
        self.process: asyncio.subprocess.Process | None = None
        self.base = ""
        self._dir = tempfile.TemporaryDirectory(prefix="sfu-idle-")
        self.log = Path(self._dir.name) / "server.log"

    async def start(self) -> None:
        port = free_port(ADDRESS)
        config = Path(self._dir.name) / "sfu.toml"
        # One process, as the figures always meant (`sfu serve` now defaults to a worker
        # per core; a tree from before the workers knows no server.workers).
        one_process = "workers = 1\n" if (self.tree / "sfu" / "workers").is_dir() else ""
        config.write_text(
            "[server]\n"
            f'host = "{ADDRESS}"\nport = {port}\nlog_level = "warning"\n{one_process}'
            "[auth]\n"
            'mode = "development"\nsecret = ""\n'  # loopback only; the admin API is open
            "[rtc]\n"
            f'listen_ips = ["{ADDRESS}"]\nforwarder = "{self.forwarder}"\n'
            "[rooms]\n"
            f"auto_subscribe = true\nmax_participants = {max(self.participants, 25)}\n"
        )
        with self.log.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-P", "-m", "sfu", "serve", "--config", str(config),
                env=server_env(self.tree), cwd=self._dir.name,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        self.base = f"http://{ADDRESS}:{port}"
        waiting = asyncio.create_task(wait_http(f"{self.base}/healthz", 30))
        exited = asyncio.create_task(self.process.wait())
        await asyncio.wait({waiting, exited}, return_when=asyncio.FIRST_COMPLETED)
        if exited.done():
            waiting.cancel()
            raise RuntimeError(f"sfu serve from {self.tree} exited {exited.result()}: "
                               f"{self.log_tail()}")
        exited.cancel()
        waiting.result()

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def mapped_extension(self) -> str | None:
        """The forwarder extension the server process has loaded, as a path."""
        with open(f"/proc/{self.pid}/maps") as maps:
            for line in maps:
                if "_fastpath" in line and ".so" in line:
                    return line.split(maxsplit=5)[-1].strip()
        return None

    def rss_mib(self) -> float:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        self._dir.cleanup()


@dataclass
class Counters:
    """What /metrics says at one moment (only what this bench reports)."""

    forwarded: dict[str, float] = field(default_factory=dict)  # kind → packets
    rtcp: dict[str, float] = field(default_factory=dict)  # type → packets
    implementation: str = "?"

    def forwarded_total(self) -> float:
        return sum(self.forwarded.values())


async def read_metrics(session: aiohttp.ClientSession, base: str) -> Counters:
    async with session.get(f"{base}/metrics") as response:
        response.raise_for_status()
        text = await response.text()
    counters = Counters()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sfu_forwarded_packets_total":
                counters.forwarded[sample.labels["kind"]] = sample.value
            elif sample.name == "sfu_rtcp_sent_total":
                counters.rtcp[sample.labels["type"]] = sample.value
            elif sample.name == "sfu_forwarder_info" and sample.value:
                counters.implementation = sample.labels["implementation"]
    return counters


# --- the room ------------------------------------------------------------------------


class Room:
    """N participants from this checkout, each publishing audio and video and
    receiving (and draining) every other's."""

    def __init__(self, base: str, participants: int, room: str = ROOM) -> None:
        url = base.replace("http://", "ws://") + "/ws"
        self.gate = asyncio.Event()
        self.gate.set()
        self.clients = [Client(url, room=room, name=f"p{i}") for i in range(participants)]
        self.pending = participants * 2 * (participants - 1)  # (subscriber, track) pairs
        self.everyone_receives = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        if self.pending == 0:
            self.everyone_receives.set()

    async def connect(self, timeout: float) -> None:
        """Join, publish, and return once every participant has received a frame of
        every other participant's tracks."""
        async with asyncio.timeout(timeout):
            for client in self.clients:
                await client.join()
                self._tasks.append(asyncio.create_task(self._receive(client)))
            await asyncio.gather(*(client.publish([SilentAudio(self.gate),
                                                   StillVideo(self.gate)])
                                   for client in self.clients))
            await self.everyone_receives.wait()

    async def _receive(self, client: Client) -> None:
        while True:
            _, track = await client.tracks.get()
            self._tasks.append(asyncio.create_task(self._drain(track)))

    async def _drain(self, track: MediaStreamTrack) -> None:
        """Count the first frame, then keep the track's queue empty."""
        first = True
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                if first:
                    first = False
                    self.pending -= 1
                    if self.pending == 0:
                        self.everyone_receives.set()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*(asyncio.wait_for(c.close(), 10) for c in self.clients),
                             return_exceptions=True)


async def admin(session: aiohttp.ClientSession, method: str, url: str,
                body: dict[str, Any] | None = None) -> Any:
    async with session.request(method, url, json=body) as response:
        if response.status >= 400:
            raise RuntimeError(f"admin API {method} {url}: {response.status} "
                               f"{await response.text()}")
        return await response.json() if response.status != 204 else None


async def mute_all(session: aiohttp.ClientSession, base: str, expected: int) -> int:
    """Mute every track of the room server-side; returns how many are muted."""
    info = await admin(session, "GET", f"{base}/admin/rooms/{ROOM}")
    tracks = [t["id"] for p in info["participants"] for t in p["tracks"]]
    if len(tracks) != expected:
        raise RuntimeError(f"the room has {len(tracks)} tracks, not {expected}")
    for track in tracks:
        await admin(session, "POST", f"{base}/admin/rooms/{ROOM}/tracks/{track}/mute",
                    {"muted": True})
    info = await admin(session, "GET", f"{base}/admin/rooms/{ROOM}")
    return sum(bool(t.get("muted")) for p in info["participants"] for t in p["tracks"])


async def wait_forwarding_stops(session: aiohttp.ClientSession, base: str) -> bool:
    """Wait until the forwarded-packet counters stand still for half a second (or
    STEADY_TIMEOUT_S passed: then False, and the window will show it)."""
    deadline = time.monotonic() + STEADY_TIMEOUT_S
    last = (await read_metrics(session, base)).forwarded_total()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = (await read_metrics(session, base)).forwarded_total()
        if now == last:
            return True
        last = now
    return False


def busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


async def measure(session: aiohttp.ClientSession, server: Server, seconds: float,
                  participants: int) -> dict[str, Any]:
    """Server CPU over a window; /metrics read just outside it (a scrape costs the
    server CPU too), so the packet counts cover the window and a little more."""
    before = await read_metrics(session, server.base)
    own0 = resource.getrusage(resource.RUSAGE_SELF)
    busy0, total0 = busy_jiffies()
    cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, t1 = cpu_seconds(server.pid), time.monotonic()
    busy1, total1 = busy_jiffies()
    own1 = resource.getrusage(resource.RUSAGE_SELF)
    after = await read_metrics(session, server.base)
    elapsed = t1 - t0
    cores = (cpu1 - cpu0) / elapsed
    forwarded = {k: int(after.forwarded.get(k, 0) - before.forwarded.get(k, 0))
                 for k in sorted(set(after.forwarded) | set(before.forwarded))}
    clients_cpu = (own1.ru_utime - own0.ru_utime) + (own1.ru_stime - own0.ru_stime)
    return {
        "seconds": round(elapsed, 3),
        "server_cpu_seconds": round(cpu1 - cpu0, 5),
        "cpu_seconds_per_second": round(cores, 5),
        "cpu_seconds_per_second_per_participant": round(cores / participants, 6),
        "forwarded_packets": forwarded,
        "forwarded_packets_total": sum(forwarded.values()),
        "forwarded_pps": round(sum(forwarded.values()) / elapsed, 1),
        "rtcp_sent": {k: int(after.rtcp.get(k, 0) - before.rtcp.get(k, 0))
                      for k in sorted(after.rtcp)},
        # Context on a shared machine: the participants' process (this one), and every
        # core's busy time, the server's and the participants' included.
        "clients_cpu_seconds_per_second": round(clients_cpu / elapsed, 4),
        "machine_busy_cores": round((busy1 - busy0) / max(total1 - total0, 1)
                                    * (os.cpu_count() or 1), 3),
        "server_rss_mib": round(server.rss_mib(), 1),
    }


async def run_once(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One tree, one round: start, fill the room, (measure unmuted,) mute, measure."""
    server = Server(tree, args.forwarder, args.participants)
    room: Room | None = None
    result: dict[str, Any] = {}
    try:
        await server.start()
        room = Room(server.base, args.participants)
        started = time.monotonic()
        await room.connect(timeout=30 + 6 * args.participants)
        result["setup_seconds"] = round(time.monotonic() - started, 2)
        async with aiohttp.ClientSession() as session:
            counters = await read_metrics(session, server.base)
            result["forwarder"] = counters.implementation
            result["server_extension"] = server.mapped_extension()
            if args.forwarder == "cython" and not str(result["server_extension"] or "") \
                    .startswith(str(tree)):
                raise RuntimeError(f"the server loaded {result['server_extension']}, "
                                   f"not the extension of {tree}")
            if args.unmuted:
                await asyncio.sleep(args.settle)
                result["unmuted"] = await measure(session, server, args.seconds,
                                                  args.participants)
            muted = await mute_all(session, server.base, 2 * args.participants)
            if args.quiet_sources:
                room.gate.clear()
            result["muted_tracks"] = muted
            result["forwarding_stopped"] = await wait_forwarding_stops(session, server.base)
            await asyncio.sleep(args.settle)
            result["muted"] = await measure(session, server, args.seconds, args.participants)
    except Exception as exc:
        tail = server.log_tail().strip()
        raise RuntimeError(f"{exc!r}" + (f"\nserver log:\n{tail}" if tail else "")) from exc
    finally:
        if room is not None:
            await room.close()
        await server.stop()
    return result


# --- rounds, summary, output ---------------------------------------------------------


def summarise(runs: list[dict[str, Any]], mode: str, participants: int) -> dict[str, Any] | None:
    windows = [r[mode] for r in runs if mode in r]
    if not windows:
        return None
    cores = [w["cpu_seconds_per_second"] for w in windows]
    median = statistics.median(cores)
    return {
        "rounds": len(cores),
        "cpu_seconds_per_second_median": round(median, 5),
        "cpu_seconds_per_second_min": round(min(cores), 5),
        "cpu_seconds_per_second_max": round(max(cores), 5),
        # max − min, and that over the median: how far to trust a difference
        "cpu_seconds_per_second_spread": round(max(cores) - min(cores), 5),
        "relative_spread": (round((max(cores) - min(cores)) / median, 3)
                            if median and len(cores) > 1 else None),
        "cpu_seconds_per_second_per_participant_median": round(median / participants, 6),
        "forwarded_pps_median": statistics.median(w["forwarded_pps"] for w in windows),
        "forwarded_packets_max": max(w["forwarded_packets_total"] for w in windows),
        # How busy the whole machine was meanwhile (this bench included), in cores.
        "machine_busy_cores_median": statistics.median(w["machine_busy_cores"]
                                                       for w in windows),
        "all_values": cores,
    }


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    trees = [Path(t).resolve() for t in args.tree]
    for tree in dict.fromkeys(trees):
        reason = check_tree(tree, args.forwarder)
        if reason:
            raise SystemExit(f"bench.idle: {reason}")
    entries: list[dict[str, Any]] = [
        {"label": f"#{i + 1}", "path": str(tree), "commit": tree_commit(tree)}
        for i, tree in enumerate(trees)]
    runs: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for round_index in range(args.rounds):
        for index, tree in enumerate(trees):
            label = f"{entries[index]['label']} round {round_index + 1}/{args.rounds}"
            print(f"bench.idle: {label}: {tree} ...", file=sys.stderr, flush=True)
            try:
                result = await run_once(tree, args)
            except Exception as exc:
                print(f"bench.idle: {label} failed: {exc}", file=sys.stderr, flush=True)
                failures.append({"tree": index, "round": round_index, "error": str(exc)})
                continue
            runs.append({"tree": index, "round": round_index, **result})
            muted = result["muted"]
            print(f"bench.idle: {label}: muted {muted['cpu_seconds_per_second'] * 1000:.2f} "
                  f"ms/s, {muted['forwarded_packets_total']} packets forwarded in the window",
                  file=sys.stderr, flush=True)
    for index, entry in enumerate(entries):
        mine = [r for r in runs if r["tree"] == index]
        for mode in ("muted", "unmuted"):
            summary = summarise(mine, mode, args.participants)
            if summary is not None:
                entry[mode] = summary
    return {
        "benchmark": "idle room: server CPU with every track muted server-side",
        "machine": machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {"participants": args.participants, "seconds": args.seconds,
                     "rounds": args.rounds, "settle_seconds": args.settle,
                     "forwarder": args.forwarder, "quiet_sources": args.quiet_sources,
                     "sources": f"Opus silence 20 ms; VP8 still {VIDEO_SIZE[0]}x"
                                f"{VIDEO_SIZE[1]} at {VIDEO_FPS} fps"},
        "trees": entries,
        "runs": runs,
        "failures": failures,
    }


def mute_held(run: dict[str, Any], participants: int) -> bool:
    """Every track muted, and (a stray retransmission aside) nothing forwarded."""
    forwarded: int = run["muted"]["forwarded_packets_total"]
    return run["muted_tracks"] == 2 * participants and forwarded <= MUTED_PACKETS_TOLERATED


def print_table(report: dict[str, Any], out: Any) -> None:
    s = report["settings"]
    print(f"Idle room: {s['participants']} participants, audio+video each, every track muted "
          f"server-side{' and sources stopped' if s['quiet_sources'] else ''}; "
          f"{s['seconds']:g} s windows, {s['rounds']} round(s), forwarder {s['forwarder']}; "
          "server CPU in ms of CPU per second (= millicores); spread: (max - min) / median; "
          "busy: the machine's busy cores meanwhile", file=out)
    header = (f"{'tree':4} {'commit':14} {'mode':8} {'median':>8} {'min':>8} {'max':>8} "
              f"{'spread':>7} {'per part.':>9} {'fwd pkt/s':>9} {'busy':>5} {'n':>2}  path")
    print(header, file=out)
    print("-" * len(header), file=out)
    for entry in report["trees"]:
        for mode in ("muted", "unmuted"):
            summary = entry.get(mode)
            if summary is None:
                continue
            spread = summary["relative_spread"]
            print(f"{entry['label']:4} {entry['commit']:14} {mode:8} "
                  f"{summary['cpu_seconds_per_second_median'] * 1000:8.2f} "
                  f"{summary['cpu_seconds_per_second_min'] * 1000:8.2f} "
                  f"{summary['cpu_seconds_per_second_max'] * 1000:8.2f} "
                  f"{'n/a' if spread is None else f'{spread:.0%}':>7} "
                  f"{summary['cpu_seconds_per_second_per_participant_median'] * 1000:9.3f} "
                  f"{summary['forwarded_pps_median']:9.1f} "
                  f"{summary['machine_busy_cores_median']:5.2f} {summary['rounds']:2}  "
                  f"{entry['path']}", file=out)
    first = report["trees"][0].get("muted") if report["trees"] else None
    for entry in report["trees"][1:]:
        other = entry.get("muted")
        if first and other and first["cpu_seconds_per_second_median"]:
            a = first["cpu_seconds_per_second_median"]
            b = other["cpu_seconds_per_second_median"]
            print(f"{entry['label']} vs #1, muted median: {(b - a) * 1000:+.2f} ms/s "
                  f"({b / a:.2f}x)", file=out)
    for run in report["runs"]:
        muted = run["muted"]
        if not mute_held(run, s["participants"]):
            print(f"WARNING: tree #{run['tree'] + 1} round {run['round'] + 1}: "
                  f"{run['muted_tracks']} tracks muted, {muted['forwarded_packets_total']} "
                  "packets forwarded in the muted window", file=out)
    for failure in report["failures"]:
        print(f"FAILED: tree #{failure['tree'] + 1} round {failure['round'] + 1}: "
              f"{failure['error']}", file=out)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.idle",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", required=True,
                        help="a checkout with its extension built in place (repeatable)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring window")
    parser.add_argument("--participants", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternate the trees this many times (A B A B ...)")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds to wait after forwarding stopped, before measuring")
    parser.add_argument("--forwarder", choices=("cython", "python", "auto"), default="cython",
                        help="rtc.forwarder of the servers (cython: the tree's own extension)")
    parser.add_argument("--unmuted", action="store_true",
                        help="also measure a window before muting, media flowing")
    parser.add_argument("--quiet-sources", action="store_true",
                        help="stop the publishers' sources too, once muted")
    parser.add_argument("--json", action="store_true",
                        help="JSON on stdout (the table then goes to stderr)")
    parser.add_argument("--no-netns", action="store_true",
                        help="as root, do not run inside a private network namespace")
    args = parser.parse_args(argv)
    if args.participants < 2:
        parser.error("--participants must be at least 2")
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds must be at least 1 and --seconds positive")
    return args


def loopback_only() -> bool:
    try:
        with open("/proc/net/dev") as dev:
            return {line.split(":")[0].strip() for line in dev.readlines()[2:]} == {"lo"}
    except OSError:
        return False


def rerun_in_private_netns(module: str, argv: list[str]) -> int | None:
    """As root, outside a loopback-only namespace: run ``python -m module argv`` again
    inside a private network namespace and return its exit status; else None."""
    if (os.environ.get(NETNS_ENV) or loopback_only() or os.geteuid() != 0
            or not shutil.which("unshare") or not shutil.which("ip")):
        return None
    command = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"',
               "sh", sys.executable, "-m", module, *argv]
    return subprocess.run(command, env={**os.environ, NETNS_ENV: "1"}).returncode


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if not args.no_netns:
        status = rerun_in_private_netns(
            __spec__.name if __spec__ is not None else "sfu_bench.idle", argv)
        if status is not None:
            return status
    report = asyncio.run(run_all(args))
    print_table(report, sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(report, indent=2))
    if not report["runs"] or report["failures"]:
        return 1
    # A muted window that forwarded media measured something else than asked.
    return 3 if any(not mute_held(run, args.participants) for run in report["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
