"""Webhooks: the server's events, as signed HTTP POSTs to the backend's URLs.

Body: the event as JSON (``{"id": ..., "type": ..., "room": ..., "at": ..., ...}``):
``id`` is unique per event and the same in every retry of it, so the backend can drop a
delivery it has already handled; ``at`` is when the event happened (seconds since the
epoch). Headers: ``X-Sfu-Event`` (the type), ``X-Sfu-Event-Id`` (the id) and
``X-Sfu-Signature: sha256=<hex>``, the HMAC-SHA256 of the body with the webhook secret
(``webhooks.secret``, else ``auth.secret``), so the backend can check the sender
(compare in constant time). A delivery that fails (connection error, timeout, non-2xx)
is retried with exponential backoff; events wait in a bounded queue, whose oldest
entries are dropped (and counted) if the backend stays unreachable. Nothing here ever
blocks the media path.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import uuid
from collections.abc import Callable

import aiohttp
import orjson

from sfu.config import WebhooksConfig
from sfu.events import DataReceived, Event, EventBus, Subscription

logger = logging.getLogger(__name__)


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    """For receivers: whether ``signature`` (the X-Sfu-Signature header) is right."""
    return hmac.compare_digest(sign(secret, body), signature)


class Webhooks:
    def __init__(self, config: WebhooksConfig, bus: EventBus,
                 on_outcome: Callable[[str], None], fallback_secret: str) -> None:
        self.config = config
        self.bus = bus
        self.secret = config.secret or fallback_secret
        self.on_outcome = on_outcome
        self._subscription: Subscription | None = None
        self._session: aiohttp.ClientSession | None = None
        self._reported_drops = 0

    def start(self) -> None:
        if self.config.urls and self._subscription is None:
            self._subscription = self.bus.add_listener(self._deliver, self.config.queue_size)

    async def stop(self) -> None:
        if self._subscription is not None:
            self._subscription.remove()
            self._subscription = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _deliver(self, event: Event) -> None:
        self._count_drops()
        if isinstance(event, DataReceived):
            return  # the room's chatter: the embedding API hears it, webhooks do not
        # Made once here, before the retries, so that each retry carries the same id.
        event_id = f"EV_{uuid.uuid4().hex}"
        body = orjson.dumps({"id": event_id, **event.to_dict()})
        headers = {"Content-Type": "application/json", "X-Sfu-Event": event.type,
                   "X-Sfu-Event-Id": event_id, "X-Sfu-Signature": sign(self.secret, body)}
        for url in self.config.urls:
            await self._post(url, body, headers)

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_s))
        delay = self.config.retry_delay_s
        for attempt in range(self.config.retries + 1):
            try:
                async with self._session.post(url, data=body, headers=headers) as response:
                    if 200 <= response.status < 300:
                        self.on_outcome("delivered")
                        return
                    reason = f"HTTP {response.status}"
            except (TimeoutError, aiohttp.ClientError) as exc:
                reason = repr(exc)
            if attempt < self.config.retries:
                await asyncio.sleep(delay)
                delay *= 2
        logger.warning("webhook %s failed after %d attempts: %s", url,
                       self.config.retries + 1, reason)
        self.on_outcome("failed")

    def _count_drops(self) -> None:
        dropped = self._subscription.dropped if self._subscription else 0
        for _ in range(dropped - self._reported_drops):
            self.on_outcome("dropped")
        self._reported_drops = dropped
