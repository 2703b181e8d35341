"""Who is speaking in a room, from the audio levels publishers put in their packets
(RFC 6464, counted per producer in the fast path). Sans-IO: the caller samples the
forwarder's cumulative counters every INTERVAL_US and passes the time.

An interval is *loud* when at least LOUD_SHARE of its packets are at least
``rtp.LOUD_DBOV`` loud (−50 dBov: speech, not background; counted in the fast path),
and *speaking* when it is loud next to another loud one: speech lasts longer than an
interval, a click, a cough, a door or a beep does not (even one that comes back
twice a second, as Chromium's fake microphone beeps). A participant becomes an
active speaker only after ACTIVATE_INTERVALS speaking intervals out of the last
WINDOW, and stops after the window holds fewer than KEEP_INTERVALS (so the pauses
between words do not drop it). Active speakers are ordered by their recent
level, loudest first: the first is the dominant speaker (as Jitsi's dominant speaker
identification and mediasoup's ActiveSpeakerObserver, in a simpler form). A new list
is reported only when the participants or their order change.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

INTERVAL_US = 250_000
# Speech fills most of an interval's packets (syllables, with short gaps); a beep or a
# click one or two of its twelve or so, however loud.
LOUD_SHARE = 0.5
WINDOW = 8  # intervals remembered: 2 s
ACTIVATE_INTERVALS = 4  # speaking in at least this many of them: an active speaker
KEEP_INTERVALS = 2  # ... and it stays one while at least this many
SILENCE_DBOV = 127


@dataclass
class _Voice:
    last: tuple[int, int, int] = (0, 0, 0)  # the producer's counters last sampled
    loud: deque[bool] = field(default_factory=lambda: deque(maxlen=WINDOW))
    levels: deque[int] = field(default_factory=lambda: deque(maxlen=WINDOW))
    active: bool = False

    @property
    def level(self) -> int:
        """Recent loudness, −dBov (0 loudest): the loudest of the speaking intervals."""
        loud = [lv for lv, s in zip(self.levels, self.speaking, strict=True) if s]
        return min(loud) if loud else SILENCE_DBOV

    @property
    def speaking(self) -> list[bool]:
        """Per interval of the window: loud, next to another loud one."""
        loud = list(self.loud)
        return [was and ((i > 0 and loud[i - 1]) or (i + 1 < len(loud) and loud[i + 1]))
                for i, was in enumerate(loud)]


class SpeakerDetector:
    def __init__(self) -> None:
        self._voices: dict[str, _Voice] = {}
        self.speakers: list[tuple[str, int]] = []  # (participant, level), loudest first

    def update(self, samples: dict[str, tuple[int, int, int]]
               ) -> list[tuple[str, int]] | None:
        """One interval: ``samples`` maps each participant publishing audio to its
        producer's cumulative (packets with a level, levels summed, loud packets).
        Returns the new active speakers when who they are, or their order, changed;
        else None."""
        for gone in self._voices.keys() - samples.keys():
            del self._voices[gone]
        for participant, sample in samples.items():
            voice = self._voices.setdefault(participant, _Voice(last=sample))
            count, total, loud = (now - before for now, before in zip(sample, voice.last,
                                                                       strict=True))
            voice.last = sample
            voice.levels.append(total // count if count > 0 else SILENCE_DBOV)
            voice.loud.append(count > 0 and loud >= LOUD_SHARE * count)
            spoken = sum(voice.speaking)
            voice.active = spoken >= (KEEP_INTERVALS if voice.active else ACTIVATE_INTERVALS)
        speakers = sorted(((p, v.level) for p, v in self._voices.items() if v.active),
                          key=lambda item: (item[1], item[0]))
        if [p for p, _ in speakers] == [p for p, _ in self.speakers]:
            self.speakers = speakers
            return None
        self.speakers = speakers
        return speakers
