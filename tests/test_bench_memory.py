"""A short run of bench/memory.py (2 participants): every step is measured and adds
up — the imports grow the interpreter, connections grow the server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import requires_isolated_network

pytestmark = requires_isolated_network

ROOT = Path(__file__).parent.parent


def test_memory_bench_breaks_the_rss_down() -> None:
    done = subprocess.run([sys.executable, "-m", "bench.memory", "--participants", "2",
                           "--settle", "0.3", "--json", "--no-netns"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    print(done.stderr[-3000:])
    assert done.returncode == 0
    report = json.loads(done.stdout)
    steps = report["imports"]
    assert [s["step"] for s in steps][:2] == ["python", "asyncio"]
    assert not [s for s in steps if "error" in s], steps
    added = {s["step"]: s["added_mib"] for s in steps}
    assert all(mib >= 0 for mib in added.values()), steps
    assert added["av"] > 1 and added["aiortc"] > 1, steps  # shared libraries mapped in
    # The server is at least what it imports, and two connections cost something.
    assert report["idle_server_rss_mib"] >= steps[-1]["rss_mib"] - 1
    assert report["participants_alone_rss_mib"] > report["idle_server_rss_mib"]
    assert report["per_participant_kib"] > 0
    assert report["subscriptions"] == 4
    assert report["tree"]["path"] == str(ROOT.resolve())
