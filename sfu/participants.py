"""What the server holds per participant: its peer connections, publications and
subscriptions (the room's own state is sfu.rooms)."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCRtpTransceiver

from sfu import rooms
from sfu.auth import Grants
from sfu.control.websocket import ControlConnection
from sfu.transport.peer import PublishedMedia, PublishTransport, SubscribeTransport


@dataclass
class Publication:
    """A published track and the forwarder Producer that carries it."""

    track: rooms.Track
    producer: int
    media: PublishedMedia
    muted: bool = False  # server-side: forwarding paused


@dataclass
class Subscription:
    """A subscribed track: its transceiver on the subscribe connection, and its Consumer."""

    track: rooms.Track
    # Chosen when an offer first carries the subscription (Server._send_offer): a
    # recycled m-line or a new one. None until then.
    transceiver: RTCRtpTransceiver | None
    consumer: int
    active: bool = False
    failed: bool = False  # the subscriber's answer took none of the publisher's codecs


@dataclass
class Peer:
    """Everything the server holds for one joined participant."""

    id: str
    name: str
    identity: str
    room: rooms.Room
    grants: Grants
    # None while the WebSocket is gone and the participant may still resume.
    control: ControlConnection | None
    publish: PublishTransport | None = None
    subscribe: SubscribeTransport | None = None
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    offer_outstanding: bool = False
    renegotiate: bool = False
    leaving: bool = False
    grace: asyncio.TimerHandle | None = None
    # A peer connection failed: removed when this fires, unless it restarts first.
    failed: asyncio.TimerHandle | None = None
    # After a restart: publications waiting for the next publish offer to carry them.
    detached: list[Publication] = field(default_factory=list)
    # Sent to this participant alone in `joined`: what `join.resume` must present. The
    # participant id is no proof, since every other participant in the room knows it.
    resume_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    def send(self, message: dict[str, Any]) -> None:
        """To the participant's WebSocket; dropped while it is disconnected (a resumed
        participant gets the room's state again in `joined`)."""
        if self.control is not None:
            self.control.send(message)
