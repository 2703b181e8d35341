"""Data channels (docs/protocol.md, "Data channels"): messages between aiortc
participants and the backend (embedding API), reliable and lossy, to everyone or to
named participants; the size limit, the rate limit, the grant; a flood that leaves the
others' media running. The browser's side is in tests/test_meeting_browser.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiortc import VideoStreamTrack

from sfu import events
from sfu.client import Client, ServerError
from sfu.router.data import DataError, parse_envelope
from sfu.server import Server
from tests.conftest import jwt_config, make_config, requires_isolated_network, running

pytestmark = requires_isolated_network
SECRET = "d" * 32


def url(server: Server) -> str:
    return f"ws://127.0.0.1:{server.port}/ws"


@pytest.fixture
async def room() -> AsyncIterator[tuple[Server, Client, Client, Client]]:
    """alice publishes video with data channels, bob and carol only data."""
    async with running(make_config()) as server:
        clients = [Client(url(server), room="data", name=n) for n in ("alice", "bob", "carol")]
        try:
            for client in clients:
                await client.join()
            alice, bob, carol = clients
            await alice.publish([VideoStreamTrack()], data=True)
            await alice.data_open()
            await bob.open_data()
            await carol.open_data()
            yield server, alice, bob, carol
        finally:
            for client in clients:
                await client.close()


def test_envelopes_are_checked() -> None:
    assert parse_envelope('{"payload": [1, "x"], "to": ["PA_1"], "topic": "t"}', 100).to == (
        "PA_1",)
    cases: list[tuple[str | bytes, str]] = [
        (b'{"payload": 1}', "bad_data"), ("[1]", "bad_data"), ("{", "bad_data"),
        ('{"to": ["a"]}', "bad_data"), ('{"payload": 1, "to": []}', "bad_data"),
        ('{"payload": 1, "to": "a"}', "bad_data"), ('{"payload": 1, "topic": ""}', "bad_data"),
        ('{"payload": "' + "é" * 60 + '"}', "data_too_large"),  # 120 bytes, 60 characters
    ]
    for bad, code in cases:
        with pytest.raises(DataError) as info:
            parse_envelope(bad, 100)
        assert info.value.code == code, bad


async def test_messages_reach_the_others_and_the_backend_in_order(
        room: tuple[Server, Client, Client, Client]) -> None:
    server, alice, bob, carol = room
    heard: list[events.Event] = []

    async def listen(event: events.Event) -> None:
        if isinstance(event, events.DataReceived):
            heard.append(event)

    server.events.add_listener(listen)
    for n in range(50):  # reliable: ordered, complete
        await alice.send_data({"n": n}, topic="chat")
    for client in (bob, carol):
        got = [await client.next_data() for _ in range(50)]
        assert [m["payload"]["n"] for m in got] == list(range(50))
        assert {(m["from"], m["topic"], m["reliable"]) for m in got} == {
            (alice.participant_id, "chat", True)}
    assert alice.data.empty()  # not echoed to the sender
    await wait_until(lambda: len(heard) == 50)
    assert {(e.participant, e.topic, e.reliable) for e in heard} == {  # type: ignore[attr-defined]
        (alice.participant_id, "chat", True)}

    # To one participant, on the lossy channel (loopback loses nothing).
    assert bob.participant_id is not None
    await carol.send_data("psst", to=[bob.participant_id], reliable=False)
    message = await bob.next_data()
    assert (message["from"], message["payload"], message["reliable"]) == (
        carol.participant_id, "psst", False)
    await asyncio.sleep(0.3)  # what would have reached alice by now
    assert alice.data.empty()

    # From the backend: `from` is null; to everyone, or named ones.
    assert server.send_data("data", {"notice": 1}) == 3
    for client in (alice, bob, carol):
        assert (await client.next_data())["from"] is None
    assert server.send_data("data", "only alice", to=[alice.participant_id or ""]) == 1
    assert (await alice.next_data())["payload"] == "only alice"


async def test_a_sender_cannot_pose_as_another(
        room: tuple[Server, Client, Client, Client]) -> None:
    _, alice, bob, _ = room
    alice.send_raw_data('{"payload": 1, "from": "PA_someone_else"}')
    assert (await bob.next_data())["from"] == alice.participant_id


async def test_too_large_and_malformed_messages_are_refused_with_an_error(
        room: tuple[Server, Client, Client, Client]) -> None:
    server, alice, bob, _ = room
    limit = server.config.limits.max_data_message_bytes
    await alice.send_data("x" * limit)
    error = await alice.next_event("error")
    assert error["code"] == "data_too_large" and str(limit) in error["message"]
    alice.send_raw_data(b"\x00binary")
    assert (await alice.next_event("error"))["code"] == "bad_data"
    alice.send_raw_data("not json")
    assert (await alice.next_event("error"))["code"] == "bad_data"
    # Just under the limit passes.
    envelope_overhead = len('{"payload":""}')
    await alice.send_data("y" * (limit - envelope_overhead))
    assert len((await bob.next_data())["payload"]) == limit - envelope_overhead
    assert bob.data.empty()  # none of the refused ones came through
    outcomes = server.stats.data_messages
    assert (outcomes["data_too_large"], outcomes["bad_data"], outcomes["relayed"]) == (1, 2, 1)
    async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{server.port}/metrics") as response:
        metrics = await response.text()
    for outcome, count in (("data_too_large", 1), ("bad_data", 2), ("relayed", 1)):
        assert f'sfu_data_messages_total{{outcome="{outcome}"}} {count}.0' in metrics


async def test_a_flood_is_rate_limited_and_the_others_media_goes_on() -> None:
    async with running(make_config()) as server:
        limits = server.config.limits
        alice, bob, flooder = (Client(url(server), room="flood", name=n)
                               for n in ("alice", "bob", "flooder"))
        try:
            for client in (alice, bob, flooder):
                await client.join()
            await alice.publish([VideoStreamTrack()])
            await bob.open_data()
            await flooder.open_data()
            _, track = await bob.next_track()
            await asyncio.wait_for(track.recv(), 10)

            sent, outcomes = 2000, server.stats.data_messages
            started = time.monotonic()
            for n in range(sent):  # as fast as the (reliable: all arrive) channel takes them
                await flooder.send_data(n)
            frames = 0
            while outcomes["relayed"] + outcomes["data_rate_limited"] < sent:
                await asyncio.wait_for(track.recv(), 2)
                frames += 1
            elapsed = time.monotonic() - started
            # bob still got video at about aiortc's 30 fps: 2 s-bounded waits above, and
            # at least half the frames the time allowed.
            assert frames >= 30 * elapsed / 2, (frames, elapsed)
            allowed = limits.data_message_burst + limits.data_messages_per_second * elapsed
            assert 0 < outcomes["relayed"] <= allowed + 1
            # bob gets what passed, in order: the burst, then what the rate let through.
            await wait_until(lambda: bob.data.qsize() == outcomes["relayed"])
            got = [m["payload"] for m in drain(bob.data)]
            assert got[:limits.data_message_burst] == list(range(limits.data_message_burst))
            assert got == sorted(set(got))
            error = await flooder.next_event("error")
            assert error["code"] == "data_rate_limited"
            # Told about once a second, not once per dropped message.
            await asyncio.sleep(0.2)
            notices = [e for e in drain(flooder.events) if e.get("code") == "data_rate_limited"]
            assert len(notices) <= elapsed + 1
        finally:
            for client in (alice, bob, flooder):
                await client.close()


async def test_the_data_grant() -> None:
    async with running(jwt_config(SECRET)) as server:
        muted = Client(url(server), room="g", name="m", token=server.mint_token(
            "g", "muted", can_publish=False, can_publish_data=False))
        other = Client(url(server), room="g", name="o", token=server.mint_token("g", "other"))
        try:
            joined = await muted.join()
            assert joined["data_limits"] == {
                "max_message_bytes": server.config.limits.max_data_message_bytes,
                "messages_per_second": server.config.limits.data_messages_per_second}
            await other.join()
            # Without the publish grant, an offer of data channels alone is taken...
            await muted.open_data()
            await other.open_data()
            await other.send_data("to you")
            assert (await muted.next_data())["payload"] == "to you"  # receiving is free
            # ...but sending needs the data grant.
            await muted.send_data("hello")
            assert (await muted.next_event("error"))["code"] == "forbidden"
            assert other.data.empty()
            server.update_permissions("g", muted.participant_id or "", can_publish_data=True)
            await muted.send_data("now")
            assert (await other.next_data())["payload"] == "now"
            # Media still needs the publish grant.
            with pytest.raises(ServerError, match="forbidden"):
                await muted.publish([VideoStreamTrack()])
        finally:
            await muted.close()
            await other.close()


def drain(queue: asyncio.Queue[Any]) -> list[Any]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


async def wait_until(condition: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)
