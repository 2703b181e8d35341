"""Which ICE pair the SFU selects: when several nominated checks succeed, and when the
peer moves its media to another pair.

aioice as controlling agent nominates every pair it checks; two checks in flight
together (the host pair, and the relay pair a browser's own check triggered) both
succeed, and the SFU must select the higher-priority one, as the browser does
(RFC 5245 §8.1.1.2), whichever answered last. As controlled agent the peer's latest
nomination stands: that is how a peer moves to another pair. A controlled peer
(Chrome on the SFU's subscribe connection) moves by sending over another valid pair;
the SFU follows the media there, and its consent checks (RFC 7675) must follow too.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aioice import ice, stun
from aioice.candidate import Candidate, candidate_foundation, candidate_priority

from sfu.transport.ice_pairs import follow, keep_best_nomination

# What a browser that gathers per m-line signals: its host candidate under one, its
# relay under the other (aioice reads only the first m-line's).
REMOTE_SDP = "\r\n".join([
    "v=0", "o=- 0 0 IN IP4 0.0.0.0", "s=-", "t=0 0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 0.0.0.0", "a=mid:0",
    "a=rtpmap:111 opus/48000/2", "a=candidate:1 1 udp 2122260223 10.0.0.2 50000 typ host",
    "m=video 9 UDP/TLS/RTP/SAVPF 96", "c=IN IP4 0.0.0.0", "a=mid:1", "a=rtpmap:96 VP8/90000",
    "a=candidate:2 1 udp 41885439 10.0.0.3 60000 typ relay raddr 10.0.0.2 rport 50000", ""])


def candidate(kind: str, host: str, port: int, priority: int | None = None) -> Candidate:
    return Candidate(foundation=candidate_foundation(kind, "udp", host), component=1,
                     transport="udp", priority=priority or candidate_priority(1, kind),
                     host=host, port=port, type=kind)


def connection_with_pairs(controlling: bool, learned: bool = False
                          ) -> tuple[ice.Connection, ice.CandidatePair, ice.CandidatePair]:
    """A connection with a host pair and a relay pair, both checks in progress (made in
    a running loop, as aioice makes its own). ``learned``: both remote ends known only
    as peer-reflexive, from checks whose PRIORITY ranks the relayed one higher (as
    Chrome's did in tests/test_turn_topologies.py: 1853759999 against 1853759231)."""
    connection = ice.Connection(ice_controlling=controlling)
    keep_best_nomination(connection, lambda: REMOTE_SDP if learned else None)
    protocol = ice.StunProtocol(connection)
    protocol.local_candidate = candidate("host", "10.0.0.1", 7882)
    if learned:
        host = ice.CandidatePair(protocol, candidate("prflx", "10.0.0.2", 50000, 1853759231))
        relay = ice.CandidatePair(protocol, candidate("prflx", "10.0.0.3", 60000, 1853759999))
    else:
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


@pytest.mark.parametrize("learned", [False, True], ids=["signalled", "peer-reflexive"])
@pytest.mark.parametrize("order", ["host-first", "relay-first"])
async def test_controlling_selects_the_best_nominated_pair(order: str, learned: bool) -> None:
    connection, host, relay = connection_with_pairs(controlling=True, learned=learned)
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


async def consent_after_the_direct_path_broke(
        monkeypatch: pytest.MonkeyPatch, followed: bool) -> tuple[bool, list[Any]]:
    """The host pair selected, then only the relay pair answering; the media seen
    from the relay's address (``followed``) or not. Whether aioice's consent loop
    closed the connection, and where it sent its checks, over more rounds than its
    failure limit."""
    monkeypatch.setattr(ice, "CONSENT_INTERVAL", 0.001)
    connection, host, relay = connection_with_pairs(controlling=True)
    succeed(connection, host)
    relay.state = ice.CandidatePair.State.SUCCEEDED  # validated by the peer's own check
    connection.remote_password = "p" * 22
    asked: list[Any] = []
    enough = asyncio.Event()

    async def request(message: Any, addr: Any, **kwargs: Any) -> tuple[Any, Any]:
        asked.append(addr)
        if len(asked) > 3 * ice.CONSENT_FAILURES:
            enough.set()
        if addr == host.remote_addr:
            raise stun.TransactionTimeout()
        return message, addr

    closed = asyncio.Event()

    async def close() -> None:
        closed.set()

    setattr(host.protocol, "request", request)  # noqa: B010 - the one socket of both pairs
    setattr(connection, "close", close)  # noqa: B010
    if followed:
        assert follow(connection, relay.remote_addr) is relay
        assert follow(connection, ("10.0.0.9", 9)) is None  # never validated
        assert connection._nominated[1] is relay
    consent = asyncio.create_task(connection.query_consent())
    try:
        async with asyncio.timeout(10):
            await asyncio.wait([asyncio.ensure_future(enough.wait()),
                                asyncio.ensure_future(closed.wait())],
                               return_when=asyncio.FIRST_COMPLETED)
    finally:
        consent.cancel()
    return closed.is_set(), asked


async def test_consent_follows_the_media_to_a_relay_pair(
        monkeypatch: pytest.MonkeyPatch) -> None:
    closed, asked = await consent_after_the_direct_path_broke(monkeypatch, followed=True)
    assert not closed
    assert set(asked) == {("10.0.0.3", 60000)}


async def test_consent_left_on_the_broken_pair_closes_the_connection(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What following prevents: aioice gives up after CONSENT_FAILURES checks."""
    closed, asked = await consent_after_the_direct_path_broke(monkeypatch, followed=False)
    assert closed
    assert set(asked) == {("10.0.0.2", 50000)} and len(asked) == ice.CONSENT_FAILURES
