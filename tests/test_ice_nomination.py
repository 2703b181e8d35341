"""Which ICE pair the SFU selects when several nominated checks succeed.

aioice as controlling agent nominates every pair it checks; two checks in flight
together (the host pair, and the relay pair a browser's own check triggered) both
succeed, and the SFU must select the higher-priority one, as the browser does
(RFC 5245 §8.1.1.2), whichever answered last. As controlled agent the peer's latest
nomination stands: that is how a peer moves to another pair.
"""

from __future__ import annotations

import pytest
from aioice import ice
from aioice.candidate import Candidate, candidate_foundation, candidate_priority

from sfu.transport.internals import keep_best_nomination


def candidate(kind: str, host: str, port: int) -> Candidate:
    return Candidate(foundation=candidate_foundation(kind, "udp", host), component=1,
                     transport="udp", priority=candidate_priority(1, kind), host=host,
                     port=port, type=kind)


def connection_with_pairs(controlling: bool) -> tuple[ice.Connection, ice.CandidatePair,
                                                       ice.CandidatePair]:
    """A connection with a host pair and a relay pair, both checks in progress (made in
    a running loop, as aioice makes its own)."""
    connection = ice.Connection(ice_controlling=controlling)
    keep_best_nomination(connection)
    protocol = ice.StunProtocol(connection)
    protocol.local_candidate = candidate("host", "10.0.0.1", 7882)
    host = ice.CandidatePair(protocol, candidate("host", "10.0.0.2", 50000))
    relay = ice.CandidatePair(protocol, candidate("relay", "10.0.0.3", 60000))
    for pair in (host, relay):
        pair.state = ice.CandidatePair.State.IN_PROGRESS
        connection._check_list.append(pair)
    return connection, host, relay


def succeed(connection: ice.Connection, pair: ice.CandidatePair) -> None:
    """What aioice's check_start does when a nominating check is answered."""
    pair.nominated = True
    connection.check_state(pair, ice.CandidatePair.State.SUCCEEDED)
    connection.check_complete(pair)


@pytest.mark.parametrize("order", ["host-first", "relay-first"])
async def test_controlling_selects_the_best_nominated_pair(order: str) -> None:
    connection, host, relay = connection_with_pairs(controlling=True)
    for pair in ((host, relay) if order == "host-first" else (relay, host)):
        succeed(connection, pair)
    assert connection._nominated[1] is host


async def test_controlling_takes_a_lower_pair_when_the_best_has_failed() -> None:
    connection, host, relay = connection_with_pairs(controlling=True)
    succeed(connection, host)
    connection.check_state(host, ice.CandidatePair.State.FAILED)
    succeed(connection, relay)
    assert connection._nominated[1] is relay


async def test_controlled_follows_the_peers_latest_nomination() -> None:
    connection, host, relay = connection_with_pairs(controlling=False)
    succeed(connection, host)
    succeed(connection, relay)
    assert connection._nominated[1] is relay
