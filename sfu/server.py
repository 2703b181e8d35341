"""``Server``: wires the control channel, the rooms, the transports and the forwarder.

The room state (``sfu.rooms``) decides; this module carries its events out: control
messages to participants, peer-connection changes, and forwarder tables.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import secrets
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiortc import RTCRtpTransceiver
from aiortc.sdp import candidate_from_sdp

from sfu import rooms, rtp
from sfu.auth import AuthError, Grants, verify_token
from sfu.config import Config
from sfu.control.schema import ProtocolError
from sfu.control.websocket import ConnectionLimits, ControlConnection
from sfu.forwarding import make_forwarder
from sfu.metrics import metrics_handler
from sfu.transport.internals import HostGathering
from sfu.transport.peer import (
    PeerTransport,
    PublishedMedia,
    PublishTransport,
    SubscribeTransport,
    now_us,
)

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"


@dataclass
class Publication:
    """A published track and the forwarder Producer that carries it."""

    track: rooms.Track
    producer: int
    media: PublishedMedia


@dataclass
class Subscription:
    """A subscribed track: its transceiver on the subscribe connection, and its Consumer."""

    track: rooms.Track
    transceiver: RTCRtpTransceiver
    consumer: int
    active: bool = False


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

    def send(self, message: dict[str, Any]) -> None:
        """To the participant's WebSocket; dropped while it is disconnected (a resumed
        participant gets the room's state again in `joined`)."""
        if self.control is not None:
            self.control.send(message)


