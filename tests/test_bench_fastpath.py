"""The forwarding micro-benchmark runs and reports real measurements (not a timed test)."""

from __future__ import annotations

import json

import pytest

from sfu.fastpath import cython_unavailable_reason
from sfu_bench import fastpath


def test_fastpath_bench_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    assert fastpath.main(["--packets", "300", "--repeat", "1"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    systems = {"twin"} | ({"cython", "floor"} if cython_unavailable_reason() is None else set())
    cases = {(r["system"], r["profile"], r["subscribers"]) for r in report["results"]}
    assert cases == {
        (s, p, n) for s in systems for p in fastpath.PROFILES for n in fastpath.SUBSCRIBER_COUNTS
    }
    for result in report["results"]:
        assert result["packets_out"] == 300 * result["subscribers"], result
        assert result["cpu_us_per_packet"] > 0
        assert result["packets_per_second_per_core"] > 0
    if "cython" in systems:
        assert len(report["ratios"]) == len(fastpath.PROFILES) * len(fastpath.SUBSCRIBER_COUNTS)
    assert report["machine"]["cores"] >= 1
