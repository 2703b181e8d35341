"""A pool of TURN servers (sfu/transport/turn_pool.py): three real coturns, each checked
with a real allocation; one stopped leaves the pool and joiners stop getting it, and it
comes back when restarted; joiners get the least loaded first."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sfu.client import Client, pattern_track
from sfu.config import Config, ConfigError, TurnConfig
from sfu.server import Server
from sfu.transport.coturn import Coturn
from sfu.transport.turn_pool import CHECK_TIMEOUT_S, TurnPool, parse_server
from tests.conftest import make_config, requires_isolated_network, running

SECRET = "p" * 24
HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")  # three servers: loopback is a /8
INTERVAL_S = 0.5


def test_least_loaded_first_then_taking_turns() -> None:
    pool = TurnPool(TurnConfig(host="10.0.0.1", secret=SECRET,
                               servers=["10.0.0.2:3479", "10.0.0.3:3480:5350"]))
    assert [(s.host, s.port, s.tls_port) for s in pool.servers] == [
        ("10.0.0.1", 3478, 5349), ("10.0.0.2", 3479, 5349), ("10.0.0.3", 3480, 5350)]
    firsts = [pool.ice_servers("x")[0]["urls"][0] for _ in range(6)]
    assert Counter(firsts) == {f"turn:10.0.0.{i}:{3477 + i}?transport=udp": 2
                               for i in (1, 2, 3)}
    # A relayed connection through a server makes it the last choice; its end, not.
    relay = pool.relay_started("10.0.0.1")
    assert relay is not None and pool.ordered()[-1] is relay
    assert pool.relay_started("192.0.2.9") is None  # not one of ours
    TurnPool.relay_ended(relay)
    assert relay.relayed == 0
    pool.servers[1].healthy = False
    assert [s.host for s in pool.ordered()] == ["10.0.0.1", "10.0.0.3"]
    assert len(pool.ice_servers("x")) == 2


def test_servers_are_checked_in_the_config() -> None:
    with pytest.raises(ValueError):
        parse_server("10.0.0.1:x", TurnConfig())
    for bad in (["10.0.0.2:"], ["host:1:2:3"], ["10.0.0.2:70000"]):
        config = Config()
        config.turn = TurnConfig(host="10.0.0.1", secret=SECRET, servers=bad)
        with pytest.raises(ConfigError, match=r"turn\.servers"):
            config.validate()


def coturn(host: str, index: int) -> Coturn:
    return Coturn(TurnConfig(host=host, tls_port=0, secret=SECRET,
                             relay_port_min=51000 + 100 * index,
                             relay_port_max=51099 + 100 * index))


@contextlib.asynccontextmanager
async def pool_of_three() -> AsyncIterator[tuple[Server, list[Coturn]]]:
    """Three running coturns and a server whose pool holds them, each checked once."""
    coturns = [coturn(host, i) for i, host in enumerate(HOSTS)]
    config: Config = make_config()
    config.turn = TurnConfig(host=HOSTS[0], tls_port=0, secret=SECRET,
                             servers=list(HOSTS[1:]), health_interval_s=INTERVAL_S)
    try:
        for turnserver in coturns:
            await asyncio.to_thread(turnserver.start)
        async with running(config) as server:
            await wait_until(lambda: all(s.checks["ok"] for s in server.turn_pool.servers),
                             10, "every coturn passes a first allocation check")
            yield server, coturns
    finally:
        for turnserver in coturns:
            turnserver.stop()


async def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> float:
    """Seconds until ``condition`` holds; fails after ``seconds``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, what
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def joined_servers(server: Server, name: str) -> list[str]:
    client = Client(f"ws://127.0.0.1:{server.port}/ws", room="pool", name=name)
    try:
        joined = await client.join()
    finally:
        await client.close()
    return [s["urls"][0].split(":")[1] for s in joined["ice_servers"]]


async def server_up(server: Server) -> dict[str, float]:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{server.port}/metrics") as response:
        text = await response.text()
    return {s.labels["server"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "sfu_turn_server_up"}


@requires_isolated_network
@pytest.mark.skipif(shutil.which("turnserver", path="/usr/bin:/usr/sbin") is None,
                    reason="needs coturn (scripts/install.sh --test)")
async def test_a_stopped_turn_server_leaves_the_pool_and_comes_back() -> None:
    async with pool_of_three() as (server, coturns):
        pool = server.turn_pool
        # Six joiners: each gets the three, a different one first in turn.
        lists = [await joined_servers(server, f"j{i}") for i in range(6)]
        assert all(sorted(servers) == sorted(HOSTS) for servers in lists), lists
        assert Counter(servers[0] for servers in lists) == dict.fromkeys(HOSTS, 2)

        await asyncio.to_thread(coturns[1].stop)
        # One check period, and a check that times out.
        bound = INTERVAL_S + CHECK_TIMEOUT_S + 2
        left = await wait_until(lambda: not pool.servers[1].healthy, bound,
                                "the stopped coturn leaves the pool")
        print(f"\nstopped coturn out of the pool after {left:.1f} s (bound {bound} s)")
        assert sorted(await joined_servers(server, "after")) == [HOSTS[0], HOSTS[2]]
        assert (await server_up(server))[f"{HOSTS[1]}:3478"] == 0

        coturns[1] = coturn(HOSTS[1], 1)  # stopped with the others on the way out
        await asyncio.to_thread(coturns[1].start)
        back = await wait_until(lambda: pool.servers[1].healthy, bound,
                                "the restarted coturn is back")
        print(f"restarted coturn back after {back:.1f} s")
        assert sorted(await joined_servers(server, "back")) == sorted(HOSTS)
        assert set((await server_up(server)).values()) == {1}


@requires_isolated_network
@pytest.mark.skipif(shutil.which("turnserver", path="/usr/bin:/usr/sbin") is None,
                    reason="needs coturn (scripts/install.sh --test)")
async def test_relayed_connections_spread_over_the_pool() -> None:
    """Four relay-only participants (aiortc takes the first TURN server it is given)
    publishing video to each other: their eight connections are relayed, counted
    against the servers they went through, and spread over all three."""
    clients: list[Client] = []
    async with pool_of_three() as (server, _):
        pool = server.turn_pool
        try:
            for i in range(4):
                client = Client(f"ws://127.0.0.1:{server.port}/ws", room="relay",
                                name=f"r{i}", relay_only=True)
                clients.append(client)
                await client.join()
                await client.publish([pattern_track()])
                # The next joiner sees this one's connections in the load.
                expected = 1 + 2 * i  # its publish connection, and the others' so far
                await wait_until(lambda n=expected: sum(  # type: ignore[misc]
                    s.relayed for s in pool.servers) >= n, 20, "its connections relayed")
            for client in clients:
                _, track = await client.next_track(20)
                await asyncio.wait_for(track.recv(), 20)
            await wait_until(lambda: sum(s.relayed for s in pool.servers) == 8, 20,
                             "all eight connections relayed")
            load = {s.host: s.relayed for s in pool.servers}
            print("\nrelayed connections per TURN server:", load)
            assert all(n >= 2 for n in load.values()) and max(load.values()) <= 4, load
            traversal = server.traversal()["unknown"]
            assert (traversal["relayed"], traversal["direct"]) == (8, 0), traversal
        finally:
            for client in clients:
                await client.close()
