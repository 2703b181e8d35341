"""What a router holds for one joined participant besides the room's record of it:
its WebSocket, its two peer connections, and the timers and negotiation state on them."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any

from sfu.control.websocket import ControlConnection
from sfu.diagnostics.traversal import UNKNOWN
from sfu.router.room import Participant, Track
from sfu.transport.peer import PublishTransport, SubscribeTransport


@dataclass
class ParticipantLink:
    participant: Participant  # the room's record: grants, tracks, subscriptions
    # None while the WebSocket is gone and the participant may still resume.
    control: ControlConnection | None
    publish: PublishTransport | None = None
    subscribe: SubscribeTransport | None = None
    offer_outstanding: bool = False
    renegotiate: bool = False
    leaving: bool = False
    grace: asyncio.TimerHandle | None = None
    # A peer connection failed: removed when this fires, unless it restarts first.
    failed: asyncio.TimerHandle | None = None
    # After a restart: tracks waiting for the next publish offer to carry them on.
    detached: list[Track] = field(default_factory=list)
    # Sent to this participant alone in `joined`: what `join.resume` must present. The
    # participant id is no proof, since every other participant in the room knows it.
    resume_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    nat_type: str = UNKNOWN  # as the client reported it at join (traversal statistics)

    @property
    def id(self) -> str:
        return self.participant.id

    def send(self, message: dict[str, Any]) -> None:
        """To the participant's WebSocket; dropped while it is disconnected (a resumed
        participant gets the room's state again in `joined`)."""
        if self.control is not None:
            self.control.send(message)
