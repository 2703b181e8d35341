"""The room-rate floor (bench/roomfloor.py) forwards what a room's forwarder would,
protected for each subscriber, and reports its own CPU (a smoke run, not a timed test)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sfu.fastpath import cython_unavailable_reason

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(cython_unavailable_reason() is not None,
                    reason=f"the floor lives in the extension: {cython_unavailable_reason()}")
def test_room_floor_forwards_every_packet_to_every_subscriber() -> None:
    from sfu_bench import roomfloor

    scenarios, _ = roomfloor.load_scenarios()
    result = roomfloor.run(scenarios["1x9"], 1.0, "127.0.0.1")
    assert result["floor_received"] == result["sent_packets"] > 100
    # One publisher, nine listeners: every packet to each of them, none lost on loopback.
    assert result["forwarded_packets"] == 9 * result["sent_packets"]
    assert result["received_packets"] == result["forwarded_packets"]
    assert result["verified_samples"] == 9  # each listener's first packet, its own key
    assert result["floor_cpu_us_per_forwarded_packet"] > 0


def test_loopback_send_program_measures_every_case(tmp_path: Path) -> None:
    """bench/loopback_send.c, which the README quotes, builds and runs."""
    binary = tmp_path / "loopback_send"
    subprocess.run(["cc", "-O2", "-Wall", "-Werror", "-o", str(binary),
                    str(ROOT / "bench" / "loopback_send.c")], check=True)
    out = subprocess.run([str(binary), "2000", "1"], check=True, capture_output=True,
                         text=True, timeout=60).stdout.splitlines()
    rows = {line.split()[0]: [float(x) for x in line.split()[1:]] for line in out[1:]}
    assert set(rows) == {"sendto", "connected", "sendmmsg-4", "sendmmsg-16"}
    for median, low, high, sent_percent in rows.values():
        assert 0 < low <= median <= high
        assert sent_percent == 100.0
