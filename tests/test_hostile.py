"""Hostile input to a live server while two other participants' media flows."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgpack
import orjson
import pytest
from aiortc import VideoStreamTrack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sfu.client import Client
from sfu.control.schema import SCHEMA
from sfu.server import Server
from tests.conftest import make_config, requires_isolated_network

pytestmark = requires_isolated_network


@dataclass
class Call:
    server: Server
    alice: Client
    bob: Client
    frames: list[int]  # video frames bob decoded so far (one counter, shared)


@pytest.fixture
async def call(request: pytest.FixtureRequest) -> AsyncIterator[Call]:
    config = make_config(port_per_connection=getattr(request, "param", False))
    config.limits.messages_per_second = 10_000  # the fuzzer is not testing the rate limit
    config.limits.message_burst = 10_000
    server = Server(config)
    await server.start()
    url = f"ws://127.0.0.1:{server.port}/ws"
    alice = Client(url, room="hostile", name="alice")
    bob = Client(url, room="hostile", name="bob")
    await alice.join()
    await bob.join()
    await alice.publish([VideoStreamTrack()])
    _, track = await bob.next_track()
    frames = [0]

    async def count() -> None:
        while True:
            await track.recv()
            frames[0] += 1

    counter = asyncio.create_task(count())
    async with asyncio.timeout(10):  # media flows: every connection is up
        while frames[0] < 3:
            await asyncio.sleep(0.05)
    yield Call(server, alice, bob, frames)
    counter.cancel()
    await alice.close()
    await bob.close()
    await server.stop()


async def frames_keep_coming(call: Call, seconds: float = 1.0) -> int:
    before = call.frames[0]
    await asyncio.sleep(seconds)
    return call.frames[0] - before


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
messages = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"type": st.sampled_from([*sorted(SCHEMA), "nope"])},
        optional={k: json_values for k in ("room", "name", "sdp", "tracks", "pc", "candidate",
                                            "token", "id")},
    ),
)
frames_strategy = st.one_of(
    messages.map(lambda m: ("json", m)),
    messages.map(lambda m: ("msgpack", m)),
    st.binary(max_size=300).map(lambda b: ("bytes", b)),
    st.text(max_size=300).map(lambda t: ("text", t)),
)
ALLOWED_REPLIES = {"error", "pong", "joined", "left", "offer", "answer", "participant_joined",
                   "participant_left", "track_published", "track_unpublished"}


def hypothesis_frames(count: int) -> list[tuple[str, Any]]:
    """Frames drawn by Hypothesis. Drawn up front: the server under attack lives in this
    test's event loop, which a nested Hypothesis test could not share."""
    drawn: list[tuple[str, Any]] = []

    @settings(max_examples=count, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(frame=frames_strategy)
    def collect(frame: tuple[str, Any]) -> None:
        drawn.append(frame)

    collect()
    return drawn


async def test_fuzzed_control_frames_hurt_nobody(call: Call) -> None:
    frames = hypothesis_frames(600)
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(f"http://127.0.0.1:{call.server.port}/ws")
    replies: list[str] = []
    before = call.frames[0]
    for kind, value in frames:
        if kind == "json":
            await ws.send_str(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode())
        elif kind == "msgpack":
            await ws.send_bytes(msgpack.packb(value))
        elif kind == "bytes":
            await ws.send_bytes(value)
        else:
            await ws.send_str(value)
        while True:  # take what has arrived so far
            try:
                reply = await ws.receive(timeout=0.005)
            except TimeoutError:
                break
            assert reply.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), reply
            data = reply.data
            message = orjson.loads(data) if isinstance(data, str) else msgpack.unpackb(data)
            replies.append(message["type"])
    during = call.frames[0] - before
    print(f"{len(frames)} fuzzed frames; replies: "
          f"{ {t: replies.count(t) for t in set(replies)} }; bob decoded {during} frames meanwhile")
    assert set(replies) <= ALLOWED_REPLIES
    assert replies.count("error") > len(frames) // 2
    assert not ws.closed
    assert during > 0
    assert await frames_keep_coming(call) >= 10  # still ~30 fps afterwards
    names = [link.participant.name for link in call.server.participants.values()]
    assert len([name for name in names if name in ("alice", "bob")]) == 2
    await ws.close()
    await session.close()


def server_media_port(call: Call) -> int:
    peer = call.server.participants[call.alice.participant_id or ""]
    assert peer.publish is not None
    sdp = peer.publish.pc.localDescription.sdp
    line = next(x for x in sdp.splitlines() if x.startswith("a=candidate:"))
    return int(line.split()[5])


@pytest.mark.parametrize("call", [False, True], indirect=True,
                         ids=["one-port", "port-per-connection"])
async def test_datagrams_from_unvalidated_addresses_are_dropped(call: Call) -> None:
    """On the one UDP port, the socket knows no connection of theirs; on a port of a
    connection's own, the connection knows it did not validate them."""
    port = server_media_port(call)
    peer = call.server.participants[call.alice.participant_id or ""]
    assert peer.publish is not None
    counters_before = call.server.forwarder.counters()
    intruder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    intruder.bind(("127.0.0.1", 0))
    rtp_like = bytes([0x80, 96, 0, 1]) + bytes(8) + bytes(100)
    for i in range(200):
        intruder.sendto(rtp_like if i % 2 else bytes([0x81, 0xC8]) + bytes(30),
                        ("127.0.0.1", port))
    intruder.close()
    assert await frames_keep_coming(call) >= 10
    drops = call.server.stats.transport_drops
    if call.server.ctx.udp_port:
        assert (drops["unknown_source"], peer.publish.drops_unvalidated_source) == (200, 0)
    else:
        assert peer.publish.drops_unvalidated_source == 200
        assert drops["unvalidated_source"] == 200
    counters_after = call.server.forwarder.counters()
    # None of them reached the forwarder: no SRTP failures, nothing new accepted from them.
    assert counters_after["drop_srtp_fail"] == counters_before["drop_srtp_fail"]


async def test_ice_consent_failure_removes_the_participant(
    call: Call, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The laptop lid closes but the WebSocket lingers (say, behind a proxy): ICE
    consent (RFC 7675) expires, the client is told (it may `restart`), and when no
    restart comes within liveness.restart_grace_s the server removes it anyway."""
    import aioice.ice

    # aioice checks consent every 5 s and gives up after 6 failures: shorten both.
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.2)
    monkeypatch.setattr(aioice.ice, "CONSENT_FAILURES", 3)
    alice_id = call.alice.participant_id or ""
    peer = call.server.participants[alice_id]
    assert peer.publish is not None and peer.control is not None
    # Restart the server's consent loop for alice so it runs on the short interval.
    connection = peer.publish.pc.getTransceivers()[0].receiver.transport.transport._connection
    assert connection._query_consent_task is not None
    connection._query_consent_task.cancel()
    connection._query_consent_task = asyncio.create_task(connection.query_consent())
    # Alice's machine goes silent: her UDP sockets vanish, no DTLS goodbye.
    assert call.alice.publish_pc is not None
    client = call.alice.publish_pc.getTransceivers()[0].receiver.transport.transport._connection
    for protocol in client._protocols:
        protocol.transport.abort()
    call.server.config.liveness.restart_grace_s = 1
    failed = await call.alice.next_event("connection_failed", timeout=15)
    assert failed["pc"] == "publish"
    assert alice_id in call.server.participants  # within the grace period
    event = await call.bob.next_event("participant_left", timeout=5)
    assert event["participant"] == alice_id
    assert alice_id not in call.server.participants
