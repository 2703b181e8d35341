"""The event bus and webhooks: order, bounded queues, signing, retries."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

from sfu import events
from sfu.config import WebhooksConfig
from sfu.webhooks import Webhooks, verify


def signature(secret: str, body: bytes) -> str:
    """X-Sfu-Signature as docs/embedding.md specifies it, computed here, not by sfu:
    "sha256=" and the hex HMAC-SHA256 of the body keyed with the secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def test_listeners_get_every_event_in_order() -> None:
    bus = events.EventBus()
    heard: list[str] = []

    async def listener(event: events.Event) -> None:
        heard.append(event.room)

    bus.add_listener(listener)
    for i in range(50):
        bus.publish(events.RoomStarted(f"r{i}"))
    await asyncio.sleep(0.05)
    assert heard == [f"r{i}" for i in range(50)]
    await bus.close()


async def test_slow_listener_loses_oldest_and_blocks_nobody() -> None:
    bus = events.EventBus(capacity=5)
    gate = asyncio.Event()
    heard: list[str] = []

    async def slow(event: events.Event) -> None:
        await gate.wait()
        heard.append(event.room)

    subscription = bus.add_listener(slow)
    await asyncio.sleep(0)
    for i in range(20):
        bus.publish(events.RoomStarted(f"r{i}"))  # returns at once, every time
    gate.set()
    await asyncio.sleep(0.05)
    # The newest five were kept (the queue's capacity); the rest were dropped, counted.
    assert heard == ["r15", "r16", "r17", "r18", "r19"]
    assert subscription.dropped == 15 == bus.dropped
    subscription.remove()


async def test_failing_listener_does_not_stop_delivery() -> None:
    bus = events.EventBus()
    heard: list[str] = []

    async def flaky(event: events.Event) -> None:
        if event.room == "bad":
            raise RuntimeError("boom")
        heard.append(event.room)

    bus.add_listener(flaky)
    for room in ("a", "bad", "b"):
        bus.publish(events.RoomStarted(room))
    await asyncio.sleep(0.05)
    assert heard == ["a", "b"]
    await bus.close()


async def test_async_iterator() -> None:
    bus = events.EventBus()
    received: list[events.Event] = []

    async def consume() -> None:
        async for event in bus.events():
            received.append(event)
            if len(received) == 2:
                return

    task = asyncio.create_task(consume())
    await asyncio.sleep(0)
    bus.publish(events.ParticipantJoined("r", participant="p", identity="i", name="n"))
    bus.publish(events.TrackMuted("r", participant="p", track="t", muted=True))
    await asyncio.wait_for(task, 1)
    assert [e.type for e in received] == ["participant_joined", "track_muted"]
    assert received[1].to_dict()["muted"] is True


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[tuple[bytes, dict[str, str]]], list[int]]]:
    """A webhook endpoint that answers with the statuses in `plan` (then 200)."""
    calls: list[tuple[bytes, dict[str, str]]] = []
    plan: list[int] = []

    async def hook(request: web.Request) -> web.Response:
        calls.append((await request.read(), dict(request.headers)))
        return web.Response(status=plan.pop(0) if plan else 200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/hook", calls, plan
    await runner.cleanup()


async def test_webhooks_are_signed_and_retried(
    receiver: tuple[str, list[tuple[bytes, dict[str, str]]], list[int]]
) -> None:
    url, calls, plan = receiver
    plan.extend([500, 503])  # two failures, then success
    outcomes: list[str] = []
    bus = events.EventBus()
    hooks = Webhooks(WebhooksConfig(urls=[url], secret="k" * 20, retries=3, retry_delay_s=0.01),
                     bus, outcomes.append, "")
    hooks.start()
    bus.publish(events.ParticipantJoined("room", participant="p", identity="i", name="Ann"))
    for _ in range(100):
        if outcomes:
            break
        await asyncio.sleep(0.02)
    assert outcomes == ["delivered"] and len(calls) == 3
    body, headers = calls[-1]
    assert headers["X-Sfu-Event"] == "participant_joined"
    assert headers["X-Sfu-Signature"] == signature("k" * 20, body)
    assert verify("k" * 20, body, headers["X-Sfu-Signature"])
    assert not verify("x" * 20, body, headers["X-Sfu-Signature"])
    assert orjson.loads(body)["name"] == "Ann"
    await hooks.stop()


async def test_webhooks_carry_an_event_id_kept_across_retries_and_a_timestamp(
    receiver: tuple[str, list[tuple[bytes, dict[str, str]]], list[int]]
) -> None:
    """So that a backend can drop a retried delivery it has already handled."""
    url, calls, plan = receiver
    plan.extend([500, 503])  # the first event is delivered on its third try
    outcomes: list[str] = []
    bus = events.EventBus()
    hooks = Webhooks(WebhooksConfig(urls=[url], secret="k" * 32, retries=3, retry_delay_s=0.01),
                     bus, outcomes.append, "")
    hooks.start()
    before = time.time()
    bus.publish(events.RoomStarted("r"))
    bus.publish(events.RoomStarted("r"))
    for _ in range(100):
        if len(outcomes) == 2:
            break
        await asyncio.sleep(0.02)
    assert outcomes == ["delivered", "delivered"] and len(calls) == 4
    bodies = [orjson.loads(body) for body, _ in calls]
    retried, other = bodies[:3], bodies[3]
    assert retried[0] == retried[1] == retried[2]  # id and timestamp alike
    assert retried[0]["id"] != other["id"]
    assert [headers["X-Sfu-Event-Id"] for _, headers in calls] == [b["id"] for b in bodies]
    assert before <= retried[0]["at"] <= other["at"] <= time.time()
    for body, headers in calls:
        assert headers["X-Sfu-Signature"] == signature("k" * 32, body)
    await hooks.stop()


async def test_webhook_gives_up_after_retries(
    receiver: tuple[str, list[tuple[bytes, dict[str, str]]], list[int]]
) -> None:
    url, calls, plan = receiver
    plan.extend([500] * 10)
    outcomes: list[str] = []
    bus = events.EventBus()
    hooks = Webhooks(WebhooksConfig(urls=[url], retries=2, retry_delay_s=0.01), bus,
                     outcomes.append, "fallback-secret-1234")
    hooks.start()
    bus.publish(events.RoomStarted("r"))
    for _ in range(100):
        if outcomes:
            break
        await asyncio.sleep(0.02)
    assert outcomes == ["failed"] and len(calls) == 3  # first try + 2 retries
    body, headers = calls[0]
    assert headers["X-Sfu-Signature"] == signature("fallback-secret-1234", body)
    await hooks.stop()


async def test_data_messages_are_not_webhooks_metadata_changes_are(
    receiver: tuple[str, list[tuple[bytes, dict[str, str]]], list[int]]
) -> None:
    url, calls, _ = receiver
    outcomes: list[str] = []
    bus = events.EventBus()
    hooks = Webhooks(WebhooksConfig(urls=[url]), bus, outcomes.append, "k" * 20)
    hooks.start()
    bus.publish(events.DataReceived("room", participant="p", payload={"text": "hi"},
                                    topic="chat", reliable=True))
    bus.publish(events.ParticipantUpdated("room", participant="p", identity="i",
                                          metadata={"hand": True}))
    for _ in range(100):
        if outcomes:
            break
        await asyncio.sleep(0.02)
    assert outcomes == ["delivered"]
    assert [headers["X-Sfu-Event"] for _, headers in calls] == ["participant_updated"]
    assert orjson.loads(calls[0][0])["metadata"] == {"hand": True}
    await hooks.stop()
