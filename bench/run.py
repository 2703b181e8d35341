"""The forwarding-throughput benchmark: systems × scenarios, side by side in one run.

    sfu bench [--systems sfu-cython,sfu-python] [--scenarios 2x2,1x9] [--seconds 10]
              [--workers 1,2] [--sweep-rooms 2] [--no-sweep] [--json PATH] [--png PATH]

For each system and scenario it starts the system, runs the load generator (a
separate process of real WebRTC participants, bench/loadgen.py) and reports:
server CPU-µs per forwarded packet (the server's own user+system time during the
media phase, over its whole process tree: a front and its workers too), forwarded
packets per second, loss, added latency p50/p99, server RSS, and the generator's own
CPU. Then a sweep of replay rates finds each system's saturation point: the highest
forwarded rate with loss and the median added latency under their limits. Systems
alternate, case by case and rate by rate, so that the machine's drift falls on all.

Each sfu system runs as `sfu serve --workers N`, N = 1 (one process) unless
--workers lists more counts: then once per count, side by side (sfu-cython,
sfu-cython-w2, ...), and the report gives each multi-worker system's saturation
throughput as a multiple of the one-worker system's. A room lives on one worker, so
to load several, --sweep-rooms N sweeps N copies of the sweep's room at once (one
load generator, the same rate in each).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from . import loadgen
from .systems import System, all_systems, cpu_by_pid, machine, usage

SCENARIOS_FILE = Path(__file__).parent / "scenarios.toml"
# Results go where the user runs the bench, never into the installed package.
RESULTS_DIR = Path("bench-results")


def load_scenarios(path: Path = SCENARIOS_FILE) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    data = tomllib.loads(path.read_text())
    scenarios = {s["name"]: s for s in data["scenario"]}
    return scenarios, data["sweep"]


async def run_case(
    system: System, scenario: dict[str, Any], rate: float, seconds: float, address: str,
    rooms: int = 1,
) -> dict[str, Any]:
    """One system, one replay rate, the scenario's room (or ``rooms`` copies of it,
    each its own room): start, load, measure, stop."""
    names = ([f"bench-{scenario['name']}"] if rooms == 1
             else [f"bench-{scenario['name']}-{i}" for i in range(rooms)])
    publishers = [f"pub{i}" for i in range(scenario["publishers"])]
    listeners = [f"sub{i}" for i in range(scenario["listeners"])]
    await system.start(address)
    try:
        job = {**system.job(names[0]), "publishers": publishers, "listeners": listeners,
               **({"rooms": [system.job(name) for name in names]} if rooms > 1 else {}),
               "seconds": seconds, "rate": rate, "addresses": [address],
               "simulcast": scenario.get("simulcast", False),
               "audio_only": scenario.get("audio_only", False)}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sfu_bench.loadgen", json.dumps(job),
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        marks: dict[str, Any] = {}
        per_process: dict[str, dict[int, float]] = {}
        result: dict[str, Any] | None = None
        async with asyncio.timeout(seconds + 120):
            async for line in process.stdout:
                event = json.loads(line)
                if event["event"] in ("start", "stop"):
                    pids = system.pids()
                    marks[event["event"]] = usage(pids)
                    per_process[event["event"]] = cpu_by_pid(pids)
                elif event["event"] == "result":
                    result = event
            await process.wait()
        if result is None or "start" not in marks or "stop" not in marks:
            raise RuntimeError(f"load generator exited {process.returncode} without a result")
    finally:
        await system.stop()
    u0, u1 = marks["start"], marks["stop"]
    forwarded = result["received_packets"]
    send_seconds = result["media_seconds"] - loadgen.DRAIN_SECONDS
    server_cpu = u1.cpu_seconds - u0.cpu_seconds
    p0, p1 = per_process["start"], per_process["stop"]
    return {
        "system": system.name,
        "scenario": scenario["name"],
        "rate": rate,
        "seconds": seconds,
        # The server's processes (its own first, then e.g. a front's workers) and the
        # cores each used: with workers, whether each room had one to itself.
        "server_processes": len(p1),
        "server_cpu_cores_by_process": [round((p1[pid] - p0[pid]) / send_seconds, 3)
                                        for pid in p1 if pid in p0],
        "forwarded_packets": forwarded,
        "forwarded_pps": round(forwarded / send_seconds, 1),
        "server_cpu_seconds": round(server_cpu, 3),
        # Over the sending time: the drain second after it costs next to nothing.
        "server_cpu_cores": round(server_cpu / send_seconds, 3),
        "server_cpu_us_per_forwarded_packet": (
            round(server_cpu * 1e6 / forwarded, 3) if forwarded else None),
        "generator_cpu_cores": round(result["generator_cpu_seconds"] / send_seconds, 3),
        "server_rss_mib": round(u1.rss_bytes / 2**20, 1),
        "server_peak_rss_mib": round(u1.peak_rss_bytes / 2**20, 1),
        **{k: v for k, v in result.items() if k not in ("event", "per_stream")},
    }


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int) -> None:
        self.total = max(total, 1)
        self.done = 0

    def step(self, label: str) -> None:
        width = 30
        filled = width * self.done // self.total
        bar = "#" * filled + "-" * (width - filled)
        print(f"\r[{bar}] {self.done}/{self.total} {label[:60]:60}", end="", file=sys.stderr,
              flush=True)

    def advance(self) -> None:
        self.done += 1


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    scenarios, sweep = load_scenarios()
    systems = all_systems(args.baseline, worker_counts(args))
    chosen_systems = (choose_systems(systems, args.systems.split(",")) if args.systems
                      else list(systems))
    chosen_scenarios = args.scenarios.split(",") if args.scenarios else list(scenarios)
    unknown = [s for s in chosen_scenarios if s not in scenarios]
    if unknown:
        raise SystemExit(f"unknown scenario: {', '.join(unknown)}")
    runnable, skipped = [], {}
    for name in chosen_systems:
        reason = systems[name].skip_reason(args.address)
        if reason is None:
            runnable.append(systems[name])
        else:
            skipped[name] = reason
    rates = args.rates or sweep["rates"]
    rates = [r for r in rates if r <= args.max_rate] if args.sweep else []
    progress = Progress(len(runnable) * (len(chosen_scenarios) + len(rates)))
    results: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    # Every system on a case before the next case, and every system at a rate before
    # the next rate: a drift in the machine's speed falls on all of them alike.
    for name in chosen_scenarios:
        for system in runnable:
            progress.step(f"{system.name} {name}")
            if (scenarios[name].get("simulcast") or scenarios[name].get("audio_only")) and (
                    not system.name.startswith("sfu")):
                progress.advance()  # sfu's own scenarios: layers asked for, audio levels
                continue
            try:
                results.append(await run_case(system, scenarios[name], 1.0, args.seconds,
                                              args.address))
            except Exception as exc:  # a system that fails a case is reported, not hidden
                failures.append({"system": system.name, "scenario": name, "error": repr(exc)})
            progress.advance()
    swept = []
    for system in runnable if rates else []:
        if args.sweep_rooms > 1 and getattr(system, "max_rooms", None) == 1:
            failures.append({"system": system.name, "scenario": "sweep",
                             "error": f"hosts one room only, not {args.sweep_rooms}"})
            progress.done += len(rates)
        else:
            swept.append(system)
    sweeps = await run_sweeps(swept, scenarios[sweep["scenario"]], rates, sweep, args,
                              progress)
    print(file=sys.stderr)
    return {
        "machine": machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "address": args.address,
        "skipped": skipped,
        "failures": failures,
        "results": results,
        "sweep": sweeps,
        "sweep_scaling": worker_scaling(sweeps),
    }


def family(name: str) -> str:
    """A system's name without its worker count: sfu-cython-w2 → sfu-cython."""
    return re.sub(r"-w\d+(?=-|$)", "", name)


