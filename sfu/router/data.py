"""Data channel messages relayed through a room (docs/protocol.md, "Data channels").

Each participant may open two channels on its publish connection, ``reliable`` and
``lossy``; a message is a JSON envelope ``{payload, to?, topic?}``. The relay checks the
sender's grant, rate and the size, then sends ``{from, payload, topic?}`` — ``from``
set here, never taken from the sender — on the same kind of channel to everyone else
(or to ``to``). Nothing of it touches the RTP fast path.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from sfu import events
from sfu.config import LimitsConfig
from sfu.control.ratelimit import TokenBucket
from sfu.router.participants import ParticipantLink

RELIABLE, LOSSY = "reliable", "lossy"
MAX_RECIPIENTS = 64
MAX_TOPIC = 64
RATE_NOTICE_INTERVAL_S = 1.0  # a flooding sender is told at most this often


class DataError(ValueError):
    """A message the relay refuses; ``code`` is the control protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Envelope:
    payload: Any
    to: tuple[str, ...]  # empty: everyone else
    topic: str | None


def parse_envelope(message: str | bytes, max_bytes: int) -> Envelope:
    """A sender's message, checked; DataError says what is wrong with it."""
    if isinstance(message, bytes):
        raise DataError("bad_data", "data messages are JSON text, not binary")
    if len(message.encode()) > max_bytes:
        raise DataError("data_too_large", f"a data message may have {max_bytes} bytes")
    try:
        envelope = orjson.loads(message)
    except orjson.JSONDecodeError:
        raise DataError("bad_data", "a data message is a JSON object") from None
    if not isinstance(envelope, dict) or "payload" not in envelope:
        raise DataError("bad_data", "a data message is an object with a payload")
    to = envelope.get("to")
    if to is not None and (
            not isinstance(to, list) or not 1 <= len(to) <= MAX_RECIPIENTS
            or not all(isinstance(p, str) and 0 < len(p) <= 64 for p in to)):
        raise DataError("bad_data", f"to is a list of 1 to {MAX_RECIPIENTS} participant ids")
    topic = envelope.get("topic")
    if topic is not None and (not isinstance(topic, str) or not 0 < len(topic) <= MAX_TOPIC):
        raise DataError("bad_data", f"topic is a string of 1 to {MAX_TOPIC} characters")
    return Envelope(envelope["payload"], tuple(to or ()), topic)


class DataRelay:
    """One room's data messages. ``outcomes`` counts each message once: relayed,
    forbidden, data_rate_limited, data_too_large, bad_data; ``undeliverable`` counts the
    copies a recipient could not take (no channel open, or too much unsent)."""

    def __init__(self, room: str, limits: LimitsConfig,
                 links: Callable[[], dict[str, ParticipantLink]], bus: events.EventBus,
                 outcomes: Counter[str]) -> None:
        self._room = room
        self._limits = limits
        self._links = links
        self._bus = bus
        self._outcomes = outcomes
        self._buckets: dict[str, TokenBucket] = {}
        self._told: dict[str, float] = {}  # participant → when last told it floods

    def received(self, link: ParticipantLink, label: str, message: str | bytes,
                 now: float | None = None) -> None:
        """A message on one of ``link``'s channels."""
        now = time.monotonic() if now is None else now
        try:
            envelope = self._admit(link, message, now)
        except DataError as exc:
            self._outcomes[exc.code] += 1
            if exc.code != "data_rate_limited" or self._tell_flooder(link.id, now):
                link.send({"type": "error", "code": exc.code, "message": str(exc)})
            return
        self._outcomes["relayed"] += 1
        self.send(link.id, envelope.payload, envelope.to, envelope.topic, label == RELIABLE)
        self._bus.publish(events.DataReceived(
            self._room, participant=link.id, payload=envelope.payload, topic=envelope.topic,
            reliable=label == RELIABLE, to=envelope.to))

    def _admit(self, link: ParticipantLink, message: str | bytes, now: float) -> Envelope:
        if not link.participant.can_publish_data:
            raise DataError("forbidden", "the token does not allow sending data")
        bucket = self._buckets.get(link.id)
        if bucket is None:
            bucket = self._buckets[link.id] = TokenBucket(
                self._limits.data_messages_per_second, self._limits.data_message_burst, now)
        if not bucket.allow(now):
            rate = self._limits.data_messages_per_second
            raise DataError("data_rate_limited",
                            f"more than {rate} data messages a second: dropped")
        return parse_envelope(message, self._limits.max_data_message_bytes)

    def _tell_flooder(self, participant: str, now: float) -> bool:
        if now - self._told.get(participant, -RATE_NOTICE_INTERVAL_S) < RATE_NOTICE_INTERVAL_S:
            return False
        self._told[participant] = now
        return True

    def send(self, sender: str | None, payload: Any, to: tuple[str, ...] = (),
             topic: str | None = None, reliable: bool = True) -> int:
        """Send to everyone but ``sender`` (None: the backend), or to ``to`` (ids not in
        the room are skipped); returns how many took it."""
        outgoing: dict[str, Any] = {"from": sender, "payload": payload}
        if topic is not None:
            outgoing["topic"] = topic
        text = orjson.dumps(outgoing).decode()
        label = RELIABLE if reliable else LOSSY
        delivered = 0
        for participant_id, link in self._links().items():
            if participant_id == sender or (to and participant_id not in to):
                continue
            if link.publish is not None and link.publish.send_data(label, text):
                delivered += 1
            else:
                self._outcomes["undeliverable"] += 1
        return delivered

    def forget(self, participant: str) -> None:
        """The participant left."""
        self._buckets.pop(participant, None)
        self._told.pop(participant, None)
