"""What the embedding and admin APIs show of a room: its participants, their tracks and
each subscription's forwarding figures."""

from __future__ import annotations

from typing import Any

from sfu.fastpath import Forwarder
from sfu.router.allocation import LayerAllocator
from sfu.router.participants import ParticipantLink
from sfu.router.room import Room


def room_info(room: Room, links: dict[str, ParticipantLink], forwarder: Forwarder,
              layers: LayerAllocator) -> dict[str, Any]:
    """The room's participants, tracks and per-subscription forwarding stats."""
    participants = []
    for link in links.values():
        participant = link.participant
        subscriptions = []
        for track_id, subscription in participant.subscriptions.items():
            packets, octets = forwarder.consumer_stats(subscription.consumer)
            entry: dict[str, Any] = {"track": track_id, "packets": packets,
                                     "bytes": octets, "active": subscription.active}
            entry.update(layers.describe(subscription))
            heard = forwarder.consumer_report(subscription.consumer)
            if heard is not None:  # the subscriber's own receiver report
                fraction, lost, jitter, rtt_us = heard
                entry.update(fraction_lost=fraction / 256, packets_lost=lost,
                             jitter=jitter, rtt_ms=rtt_us / 1000 if rtt_us >= 0 else None)
            subscriptions.append(entry)
        participants.append({
            "id": link.id, "identity": participant.identity, "name": participant.name,
            "connected": link.control is not None,
            "nat_type": link.nat_type,
            "can_publish": participant.can_publish,
            "can_subscribe": participant.can_subscribe,
            "can_publish_data": participant.can_publish_data,
            "can_update_metadata": participant.can_update_metadata,
            "metadata": participant.metadata,
            "tracks": [{"id": t.id, "kind": t.kind, "muted": t.muted, "source": t.source,
                        "name": t.name, "codec": t.media.codec.mime_type}
                       for t in map(room.tracks.__getitem__, participant.tracks)],
            "subscriptions": subscriptions,
            "estimate_bps": layers.estimate_bps(link),
        })
    return {"name": room.name, "max_participants": room.max_participants,
            "auto_subscribe": room.auto_subscribe, "participants": participants}