def worker_scaling(sweeps: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each multi-worker system's saturation forwarded pkt/s over its one-worker
    system's (same sweep, same run): ``{"sfu-cython-w2": {"ratio": 1.8, "bound":
    "exact"}}``. A system the sweep did not saturate has a lower bound only: the ratio
    is then "lower" (this system's), "upper" (the one worker's) or "unknown" (both)."""
    scaling: dict[str, dict[str, Any]] = {}
    for name, sweep in sweeps.items():
        base = sweeps.get(family(name))
        if family(name) == name or base is None:
            continue
        ours, theirs = sweep["saturation_forwarded_pps"], base["saturation_forwarded_pps"]
        bound = {(True, True): "exact", (False, True): "lower", (True, False): "upper",
                 (False, False): "unknown"}[bool(sweep["saturated"]), bool(base["saturated"])]
        scaling[name] = {"over": family(name),
                         "ratio": round(ours / theirs, 3) if ours and theirs else None,
                         "bound": bound}
    return scaling


def choose_systems(systems: dict[str, System], chosen: list[str]) -> list[str]:
    """Names from --systems: a system's own name, or a family (sfu-cython) for each of
    its worker counts (sfu-cython, sfu-cython-w2, ...)."""
    names = [name for name in systems if name in chosen or family(name) in chosen]
    unknown = [c for c in chosen if c not in names and not any(family(n) == c for n in names)]
    if unknown:
        raise SystemExit(f"unknown system: {', '.join(unknown)}")
    return names


def worker_counts(args: argparse.Namespace) -> tuple[int, ...]:
    """--workers, and any count a --systems name asks for (sfu-cython-w2: 2)."""
    try:
        counts = [int(c) for c in args.workers.split(",")]
    except ValueError:
        raise SystemExit(f"--workers: counts, comma-separated, not {args.workers!r}") from None
    named = [int(m) for m in re.findall(r"-w(\d+)(?=-|,|$)", args.systems or "")]
    if any(c < 1 for c in counts + named) or args.sweep_rooms < 1:
        raise SystemExit("--workers and --sweep-rooms count from 1")
    return tuple(dict.fromkeys(counts + named))


def within_limits(point: dict[str, Any], limits: dict[str, Any]) -> bool:
    """Whether a sweep point kept up: loss under the limit, and the median added latency
    too where it was measured (a standing queue is a server behind its load)."""
    if point["loss"] is None or point["loss"] >= limits["loss_limit"]:
        return False
    latency = point["latency_ms_p50"]  # None for a system whose latency is unknown
    return latency is None or latency < limits["latency_limit_ms"]


async def run_sweeps(systems: list[System], scenario: dict[str, Any], rates: list[float],
                     limits: dict[str, Any], args: argparse.Namespace,
                     progress: Progress) -> dict[str, dict[str, Any]]:
    """Each system at rising rates until a point is over a limit, interleaved: every
    system still going at one rate before any at the next."""
    points: dict[str, list[dict[str, Any]]] = {system.name: [] for system in systems}
    best: dict[str, dict[str, Any] | None] = {system.name: None for system in systems}
    going = list(systems)
    for rate in rates:
        for system in list(going):
            progress.step(f"{system.name} sweep {scenario['name']} x{rate}")
            try:
                point = await run_case(system, scenario, rate, args.sweep_seconds,
                                       args.address, args.sweep_rooms)
            except Exception as exc:
                point = {"rate": rate, "error": repr(exc)}
            points[system.name].append(point)
            progress.advance()
            if "error" not in point and within_limits(point, limits):
                best[system.name] = point
            else:
                going.remove(system)
    # the rates the sweep did not need
    progress.done += sum(len(rates) - len(p) for p in points.values())
    return {system.name: sweep_summary(scenario, limits, args.sweep_rooms,
                                       points[system.name], best[system.name])
            for system in systems}


def sweep_summary(scenario: dict[str, Any], limits: dict[str, Any], rooms: int,
                  points: list[dict[str, Any]], best: dict[str, Any] | None
                  ) -> dict[str, Any]:
    last = points[-1] if points else {}
    return {
        "scenario": scenario["name"],
        "rooms": rooms,
        "loss_limit": limits["loss_limit"],
        "latency_limit_ms": limits["latency_limit_ms"],
        # False when even the highest rate stayed within the limits: the figure is
        # then a lower bound, not the saturation point.
        "saturated": bool(last) and (last is not best),
        "saturation_forwarded_pps": best["forwarded_pps"] if best else None,
        "saturation_server_cpu_cores": best["server_cpu_cores"] if best else None,
        # The load generator shares the machine: at saturation, how much it used.
        "saturation_generator_cpu_cores": best["generator_cpu_cores"] if best else None,
        "saturation_server_cpu_cores_by_process": (
            best["server_cpu_cores_by_process"] if best else None),
        "saturation_pps_per_core": (
            round(best["forwarded_pps"] / max(best["server_cpu_cores"], 1e-3))
            if best else None),
        "points": points,
    }


def print_table(report: dict[str, Any]) -> None:
    width = max([12, *(len(r["system"]) for r in report["results"])])
    header = (f"{'system':{width}} {'scenario':8} {'fwd pkt/s':>10} {'CPU-us/pkt':>10} "
              f"{'cores':>6} {'loss %':>7} {'p50 ms':>7} {'p99 ms':>7} {'RSS MiB':>8} "
              f"{'gen us/pkt':>10}")
    print(header)
    print("-" * len(header))
    for r in report["results"]:
        print(f"{r['system']:{width}} {r['scenario']:8} {r['forwarded_pps']:>10,.0f} "
              f"{_num(r['server_cpu_us_per_forwarded_packet']):>10} "
              f"{r['server_cpu_cores']:>6.2f} {_num(_pct(r['loss'])):>7} "
              f"{_num(r['latency_ms_p50']):>7} {_num(r['latency_ms_p99']):>7} "
              f"{r['server_rss_mib']:>8.1f} {r['generator_cpu_us_per_packet']:>10.2f}")
    for name, sweep in report["sweep"].items():
        reached = "saturation" if sweep["saturated"] else "not saturated at the highest rate"
        rooms = sweep.get("rooms", 1)
        where = sweep["scenario"] + (f" x {rooms} rooms" if rooms > 1 else "")
        by_process = sweep.get("saturation_server_cpu_cores_by_process") or []
        split = (" [" + " + ".join(f"{c:.2f}" for c in by_process) + " per process]"
                 if len(by_process) > 1 else "")
        print(f"{name}: {reached} ({where}, loss < {sweep['loss_limit']:.0%}, median "
              f"added latency < {sweep['latency_limit_ms']} ms): "
              f"{_num(sweep['saturation_forwarded_pps'])} forwarded pkt/s using "
              f"{_num(sweep['saturation_server_cpu_cores'])} cores{split} = "
              f"{_num(sweep['saturation_pps_per_core'])} pkt/s per core (load generator: "
              f"{_num(sweep['saturation_generator_cpu_cores'])} cores)")
    bounds = {"exact": "", "lower": " (at least: not saturated)",
              "upper": " (at most: the one worker not saturated)",
              "unknown": " (neither saturated: no figure)"}
    for name, scaling in report.get("sweep_scaling", {}).items():
        print(f"{name}: {_num(scaling['ratio'])}x the saturation throughput of "
              f"{scaling['over']}{bounds[scaling['bound']]}")
    for name, reason in report["skipped"].items():
        print(f"{name}: skipped: {reason}")
    for failure in report["failures"]:
        print(f"{failure['system']} {failure['scenario']}: failed: {failure['error']}")


def _rates(text: str) -> list[float]:
    rates = [float(r) for r in text.split(",")]
    if rates != sorted(rates) or rates[0] <= 0:
        raise argparse.ArgumentTypeError(f"rising positive rates, not {text}")
    return rates


def _pct(value: float | None) -> float | None:
    return None if value is None else value * 100


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.2f}"


def write_chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    systems = sorted({r["system"] for r in results})
    scenarios = list(dict.fromkeys(r["scenario"] for r in results))
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / max(len(systems), 1)
    for i, system in enumerate(systems):
        values = []
        for scenario in scenarios:
            match = [r for r in results if r["system"] == system and r["scenario"] == scenario]
            value = match[0]["server_cpu_us_per_forwarded_packet"] if match else None
            values.append(value or 0)
        left.bar([x + i * width for x in range(len(scenarios))], values, width, label=system)
    left.set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(scenarios))],
                    scenarios)
    left.set_yscale("log")  # a re-encoding relay costs 100x: keep the SFUs readable
    left.set_ylabel("server CPU-µs per forwarded packet (log scale)")
    left.set_title("Cost per forwarded packet, real-time rate (lower is better)")
    left.legend()
    sweep_systems = [s for s in systems if report["sweep"].get(s, {}).get(
        "saturation_pps_per_core")]
    values = [report["sweep"][s]["saturation_pps_per_core"] for s in sweep_systems]
    bars = right.bar(sweep_systems, values)
    right.bar_label(bars, labels=[f"{v / 1000:,.0f}k" for v in values])
    right.set_ylabel("forwarded packets/s per core, < 1 % loss")
    right.set_title("Saturation (higher is better)")
    figure.suptitle(f"sfu bench, {report['machine']['cores']} cores, {report['started']}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sfu bench", description=__doc__.split("\n\n")[0],
        epilog="Workers against one process, two rooms (one a worker) at saturation: "
        "sfu bench --systems sfu-cython --scenarios 1x9 --workers 1,2 --sweep-rooms 2")
    parser.add_argument("--systems", help="comma-separated (default: all); sfu-cython "
                        "means each of its --workers counts, sfu-cython-w2 only that one")
    parser.add_argument("--baseline", metavar="TREE",
                        help="also run another checkout's server (its extension built in "
                             "place) as sfu-cython-baseline, e.g. the previous main")
    parser.add_argument("--scenarios", help="comma-separated names from bench/scenarios.toml")
    parser.add_argument("--seconds", type=float, default=10.0, help="media seconds per case")
    parser.add_argument("--sweep-seconds", type=float, default=6.0)
    parser.add_argument("--max-rate", type=float, default=1e9, help="cap the sweep's rates")
    parser.add_argument(
        "--rates", type=_rates, metavar="R[,R...]",
        help="the sweep's replay rates, rising (default: [sweep] rates in "
        "bench/scenarios.toml); a finer grid near saturation, a finer ratio")
    parser.add_argument(
        "--workers", default="1", metavar="N[,N...]",
        help="run each sfu system as `sfu serve --workers N` once per count, side by side "
        "(sfu-cython, sfu-cython-w2, ...), and report each count's saturation throughput "
        "over one worker's (default: 1, one process)")
    parser.add_argument(
        "--sweep-rooms", type=int, default=1, metavar="N",
        help="sweep N copies of the sweep's room at once, each its own room (a room "
        "lives on one worker: 2 rooms load 2 workers), the same rate in each")
    parser.add_argument("--no-sweep", dest="sweep", action="store_false")
    parser.add_argument(
        "--address",
        help="address every system uses; default: as root, a veth address in a private "
        "network namespace the bench makes (nothing leaves the machine), else 127.0.0.1",
    )
    parser.add_argument("--json", help="write the report here (default: bench/results/)")
    parser.add_argument("--png", help="write the chart here (default: next to the JSON)")
    return parser.parse_args(argv)


# The bench's private network: a veth pair inside a namespace of its own. Janus's ICE
# (libnice) ignores loopback, so every system gets this address instead, alike.
NETNS_ENV = "SFU_BENCH_NETNS"
NETNS_ADDRESS = "10.77.0.1"
NETNS_SETUP = (
    "ip link set lo up && ip link add v0 type veth peer name v1 && "
    f"ip addr add {NETNS_ADDRESS}/24 dev v0 && ip link set v0 up && ip link set v1 up && "
    'exec "$@"'
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.address is None:
        if os.environ.get(NETNS_ENV):
            args.address = NETNS_ADDRESS
        elif os.geteuid() == 0 and shutil.which("unshare") and shutil.which("ip"):
            command = ["unshare", "--net", "--", "sh", "-c", NETNS_SETUP, "sh",
                       sys.executable, "-m", "sfu_bench.run", *argv]
            return subprocess.run(command, env={**os.environ, NETNS_ENV: "1"}).returncode
        else:
            args.address = "127.0.0.1"
    report = asyncio.run(run_all(args))
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    json_path = Path(args.json) if args.json else RESULTS_DIR / f"bench-{stamp}.json"
    json_path.write_text(json.dumps(report, indent=2))
    png_path = Path(args.png) if args.png else json_path.with_suffix(".png")
    if report["results"]:
        write_chart(report, png_path)
    print_table(report)
    print(f"\nJSON: {json_path}" + (f"\nchart: {png_path}" if report["results"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
