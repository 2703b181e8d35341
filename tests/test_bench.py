"""A short run of `sfu bench` (2x2, a few seconds per system): the report's shape, and
that every figure is a real measurement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sfu_bench.peer import c_receive_available
from sfu_bench.systems import all_systems
from tests.conftest import requires_isolated_network

pytestmark = requires_isolated_network

ROOT = Path(__file__).parent.parent


def test_bench_smoke(tmp_path: Path) -> None:
    report_path = tmp_path / "bench.json"
    command = [sys.executable, "-m", "sfu", "bench", "--scenarios", "2x2", "--seconds", "2",
               "--sweep-seconds", "2", "--max-rate", "4", "--json", str(report_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    print(done.stdout[-3000:], done.stderr[-2000:])
    assert done.returncode == 0
    report = json.loads(report_path.read_text())
    assert Path(report_path.with_suffix(".png")).stat().st_size > 10_000
    assert report["machine"]["cores"] >= 1 and report["machine"]["cpu"] is not None
    systems = set(all_systems())
    ran = {r["system"] for r in report["results"]}
    # Every system either ran or says why not; none fails silently.
    assert ran | set(report["skipped"]) | {f["system"] for f in report["failures"]} == systems
    assert {"sfu-cython", "sfu-python"} <= ran
    assert all(reason for reason in report["skipped"].values())
    for row in report["results"]:
        assert row["scenario"] == "2x2"
        assert row["forwarded_packets"] > 0 and row["forwarded_pps"] > 100, row
        assert row["server_cpu_seconds"] > 0 and row["server_rss_mib"] > 10, row
        assert row["generator_cpu_seconds"] > 0, row
        if c_receive_available():  # subscribers read in C (bench/_receiver.pyx)
            assert row["generator_receive_path"] == "c", row
        # A smoke test, not a performance test: the re-encoding relay may drop more.
        assert 0 <= row["loss"] < (0.5 if row["system"] == "mediarelay" else 0.05), row
        if row["system"].startswith("sfu"):
            assert row["mapped_streams"] == row["streams"] == 4, row
            assert row["verified_samples"] > 0 and row["mismatched_samples"] == 0, row
            assert 0 < row["latency_ms_p50"] <= row["latency_ms_p99"] < 100, row
    for name in ("sfu-cython", "sfu-python"):
        sweep = report["sweep"][name]
        assert [p["rate"] for p in sweep["points"]] == [1, 4], sweep
        for point in sweep["points"]:  # above real time the sockets are polled, in C
            if c_receive_available():
                assert point["generator_receive_path"] == (
                    "c" if point["rate"] == 1 else "c-polled"), point
            assert point["loss"] < 0.05 and 0 < point["latency_ms_p50"] < 100, point
        assert sweep["saturation_forwarded_pps"] > 0
