"""The saturation sweep's rule for a point that kept up (bench/run.py)."""

from __future__ import annotations

from sfu_bench.run import load_scenarios, within_limits

LIMITS = {"loss_limit": 0.01, "latency_limit_ms": 10.0}


def point(loss: float | None, p50: float | None) -> dict[str, float | None]:
    return {"loss": loss, "latency_ms_p50": p50}


def test_a_point_keeps_up_within_both_limits() -> None:
    assert within_limits(point(0.0, 0.6), LIMITS)
    assert within_limits(point(0.009, 9.9), LIMITS)


def test_loss_or_a_standing_queue_is_saturation() -> None:
    assert not within_limits(point(0.01, 0.6), LIMITS)
    assert not within_limits(point(None, 0.6), LIMITS)  # nothing received
    # No packet lost, but the median packet waited 185 ms in the server's buffer: as
    # the one-process server did at x35 in a run of the two-room sweep.
    assert not within_limits(point(0.0, 185.3), LIMITS)


def test_a_system_without_latency_is_judged_by_its_loss() -> None:
    assert within_limits(point(0.0, None), LIMITS)  # the re-encoding relay
    assert not within_limits(point(0.2, None), LIMITS)


def test_the_scenarios_file_sets_both_limits() -> None:
    _, sweep = load_scenarios()
    assert 0 < sweep["loss_limit"] < 0.05 and 0 < sweep["latency_limit_ms"] <= 50
