"""``Server``: wires the control channel, the rooms, the transports and the forwarder.

The room state (``sfu.rooms``) decides; this module carries its events out: control
messages to participants, peer-connection changes, and forwarder tables. Each
WebSocket's messages come through ``sfu.session``; what is held per participant is in
``sfu.participants``; the RTCP sent on timers is ``sfu.feedback``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import secrets
import time
import weakref
from collections import Counter
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import WSCloseCode, web
from aiortc.exceptions import InvalidStateError
from aiortc.sdp import candidate_from_sdp

from sfu import events, feedback, rooms, rtp, turn
from sfu.auth import AuthError, Grants, mint_token, verify_token
from sfu.config import Config
from sfu.control import admin
from sfu.control.admission import REFUSALS, ConnectionLimiter, connection_budget, http_limiter
from sfu.control.listener import GatedListener
from sfu.control.schema import ProtocolError
from sfu.control.websocket import ConnectionLimits, ControlConnection
from sfu.fastpath import make_forwarder
from sfu.metrics import ConnectionStats, metrics_handler
from sfu.participants import Peer, Publication, Subscription
from sfu.session import Session
from sfu.transport.internals import HostGathering
from sfu.transport.peer import (
    PeerTransport,
    PublishedMedia,
    PublishTransport,
    SubscribeTransport,
    now_us,
)
from sfu.webhooks import Webhooks

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"
# A peer connection not connected this long after it was made counts as a timeout.
CONNECT_TIMEOUT_S = 20.0
PeerTransportT = TypeVar("PeerTransportT", bound=PeerTransport)


class Server:
    """The SFU. ``await start()`` serves HTTP/WebSocket; ``await stop()`` ends everything."""

    def __init__(self, config: Config | None = None) -> None:
        self.config = config or Config()
        self.config.validate()
        rtc = self.config.rtc
        self.forwarder = make_forwarder(rtc.forwarder, rtc.keyframe_request_interval_ms * 1000)
        self.gathering = HostGathering(
            tuple(rtc.listen_ips), rtc.announced_ip, rtc.port_min, rtc.port_max
        )
        self.rooms: dict[str, rooms.Room] = {}
        # Rooms created through the API stay (empty) until closed through it.
        self._kept_rooms: set[str] = set()
        self.events = events.EventBus()
        self.webhooks = Webhooks(self.config.webhooks, self.events, self._webhook_outcome,
                                 self.config.auth.secret)
        self.peers: dict[str, Peer] = {}
        self.publications: dict[str, Publication] = {}
        # What removed consumers had forwarded: (kind, "packets" | "bytes") → total.
        self.forwarded_retired: Counter[tuple[str, str]] = Counter()
        self.connections = ConnectionStats()
        self.webhook_outcomes: Counter[str] = Counter()
        self.rtcp_sent: Counter[str] = Counter()  # RTCP the server originates, by type
        self.restarts: Counter[bool] = Counter()  # by relay_only
        self.loop_lag = 0.0
        self._ready = False
        # Media dropped by the transports before the forwarder, by reason.
        self.transport_drops: Counter[str] = Counter()
        limits = self.config.limits
        self.control_connections = ConnectionLimiter(
            connection_budget(limits.max_connections, len(rtc.listen_ips)),
            limits.max_connections_per_address)
        self.http_connections = http_limiter(self.control_connections)
        self._listener: GatedListener | None = None
        # Transport endpoint → the participant it belongs to.
        self._endpoint_owner: dict[int, str] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.app = self._make_app()

    # -- HTTP -----------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", metrics_handler(self))
        app.add_subapp("/admin", admin.routes(self))
        app.router.add_get("/", self._index)
        app.router.add_get(r"/{name:[A-Za-z0-9_-]+\.(?:js|css|html)}", self._web_file)
        return app

    async def start(self, serve: bool = True) -> None:
        """Start the server in the running event loop.

        With ``serve`` False no HTTP site is opened: mount ``server.app`` into your own
        aiohttp application (``your_app.add_subapp("/sfu", server.app)``) instead.
        """
        self._spawn(self._watch_loop_lag())
        self._spawn(feedback.feedback_loop(self))
        if self.config.rtc.nack:
            self._spawn(feedback.nack_loop(self))
        self.webhooks.start()
        if serve:
            self._runner = web.AppRunner(self.app)
            await self._runner.setup()
            assert self._runner.server is not None  # set up above
            self._listener = GatedListener(self._runner.server, self.http_connections)
            self.port = self._listener.listen(self.config.server.host, self.config.server.port)
            logger.info(
                "sfu listening on http://%s:%s (forwarder: %s)",
                self.config.server.host, self.port, self.forwarder.implementation,
            )
        self._ready = True

    async def stop(self) -> None:
        self._ready = False
        for peer in list(self.peers.values()):
            control = peer.control
            await self.leave(peer, "server_stopped")
            if control is not None:
                await control.close()
        await self.webhooks.stop()
        await self.events.close()
        for task in list(self._tasks):
            task.cancel()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _webhook_outcome(self, outcome: str) -> None:
        self.webhook_outcomes[outcome] += 1

    async def _readyz(self, request: web.Request) -> web.Response:
        """Ready to take participants: started, and not stopping."""
        status = 200 if self._ready else 503
        return web.json_response({"ready": self._ready, "rooms": len(self.rooms),
                                  "participants": len(self.peers)}, status=status)

    async def _watch_loop_lag(self) -> None:
        """How late the event loop wakes: the cost a slow callback puts on every packet."""
        loop = asyncio.get_running_loop()
        worst: list[float] = []
        while True:
            started = loop.time()
            await asyncio.sleep(0.25)
            worst = [*worst[-11:], max(0.0, loop.time() - started - 0.25)]
            self.loop_lag = max(worst)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "forwarder": self.forwarder.implementation})

    async def _index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB_DIR / "index.html")

    async def _web_file(self, request: web.Request) -> web.StreamResponse:
        path = WEB_DIR / request.match_info["name"]
        if not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        allowed = self.config.auth.allowed_origins
        origin = request.headers.get("Origin")
        if allowed and origin not in allowed:
            raise web.HTTPForbidden(text=f"origin {origin!r} is not allowed")
        max_bytes = self.config.server.max_message_bytes
        # autoping off: pongs are the liveness signal ControlConnection watches.
        ws = web.WebSocketResponse(max_msg_size=max_bytes + 1, autoping=False)
        await ws.prepare(request)
        # Counted once the handshake is done: a handshake that fails is never released.
        address = request.remote or ""
        refusal = self.control_connections.admit(address)
        if refusal is not None:
            # Told why, then closed at once: a flood holds no descriptors.
            await ws.send_json({"type": "error", "code": refusal, "message": REFUSALS[refusal]})
            await ws.close(code=WSCloseCode.TRY_AGAIN_LATER)
            return ws
        try:
            await self._serve_control(ws)
        finally:
            self.control_connections.release(address)
        return ws

    async def _serve_control(self, ws: web.WebSocketResponse) -> None:
        limits, liveness = self.config.limits, self.config.liveness
        control = ControlConnection(ws, ConnectionLimits(
            max_message_bytes=self.config.server.max_message_bytes,
            messages_per_second=limits.messages_per_second,
            message_burst=limits.message_burst,
            ping_interval_s=liveness.ping_interval_s,
            timeout_s=liveness.timeout_s,
        ))
        session = Session(self, control)
        try:
            async for message in control.messages():
                await session.handle(message)
        finally:
            await session.closed()
            await control.close()

    # -- joining and leaving -----------------------------------------------------------

    async def join(self, session: Session, message: dict[str, Any]) -> Peer:
        room_name: str = message["room"]
        grants = self._authorize(room_name, message.get("token"))
        # The identity is the token's subject, and nothing else: a development join
        # without a token has none, so it never resumes or replaces anyone. Display
        # names are not identities; two participants may share one.
        identity = grants.identity
        resuming = self._resumable(room_name, identity, message.get("resume"))
        if resuming is not None:
            return self._resume(resuming, session, message, grants)
        existing = self._peer_by_identity(room_name, identity) if identity else None
        if existing is not None:
            # The same identity again, not resuming: the newcomer wins (no ghosts).
            existing.send({"type": "error", "code": "replaced",
                           "message": "the same identity joined from another connection"})
            old_control = existing.control
            await self.leave(existing, "replaced")
            if old_control is not None:
                await old_control.close()
        room = self.rooms.get(room_name) or self._start_room(room_name)
        participant_id = "PA_" + secrets.token_hex(6)
        try:
            room_events = room.join(participant_id, message["name"])
        except rooms.RoomError:
            if not room.participants and room_name not in self._kept_rooms:
                self._finish_room(room_name)
            raise
        peer = Peer(participant_id, message["name"], identity, room, grants, session.control)
        self.peers[participant_id] = peer
        session.control.send(self._joined(peer, message))
        self.events.publish(events.ParticipantJoined(room_name, participant=participant_id,
                                                     identity=identity, name=peer.name))
        self._apply(room_events)
        logger.info("%s (%s) joined room %s", participant_id, peer.name, room_name,
                    extra={"room": room_name, "participant": participant_id})
        return peer

    def _start_room(self, name: str, max_participants: int | None = None,
                    auto_subscribe: bool | None = None) -> rooms.Room:
        if len(self.rooms) >= self.config.limits.max_rooms:
            raise ProtocolError("too_many_rooms",
                                f"the server has {self.config.limits.max_rooms} rooms")
        room = rooms.Room(
            name,
            auto_subscribe=(self.config.rooms.auto_subscribe if auto_subscribe is None
                            else auto_subscribe),
            max_participants=(self.config.rooms.max_participants if max_participants is None
                              else max_participants),
        )
        self.rooms[name] = room
        self.events.publish(events.RoomStarted(name))
        return room

    def _finish_room(self, name: str) -> None:
        if self.rooms.pop(name, None) is not None:
            self.events.publish(events.RoomFinished(name))

    def _joined(self, peer: Peer, message: dict[str, Any], resumed: bool = False
                ) -> dict[str, Any]:
        room = peer.room
        joined: dict[str, Any] = {
            "type": "joined",
            "participant": {"id": peer.id, "name": peer.name},
            "resume_token": peer.resume_token,
            "participants": [p.describe() for p in room.participants.values() if p.id != peer.id],
            "tracks": [t.describe() for t in room.tracks.values()],
            "ice_servers": turn.ice_servers(self.config.turn, peer.identity or peer.id),
        }
        if resumed:
            joined["resumed"] = True
        if "id" in message:
            joined["id"] = message["id"]
        return joined

    def _peer_by_identity(self, room: str, identity: str) -> Peer | None:
        for peer in self.peers.values():
            if peer.room.name == room and peer.identity == identity and not peer.leaving:
                return peer
        return None

    def _resumable(self, room: str, identity: str, resume_token: str | None) -> Peer | None:
        """The disconnected participant ``resume_token`` was issued to, if the joiner
        has the same identity (both none, for token-less development joins)."""
        if resume_token is None:
            return None
        for peer in self.peers.values():
            if (peer.room.name == room and peer.control is None and not peer.leaving
                    and secrets.compare_digest(peer.resume_token.encode(), resume_token.encode())):
                return peer if peer.identity == identity else None
        return None

    def _resume(self, peer: Peer, session: Session, message: dict[str, Any],
                grants: Grants) -> Peer:
        """A participant whose WebSocket dropped is back within the grace period:
        its publications, subscriptions and peer connections carry on, under the grants
        of the token it came back with (never the old ones)."""
        if peer.grace is not None:
            peer.grace.cancel()
            peer.grace = None
        peer.control = session.control
        peer.name = message["name"]
        peer.resume_token = secrets.token_urlsafe(24)  # each token resumes once
        session.control.send(self._joined(peer, message, resumed=True))
        # A subscription the new token allows again starts over; one the participant
        # left on purpose stays left.
        self._grant(peer, grants,
                    subscribe_all=grants.can_subscribe and not peer.grants.can_subscribe)
        if peer.offer_outstanding and peer.subscribe is not None:
            # The offer may have been lost with the old socket: send it again.
            self._spawn(self._send_offer(peer, resend=True))
        logger.info("%s resumed in room %s", peer.id, peer.room.name)
        return peer

    async def disconnected(self, peer: Peer, control: ControlConnection) -> None:
        """The WebSocket of a joined participant ended without `leave`."""
        if peer.control is not control or peer.leaving:
            return  # already replaced by a newer connection, or leaving
        peer.control = None
        grace = self.config.liveness.reconnect_grace_s
        if grace <= 0:
            await self.leave(peer, "disconnected")
            return
        loop = asyncio.get_running_loop()
        peer.grace = loop.call_later(grace, lambda: self._spawn(self._grace_over(peer)))
        logger.info("%s disconnected; may resume for %s s", peer.id, grace)

    async def _grace_over(self, peer: Peer) -> None:
        peer.grace = None
        if peer.control is None:
            await self.leave(peer, "disconnected")

    def _authorize(self, room: str, token: str | None) -> Grants:
        auth = self.config.auth
        if auth.mode == "development" and token is None:
            return Grants(identity="", room=room)
        if token is None:
            raise AuthError("a token is required to join")
        return verify_token(auth.secret, token, room)

    async def leave(self, peer: Peer, reason: str = "left") -> None:
        """Remove a participant: its tracks, subscriptions and peer connections go."""
        if peer.leaving or peer.id not in self.peers:
            return
        peer.leaving = True
        for timer in (peer.grace, peer.failed):
            if timer is not None:
                timer.cancel()
        peer.grace = peer.failed = None
        room = peer.room
        self._apply(room.leave(peer.id))
        del self.peers[peer.id]
        await self._close_transports(peer)
        self.events.publish(events.ParticipantLeft(room.name, participant=peer.id,
                                                   identity=peer.identity, reason=reason))
        if not room.participants and room.name not in self._kept_rooms:
            self._finish_room(room.name)
        logger.info("%s left room %s (%s)", peer.id, room.name, reason,
                    extra={"room": room.name, "participant": peer.id})

    # -- publishing --------------------------------------------------------------------

    async def publish(self, peer: Peer, offer_sdp: str) -> dict[str, Any]:
        if not peer.grants.can_publish:
            raise ProtocolError("forbidden", "the token does not allow publishing")
        self._check_sdp(offer_sdp)
        limits = self.config.limits
        media_lines = sum(
            line.startswith(("m=audio", "m=video")) for line in offer_sdp.splitlines()
        )
        if media_lines > limits.max_tracks_per_participant:
            raise ProtocolError(
                "too_many_tracks",
                f"{media_lines} tracks offered; at most {limits.max_tracks_per_participant}",
                "sdp",
            )
        if peer.publish is None:
            peer.publish = self._new_transport(peer, PublishTransport)
        try:
            answer_sdp, media = await peer.publish.answer(offer_sdp)
        except Exception as exc:
            logger.info("publish offer from %s failed: %s", peer.id, exc)
            raise ProtocolError("negotiation_failed", f"cannot apply the offer: {exc}") from None
        room_events: list[rooms.Event] = []
        tracks = []
        for item in media:
            moved = self._reattach(peer, peer.publish.endpoint, item)
            if moved is not None:
                tracks.append(moved.track.describe())
                continue
            track_id = "TR_" + secrets.token_hex(6)
            producer = next(self._ids)
            codec = rtp.CODECS_BY_NAME.get(
                item.codec.mime_type.split("/")[-1].lower(), rtp.CODEC_OTHER
            )
            self.forwarder.add_producer(producer, peer.publish.endpoint, item.ssrc, codec)
            room_events += peer.room.publish(peer.id, track_id, item.kind)
            self.publications[track_id] = Publication(peer.room.tracks[track_id], producer, item)
            tracks.append(peer.room.tracks[track_id].describe())
        # Earlier publications this offer did not carry on are gone (the client
        # published fewer tracks after its restart): their subscribers are told.
        for publication in peer.detached:
            room_events += peer.room.unpublish(publication.track.id)
        peer.detached = []
        # The events only send to other participants, so the answer may follow them.
        self._apply(room_events)
        return {"type": "answer", "sdp": answer_sdp, "tracks": tracks}

    def _reattach(self, peer: Peer, endpoint: int, item: PublishedMedia) -> Publication | None:
        """After a restart, the publish offer's media carries the participant's earlier
        publications on (by kind, in order): same track, same subscribers, the forwarder's
        producer moved to the new connection. A track whose payload type or header
        extensions changed cannot be moved (consumers map them): it is published anew."""
        for publication in list(peer.detached):
            if publication.track.kind != item.kind:
                continue
            peer.detached.remove(publication)
            old = publication.media
            if (old.codec.mime_type, old.codec.payload_type, old.extensions) != (
                    item.codec.mime_type, item.codec.payload_type, item.extensions):
                logger.info("%s: track %s changed its codec or extensions on restart; "
                            "published anew", peer.id, publication.track.id)
                self._apply(peer.room.unpublish(publication.track.id))
                return None
            self.forwarder.move_producer(publication.producer, endpoint, item.ssrc)
            publication.media = item
            return publication
        return None

    # -- restarting --------------------------------------------------------------------

    async def restart(self, peer: Peer, relay_only: bool) -> dict[str, Any]:
        """Replace the participant's peer connections, keeping its place in the room.

        The client asks when ICE fails or takes too long (then usually ``relay_only``,
        to come in through TURN): the old connections close, the subscriptions move to
        a new subscribe connection (a new `offer` follows), and the next `publish` offer
        carries the publications on. Nobody else sees a leave or a join.
        """
        if peer.failed is not None:
            peer.failed.cancel()
            peer.failed = None
        await self._close_transports(peer)
        peer.publish = peer.subscribe = None
        peer.offer_outstanding = peer.renegotiate = False
        peer.detached = [p for p in self.publications.values()
                         if p.track.participant == peer.id]
        subscriptions = list(peer.subscriptions.values())
        peer.subscriptions.clear()
        for subscription in subscriptions:
            self._retire(subscription)
            self.forwarder.remove_consumer(subscription.consumer)
        for subscription in subscriptions:
            if subscription.track.id in self.publications:
                self._subscribe(peer, subscription.track)
        self.restarts[relay_only] += 1
        self.events.publish(events.ParticipantRestarted(
            peer.room.name, participant=peer.id, relay_only=relay_only))
        logger.info("%s restarted its connections%s", peer.id,
                    " (relay only)" if relay_only else "",
                    extra={"room": peer.room.name, "participant": peer.id})
        # Fresh credentials: the ones from `joined` may be close to their expiry.
        return {"type": "restarted", "relay_only": relay_only,
                "ice_servers": turn.ice_servers(self.config.turn, peer.identity or peer.id)}

    async def _close_transports(self, peer: Peer) -> None:
        for transport in (peer.publish, peer.subscribe):
            if transport is not None:
                self._endpoint_owner.pop(transport.endpoint, None)
                await transport.close()

    def _connection_lost(self, peer: Peer, transport: PeerTransport) -> None:
        """A peer connection failed: the client may restart within the grace period
        (it is told so); after it, the participant is removed."""
        grace = self.config.liveness.restart_grace_s
        if grace <= 0 or peer.control is None:
            self._spawn(self.leave(peer, "failed"))
            return
        peer.send({"type": "connection_failed", "pc": transport.role})
        if peer.failed is None:
            peer.failed = asyncio.get_running_loop().call_later(
                grace, lambda: self._spawn(self._failed_over(peer)))

    async def _failed_over(self, peer: Peer) -> None:
        peer.failed = None
        logger.info("%s: peer connection failed and no restart came; removing", peer.id)
        await self.leave(peer, "failed")

    # -- subscribing -------------------------------------------------------------------

    def change_subscriptions(self, peer: Peer, track_ids: list[str], subscribe: bool) -> None:
        if subscribe and not peer.grants.can_subscribe:
            raise ProtocolError("forbidden", "the token does not allow subscribing")
        if subscribe:
            room_events = peer.room.subscribe(peer.id, track_ids)
        else:
            room_events = peer.room.unsubscribe(peer.id, track_ids)
        self._apply(room_events)

    def _subscribe(self, peer: Peer, track: rooms.Track) -> None:
        if not peer.grants.can_subscribe:
            return
        if peer.subscribe is None:
            peer.subscribe = self._new_transport(peer, SubscribeTransport)
        # Its m-line is chosen when the next offer is made (_place): by then the answer
        # to the last one is in, so the m-lines it made inactive can be recycled.
        peer.subscriptions[track.id] = Subscription(track, None, next(self._ids))
        self._negotiate(peer)

    def _unsubscribe(self, peer: Peer, track: rooms.Track) -> None:
        subscription = peer.subscriptions.pop(track.id, None)
        if subscription is None or peer.subscribe is None:
            return
        self._retire(subscription)
        self.forwarder.remove_consumer(subscription.consumer)
        if subscription.transceiver is None or peer.leaving:
            return  # never offered; or the whole connection is closing
        peer.subscribe.stop_track(subscription.transceiver)
        self._negotiate(peer)

    def _negotiate(self, peer: Peer) -> None:
        """Send a new subscribe offer now, or after the answer to the outstanding one."""
        if peer.offer_outstanding:
            peer.renegotiate = True
            return
        peer.offer_outstanding = True
        self._spawn(self._send_offer(peer))

    def _place(self, peer: Peer, transport: SubscribeTransport) -> None:
        """Give each subscription no offer has carried yet its m-line: a departed
        track's the subscriber has answered inactive (recycled), or a new one."""
        for subscription in peer.subscriptions.values():
            publication = self.publications.get(subscription.track.id)
            if subscription.transceiver is None and publication is not None:
                subscription.transceiver = transport.add_track(
                    subscription.track.kind, publication.media.codec)

    async def _send_offer(self, peer: Peer, resend: bool = False) -> None:
        transport = peer.subscribe
        if transport is None or peer.leaving or transport.pc.connectionState == "closed":
            return  # the participant left while this offer waited its turn
        if resend:
            sdp = transport.pc.localDescription.sdp
        else:
            self._place(peer, transport)
            if not transport.pc.getTransceivers():
                # Subscribed and unsubscribed before any offer: nothing to offer.
                peer.offer_outstanding = peer.renegotiate = False
                return
            try:
                sdp = await transport.create_offer()
            except InvalidStateError:
                return  # the connection closed meanwhile: the participant is leaving
        mapping = [
            {
                "mid": s.transceiver.mid,
                "track": s.track.id,
                "participant": s.track.participant,
                "kind": s.track.kind,
            }
            for s in peer.subscriptions.values()
            if s.transceiver is not None and s.transceiver.mid is not None
        ]
        peer.send({"type": "offer", "sdp": sdp, "tracks": mapping})

    async def subscribe_answer(self, peer: Peer, answer_sdp: str) -> None:
        if len(answer_sdp) > self.config.limits.max_sdp_bytes:
            raise ProtocolError("bad_field", "sdp too large", "sdp")
        transport = peer.subscribe
        if transport is None or not peer.offer_outstanding:
            raise ProtocolError("negotiation_failed", "no subscribe offer is outstanding")
        try:
            await transport.apply_answer(answer_sdp)
        except Exception as exc:
            raise ProtocolError("negotiation_failed", f"cannot apply the answer: {exc}") from None
        peer.offer_outstanding = False
        for subscription in peer.subscriptions.values():
            if not subscription.active and not subscription.failed:
                self._activate(peer, transport, subscription)
        if peer.renegotiate:
            peer.renegotiate = False
            self._negotiate(peer)

    def _activate(
        self, peer: Peer, transport: SubscribeTransport, subscription: Subscription
    ) -> None:
        """Start forwarding a negotiated subscription: add its Consumer."""
        publication = self.publications.get(subscription.track.id)
        transceiver = subscription.transceiver
        if publication is None or transceiver is None or transceiver.mid is None:
            return  # gone, or added after this offer was made: the next offer has it
        down = transport.down_track(transceiver)
        if down is None:
            self._cannot_receive(peer, subscription, publication)
            return
        media = publication.media
        ext_map = {
            pub_id: down.extensions[uri]
            for uri, pub_id in media.extensions.items()
            if uri in down.extensions
        }
        self.forwarder.add_consumer(
            subscription.consumer,
            publication.producer,
            transport.endpoint,
            down.ssrc,
            subscription.track.kind == "video",
            {media.codec.payload_type: down.payload_type},
            ext_map,
            down.mid.encode(),
            down.extensions.get(rtp.URI_MID, 0),
            down.extensions.get(rtp.URI_ABS_SEND_TIME, 0),
            # RFC 3550 §5.1: initial sequence number and timestamp are random.
            random.getrandbits(16),
            random.getrandbits(32),
        )
        subscription.active = True
        if subscription.track.kind == "video":
            self.forwarder.request_keyframe(publication.producer, now_us())

    def _cannot_receive(self, peer: Peer, subscription: Subscription,
                        publication: Publication) -> None:
        """The subscriber's answer rejected the track or took none of its codecs (the
        SFU forwards, never transcodes): say so, rather than leave a black tile."""
        subscription.failed = True
        codec = publication.media.codec.mime_type
        track = subscription.track
        peer.send({"type": "subscription_failed", "track": track.id,
                   "participant": track.participant, "kind": track.kind, "codec": codec,
                   "reason": "codec",
                   "message": f"this client cannot receive {codec}, the codec "
                              f"{track.participant} publishes {track.kind} in"})
        self.events.publish(events.SubscriptionFailed(
            peer.room.name, participant=peer.id, track=track.id, codec=codec))
        logger.info("%s cannot receive %s (%s)", peer.id, track.id, codec)

    async def add_candidate(
        self, peer: Peer, pc_name: str, candidate: dict[str, Any] | None
    ) -> None:
        transport = peer.publish if pc_name == "publish" else peer.subscribe
        if transport is None or candidate is None:
            return
        text = candidate["candidate"].removeprefix("candidate:")
        if not text:
            return
        try:
            parsed = candidate_from_sdp(text)
        except (ValueError, IndexError):
            raise ProtocolError(
                "bad_field", "candidate is not an ICE candidate", "candidate"
            ) from None
        parsed.sdpMid = candidate.get("sdpMid")
        parsed.sdpMLineIndex = candidate.get("sdpMLineIndex")
        await transport.pc.addIceCandidate(parsed)

    def _new_transport(self, peer: Peer, kind: type[PeerTransportT]) -> PeerTransportT:
        transport = kind(next(self._ids), self.forwarder, self.gathering,
                         self._connection_state, self.transport_drops)
        self._endpoint_owner[transport.endpoint] = peer.id
        # By weak reference: the timer must not keep a transport that is gone (closed
        # and dropped) alive for CONNECT_TIMEOUT_S; one that is gone timed nothing out.
        ref: weakref.ref[PeerTransport] = weakref.ref(transport)
        asyncio.get_running_loop().call_later(CONNECT_TIMEOUT_S, self._connect_timeout, ref)
        return transport

    def _connect_timeout(self, ref: weakref.ref[PeerTransport]) -> None:
        transport = ref()
        if (transport is not None and not transport.connected.is_set()
                and transport.pc.connectionState != "closed"):
            self.connections.not_connected("timeout")

    def _connection_state(self, transport: PeerTransport, state: str) -> None:
        """Statistics and events; ICE or DTLS failure (consent expiry included) removes
        the participant."""
        logger.debug("endpoint %d: %s", transport.endpoint, state)
        selected = transport.selected
        if state == "connected" and selected is not None:
            self.connections.connected(selected.local_type, selected.remote_type,
                                       time.monotonic() - transport.created)
        elif state in ("failed", "closed") and not transport.closing and (
                not transport.connected.is_set()):
            self.connections.not_connected("failed")
        peer = self.peers.get(self._endpoint_owner.get(transport.endpoint, ""))
        if peer is not None:
            self.events.publish(events.ConnectionStateChanged(
                peer.room.name, participant=peer.id, connection=transport.role, state=state,
                local_candidate=selected.local_type if selected else None,
                remote_candidate=selected.remote_type if selected else None,
            ))
        # aiortc reports ICE consent expiry (RFC 7675) as "closed" when ICE had not
        # reached "completed": a close we did not ask for is a failure too.
        lost = state == "failed" or (state == "closed" and not transport.closing)
        if not lost:
            return
        if peer is not None and not peer.leaving:
            logger.info("%s: %s connection failed", peer.id, transport.role)
            self._connection_lost(peer, transport)

    def _check_sdp(self, sdp: str) -> None:
        limits = self.config.limits
        if len(sdp) > limits.max_sdp_bytes:
            raise ProtocolError("bad_field", f"sdp larger than {limits.max_sdp_bytes} bytes",
                                "sdp")
        mlines = sum(line.startswith("m=") for line in sdp.splitlines())
        if mlines > limits.max_sdp_mlines:
            raise ProtocolError("bad_field", f"sdp has more than {limits.max_sdp_mlines} "
                                "m-lines", "sdp")

    # -- the embedding API (also behind the admin HTTP API) ------------------------------

    def create_room(self, name: str, *, max_participants: int | None = None,
                    auto_subscribe: bool | None = None) -> rooms.Room:
        """Create a room with its own options; it stays, empty or not, until close_room."""
        if name in self.rooms:
            raise ValueError(f"room {name!r} exists")
        room = self._start_room(name, max_participants, auto_subscribe)
        self._kept_rooms.add(name)
        return room

    async def close_room(self, name: str) -> None:
        """Remove everyone from a room and the room itself."""
        room = self._room(name)
        self._kept_rooms.discard(name)
        for participant_id in list(room.participants):
            await self._remove(self.peers[participant_id], "room_closed")
        self._finish_room(name)

    async def kick(self, room: str, participant: str) -> None:
        """Remove a participant now: its media stops reaching everyone."""
        await self._remove(self._peer(room, participant), "kicked")

    def mute(self, room: str, track: str, muted: bool) -> None:
        """Pause (or resume) forwarding a track to every subscriber, server-side."""
        publication = self.publications.get(track)
        if publication is None or publication.track.id not in self._room(room).tracks:
            raise KeyError(f"no track {track!r} in room {room!r}")
        if publication.muted == muted:
            return
        publication.muted = muted
        self.forwarder.set_producer_paused(publication.producer, muted)
        if not muted and publication.track.kind == "video":
            self.forwarder.request_keyframe(publication.producer, now_us())
        self._broadcast(room, "", {"type": "track_muted", "track": track, "muted": muted})
        self.events.publish(events.TrackMuted(room, participant=publication.track.participant,
                                              track=track, muted=muted))

    def update_permissions(self, room: str, participant: str, *,
                           can_publish: bool | None = None,
                           can_subscribe: bool | None = None) -> None:
        """Change a participant's grants; what it may no longer do stops now."""
        peer = self._peer(room, participant)
        grants = peer.grants
        self._grant(peer, Grants(
            identity=grants.identity, room=grants.room,
            can_publish=grants.can_publish if can_publish is None else can_publish,
            can_subscribe=grants.can_subscribe if can_subscribe is None else can_subscribe,
        ), subscribe_all=can_subscribe is True)

    def _grant(self, peer: Peer, grants: Grants, subscribe_all: bool) -> None:
        """Hold ``peer`` to ``grants``: what it may no longer do stops now. With
        ``subscribe_all`` and auto_subscribe, it is subscribed to the room's tracks."""
        peer.grants = grants
        room_events: list[rooms.Event] = []
        if not grants.can_publish:
            for track_id in list(peer.room.participants[peer.id].tracks):
                room_events += peer.room.unpublish(track_id)
        if not grants.can_subscribe:
            room_events += peer.room.unsubscribe(
                peer.id, sorted(peer.room.participants[peer.id].subscriptions))
        elif subscribe_all and peer.room.auto_subscribe:
            others = [t.id for t in peer.room.tracks.values() if t.participant != peer.id]
            room_events += peer.room.subscribe(peer.id, others)
        self._apply(room_events)

    def mint_token(self, room: str, identity: str, *, ttl_seconds: int = 3600,
                   can_publish: bool = True, can_subscribe: bool = True) -> str:
        if not self.config.auth.secret:
            raise ValueError("auth.secret is not set")
        return mint_token(self.config.auth.secret, room=room, identity=identity,
                          ttl_seconds=ttl_seconds, can_publish=can_publish,
                          can_subscribe=can_subscribe)

    def room_info(self, name: str) -> dict[str, Any]:
        """A room's participants, tracks and per-subscription forwarding stats."""
        room = self._room(name)
        participants = []
        for participant in room.participants.values():
            peer = self.peers[participant.id]
            subscriptions = []
            for track_id, subscription in peer.subscriptions.items():
                packets, octets = self.forwarder.consumer_stats(subscription.consumer)
                entry: dict[str, Any] = {"track": track_id, "packets": packets,
                                         "bytes": octets, "active": subscription.active}
                heard = self.forwarder.consumer_report(subscription.consumer)
                if heard is not None:  # the subscriber's own receiver report
                    fraction, lost, jitter, rtt_us = heard
                    entry.update(fraction_lost=fraction / 256, packets_lost=lost,
                                 jitter=jitter, rtt_ms=rtt_us / 1000 if rtt_us >= 0 else None)
                subscriptions.append(entry)
            participants.append({
                "id": peer.id, "identity": peer.identity, "name": peer.name,
                "connected": peer.control is not None,
                "can_publish": peer.grants.can_publish,
                "can_subscribe": peer.grants.can_subscribe,
                "tracks": [self._track_info(t) for t in participant.tracks],
                "subscriptions": subscriptions,
            })
        return {"name": name, "max_participants": room.max_participants,
                "auto_subscribe": room.auto_subscribe, "participants": participants}

    def rooms_info(self) -> list[dict[str, Any]]:
        return [{"name": name, "participants": len(room.participants),
                 "tracks": len(room.tracks)} for name, room in self.rooms.items()]

    def forwarded_by_kind(self) -> dict[str, tuple[int, int]]:
        """kind → (packets, bytes) forwarded to subscribers, since the start."""
        totals = {kind: [self.forwarded_retired[(kind, "packets")],
                         self.forwarded_retired[(kind, "bytes")]] for kind in ("audio", "video")}
        for peer in self.peers.values():
            for subscription in peer.subscriptions.values():
                packets, octets = self.forwarder.consumer_stats(subscription.consumer)
                totals[subscription.track.kind][0] += packets
                totals[subscription.track.kind][1] += octets
        return {kind: (p, b) for kind, (p, b) in totals.items()}

    def _retire(self, subscription: Subscription) -> None:
        packets, octets = self.forwarder.consumer_stats(subscription.consumer)
        self.forwarded_retired[(subscription.track.kind, "packets")] += packets
        self.forwarded_retired[(subscription.track.kind, "bytes")] += octets

    def _track_info(self, track_id: str) -> dict[str, Any]:
        publication = self.publications[track_id]
        return {"id": track_id, "kind": publication.track.kind, "muted": publication.muted,
                "codec": publication.media.codec.mime_type}

    def _room(self, name: str) -> rooms.Room:
        room = self.rooms.get(name)
        if room is None:
            raise KeyError(f"no room {name!r}")
        return room

    def _peer(self, room: str, participant: str) -> Peer:
        peer = self.peers.get(participant)
        if peer is None or peer.room.name != room:
            raise KeyError(f"no participant {participant!r} in room {room!r}")
        return peer

    async def _remove(self, peer: Peer, reason: str) -> None:
        """Server-initiated removal: tell the client why, then close its socket."""
        control = peer.control
        peer.send({"type": "error", "code": reason, "message": f"removed: {reason}"})
        await self.leave(peer, reason)
        if control is not None:
            await control.close()

    # -- room events -------------------------------------------------------------------

    def _apply(self, room_events: list[rooms.Event]) -> None:
        for event in room_events:
            if isinstance(event, rooms.ParticipantJoined):
                self._broadcast(event.room, event.participant.id, {
                    "type": "participant_joined", "participant": event.participant.describe(),
                })
            elif isinstance(event, rooms.ParticipantLeft):
                self._broadcast(event.room, event.participant, {
                    "type": "participant_left", "participant": event.participant,
                })
            elif isinstance(event, rooms.TrackPublished):
                self._broadcast(event.room, event.track.participant, {
                    "type": "track_published", "track": event.track.describe(),
                })
                self.events.publish(events.TrackPublished(
                    event.room, participant=event.track.participant, track=event.track.id,
                    kind=event.track.kind))
            elif isinstance(event, rooms.TrackUnpublished):
                publication = self.publications.pop(event.track.id, None)
                if publication is not None:
                    self.forwarder.remove_producer(publication.producer)
                self._broadcast(event.room, event.track.participant, {
                    "type": "track_unpublished", "track": event.track.id,
                })
                self.events.publish(events.TrackUnpublished(
                    event.room, participant=event.track.participant, track=event.track.id,
                    kind=event.track.kind))
            elif isinstance(event, rooms.Subscribed):
                self._subscribe(self.peers[event.subscriber], event.track)
            elif isinstance(event, rooms.Unsubscribed):
                self._unsubscribe(self.peers[event.subscriber], event.track)

    def _broadcast(self, room_name: str, exclude: str, message: dict[str, Any]) -> None:
        room = self.rooms.get(room_name)
        if room is None:
            return
        for participant_id in room.participants:
            peer = self.peers.get(participant_id)
            if participant_id != exclude and peer is not None:
                peer.send(message)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task failed", exc_info=task.exception())
