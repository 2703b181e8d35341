"""A room's active speakers, carried out: every INTERVAL_US the audio levels the
forwarder counted per producer go to the room's ``SpeakerDetector``, and a change is
sent to everyone as `active_speakers` and published as an event."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sfu import events
from sfu.router.context import RouterContext
from sfu.router.room import Room
from sfu.router.speakers import INTERVAL_US, SpeakerDetector


class SpeakerTimer:
    def __init__(self, ctx: RouterContext, room: Room,
                 broadcast: Callable[[dict[str, Any]], None]) -> None:
        self._ctx = ctx
        self._room = room
        self._broadcast = broadcast
        self.detector = SpeakerDetector()
        self._timer: asyncio.TimerHandle | None = None

    def wake(self) -> None:
        """Tracks came or went: run while the room has audio."""
        has_audio = any(t.kind == "audio" for t in self._room.tracks.values())
        if has_audio and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(INTERVAL_US / 1e6, self._fire)
        elif not has_audio:
            self.stop()
            self.run()  # nobody can be speaking now

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None

    def _fire(self) -> None:
        self._timer = None
        self.run()
        self.wake()

    def message(self) -> dict[str, Any]:
        """`active_speakers` as it stands: sent on a change, and to a newcomer."""
        return {"type": "active_speakers", "speakers": [
            {"participant": participant, "level": -level}
            for participant, level in self.detector.speakers]}

    def run(self) -> None:
        """One interval: sample, detect, tell on a change."""
        samples: dict[str, tuple[int, int, int]] = {}
        for track in self._room.tracks.values():
            levels = (self._ctx.forwarder.producer_levels(track.producer)
                      if track.kind == "audio" and not track.muted else None)
            if levels is not None:
                packets, level_sum, _, loud = levels
                before = samples.get(track.participant, (0, 0, 0))
                samples[track.participant] = (before[0] + packets, before[1] + level_sum,
                                              before[2] + loud)
        speakers = self.detector.update(samples)
        if speakers is None:
            return
        self._broadcast(self.message())
        self._ctx.events.publish(events.ActiveSpeakersChanged(
            self._room.name, speakers=tuple((p, -level) for p, level in speakers)))
