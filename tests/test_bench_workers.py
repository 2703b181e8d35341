"""`sfu bench --workers 1,2 --sweep-rooms 2`: the server's CPU counts its workers too,
and a two-room case makes two rooms, one on each worker."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
from pathlib import Path
from typing import Any

from sfu.fastpath import cython_unavailable_reason
from sfu_bench.run import choose_systems, run_case, worker_counts, worker_scaling
from sfu_bench.systems import SfuSystem, all_systems, descendants
from tests.conftest import requires_isolated_network


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def test_descendants_are_the_whole_tree() -> None:
    shell = subprocess.Popen(["sh", "-c", "sleep 30 & (sleep 31 & wait) & wait"])
    try:
        sleeps: list[str] = []
        for _ in range(100):  # until the shell has started them all (a grandchild too)
            found = descendants(shell.pid)
            sleeps = sorted(cmdline(pid) for pid in found if cmdline(pid).startswith("sleep"))
            if len(sleeps) == 2:
                break
            subprocess.run(["sleep", "0.05"], check=True)
        assert shell.pid not in found
        assert sleeps == ["sleep 30 ", "sleep 31 "]
    finally:
        for pid in descendants(shell.pid):
            subprocess.run(["kill", str(pid)], check=False)
        shell.kill()
        shell.wait()


def test_systems_per_worker_count() -> None:
    systems = all_systems(workers=(1, 2))
    assert {"sfu-cython", "sfu-cython-w2", "sfu-python", "sfu-python-w2"} <= set(systems)
    assert [getattr(systems[n], "workers", None) for n in ("sfu-cython", "sfu-cython-w2")] == [
        1, 2]
    assert choose_systems(systems, ["sfu-cython"]) == ["sfu-cython", "sfu-cython-w2"]
    assert choose_systems(systems, ["sfu-cython-w2"]) == ["sfu-cython-w2"]
    args = argparse.Namespace(workers="1", systems="sfu-cython-w2,sfu-python-w3",
                              sweep_rooms=2)
    assert worker_counts(args) == (1, 2, 3)
    sweeps = {"sfu-cython": {"saturation_forwarded_pps": 1000.0, "saturated": True},
              "sfu-cython-w2": {"saturation_forwarded_pps": 1800.0, "saturated": True},
              "sfu-cython-w3": {"saturation_forwarded_pps": 2000.0, "saturated": False},
              "sfu-python-w2": {"saturation_forwarded_pps": 900.0, "saturated": True}}
    assert worker_scaling(sweeps) == {
        "sfu-cython-w2": {"over": "sfu-cython", "ratio": 1.8, "bound": "exact"},
        "sfu-cython-w3": {"over": "sfu-cython", "ratio": 2.0, "bound": "lower"}}


@requires_isolated_network
def test_two_workers_two_rooms() -> None:
    forwarder = "cython" if cython_unavailable_reason() is None else "python"
    scenario = {"name": "2x2", "publishers": 2, "listeners": 0}

    async def main() -> dict[str, Any]:
        system = SfuSystem(forwarder, workers=2)
        await system.start("127.0.0.1")
        try:
            pids = system.pids()
            workers = [pid for pid in pids if "sfu.workers.worker" in cmdline(pid)]
            assert len(pids) == 3 and len(workers) == 2, [cmdline(pid) for pid in pids]
            assert "--workers 2" in cmdline(pids[0])
        finally:
            await system.stop()
        case: dict[str, Any] = await run_case(system, scenario, 1.0, 2.0, "127.0.0.1",
                                              rooms=2)
        return case

    row = asyncio.run(main())
    print(row)
    assert row["rooms"] == 2 and row["server_processes"] == 3, row
    # Two publishers a room, each receiving the other's audio and video: 4 streams a room.
    assert row["streams"] == row["mapped_streams"] == 8, row
    assert row["loss"] is not None and row["loss"] < 0.05, row
    workers = row["server_cpu_cores_by_process"][1:]  # after the front's own
    # Each room on its own worker: both forward (one idle worker would be near 0).
    assert len(workers) == 2 and min(workers) > 0.3 * max(workers) > 0, row
