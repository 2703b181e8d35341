"""Which simulcast layer each subscription gets. Sans-IO: the caller samples the
forwarder's counters and carries the choice out.

A subscription asks (``set_subscription``) for at most a size and a quality, or to be
paused; its subscriber's downlink has a bandwidth estimate. Of the layers the publisher
is sending, each subscription gets the highest its size and quality allow, as far as the
estimate goes: every subscription first gets its lowest layer, then they climb a layer at
a time, in turn, while the sum fits. Climbing above the layer a subscription has now
needs headroom (``UPSWITCH_HEADROOM``), so a choice that just fits does not flap.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

QUALITIES = ("low", "medium", "high")
# A layer above the current one must fit in this share of the estimate.
UPSWITCH_HEADROOM = 0.85
# A layer with no packet for this long is not being sent (a browser drops its upper
# layers when its own uplink estimate is low).
LAYER_IDLE_US = 1_500_000
RATE_SMOOTHING = 0.5  # weight of the newest sample in a layer's bitrate
# A layer's bitrate, for choosing, is its recent peak, decaying by this share a second: a
# publisher ramping up (or a burst of keyframes) would otherwise make it look cheaper
# than it is about to be, and the choice would climb and fall back.
PEAK_DECAY_PER_S = 0.05


@dataclass
class Preferences:
    """What a subscriber asked for one track (0: no limit)."""

    max_width: int = 0
    max_height: int = 0
    quality: str = "high"
    paused: bool = False


@dataclass(frozen=True)
class Layer:
    bitrate_bps: int
    width: int  # 0: unknown (no VP8 keyframe seen)
    height: int
    active: bool  # being sent


@dataclass(frozen=True)
class Request:
    """One subscription, for ``allocate``."""

    key: Hashable
    layers: Sequence[Layer]  # low to high
    preferences: Preferences
    current: int | None  # the layer it gets now


class LayerMeter:
    """Each producer's receive bitrate and activity, from the forwarder's cumulative
    (packets, bytes) counters sampled now and then."""

    def __init__(self) -> None:
        # producer → (packets, bytes, when sampled, when packets last grew, bitrate, peak)
        self._samples: dict[int, tuple[int, int, int, int, float, float]] = {}

    def sample(self, producer: int, packets: int, octets: int, width: int, height: int,
               now_us: int) -> Layer:
        before = self._samples.get(producer)
        if before is None:
            self._samples[producer] = (packets, octets, now_us, now_us if packets else -1,
                                       0.0, 0.0)
            return Layer(0, width, height, packets > 0)
        last_packets, last_octets, last_us, grew_us, rate, peak = before
        elapsed = now_us - last_us
        if elapsed > 0:
            sample = (octets - last_octets) * 8e6 / elapsed
            rate = sample if rate == 0 else (
                RATE_SMOOTHING * sample + (1 - RATE_SMOOTHING) * rate)
            peak = max(rate, peak * (1 - PEAK_DECAY_PER_S * elapsed / 1e6))
        if packets > last_packets:
            grew_us = now_us
        self._samples[producer] = (packets, octets, now_us, grew_us, rate, peak)
        active = grew_us >= 0 and now_us - grew_us < LAYER_IDLE_US
        return Layer(int(peak), width, height, active)

    def forget(self, producer: int) -> None:
        self._samples.pop(producer, None)


def wanted(layers: Sequence[Layer], preferences: Preferences) -> int | None:
    """The layer a subscription would get with bandwidth to spare: the highest active
    one within its quality and size (the lowest active one when none fits its size);
    None when it is paused or no layer is being sent."""
    active = [i for i, layer in enumerate(layers) if layer.active]
    if preferences.paused or not active:
        return None
    top = round(QUALITIES.index(preferences.quality) * (len(layers) - 1) / 2)
    fitting = [i for i in active if i <= top and _fits(layers[i], preferences)]
    return max(fitting) if fitting else min(active)


def _fits(layer: Layer, preferences: Preferences) -> bool:
    if not layer.width:  # size unknown: only the quality limits it
        return True
    return ((not preferences.max_width or layer.width <= preferences.max_width)
            and (not preferences.max_height or layer.height <= preferences.max_height))


def allocate(requests: Sequence[Request], budget_bps: int | None) -> dict[Hashable, int | None]:
    """The layer each subscription of one subscriber gets within ``budget_bps`` (None:
    no estimate, so no limit but their wishes)."""
    targets = {r.key: wanted(r.layers, r.preferences) for r in requests}
    if budget_bps is None:
        return targets
    chosen: dict[Hashable, int | None] = {}
    for r in requests:
        target = targets[r.key]
        chosen[r.key] = None if target is None else min(
            i for i, layer in enumerate(r.layers) if layer.active)
    spent = sum(r.layers[c].bitrate_bps for r in requests if (c := chosen[r.key]) is not None)
    climbed = True
    while climbed:
        climbed = False
        for r in requests:
            at, target = chosen[r.key], targets[r.key]
            if at is None or target is None or at >= target:
                continue
            step = next(i for i in range(at + 1, target + 1) if r.layers[i].active)
            extra = r.layers[step].bitrate_bps - r.layers[at].bitrate_bps
            room = budget_bps if r.current is not None and step <= r.current else (
                budget_bps * UPSWITCH_HEADROOM)
            if spent + extra <= room:
                chosen[r.key] = step
                spent += extra
                climbed = True
    return chosen


def wanted_bps(requests: Sequence[Request]) -> int:
    """What the subscriber would receive with bandwidth to spare (to probe for)."""
    total = 0
    for r in requests:
        target = wanted(r.layers, r.preferences)
        if target is not None:
            total += r.layers[target].bitrate_bps
    return total
