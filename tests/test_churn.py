"""Churn soak, bounded (bench/churn.py has the long version): participants come and
go, a third of them abruptly, and the server ends up back where it started."""

from __future__ import annotations

from sfu_bench.churn import soak
from tests.conftest import requires_isolated_network

pytestmark = requires_isolated_network

ROUNDS = 30
KILLED = 4
# Stated bounds for "back where it started" (after a warm-up round).
MAX_EXTRA_FDS = 4
MAX_EXTRA_TASKS = 2
MAX_EXTRA_RSS_MIB = 40


async def test_churn_leaves_nothing_behind() -> None:
    report = await soak(ROUNDS, KILLED)
    before, after = report["before"], report["after"]
    print(f"churn: {report['participants']} participants ({ROUNDS} rounds of 3, one in three "
          f"vanishing; {KILLED} killed processes) in {report['seconds']} s; before {before}; "
          f"after {after}")
    assert report["killed_in_room_before_kill"] == KILLED
    assert after["fds"] - before["fds"] <= MAX_EXTRA_FDS
    assert after["udp_sockets"] <= before["udp_sockets"]
    assert after["tasks"] - before["tasks"] <= MAX_EXTRA_TASKS
    assert (after["rss_kib"] - before["rss_kib"]) / 1024 <= MAX_EXTRA_RSS_MIB
