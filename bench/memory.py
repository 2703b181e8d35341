"""Where the server's memory goes: the imports, the idle server, a participant, a
subscription.

    python -m bench.memory [--tree PATH] [--participants 8] [--settle 3] [--json]

The server is ``sfu serve`` from ``--tree`` (default: this checkout) in a child process,
as in bench/idle.py; its resident set (VmRSS) is read from /proc. Four figures:

1. **Imports**: a fresh ``python -P`` imports, one after another, what the server is
   made of (the standard library's asyncio, aiohttp, PyAV, aiortc, then ``sfu.server``
   and its fast path) and reports its RSS after each: what each step adds.
2. **Idle server**: ``sfu serve`` started, nobody connected.
3. **Per participant**: a fresh server; N participants (aiortc, this checkout's
   ``sfu.client``), each alone in a room of its own, each publishing audio and a small
   video: (RSS − idle) / N. No subscription exists, so this is the connection (ICE,
   DTLS, SRTP, the forwarder's endpoint and producers, the room).
4. **Per subscription**: a fresh server; the same N participants in one room, each
   receiving the other N − 1's two tracks: (RSS − RSS of step 3) / (N(N − 1) × 2).

A fresh server for each step, because freed memory mostly stays in a process (Python's
arenas, malloc's heap): what is measured after a step is the high-water mark it left.
The sources are bench/idle.py's (Opus silence, a 160x120 still VP8 at 10 fps), so the
figures are the server's bookkeeping, not its buffering of large frames.

As root it runs inside a private network namespace with only loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .idle import Room, Server, check_tree, rerun_in_private_netns, server_env, tree_commit
from .systems import machine

ROOT = Path(__file__).resolve().parent.parent
# What `sfu serve` imports, in the order it needs them; each step's RSS is cumulative.
IMPORT_STEPS = ("asyncio", "aiohttp", "av", "aiortc", "sfu.server", "sfu._fastpath")

IMPORTS_SCRIPT = """
import importlib, json, sys
def rss():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
steps = [["python", rss()]]
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        steps.append([name, None, str(exc)])
        continue
    steps.append([name, rss()])
print(json.dumps(steps))
"""


def import_steps(tree: Path) -> list[dict[str, Any]]:
    """RSS after each of IMPORT_STEPS in a fresh interpreter, and what each added."""
    done = subprocess.run([sys.executable, "-P", "-c", IMPORTS_SCRIPT, *IMPORT_STEPS],
                          env=server_env(tree), cwd=tempfile.gettempdir(),
                          capture_output=True, text=True, timeout=120, check=True)
    steps, previous, out = json.loads(done.stdout), 0.0, []
    for name, rss, *error in steps:
        if rss is None:
            out.append({"step": name, "error": error[0]})
            continue
        out.append({"step": name, "rss_mib": round(rss, 1), "added_mib": round(rss - previous, 1)})
        previous = rss
    return out


async def settled_rss(server: Server, settle: float) -> float:
    """The server's RSS once it has stopped growing for ``settle`` seconds (or after
    four times that)."""
    deadline = time.monotonic() + 4 * settle
    last = server.rss_mib()
    while time.monotonic() < deadline:
        await asyncio.sleep(settle / 3)
        now = server.rss_mib()
        if abs(now - last) < 0.2:
            await asyncio.sleep(settle)
            return max(now, server.rss_mib())
        last = now
    return server.rss_mib()


async def with_server(tree: Path, forwarder: str, participants: int, settle: float,
                      make_rooms: Callable[[str], list[Room]] | None = None) -> float:
    """Start a server, connect ``make_rooms(base)`` (if any), return the settled RSS."""
    server = Server(tree, forwarder, participants)
    made: list[Room] = []
    try:
        await server.start()
        if make_rooms is not None:
            made = make_rooms(server.base)
            for room in made:
                await room.connect(timeout=30 + 6 * participants)
        return await settled_rss(server, settle)
    except Exception as exc:
        tail = server.log_tail().strip()
        raise RuntimeError(f"{exc!r}" + (f"\nserver log:\n{tail}" if tail else "")) from exc
    finally:
        for room in made:
            await room.close()
        await server.stop()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tree = Path(args.tree).resolve()
    reason = check_tree(tree, args.forwarder)
    if reason:
        raise SystemExit(f"bench.memory: {reason}")
    n = args.participants
    subscriptions = n * (n - 1) * 2
    imports = import_steps(tree)
    idle = await with_server(tree, args.forwarder, n, args.settle)
    alone = await with_server(
        tree, args.forwarder, n, args.settle,
        lambda base: [Room(base, 1, room=f"alone-{i}") for i in range(n)])
    together = await with_server(tree, args.forwarder, n, args.settle,
                                 lambda base: [Room(base, n, room="together")])
    return {
        "benchmark": "server memory: imports, idle, per participant, per subscription",
        "machine": machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tree": {"path": str(tree), "commit": tree_commit(tree)},
        "settings": {"participants": n, "settle_seconds": args.settle,
                     "forwarder": args.forwarder},
        "imports": imports,
        "idle_server_rss_mib": round(idle, 1),
        "participants_alone_rss_mib": round(alone, 1),
        "per_participant_kib": round((alone - idle) * 1024 / n, 1),
        "room_rss_mib": round(together, 1),
        "subscriptions": subscriptions,
        "per_subscription_kib": round((together - alone) * 1024 / subscriptions, 1),
    }


def print_report(report: dict[str, Any], out: Any) -> None:
    s = report["settings"]
    print(f"Server memory (VmRSS), tree {report['tree']['commit']}, forwarder "
          f"{s['forwarder']}:", file=out)
    print("  imports, one after another in a fresh interpreter:", file=out)
    for step in report["imports"]:
        if "error" in step:
            print(f"    {step['step']:14} not importable: {step['error']}", file=out)
        else:
            print(f"    {step['step']:14} {step['rss_mib']:7.1f} MiB  (+{step['added_mib']:.1f})",
                  file=out)
    n = s["participants"]
    print(f"  idle server:{'':35} {report['idle_server_rss_mib']:7.1f} MiB", file=out)
    print(f"  {n} participants, each alone in a room:          "
          f"{report['participants_alone_rss_mib']:7.1f} MiB  -> "
          f"{report['per_participant_kib']:.0f} KiB per participant", file=out)
    print(f"  {n} participants in one room ({report['subscriptions']} subscriptions): "
          f"{report['room_rss_mib']:7.1f} MiB  -> {report['per_subscription_kib']:.0f} KiB "
          "per subscription", file=out)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.memory",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", default=str(ROOT),
                        help="a checkout with its extension built in place (default: this one)")
    parser.add_argument("--participants", type=int, default=8)
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds the RSS must hold still before it is read")
    parser.add_argument("--forwarder", choices=("cython", "python", "auto"), default="cython")
    parser.add_argument("--json", action="store_true",
                        help="JSON on stdout (the summary then goes to stderr)")
    parser.add_argument("--no-netns", action="store_true",
                        help="as root, do not run inside a private network namespace")
    args = parser.parse_args(argv)
    if args.participants < 2:
        parser.error("--participants must be at least 2")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if not args.no_netns:
        status = rerun_in_private_netns(
            __spec__.name if __spec__ is not None else "sfu_bench.memory", argv)
        if status is not None:
            return status
    report = asyncio.run(run(args))
    print_report(report, sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
