"""A room's simulcast layers and subscribers' bandwidth, carried out: every TICK_US the
layers are measured, each subscriber's subscriptions get their layers (sfu.router.layers)
within its bandwidth estimate (sfu.router.bandwidth), the forwarder is told (it switches
at the next keyframe), probes are paced, and subscribers hear of their new layers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sfu.router.bandwidth import PROBE_STEP_US, Downlink
from sfu.router.context import RouterContext
from sfu.router.layers import Layer, LayerMeter, Request, allocate, wanted_bps
from sfu.router.participants import ParticipantLink
from sfu.router.room import Room, Subscription, Track
from sfu.transport.peer import now_us

TICK_US = 500_000
REMB_FLOOR_BPS = 150_000  # what a publisher may always send: its lowest layer, at least
REMB_SIMULCAST_FACTOR = 1.5  # the best subscriber's estimate, plus the lower layers
IDLE = Layer(0, 0, 0, False)  # a producer not measured yet


class LayerAllocator:
    def __init__(self, ctx: RouterContext, room: Room,
                 links: Callable[[], dict[str, ParticipantLink]]) -> None:
        self._ctx = ctx
        self._room = room
        self._links = links
        self._meter = LayerMeter()
        self._layers: dict[int, Layer] = {}  # producer → its last measure
        self.downlinks: dict[int, Downlink] = {}  # subscribe endpoint → its downlink
        self._tick: asyncio.TimerHandle | None = None
        self._probe_step: asyncio.TimerHandle | None = None

    # -- timers ------------------------------------------------------------------------

    def wake(self) -> None:
        """Tracks came or went: tick while the room has any."""
        if self._room.tracks and self._tick is None:
            self._tick = asyncio.get_running_loop().call_later(TICK_US / 1e6, self._on_tick)
        elif not self._room.tracks:
            self.stop()

    def stop(self) -> None:
        for handle in (self._tick, self._probe_step):
            if handle is not None:
                handle.cancel()
        self._tick = self._probe_step = None
        for endpoint in self.downlinks:
            self._ctx.feedback_listeners.pop(endpoint, None)
        self.downlinks.clear()

    def _on_tick(self) -> None:
        self._tick = None
        self.run(now_us())
        self.wake()

    # -- one round ---------------------------------------------------------------------

    def run(self, now: int) -> None:
        """Measure, allocate, probe and report, once."""
        self._measure(now)
        self._follow_endpoints()
        for link in list(self._links().values()):
            if link.subscribe is not None:
                self._allocate(link, self.downlinks.get(link.subscribe.endpoint), now)
        if any(d.probing for d in self.downlinks.values()) and self._probe_step is None:
            self._schedule_probe_step()

    def _measure(self, now: int) -> None:
        forwarder = self._ctx.forwarder
        current: dict[int, Layer] = {}
        for track in self._room.tracks.values():
            for producer in track.producers:
                stats = forwarder.producer_stats(producer)
                if stats is not None:
                    _, packets, octets, width, height = stats
                    current[producer] = self._meter.sample(producer, packets, octets, width,
                                                           height, now)
        for gone in self._layers.keys() - current.keys():
            self._meter.forget(gone)
        self._layers = current

    def _follow_endpoints(self) -> None:
        """A downlink per current subscribe connection, hearing its feedback."""
        if not self._ctx.config.rtc.bandwidth_estimation:
            return
        endpoints = {link.subscribe.endpoint: link for link in self._links().values()
                     if link.subscribe is not None}
        for gone in self.downlinks.keys() - endpoints.keys():
            del self.downlinks[gone]
            self._ctx.feedback_listeners.pop(gone, None)
        for endpoint in endpoints.keys() - self.downlinks.keys():
            self.downlinks[endpoint] = Downlink(self._ctx.config.rtc.max_video_bitrate_bps,
                                                now_us())
            self._ctx.feedback_listeners[endpoint] = self._feedback_of(endpoint)

    def _feedback_of(self, endpoint: int) -> Callable[[bytes], None]:
        forwarder = self._ctx.forwarder

        def sent(base: int, count: int) -> list[tuple[int, int, int] | None]:
            return forwarder.sent_packets(endpoint, base, count)

        def on_feedback(packet: bytes) -> None:
            downlink = self.downlinks.get(endpoint)
            if downlink is not None:
                downlink.on_feedback(packet, sent, now_us())
        return on_feedback

    def layers_of(self, track: Track) -> list[Layer]:
        return [self._layers.get(p, IDLE) for p in track.producers]

    def _allocate(self, link: ParticipantLink, downlink: Downlink | None, now: int) -> None:
        forwarder = self._ctx.forwarder
        requests, fixed_bps = [], 0
        for subscription in link.participant.subscriptions.values():
            if not subscription.active:
                continue
            track = subscription.track
            if track.layers:
                requests.append(Request(track.id, self.layers_of(track),
                                        subscription.preferences, subscription.layer))
            else:
                forwarder.set_consumer_paused(subscription.consumer,
                                              subscription.preferences.paused)
                if not subscription.preferences.paused:
                    fixed_bps += self._layers.get(track.producer, IDLE).bitrate_bps
        estimate = downlink.estimate_bps if downlink is not None else None
        limit = downlink.budget_bps(now) if downlink is not None else None
        budget = None if limit is None else max(0, limit - fixed_bps)
        chosen = allocate(requests, budget)
        for subscription in link.participant.subscriptions.values():
            if subscription.active and subscription.track.layers:
                self._apply(subscription, chosen.get(subscription.track.id))
            self._report(link, subscription, estimate)
        if downlink is not None:
            downlink.settle(now)
            wanted = wanted_bps(requests) + fixed_bps
            if requests and downlink.should_probe(wanted, now):
                downlink.start_probe(wanted, now)

    def _apply(self, subscription: Subscription, layer: int | None) -> None:
        forwarder = self._ctx.forwarder
        if layer is None and not subscription.preferences.paused:
            return  # no layer is being sent (yet): nothing better to switch to
        if layer is None:
            forwarder.set_consumer_paused(subscription.consumer, True)
        else:
            forwarder.set_consumer_source(subscription.consumer,
                                          subscription.track.layers[layer])
            forwarder.set_consumer_paused(subscription.consumer, False)
        subscription.layer = layer

    def _report(self, link: ParticipantLink, subscription: Subscription,
                estimate: int | None) -> None:
        """Tell the subscriber the layer it now receives, when that changed."""
        track = subscription.track
        source = self._ctx.forwarder.consumer_source(subscription.consumer)
        if not subscription.active or source is None:
            return
        paused = subscription.preferences.paused
        index = track.layers.index(source[0]) if source[0] in track.layers else None
        state = (None if paused else index, paused)
        if state == subscription.reported or (not track.layers and not paused
                                              and subscription.reported is None):
            return
        subscription.reported = state
        layer = self._layers.get(source[0]) if not paused else None
        rid = track.media.rids[index] if index is not None and track.media.rids else None
        link.send({"type": "layer", "track": track.id, "rid": None if paused else rid,
                   "width": layer.width or None if layer else None,
                   "height": layer.height or None if layer else None,
                   "paused": paused, "estimate_bps": estimate})

    # -- probing -----------------------------------------------------------------------

    def _schedule_probe_step(self) -> None:
        self._probe_step = asyncio.get_running_loop().call_later(
            PROBE_STEP_US / 1e6, self._on_probe_step)

    def _on_probe_step(self) -> None:
        self._probe_step = None
        now, forwarder, probing = now_us(), self._ctx.forwarder, False
        for link in list(self._links().values()):
            downlink = (self.downlinks.get(link.subscribe.endpoint)
                        if link.subscribe is not None else None)
            if downlink is None or not downlink.probing:
                continue
            count = downlink.probe_packets(now)
            consumer = self._video_consumer(link)
            if count and consumer is not None:
                before = forwarder.counters()["probe_packets"]
                octets = forwarder.probe(consumer, count, now)
                downlink.probe_sent(octets, forwarder.counters()["probe_packets"] - before)
            downlink.settle(now)
            probing = probing or downlink.probing
        if probing:
            self._schedule_probe_step()

    @staticmethod
    def _video_consumer(link: ParticipantLink) -> int | None:
        for subscription in link.participant.subscriptions.values():
            if subscription.active and subscription.track.kind == "video":
                return subscription.consumer
        return None

    # -- what the others ask of it -----------------------------------------------------

    def remb_bps(self, track: Track, maximum: int) -> int:
        """The bitrate to ask a publisher's track for: its configured maximum, unless
        every subscriber's downlink has shown its limit (and none can take that much).
        A subscriber still finding its bandwidth must not hold the publisher back, or
        neither would ever climb."""
        if track.kind != "video":
            return maximum
        now, best = now_us(), 0
        for link in self._links().values():
            subscription = link.participant.subscriptions.get(track.id)
            if subscription is None or link.subscribe is None:
                continue
            downlink = self.downlinks.get(link.subscribe.endpoint)
            if downlink is None or downlink.estimate_bps is None or not downlink.limited(now):
                return maximum
            best = max(best, downlink.estimate_bps)
        if best == 0:
            return maximum
        if track.layers:
            best = int(best * REMB_SIMULCAST_FACTOR)
        return max(REMB_FLOOR_BPS, min(maximum, best))

    def view(self) -> tuple[list[int], dict[str, int]]:
        """The estimates of the downlinks that have one, and simulcast subscriptions by
        the RID they get ("paused" when none)."""
        estimates = [e for d in self.downlinks.values() if (e := d.estimate_bps) is not None]
        layers: dict[str, int] = {}
        for link in self._links().values():
            for subscription in link.participant.subscriptions.values():
                if subscription.active and subscription.reported is not None and (
                        subscription.track.layers):
                    index, paused = subscription.reported
                    rids = subscription.track.media.rids
                    name = "paused" if paused or index is None else (
                        rids[index] if rids else str(index))
                    layers[name] = layers.get(name, 0) + 1
        return estimates, layers

    def estimate_bps(self, link: ParticipantLink) -> int | None:
        """The subscriber's downlink estimate, None until its feedback came."""
        if link.subscribe is None or link.subscribe.endpoint not in self.downlinks:
            return None
        return self.downlinks[link.subscribe.endpoint].estimate_bps

    def describe(self, subscription: Subscription) -> dict[str, Any]:
        """For room_info: the layer a subscription receives and is headed for."""
        track = subscription.track
        source = self._ctx.forwarder.consumer_source(subscription.consumer)
        if not track.layers or source is None:
            return {}
        current = track.layers.index(source[0]) if source[0] in track.layers else None
        return {"layer": current, "target_layer": subscription.layer,
                "layers": [{"bitrate_bps": layer.bitrate_bps, "width": layer.width,
                            "height": layer.height, "active": layer.active}
                           for layer in self.layers_of(track)]}