class Session:
    """One WebSocket client: before ``join`` it has no Peer."""

    def __init__(self, server: Server, control: ControlConnection) -> None:
        self.server = server
        self.control = control
        self.peer: Peer | None = None

    async def handle(self, message: dict[str, Any]) -> None:
        msg_type = message["type"]
        msg_id = message.get("id")
        try:
            reply = await self._dispatch(msg_type, message)
        except ProtocolError as exc:
            self.control.send_error(exc, msg_type, msg_id)
            return
        except (rooms.RoomError, AuthError) as exc:
            self.control.send_error(ProtocolError(exc.code, str(exc)), msg_type, msg_id)
            return
        if reply is not None:
            if msg_id is not None:
                reply["id"] = msg_id
            self.control.send(reply)

    async def _dispatch(self, msg_type: str, message: dict[str, Any]) -> dict[str, Any] | None:
        if msg_type == "ping":
            return {"type": "pong"}
        if msg_type == "join":
            if self.peer is not None:
                raise ProtocolError("already_joined", "this connection has joined already")
            self.peer = await self.server.join(self, message)
            return None  # join() sent `joined` before the events it caused
        peer = self.peer
        if peer is None:
            raise ProtocolError("not_joined", f"send join before {msg_type}")
        if msg_type == "publish":
            return await self.server.publish(peer, message["sdp"])
        if msg_type == "answer":
            await self.server.subscribe_answer(peer, message["sdp"])
            return None
        if msg_type == "candidate":
            await self.server.add_candidate(peer, message["pc"], message["candidate"])
            return None
        if msg_type == "subscribe":
            self.server.change_subscriptions(peer, message["tracks"], subscribe=True)
            return None
        if msg_type == "unsubscribe":
            self.server.change_subscriptions(peer, message["tracks"], subscribe=False)
            return None
        if msg_type == "leave":
            await self.server.leave(peer)
            self.peer = None
            return {"type": "left"}
        raise ProtocolError("unknown_type", f"unknown message type {msg_type!r}", "type")

    async def closed(self) -> None:
        """The WebSocket ended without `leave`: the participant may resume."""
        if self.peer is not None:
            await self.server.disconnected(self.peer, self.control)
            self.peer = None


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
        self.peers: dict[str, Peer] = {}
        self.publications: dict[str, Publication] = {}
        # Media dropped by the transports before the forwarder, by reason.
        self.transport_drops: Counter[str] = Counter()
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
        app.router.add_get("/metrics", metrics_handler(self))
        app.router.add_get("/", self._index)
        app.router.add_get(r"/{name:[A-Za-z0-9_-]+\.(?:js|css|html)}", self._web_file)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.server.host, self.config.server.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.config.server.port
        logger.info(
            "sfu listening on http://%s:%s (forwarder: %s)",
            self.config.server.host, self.port, self.forwarder.implementation,
        )

    async def stop(self) -> None:
        for peer in list(self.peers.values()):
            control = peer.control
            await self.leave(peer)
            if control is not None:
                await control.close()
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

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
        limits, liveness = self.config.limits, self.config.liveness
        control = ControlConnection(ws, ConnectionLimits(
            max_message_bytes=max_bytes,
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
        return ws

    # -- joining and leaving -----------------------------------------------------------

    async def join(self, session: Session, message: dict[str, Any]) -> Peer:
        room_name: str = message["room"]
        grants = self._authorize(room_name, message.get("token"))
        # The identity is the token's subject; in development mode, the display name.
        identity = grants.identity or message["name"]
        existing = self._peer_by_identity(room_name, identity)
        if existing is not None and existing.control is None and (
                message.get("resume") == existing.id):
            return self._resume(existing, session, message)
        if existing is not None:
            # The same identity again, not resuming: the newcomer wins (no ghosts).
            existing.send({"type": "error", "code": "replaced",
                           "message": "the same identity joined from another connection"})
            old_control = existing.control
            await self.leave(existing)
            if old_control is not None:
                await old_control.close()
        room = self.rooms.get(room_name)
        if room is None:
            if len(self.rooms) >= self.config.limits.max_rooms:
                raise ProtocolError("too_many_rooms",
                                    f"the server has {self.config.limits.max_rooms} rooms")
            room = rooms.Room(
                room_name,
                auto_subscribe=self.config.rooms.auto_subscribe,
                max_participants=self.config.rooms.max_participants,
            )
            self.rooms[room_name] = room
        participant_id = "PA_" + secrets.token_hex(6)
        try:
            events = room.join(participant_id, message["name"])
        except rooms.RoomError:
            if not room.participants:
                del self.rooms[room_name]
            raise
        peer = Peer(participant_id, message["name"], identity, room, grants, session.control)
        self.peers[participant_id] = peer
        session.control.send(self._joined(peer, message))
        self._apply(events)
        logger.info("%s (%s) joined room %s", participant_id, peer.name, room_name)
        return peer

    def _joined(self, peer: Peer, message: dict[str, Any], resumed: bool = False
                ) -> dict[str, Any]:
        room = peer.room
        joined: dict[str, Any] = {
            "type": "joined",
            "participant": {"id": peer.id, "name": peer.name},
            "participants": [p.describe() for p in room.participants.values() if p.id != peer.id],
            "tracks": [t.describe() for t in room.tracks.values()],
            "ice_servers": [],
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

    def _resume(self, peer: Peer, session: Session, message: dict[str, Any]) -> Peer:
        """A participant whose WebSocket dropped is back within the grace period:
        its publications, subscriptions and peer connections carry on."""
        if peer.grace is not None:
            peer.grace.cancel()
            peer.grace = None
        peer.control = session.control
        peer.name = message["name"]
        session.control.send(self._joined(peer, message, resumed=True))
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
            await self.leave(peer)
            return
        loop = asyncio.get_running_loop()
        peer.grace = loop.call_later(grace, lambda: self._spawn(self._grace_over(peer)))
        logger.info("%s disconnected; may resume for %s s", peer.id, grace)

    async def _grace_over(self, peer: Peer) -> None:
        peer.grace = None
        if peer.control is None:
            await self.leave(peer)

    def _authorize(self, room: str, token: str | None) -> Grants:
        auth = self.config.auth
        if auth.mode == "development" and token is None:
            return Grants(identity="", room=room)
        if token is None:
            raise AuthError("a token is required to join")
        return verify_token(auth.secret, token, room)

    async def leave(self, peer: Peer) -> None:
        if peer.leaving or peer.id not in self.peers:
            return
        peer.leaving = True
        if peer.grace is not None:
            peer.grace.cancel()
            peer.grace = None
        room = peer.room
        self._apply(room.leave(peer.id))
        del self.peers[peer.id]
        for transport in (peer.publish, peer.subscribe):
            if transport is not None:
                self._endpoint_owner.pop(transport.endpoint, None)
                await transport.close()
        if not room.participants:
            self.rooms.pop(room.name, None)
        logger.info("%s left room %s", peer.id, room.name)

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
            peer.publish = PublishTransport(
                next(self._ids), self.forwarder, self.gathering, self._connection_state,
                self.transport_drops,
            )
            self._endpoint_owner[peer.publish.endpoint] = peer.id
        try:
            answer_sdp, media = await peer.publish.answer(offer_sdp)
        except Exception as exc:
            logger.info("publish offer from %s failed: %s", peer.id, exc)
            raise ProtocolError("negotiation_failed", f"cannot apply the offer: {exc}") from None
        events: list[rooms.Event] = []
        tracks = []
        for item in media:
            track_id = "TR_" + secrets.token_hex(6)
            producer = next(self._ids)
            codec = rtp.CODECS_BY_NAME.get(
                item.codec.mime_type.split("/")[-1].lower(), rtp.CODEC_OTHER
            )
            self.forwarder.add_producer(producer, peer.publish.endpoint, item.ssrc, codec)
            events += peer.room.publish(peer.id, track_id, item.kind)
            self.publications[track_id] = Publication(peer.room.tracks[track_id], producer, item)
            tracks.append(peer.room.tracks[track_id].describe())
        # The events only send to other participants, so the answer may follow them.
        self._apply(events)
        return {"type": "answer", "sdp": answer_sdp, "tracks": tracks}

    # -- subscribing -------------------------------------------------------------------

    def change_subscriptions(self, peer: Peer, track_ids: list[str], subscribe: bool) -> None:
        if subscribe and not peer.grants.can_subscribe:
            raise ProtocolError("forbidden", "the token does not allow subscribing")
        if subscribe:
            events = peer.room.subscribe(peer.id, track_ids)
        else:
            events = peer.room.unsubscribe(peer.id, track_ids)
        self._apply(events)

    def _subscribe(self, peer: Peer, track: rooms.Track) -> None:
        if not peer.grants.can_subscribe:
            return
        publication = self.publications[track.id]
        if peer.subscribe is None:
            peer.subscribe = SubscribeTransport(
                next(self._ids), self.forwarder, self.gathering, self._connection_state,
                self.transport_drops,
            )
            self._endpoint_owner[peer.subscribe.endpoint] = peer.id
        transceiver = peer.subscribe.add_track(track.kind, publication.media.codec)
        peer.subscriptions[track.id] = Subscription(track, transceiver, next(self._ids))
        self._negotiate(peer)

    def _unsubscribe(self, peer: Peer, track: rooms.Track) -> None:
        subscription = peer.subscriptions.pop(track.id, None)
        if subscription is None or peer.subscribe is None:
            return
        self.forwarder.remove_consumer(subscription.consumer)
        peer.subscribe.stop_track(subscription.transceiver)
        if not peer.leaving:
            self._negotiate(peer)

    def _negotiate(self, peer: Peer) -> None:
        """Send a new subscribe offer now, or after the answer to the outstanding one."""
        if peer.offer_outstanding:
            peer.renegotiate = True
            return
        peer.offer_outstanding = True
        self._spawn(self._send_offer(peer))

    async def _send_offer(self, peer: Peer, resend: bool = False) -> None:
        transport = peer.subscribe
        if transport is None or peer.leaving or transport.pc.connectionState == "closed":
            return  # the participant left while this offer waited its turn
        if resend:
            sdp = transport.pc.localDescription.sdp
        else:
            sdp = await transport.create_offer()
        mapping = [
            {
                "mid": s.transceiver.mid,
                "track": s.track.id,
                "participant": s.track.participant,
                "kind": s.track.kind,
            }
            for s in peer.subscriptions.values()
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
            if not subscription.active:
                self._activate(peer, transport, subscription)
        if peer.renegotiate:
            peer.renegotiate = False
            self._negotiate(peer)

    def _activate(
        self, peer: Peer, transport: SubscribeTransport, subscription: Subscription
    ) -> None:
        """Start forwarding a negotiated subscription: add its Consumer."""
        publication = self.publications.get(subscription.track.id)
        down = transport.down_track(subscription.transceiver)
        if publication is None or down is None:
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

    def _connection_state(self, transport: PeerTransport, state: str) -> None:
        """ICE or DTLS failed (consent expired included): the participant is gone."""
        logger.debug("endpoint %d: %s", transport.endpoint, state)
        if state != "failed":
            return
        peer = self.peers.get(self._endpoint_owner.get(transport.endpoint, ""))
        if peer is not None and not peer.leaving:
            logger.info("%s: peer connection failed; removing the participant", peer.id)
            self._spawn(self.leave(peer))

    def _check_sdp(self, sdp: str) -> None:
        limits = self.config.limits
        if len(sdp) > limits.max_sdp_bytes:
            raise ProtocolError("bad_field", f"sdp larger than {limits.max_sdp_bytes} bytes",
                                "sdp")
        mlines = sum(line.startswith("m=") for line in sdp.splitlines())
        if mlines > limits.max_sdp_mlines:
            raise ProtocolError("bad_field", f"sdp has more than {limits.max_sdp_mlines} "
                                "m-lines", "sdp")

    # -- room events -------------------------------------------------------------------

    def _apply(self, events: list[rooms.Event]) -> None:
        for event in events:
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
            elif isinstance(event, rooms.TrackUnpublished):
                publication = self.publications.pop(event.track.id, None)
                if publication is not None:
                    self.forwarder.remove_producer(publication.producer)
                self._broadcast(event.room, event.track.participant, {
                    "type": "track_unpublished", "track": event.track.id,
                })
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
