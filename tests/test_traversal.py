"""Traversal statistics (sfu/diagnostics/traversal.py): peer connections counted under
the NAT type a client reported at join, in the admin API, room_info and /metrics.
tests/test_doctor.py has clients behind real NATs; tests/test_turn_topologies.py a
relayed browser."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiortc import VideoStreamTrack
from prometheus_client.parser import text_string_to_metric_families

from sfu.client import Client, ServerError
from sfu.diagnostics.nat import rfc3489_name
from sfu.diagnostics.traversal import NAT_TYPES, TraversalStats, nat_type_of
from sfu.server import Server
from tests.conftest import make_config, requires_isolated_network, running

BUCKETS = (0.1, 1.0, 10.0)


def test_outcomes_by_nat_type_and_connect_time_percentiles() -> None:
    stats = TraversalStats(BUCKETS)
    for _ in range(3):
        stats.attempted("symmetric")
    stats.connected("symmetric", "host", "prflx", 0.05)
    stats.connected("symmetric", "host", "relay", 0.5)
    stats.failed("symmetric")
    stats.attempted("open")
    stats.connected("open", "host", "host", 2.0)
    table = stats.table()
    assert table["symmetric"] | {"connect_ms": None} == {
        "attempted": 3, "direct": 1, "relayed": 1, "failed": 1, "relayed_share": 0.5,
        "connect_ms": None}
    p = table["symmetric"]["connect_ms"]
    assert p["p50"] == pytest.approx(275.0) and 275 < p["p90"] <= p["p99"] <= 500
    assert table["open"]["connect_ms"] == {"p50": 2000.0, "p90": 2000.0, "p99": 2000.0}
    assert table["open"]["relayed_share"] == 0.0
    # Cumulative buckets, as Prometheus histograms have them.
    buckets, connected, seconds = stats.histograms()["symmetric"]
    assert (buckets, connected) == ([1, 2, 2], 2) and seconds == pytest.approx(0.55)
    assert stats.counts()[("open", "failed")] == 0


def test_the_nat_tests_names_are_join_values() -> None:
    """Every verdict sfu doctor can give is a value `join.nat_type` accepts."""
    names = {rfc3489_name(nat, m, f) for nat in (False, True)
             for m in ("endpoint-independent", "address-dependent")
             for f in ("endpoint-independent", "address-dependent",
                       "address-and-port-dependent")}
    assert {nat_type_of(name) for name in names} <= set(NAT_TYPES)
    assert len(names) == 6


async def metrics(server: Server) -> dict[tuple[str, str], float]:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{server.port}/metrics") as response:
        text = await response.text()
    return {(s.labels["nat_type"], s.labels["outcome"]): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "sfu_traversal_connections_total"}


@requires_isolated_network
async def test_connections_count_under_the_reported_nat_type() -> None:
    async with running(make_config()) as server:
        url = f"ws://127.0.0.1:{server.port}/ws"
        alice = Client(url, room="t", name="alice", nat_type="port_restricted_cone")
        bob = Client(url, room="t", name="bob")  # says nothing: "unknown"
        try:
            await alice.join()
            await bob.join()
            await alice.publish([VideoStreamTrack()])
            await bob.publish([VideoStreamTrack()])
            for client in (alice, bob):
                _, track = await client.next_track()
                await asyncio.wait_for(track.recv(), 10)
            deadline = time.monotonic() + 10  # both connections of both: connected
            while sum(row["direct"] for row in server.traversal().values()) < 4:
                assert time.monotonic() < deadline, server.traversal()
                await asyncio.sleep(0.05)
            table = server.traversal()
            assert set(table) == {"port_restricted_cone", "unknown"}
            for row in table.values():
                assert (row["attempted"], row["direct"], row["relayed"], row["failed"]) == (
                    2, 2, 0, 0), table
                assert 0 < row["connect_ms"]["p50"] <= row["connect_ms"]["p99"] < 20_000
            async with aiohttp.ClientSession() as session, session.get(
                    f"http://127.0.0.1:{server.port}/admin/traversal") as response:
                assert (await response.json())["nat_types"] == table
            assert (await metrics(server))[("port_restricted_cone", "direct")] == 2
            [room] = [server.room_info("t")]
            assert {p["name"]: p["nat_type"] for p in room["participants"]} == {
                "alice": "port_restricted_cone", "bob": "unknown"}
        finally:
            await alice.close()
            await bob.close()


@requires_isolated_network
async def test_a_nat_type_outside_the_vocabulary_is_refused() -> None:
    async with running(make_config()) as server:
        client = Client(f"ws://127.0.0.1:{server.port}/ws", room="t", name="x",
                        nat_type="carrier grade")
        try:
            with pytest.raises(ServerError, match=r"bad_field.*nat_type"):
                await client.join()
        finally:
            await client.close()
        assert server.traversal() == {}
