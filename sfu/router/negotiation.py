"""The subscribe connection's offer/answer: the server offers, the participant answers.

One offer is outstanding at a time; changes meanwhile wait for the answer and go in the
next offer. A subscription's Consumer is added once an answer has negotiated its m-line.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

from sfu import events, rtp
from sfu.control.schema import ProtocolError
from sfu.router.context import RouterContext
from sfu.router.participants import ParticipantLink
from sfu.router.room import Room, Subscription
from sfu.transport.peer import SubscribeTransport, now_us

logger = logging.getLogger(__name__)


class SubscribeNegotiation:
    def __init__(self, ctx: RouterContext, room: Room,
                 new_transport: Callable[[ParticipantLink], SubscribeTransport]) -> None:
        self._ctx = ctx
        self._room = room
        self._new_transport = new_transport

    def add(self, link: ParticipantLink) -> None:
        """A subscription was added: it goes in the next offer."""
        if link.subscribe is None:
            link.subscribe = self._new_transport(link)
        self.negotiate(link)

    def remove(self, link: ParticipantLink, subscription: Subscription) -> None:
        """A subscription ended: its Consumer goes now, its m-line in the next offer."""
        self.retire(subscription)
        if subscription.slot is None or link.subscribe is None or link.leaving:
            return  # never offered; or the whole connection is closing
        link.subscribe.stop_track(subscription.slot)
        self.negotiate(link)

    def retire(self, subscription: Subscription) -> None:
        """Remove its Consumer, keeping what it forwarded in the server's totals."""
        forwarder, retired = self._ctx.forwarder, self._ctx.stats.forwarded_retired
        packets, octets = forwarder.consumer_stats(subscription.consumer)
        retired[(subscription.track.kind, "packets")] += packets
        retired[(subscription.track.kind, "bytes")] += octets
        forwarder.remove_consumer(subscription.consumer)
        subscription.active = False

    def negotiate(self, link: ParticipantLink) -> None:
        """Send a new subscribe offer now, or after the answer to the outstanding one."""
        if link.offer_outstanding:
            link.renegotiate = True
            return
        link.offer_outstanding = True
        self._ctx.spawn(self.send_offer(link))

    def _place(self, link: ParticipantLink, transport: SubscribeTransport) -> None:
        """Give each subscription no offer has carried yet its m-line: a departed
        track's the subscriber has answered inactive (recycled), or a new one."""
        for subscription in link.participant.subscriptions.values():
            if subscription.slot is None and subscription.track.id in self._room.tracks:
                subscription.slot = transport.add_track(
                    subscription.track.kind, subscription.track.media.codec)

    async def send_offer(self, link: ParticipantLink, resend: bool = False) -> None:
        transport = link.subscribe
        if transport is None or link.leaving or transport.is_closed:
            return  # the participant left while this offer waited its turn
        if resend:
            sdp: str | None = transport.local_sdp
        else:
            self._place(link, transport)
            if not transport.has_media:
                # Subscribed and unsubscribed before any offer: nothing to offer.
                link.offer_outstanding = link.renegotiate = False
                return
            sdp = await transport.create_offer()
        if sdp is None:
            return  # the connection closed meanwhile: the participant is leaving
        mapping = []
        for s in link.participant.subscriptions.values():
            mid = transport.mid(s.slot) if s.slot is not None else None
            if mid is not None:
                mapping.append({"mid": mid, "track": s.track.id,
                                "participant": s.track.participant, "kind": s.track.kind})
        link.send({"type": "offer", "sdp": sdp, "tracks": mapping})

    async def answer(self, link: ParticipantLink, answer_sdp: str) -> None:
        if len(answer_sdp) > self._ctx.config.limits.max_sdp_bytes:
            raise ProtocolError("bad_field", "sdp too large", "sdp")
        transport = link.subscribe
        if transport is None or not link.offer_outstanding:
            raise ProtocolError("negotiation_failed", "no subscribe offer is outstanding")
        try:
            await transport.apply_answer(answer_sdp)
        except Exception as exc:
            raise ProtocolError("negotiation_failed", f"cannot apply the answer: {exc}") from None
        link.offer_outstanding = False
        for subscription in link.participant.subscriptions.values():
            if not subscription.active and not subscription.failed:
                self._activate(link, transport, subscription)
        if link.renegotiate:
            link.renegotiate = False
            self.negotiate(link)

    def _activate(self, link: ParticipantLink, transport: SubscribeTransport,
                  subscription: Subscription) -> None:
        """Start forwarding a negotiated subscription: add its Consumer."""
        track = subscription.track
        if (track.id not in self._room.tracks or subscription.slot is None
                or transport.mid(subscription.slot) is None):
            return  # gone, or added after this offer was made: the next offer has it
        down = transport.down_track(subscription.slot)
        if down is None:
            self._cannot_receive(link, subscription)
            return
        media = track.media
        ext_map = {pub_id: down.extensions[uri] for uri, pub_id in media.extensions.items()
                   if uri in down.extensions and uri != rtp.URI_TWCC}
        self._ctx.forwarder.add_consumer(
            subscription.consumer,
            track.producer,
            transport.endpoint,
            down.ssrc,
            track.kind == "video",
            {media.codec.payload_type: down.payload_type},
            ext_map,
            down.mid.encode(),
            down.extensions.get(rtp.URI_MID, 0),
            down.extensions.get(rtp.URI_ABS_SEND_TIME, 0),
            # RFC 3550 §5.1: initial sequence number and timestamp are random.
            random.getrandbits(16),
            random.getrandbits(32),
            down.extensions.get(rtp.URI_TWCC, 0),
        )
        subscription.active = True
        if track.kind == "video":
            self._ctx.forwarder.request_keyframe(track.producer, now_us())

    def _cannot_receive(self, link: ParticipantLink, subscription: Subscription) -> None:
        """The subscriber's answer rejected the track or took none of its codecs (the
        SFU forwards, never transcodes): say so, rather than leave a black tile."""
        subscription.failed = True
        track = subscription.track
        codec = track.media.codec.mime_type
        link.send({"type": "subscription_failed", "track": track.id,
                   "participant": track.participant, "kind": track.kind, "codec": codec,
                   "reason": "codec",
                   "message": f"this client cannot receive {codec}, the codec "
                              f"{track.participant} publishes {track.kind} in"})
        self._ctx.events.publish(events.SubscriptionFailed(
            self._room.name, participant=link.id, track=track.id, codec=codec))
        logger.info("%s cannot receive %s (%s)", link.id, track.id, codec)
