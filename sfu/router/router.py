"""``Router``: one room, carried out. The room (``sfu.router.room``) decides; the router
does what its changes say — control messages to participants, peer connections,
forwarder tables, events — and holds each participant's links (``participants``)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import orjson

from sfu import events, rtp
from sfu.control.auth import Grants
from sfu.control.schema import ProtocolError
from sfu.control.websocket import ControlConnection
from sfu.diagnostics.traversal import UNKNOWN
from sfu.media import SOURCES, PublishedMedia
from sfu.router import room as changes
from sfu.router.allocation import LayerAllocator
from sfu.router.context import RouterContext
from sfu.router.data import DataRelay
from sfu.router.feedback import FeedbackTimer
from sfu.router.info import room_info
from sfu.router.negotiation import SubscribeNegotiation
from sfu.router.participants import ParticipantLink
from sfu.router.room import Participant, Room, RoomError, Track
from sfu.router.speaking import SpeakerTimer
from sfu.transport.peer import PeerTransport, PublishTransport, SubscribeTransport, now_us

logger = logging.getLogger(__name__)

# A peer connection not connected this long after it was made counts as a timeout.
CONNECT_TIMEOUT_S = 20.0
TransportT = TypeVar("TransportT", bound=PeerTransport)


class Router:
    def __init__(self, ctx: RouterContext, room: Room,
                 on_empty: Callable[[Router], None] = lambda router: None) -> None:
        """``on_empty`` is called when the last participant has left."""
        self.ctx = ctx
        self.room = room
        self._on_empty = on_empty
        self._joining = False  # a join replacing the last participant keeps the room
        self.links: dict[str, ParticipantLink] = {}
        self.layers = LayerAllocator(ctx, room, lambda: self.links)
        self.feedback = FeedbackTimer(ctx, room, self.links, self.layers.remb_bps)
        self.speakers = SpeakerTimer(ctx, room, lambda message: self.broadcast("", message))
        self.data = DataRelay(room.name, ctx.config.limits, lambda: self.links, ctx.events,
                              ctx.stats.data_messages)
        self.negotiation = SubscribeNegotiation(
            ctx, room, lambda link: self._new_transport(link, SubscribeTransport))

    @property
    def name(self) -> str:
        return self.room.name

    def stop(self) -> None:
        """The room is over: its timers end."""
        self.feedback.stop()
        self.layers.stop()
        self.speakers.stop()

    # -- joining and leaving -----------------------------------------------------------

    async def join(self, control: ControlConnection, message: dict[str, Any],
                   grants: Grants) -> ParticipantLink:
        """Admit a participant (or resume one, or replace one with the same identity);
        `joined` is sent before the changes it causes reach the others."""
        identity = grants.identity
        resuming = self._resumable(identity, message.get("resume"))
        if resuming is not None:
            return self._resume(resuming, control, message, grants)
        existing = self._by_identity(identity) if identity else None
        if existing is not None:
            # The same identity again, not resuming: the newcomer wins (no ghosts).
            self._joining = True
            try:
                await self.remove(existing, "replaced",
                                  "the same identity joined from another connection")
            finally:
                self._joining = False
        metadata = self._checked_metadata(grants.metadata or {})
        participant = Participant("PA_" + secrets.token_hex(6), message["name"], identity,
                                  grants.can_publish, grants.can_subscribe,
                                  grants.can_publish_data, grants.can_update_metadata,
                                  metadata)
        room_changes = self.room.join(participant)
        link = ParticipantLink(participant, control, nat_type=message.get("nat_type", UNKNOWN))
        self.links[participant.id] = link
        control.send(self._joined(link, message))
        if self.speakers.detector.speakers:  # else told only at the next change
            control.send(self.speakers.message())
        self.ctx.events.publish(events.ParticipantJoined(
            self.name, participant=participant.id, identity=identity, name=participant.name))
        self.apply(room_changes)
        logger.info("%s (%s) joined room %s", participant.id, participant.name, self.name,
                    extra={"room": self.name, "participant": participant.id})
        return link

    def _joined(self, link: ParticipantLink, message: dict[str, Any], resumed: bool = False
                ) -> dict[str, Any]:
        participant, limits = link.participant, self.ctx.config.limits
        joined: dict[str, Any] = {
            "type": "joined",
            "participant": participant.describe(),
            "resume_token": link.resume_token,
            "participants": [p.describe() for p in self.room.participants.values()
                             if p.id != participant.id],
            "tracks": [t.describe() for t in self.room.tracks.values()],
            "ice_servers": self.ctx.turn_pool.ice_servers(participant.identity or participant.id),
            "simulcast": self.ctx.config.rtc.simulcast,
            "can_update_metadata": participant.can_update_metadata,
            "data_limits": {"max_message_bytes": limits.max_data_message_bytes,
                            "messages_per_second": limits.data_messages_per_second},
        }
        if resumed:
            joined["resumed"] = True
        if "id" in message:
            joined["id"] = message["id"]
        return joined

    def _by_identity(self, identity: str) -> ParticipantLink | None:
        return next((link for link in self.links.values()
                     if link.participant.identity == identity and not link.leaving), None)

    def _resumable(self, identity: str, resume_token: str | None) -> ParticipantLink | None:
        """The participant ``resume_token`` was issued to, if the joiner has the same
        identity (both none, for token-less development joins). Its old WebSocket may
        not have been seen to close yet: a phone that changed networks leaves a socket
        the server learns is dead only when pings go unanswered."""
        if resume_token is None:
            return None
        for link in self.links.values():
            if (not link.leaving and secrets.compare_digest(
                    link.resume_token.encode(), resume_token.encode())):
                return link if link.participant.identity == identity else None
        return None

    def _resume(self, link: ParticipantLink, control: ControlConnection,
                message: dict[str, Any], grants: Grants) -> ParticipantLink:
        """A participant whose WebSocket dropped is back within the grace period: its
        publications, subscriptions and peer connections carry on, under the grants of
        the token it came back with (never the old ones)."""
        if link.grace is not None:
            link.grace.cancel()
            link.grace = None
        if link.control is not None:  # the old socket, not yet seen to close: closed
            self.ctx.spawn(link.control.close())
        link.control = control
        link.participant.name = message["name"]
        link.nat_type = message.get("nat_type", link.nat_type)
        link.participant.can_publish_data = grants.can_publish_data
        link.participant.can_update_metadata = grants.can_update_metadata
        link.resume_token = secrets.token_urlsafe(24)  # each token resumes once
        control.send(self._joined(link, message, resumed=True))
        if self.speakers.detector.speakers:  # changes while it was away are lost
            control.send(self.speakers.message())
        # A subscription the new token allows again starts over; one the participant
        # left on purpose stays left.
        self.grant(link, grants.can_publish, grants.can_subscribe, subscribe_all=(
            grants.can_subscribe and not link.participant.can_subscribe))
        if link.offer_outstanding and link.subscribe is not None:
            # The offer may have been lost with the old socket: send it again.
            self.ctx.spawn(self.negotiation.send_offer(link, resend=True))
        logger.info("%s resumed in room %s", link.id, self.name)
        return link

    async def disconnected(self, link: ParticipantLink, control: ControlConnection) -> None:
        """The WebSocket of a joined participant ended without `leave`."""
        if link.control is not control or link.leaving:
            return  # already replaced by a newer connection, or leaving
        link.control = None
        grace = self.ctx.config.liveness.reconnect_grace_s
        if grace <= 0:
            await self.leave(link, "disconnected")
            return
        link.grace = asyncio.get_running_loop().call_later(
            grace, lambda: self.ctx.spawn(self._grace_over(link)))
        logger.info("%s disconnected; may resume for %s s", link.id, grace)

    async def _grace_over(self, link: ParticipantLink) -> None:
        link.grace = None
        if link.control is None:
            await self.leave(link, "disconnected")

    async def leave(self, link: ParticipantLink, reason: str = "left") -> None:
        """Remove a participant: its tracks, subscriptions and peer connections go."""
        if link.leaving or link.id not in self.links:
            return
        link.leaving = True
        for timer in (link.grace, link.failed):
            if timer is not None:
                timer.cancel()
        link.grace = link.failed = None
        self.apply(self.room.leave(link.id))
        del self.links[link.id]
        self.data.forget(link.id)
        await self._close_transports(link)
        self.ctx.events.publish(events.ParticipantLeft(
            self.name, participant=link.id, identity=link.participant.identity, reason=reason))
        logger.info("%s left room %s (%s)", link.id, self.name, reason,
                    extra={"room": self.name, "participant": link.id})
        if not self.links and not self._joining:
            self._on_empty(self)

    async def remove(self, link: ParticipantLink, reason: str, message: str = "") -> None:
        """Server-initiated removal: tell the client why, then close its socket."""
        control = link.control
        link.send({"type": "error", "code": reason, "message": message or f"removed: {reason}"})
        await self.leave(link, reason)
        if control is not None:
            await control.close()

    # -- publishing --------------------------------------------------------------------

    async def publish(self, link: ParticipantLink, offer_sdp: str,
                      sources: list[dict[str, str]] | None = None) -> dict[str, Any]:
        """Answer a publish offer: its new media become tracks, with the ``sources``
        (and names) given by mid. An offer of data channels alone needs no grant."""
        self.check_sdp(offer_sdp)
        limit = self.ctx.config.limits.max_tracks_per_participant
        media_lines = sum(line.startswith(("m=audio", "m=video"))
                          for line in offer_sdp.splitlines())
        data_only = not media_lines and "m=application" in offer_sdp
        if not link.participant.can_publish and not data_only:
            raise RoomError("forbidden", "the token does not allow publishing")
        if media_lines > limit:
            raise ProtocolError("too_many_tracks",
                                f"{media_lines} tracks offered; at most {limit}", "sdp")
        if link.publish is None:
            link.publish = self._new_transport(link, PublishTransport)
        try:
            answer_sdp, media = await link.publish.answer(offer_sdp)
        except Exception as exc:
            logger.info("publish offer from %s failed: %s", link.id, exc)
            raise ProtocolError("negotiation_failed", f"cannot apply the offer: {exc}") from None
        named = {s["mid"]: s for s in sources or ()}
        for item in media:
            source = named.get(item.mid, {}).get("source")
            if source is not None and SOURCES[source] != item.kind:
                raise ProtocolError("bad_field", f"source {source!r} is not a {item.kind} "
                                    f"source (mid {item.mid})", "tracks")
        room_changes: list[changes.Change] = []
        tracks = []
        # Tracks unpublished since the restart (a revoked grant) are not carried on.
        link.detached = [t for t in link.detached if t.id in self.room.tracks]
        for item in media:
            moved = self._reattach(link, link.publish.endpoint, item)
            if moved is not None:
                tracks.append(moved.describe())
                continue
            track_id = "TR_" + secrets.token_hex(6)
            layers = self._add_producers(link.publish.endpoint, item)
            spec = named.get(item.mid, {})
            room_changes += self.room.publish(
                link.id, track_id, layers[0], item, layers if len(layers) > 1 else (),
                spec.get("source", ""), spec.get("name", ""))
            tracks.append(self.room.tracks[track_id].describe())
        # Earlier tracks this offer did not carry on are gone (the client published
        # fewer tracks after its restart): their subscribers are told.
        for track in link.detached:
            room_changes += self.room.unpublish(track.id)
        link.detached = []
        # The changes only send to other participants, so the answer may follow them.
        self.apply(room_changes)
        return {"type": "answer", "sdp": answer_sdp, "tracks": tracks}

    def _add_producers(self, endpoint: int, item: PublishedMedia) -> tuple[int, ...]:
        """A forwarder producer for the media, or one per simulcast layer (low to high):
        a RID layer learns its SSRC from its first packet."""
        codec = rtp.CODECS_BY_NAME.get(item.codec.mime_type.split("/")[-1].lower(),
                                       rtp.CODEC_OTHER)
        producers = tuple(next(self.ctx.ids) for _ in range(item.layers))
        level_id = item.extensions.get(rtp.URI_AUDIO_LEVEL, 0) if item.kind == "audio" else 0
        for index, producer in enumerate(producers):
            ssrc, rid, rid_id, mid, mid_id = self._layer_source(item, index)
            self.ctx.forwarder.add_producer(producer, endpoint, ssrc, codec, rid, rid_id, mid,
                                            mid_id, level_id)
        return producers

    @staticmethod
    def _layer_source(item: PublishedMedia, index: int) -> tuple[int, bytes, int, bytes, int]:
        """(SSRC, RID, its extension id, mid, its extension id) of one layer."""
        if item.rids:
            return (0, item.rids[index].encode(), item.extensions[rtp.URI_RID],
                    item.mid.encode(), item.extensions.get(rtp.URI_MID, 0))
        if item.layer_ssrcs:
            return item.layer_ssrcs[index], b"", 0, b"", 0
        return item.ssrc, b"", 0, b"", 0

    def _reattach(self, link: ParticipantLink, endpoint: int,
                  item: PublishedMedia) -> Track | None:
        """After a restart, the publish offer's media carries the participant's earlier
        tracks on (by kind, in order): same track, same subscribers, the forwarder's
        producer moved to the new connection. A track whose payload type or header
        extensions changed cannot be moved (consumers map them): it is published anew."""
        for track in list(link.detached):
            if track.kind != item.kind:
                continue
            link.detached.remove(track)
            old = track.media
            if (old.codec.mime_type, old.codec.payload_type, old.extensions, old.layers) != (
                    item.codec.mime_type, item.codec.payload_type, item.extensions,
                    item.layers):
                logger.info("%s: track %s changed its codec or extensions on restart; "
                            "published anew", link.id, track.id)
                self.apply(self.room.unpublish(track.id))
                return None
            for index, producer in enumerate(track.producers):
                self.ctx.forwarder.move_producer(producer, endpoint,
                                                 self._layer_source(item, index)[0])
            track.media = item
            return track
        return None

    def unpublish_own(self, link: ParticipantLink, track_id: str) -> dict[str, Any]:
        """A participant stops publishing one of its tracks (a screen share ends)."""
        if track_id not in link.participant.tracks:
            raise RoomError("unknown_track", f"you publish no track {track_id!r}")
        track = self.room.tracks[track_id]
        self.apply(self.room.unpublish(track_id))
        if link.publish is not None:
            link.publish.forget(track.media.mid)
        return {"type": "unpublished", "track": track_id}

    # -- metadata --------------------------------------------------------------------

    def set_metadata(self, participant_id: str, metadata: dict[str, Any]) -> None:
        """Replace a participant's metadata; everyone in the room, the participant
        too, gets `participant_updated`."""
        participant = self.room.participant(participant_id)
        participant.metadata = self._checked_metadata(metadata)
        self.broadcast("", {"type": "participant_updated",
                            "participant": participant.describe()})
        self.ctx.events.publish(events.ParticipantUpdated(
            self.name, participant=participant.id, identity=participant.identity,
            metadata=participant.metadata))

    def set_own_metadata(self, link: ParticipantLink, metadata: dict[str, Any]
                         ) -> dict[str, Any]:
        if not link.participant.can_update_metadata:
            raise RoomError("forbidden", "the token does not allow setting metadata")
        self.set_metadata(link.id, metadata)
        return {"type": "metadata_set"}

    def _checked_metadata(self, metadata: dict[str, Any]) -> dict[str, Any]:
        limit = self.ctx.config.limits.max_metadata_bytes
        try:
            size = len(orjson.dumps(metadata))
        except TypeError:
            raise ProtocolError("bad_field", "metadata must be JSON", "metadata") from None
        if size > limit:
            raise ProtocolError("bad_field", f"metadata is {size} bytes as JSON; at most "
                                f"{limit}", "metadata")
        return metadata

    # -- restarting --------------------------------------------------------------------

    async def restart(self, link: ParticipantLink, relay_only: bool) -> dict[str, Any]:
        """Replace the participant's peer connections, keeping its place in the room.

        The client asks when ICE fails or takes too long (then usually ``relay_only``,
        to come in through TURN): the old connections close, the subscriptions move to
        a new subscribe connection (a new `offer` follows), and the next `publish` offer
        carries the tracks on. Nobody else sees a leave or a join.
        """
        if link.failed is not None:
            link.failed.cancel()
            link.failed = None
        await self._close_transports(link)
        link.offer_outstanding = link.renegotiate = False
        participant = link.participant
        link.detached = [self.room.tracks[t] for t in participant.tracks]
        for subscription in participant.subscriptions.values():
            self.negotiation.retire(subscription)
            subscription.consumer = next(self.ctx.ids)
            subscription.slot, subscription.failed = None, False
        if participant.subscriptions:
            self.negotiation.add(link)
        self.ctx.stats.restarts[relay_only] += 1
        self.ctx.events.publish(events.ParticipantRestarted(
            self.name, participant=link.id, relay_only=relay_only))
        logger.info("%s restarted its connections%s", link.id,
                    " (relay only)" if relay_only else "",
                    extra={"room": self.name, "participant": link.id})
        # Fresh credentials: the ones from `joined` may be close to their expiry.
        return {"type": "restarted", "relay_only": relay_only,
                "ice_servers": self.ctx.turn_pool.ice_servers(participant.identity or link.id)}

    async def _close_transports(self, link: ParticipantLink) -> None:
        """Close both connections; from here on their states are no longer reported."""
        transports = (link.publish, link.subscribe)
        link.publish = link.subscribe = None
        for transport in transports:
            if transport is not None:
                await transport.close()

    def _connection_lost(self, link: ParticipantLink, transport: PeerTransport) -> None:
        """A peer connection failed: the client may restart within the grace period
        (it is told so); after it, the participant is removed."""
        grace = self.ctx.config.liveness.restart_grace_s
        if grace <= 0 or link.control is None:
            self.ctx.spawn(self.leave(link, "failed"))
            return
        link.send({"type": "connection_failed", "pc": transport.role})
        if link.failed is None:
            link.failed = asyncio.get_running_loop().call_later(
                grace, lambda: self.ctx.spawn(self._failed_over(link)))

    async def _failed_over(self, link: ParticipantLink) -> None:
        link.failed = None
        logger.info("%s: peer connection failed and no restart came; removing", link.id)
        await self.leave(link, "failed")

    # -- subscriptions, candidates, grants, mute ---------------------------------------

    def change_subscriptions(self, link: ParticipantLink, track_ids: list[str],
                             subscribe: bool) -> None:
        if subscribe:
            self.apply(self.room.subscribe(link.id, track_ids))
        else:
            self.apply(self.room.unsubscribe(link.id, track_ids))

    def set_subscription(self, link: ParticipantLink, message: dict[str, Any]) -> None:
        """A subscriber's wishes for one track (its tile's size, quality, or hidden):
        the layer follows at once, switching at the next keyframe."""
        subscription = link.participant.subscriptions.get(message["track"])
        if subscription is None:
            raise RoomError("unknown_track", f"not subscribed to {message['track']!r}")
        given = [n for n in ("max_width", "max_height", "quality", "paused")
                 if message.get(n) is not None]
        if not given:
            raise ProtocolError("bad_field", "set_subscription needs at least one of "
                                "max_width, max_height, quality, paused", "track")
        for name in given:
            if name in ("max_width", "max_height") and subscription.track.source == "screen":
                continue  # never downscaled to fit a tile: its text must stay legible
            setattr(subscription.preferences, name, message[name])
        self.layers.run(now_us())

    async def add_candidate(self, link: ParticipantLink, pc_name: str,
                            candidate: dict[str, Any] | None) -> None:
        transport = link.publish if pc_name == "publish" else link.subscribe
        if transport is None or candidate is None:
            return
        try:
            await transport.add_candidate(candidate)
        except ValueError as exc:
            raise ProtocolError("bad_field", str(exc), "candidate") from None

    def grant(self, link: ParticipantLink, can_publish: bool, can_subscribe: bool,
              subscribe_all: bool) -> None:
        """Hold a participant to new grants; what it may no longer do stops now."""
        self.apply(self.room.grant(link.id, can_publish=can_publish,
                                   can_subscribe=can_subscribe, subscribe_all=subscribe_all))

    def mute(self, track_id: str, muted: bool) -> None:
        """Pause (or resume) forwarding a track to every subscriber, server-side."""
        track = self.room.tracks.get(track_id)
        if track is None:
            raise KeyError(f"no track {track_id!r} in room {self.name!r}")
        if track.muted == muted:
            return
        track.muted = muted
        for producer in track.producers:
            self.ctx.forwarder.set_producer_paused(producer, muted)
            if not muted and track.kind == "video":
                self.ctx.forwarder.request_keyframe(producer, now_us())
        self.broadcast("", {"type": "track_muted", "track": track_id, "muted": muted})
        self.ctx.events.publish(events.TrackMuted(
            self.name, participant=track.participant, track=track_id, muted=muted))

    def mute_own(self, link: ParticipantLink, track_id: str, muted: bool) -> None:
        """A participant turns its own camera or microphone off (or on): forwarding
        pauses, and everyone hears `track_muted`, as for a server-side mute."""
        if track_id not in self.room.tracks:
            raise RoomError("unknown_track", f"no track {track_id!r} in this room")
        if track_id not in link.participant.tracks:
            raise RoomError("forbidden", "only your own tracks can be muted")
        self.mute(track_id, muted)

    def info(self) -> dict[str, Any]:
        """The room's participants, tracks and per-subscription forwarding stats."""
        return room_info(self.room, self.links, self.ctx.forwarder, self.layers)

    def check_sdp(self, sdp: str) -> None:
        limits = self.ctx.config.limits
        if len(sdp) > limits.max_sdp_bytes:
            raise ProtocolError("bad_field", f"sdp larger than {limits.max_sdp_bytes} bytes",
                                "sdp")
        if sum(line.startswith("m=") for line in sdp.splitlines()) > limits.max_sdp_mlines:
            raise ProtocolError("bad_field", f"sdp has more than {limits.max_sdp_mlines} "
                                "m-lines", "sdp")

    # -- carrying out the room's changes -----------------------------------------------

    def apply(self, room_changes: list[changes.Change]) -> None:
        for change in room_changes:
            if isinstance(change, changes.ParticipantAdded):
                participant = change.participant
                self.broadcast(participant.id, {"type": "participant_joined",
                                                "participant": participant.describe()})
            elif isinstance(change, changes.ParticipantRemoved):
                self.broadcast(change.participant.id, {"type": "participant_left",
                                                       "participant": change.participant.id})
            elif isinstance(change, changes.TrackAdded):
                self._track_added(change.track)
            elif isinstance(change, changes.TrackRemoved):
                self._track_removed(change.track)
            elif isinstance(change, changes.SubscriptionAdded):
                self.negotiation.add(self.links[change.subscriber])
            elif isinstance(change, changes.SubscriptionRemoved):
                self.negotiation.remove(self.links[change.subscriber], change.subscription)

    def _track_added(self, track: Track) -> None:
        self.broadcast(track.participant, {"type": "track_published", "track": track.describe()})
        self.ctx.events.publish(events.TrackPublished(
            self.name, participant=track.participant, track=track.id, kind=track.kind))
        for producer in track.producers:
            self.ctx.loss_listeners[producer] = self.feedback.wake
        self.feedback.wake()
        self.layers.wake()
        self.speakers.wake()

    def _track_removed(self, track: Track) -> None:
        for producer in track.producers:
            self.ctx.forwarder.remove_producer(producer)
            self.ctx.loss_listeners.pop(producer, None)
        self.broadcast(track.participant, {"type": "track_unpublished", "track": track.id})
        self.ctx.events.publish(events.TrackUnpublished(
            self.name, participant=track.participant, track=track.id, kind=track.kind))
        self.feedback.wake()
        self.layers.wake()
        self.speakers.wake()

    def broadcast(self, exclude: str, message: dict[str, Any]) -> None:
        for participant_id, link in self.links.items():
            if participant_id != exclude:
                link.send(message)

    # -- peer connections --------------------------------------------------------------

    def _new_transport(self, link: ParticipantLink, kind: type[TransportT]) -> TransportT:
        ctx = self.ctx
        transport = kind(next(ctx.ids), ctx.forwarder, ctx.gathering,
                         lambda t, state: self._connection_state(link, t, state),
                         ctx.stats.transport_drops)
        transport.turn_pool = ctx.turn_pool  # counts the relays its selected pairs use
        if isinstance(transport, PublishTransport):
            transport.accept_simulcast = ctx.config.rtc.simulcast
            transport.on_data = lambda label, message: (
                None if link.leaving else self.data.received(link, label, message))
        elif isinstance(transport, SubscribeTransport):
            transport.offer_twcc = ctx.config.rtc.bandwidth_estimation
        # By weak reference: the timer keeps no transport alive; one gone timed out nothing.
        ref: weakref.ref[PeerTransport] = weakref.ref(transport)
        asyncio.get_running_loop().call_later(CONNECT_TIMEOUT_S, self._connect_timeout, ref,
                                              link.nat_type)
        ctx.stats.traversal.attempted(link.nat_type)
        return transport

    def _connect_timeout(self, ref: weakref.ref[PeerTransport], nat_type: str) -> None:
        transport = ref()
        if (transport is not None and not transport.connected.is_set()
                and not transport.is_closed):
            self.ctx.stats.not_connected(nat_type, "timeout")

    def _connection_state(self, link: ParticipantLink, transport: PeerTransport,
                          state: str) -> None:
        """Statistics and events; ICE or DTLS failure (consent expiry included) removes
        the participant."""
        logger.debug("endpoint %d: %s", transport.endpoint, state)
        selected, stats = transport.selected, self.ctx.stats
        if state == "connected" and selected is not None:
            stats.connected(link.nat_type, selected.local_type, selected.remote_type,
                            time.monotonic() - transport.created)
        elif state in ("failed", "closed") and not transport.closing and (
                not transport.connected.is_set()):
            stats.not_connected(link.nat_type, "failed")
        if transport not in (link.publish, link.subscribe) or link.id not in self.links:
            return  # an old connection (restarted), or the participant has left
        self.ctx.events.publish(events.ConnectionStateChanged(
            self.name, participant=link.id, connection=transport.role, state=state,
            local_candidate=selected.local_type if selected else None,
            remote_candidate=selected.remote_type if selected else None,
        ))
        # aiortc reports ICE consent expiry (RFC 7675) as "closed" when ICE had not
        # reached "completed": a close we did not ask for is a failure too.
        if (state == "failed" or (state == "closed" and not transport.closing)) and (
                not link.leaving):
            logger.info("%s: %s connection failed", link.id, transport.role)
            self._connection_lost(link, transport)
