"""The forwarding-throughput benchmark: systems × scenarios, side by side in one run.

    sfu bench [--systems sfu-cython,sfu-python] [--scenarios 2x2,1x9] [--seconds 10]
              [--no-sweep] [--json PATH] [--png PATH]

For each system and scenario it starts the system, runs the load generator (a
separate process of real WebRTC participants, bench/loadgen.py) and reports:
server CPU-µs per forwarded packet (the server's own user+system time during the
media phase), forwarded packets per second, loss, added latency p50/p99, server RSS,
and the generator's own CPU. Then a sweep of replay rates finds each system's
saturation point: the highest forwarded rate with loss under the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from . import loadgen
from .systems import System, all_systems, machine, usage

SCENARIOS_FILE = Path(__file__).parent / "scenarios.toml"
# Results go where the user runs the bench, never into the installed package.
RESULTS_DIR = Path("bench-results")


def load_scenarios(path: Path = SCENARIOS_FILE) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    data = tomllib.loads(path.read_text())
    scenarios = {s["name"]: s for s in data["scenario"]}
    return scenarios, data["sweep"]


async def run_case(
    system: System, scenario: dict[str, Any], rate: float, seconds: float, address: str
) -> dict[str, Any]:
    """One system, one room, one replay rate: start, load, measure, stop."""
    room = f"bench-{scenario['name']}"
    publishers = [f"pub{i}" for i in range(scenario["publishers"])]
    listeners = [f"sub{i}" for i in range(scenario["listeners"])]
    await system.start(address)
    try:
        job = {**system.job(room), "publishers": publishers, "listeners": listeners,
               "seconds": seconds, "rate": rate, "addresses": [address],
               "simulcast": scenario.get("simulcast", False),
               "audio_only": scenario.get("audio_only", False)}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sfu_bench.loadgen", json.dumps(job),
            stdout=asyncio.subprocess.PIPE,
        )
        assert process.stdout is not None
        marks: dict[str, Any] = {}
        result: dict[str, Any] | None = None
        async with asyncio.timeout(seconds + 120):
            async for line in process.stdout:
                event = json.loads(line)
                if event["event"] in ("start", "stop"):
                    marks[event["event"]] = usage(system.pids())
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
    return {
        "system": system.name,
        "scenario": scenario["name"],
        "rate": rate,
        "seconds": seconds,
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
    systems = all_systems(args.baseline)
    chosen_systems = args.systems.split(",") if args.systems else list(systems)
    chosen_scenarios = args.scenarios.split(",") if args.scenarios else list(scenarios)
    unknown = [s for s in chosen_systems if s not in systems] + [
        s for s in chosen_scenarios if s not in scenarios]
    if unknown:
        raise SystemExit(f"unknown system or scenario: {', '.join(unknown)}")
    runnable, skipped = [], {}
    for name in chosen_systems:
        reason = systems[name].skip_reason(args.address)
        if reason is None:
            runnable.append(systems[name])
        else:
            skipped[name] = reason
    rates = [r for r in sweep["rates"] if r <= args.max_rate] if args.sweep else []
    progress = Progress(len(runnable) * (len(chosen_scenarios) + len(rates)))
    results: list[dict[str, Any]] = []
    failures: list[dict[str, str]] = []
    sweeps: dict[str, dict[str, Any]] = {}
    for system in runnable:
        for name in chosen_scenarios:
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
        if rates:
            sweeps[system.name] = await run_sweep(system, scenarios[sweep["scenario"]], rates,
                                                  sweep["loss_limit"], args, progress)
    print(file=sys.stderr)
    return {
        "machine": machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "address": args.address,
        "skipped": skipped,
        "failures": failures,
        "results": results,
        "sweep": sweeps,
    }


async def run_sweep(system: System, scenario: dict[str, Any], rates: list[float],
                    loss_limit: float, args: argparse.Namespace,
                    progress: Progress) -> dict[str, Any]:
    points = []
    best: dict[str, Any] | None = None
    for rate in rates:
        progress.step(f"{system.name} sweep {scenario['name']} x{rate}")
        try:
            point = await run_case(system, scenario, rate, args.sweep_seconds, args.address)
        except Exception as exc:
            points.append({"rate": rate, "error": repr(exc)})
            progress.advance()
            break
        points.append(point)
        progress.advance()
        if point["loss"] is None or point["loss"] >= loss_limit:
            break
        best = point
    progress.done += len(rates) - len(points)  # the rates the sweep did not need
    last = points[-1] if points else {}
    return {
        "scenario": scenario["name"],
        "loss_limit": loss_limit,
        # False when even the highest rate stayed under the loss limit: the figure is
        # then a lower bound, not the saturation point.
        "saturated": bool(last) and (last is not best),
        "saturation_forwarded_pps": best["forwarded_pps"] if best else None,
        "saturation_server_cpu_cores": best["server_cpu_cores"] if best else None,
        # The load generator shares the machine: at saturation, how much it used.
        "saturation_generator_cpu_cores": best["generator_cpu_cores"] if best else None,
        "saturation_pps_per_core": (
            round(best["forwarded_pps"] / max(best["server_cpu_cores"], 1e-3))
            if best else None),
        "points": points,
    }


def print_table(report: dict[str, Any]) -> None:
    header = (f"{'system':12} {'scenario':8} {'fwd pkt/s':>10} {'CPU-us/pkt':>10} "
              f"{'cores':>6} {'loss %':>7} {'p50 ms':>7} {'p99 ms':>7} {'RSS MiB':>8} "
              f"{'gen us/pkt':>10}")
    print(header)
    print("-" * len(header))
    for r in report["results"]:
        print(f"{r['system']:12} {r['scenario']:8} {r['forwarded_pps']:>10,.0f} "
              f"{_num(r['server_cpu_us_per_forwarded_packet']):>10} "
              f"{r['server_cpu_cores']:>6.2f} {_num(_pct(r['loss'])):>7} "
              f"{_num(r['latency_ms_p50']):>7} {_num(r['latency_ms_p99']):>7} "
              f"{r['server_rss_mib']:>8.1f} {r['generator_cpu_us_per_packet']:>10.2f}")
    for name, sweep in report["sweep"].items():
        reached = "saturation" if sweep["saturated"] else "not saturated at the highest rate"
        print(f"{name}: {reached} ({sweep['scenario']}, loss < {sweep['loss_limit']:.0%}): "
              f"{_num(sweep['saturation_forwarded_pps'])} forwarded pkt/s using "
              f"{_num(sweep['saturation_server_cpu_cores'])} cores = "
              f"{_num(sweep['saturation_pps_per_core'])} pkt/s per core (load generator: "
              f"{_num(sweep['saturation_generator_cpu_cores'])} cores)")
    for name, reason in report["skipped"].items():
        print(f"{name}: skipped: {reason}")
    for failure in report["failures"]:
        print(f"{failure['system']} {failure['scenario']}: failed: {failure['error']}")


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
    parser = argparse.ArgumentParser(prog="sfu bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", help="comma-separated (default: all)")
    parser.add_argument("--baseline", metavar="TREE",
                        help="also run another checkout's server (its extension built in "
                             "place) as sfu-cython-baseline, e.g. the previous main")
    parser.add_argument("--scenarios", help="comma-separated names from bench/scenarios.toml")
    parser.add_argument("--seconds", type=float, default=10.0, help="media seconds per case")
    parser.add_argument("--sweep-seconds", type=float, default=6.0)
    parser.add_argument("--max-rate", type=float, default=1e9, help="cap the sweep's rates")
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
