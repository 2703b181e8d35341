"""A short run of bench/idle.py (one tree: this checkout; 2 participants, 2 s windows): it
measures a positive server CPU figure, and nothing is forwarded while every track is
muted server-side, though the same counter counts hundreds of packets before the mute."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import requires_isolated_network

pytestmark = requires_isolated_network

ROOT = Path(__file__).parent.parent
PARTICIPANTS = 2


def check_report(report: dict[str, Any], participants: int) -> None:
    """What a run of bench/idle.py with --unmuted must show (also usable on a report
    made by hand, e.g. against a tree whose mute is broken: it must fail there)."""
    assert not report["failures"], report["failures"]
    [run] = report["runs"]
    assert run["muted_tracks"] == 2 * participants, run
    unmuted, muted = run["unmuted"], run["muted"]
    # Media flowed before the mute: 2 subscribers × (50 audio + 10 video frames/s) × 2 s.
    assert unmuted["forwarded_packets_total"] > 100, unmuted
    # ... and none while muted (a stray retransmission at most).
    assert run["forwarding_stopped"], run
    assert muted["forwarded_packets_total"] <= 2, muted
    for window in (unmuted, muted):
        assert window["seconds"] >= 2
        assert window["server_cpu_seconds"] > 0, window
        assert 0 < window["cpu_seconds_per_second"] < 2, window
        assert window["cpu_seconds_per_second_per_participant"] == pytest.approx(
            window["cpu_seconds_per_second"] / participants, rel=0.01, abs=1e-5)
    [tree] = report["trees"]
    assert tree["path"] == str(ROOT.resolve())
    summary = tree["muted"]
    assert summary["rounds"] == 1
    assert summary["cpu_seconds_per_second_median"] == muted["cpu_seconds_per_second"] > 0
    assert summary["forwarded_packets_max"] <= 2


def test_idle_bench_measures_a_muted_room() -> None:
    command = [sys.executable, "-m", "sfu_bench.idle", "--tree", str(ROOT),
               "--participants", str(PARTICIPANTS), "--seconds", "2", "--rounds", "1",
               "--settle", "1", "--unmuted", "--forwarder", "auto", "--json"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    print(done.stderr[-3000:])
    assert done.returncode == 0
    report = json.loads(done.stdout)
    check_report(report, PARTICIPANTS)
    assert report["settings"]["participants"] == PARTICIPANTS
