"""Active speakers: the audio levels publishers send (RFC 6464) counted in the fast path
(both forwarders, alike), the detector that tells speech from silence and clicks, and a
room of aiortc participants where one talks, one is silent and one clicks."""

from __future__ import annotations

import asyncio
import fractions
import math
import os
import time
from typing import Any

import numpy as np
import pytest
from aiortc import MediaStreamTrack
from av import AudioFrame
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu import _fastpath_fallback, rtp
from sfu.client import Client
from sfu.fastpath import cython_unavailable_reason
from sfu.router.speakers import ACTIVATE_INTERVALS, WINDOW, SpeakerDetector
from tests.conftest import make_config, requires_isolated_network, running
from tests.srtp_helpers import Capture, implementations, rtp_packet, session_pair

PUB, LEVEL_ID = 1, 2


def detector_run(levels: dict[str, list[int]]) -> list[list[str]]:
    """Feed a detector each participant's level per interval (10 packets each, all at
    that level); the active speakers after every interval."""
    detector = SpeakerDetector()
    totals = {p: [0, 0, 0] for p in levels}
    seen = []
    for step in range(len(next(iter(levels.values())))):
        for participant, series in levels.items():
            totals[participant][0] += 10
            totals[participant][1] += 10 * series[step]
            totals[participant][2] += 10 * (series[step] <= rtp.LOUD_DBOV)
        detector.update({p: (t[0], t[1], t[2]) for p, t in totals.items()})
        seen.append([p for p, _ in detector.speakers])
    return seen


def test_speech_is_told_from_silence_and_clicks() -> None:
    click = ([15] + [127] * 7) * 4  # one loud interval in every eight
    seen = detector_run({"talker": [20] * 32, "silent": [127] * 32, "clicker": click})
    # The first sample is the baseline; then speech must last ACTIVATE_INTERVALS.
    assert seen[ACTIVATE_INTERVALS - 1] == []
    assert all(s == ["talker"] for s in seen[ACTIVATE_INTERVALS:])


def test_a_beep_twice_a_second_is_not_speech() -> None:
    """Chromium's fake microphone: a short beep every 500 ms, as loud as speech, in
    every other interval; and a click now and then."""
    beeps = [30, 127] * 16
    seen = detector_run({"beeper": beeps, "talker": [127] * 8 + [25] * 24})
    assert all("beeper" not in s for s in seen)
    assert seen[-1] == ["talker"]


def test_two_talkers_loudest_first_and_pauses_between_words_keep_a_speaker() -> None:
    words = [30, 30, 127, 30, 30, 127, 127, 30] * 4  # speech with pauses
    seen = detector_run({"quiet": words, "loud": [5] * 32})
    assert seen[-1] == ["loud", "quiet"]
    assert all("quiet" in s for s in seen[10:])  # the pauses do not drop it
    # Silence after speech: gone once the window holds too little of it.
    seen = detector_run({"talker": [20] * 10 + [127] * WINDOW})
    assert seen[9] == ["talker"] and seen[-1] == []


@pytest.mark.parametrize("impl", implementations())
def test_the_forwarder_counts_levels_of_audio_producers(impl: Any) -> None:
    fwd = impl(200_000)
    send, receive = session_pair()
    fwd.add_endpoint(PUB, receive, session_pair()[0], Capture(), -1, ("127.0.0.1", 9))
    fwd.add_producer(10, PUB, 0xA, rtp.CODEC_OPUS, audio_level_id=LEVEL_ID)
    fwd.add_producer(11, PUB, 0xB, rtp.CODEC_OPUS)  # no level negotiated
    for seq, (level, voiced) in enumerate([(10, True), (127, False), (40, True)]):
        for ssrc in (0xA, 0xB):
            ext = rtp.write_extensions([(1, b"0"), (LEVEL_ID, bytes([voiced << 7 | level]))])
            packet = rtp_packet(seq=seq, timestamp=960 * seq, ssrc=ssrc, payload_type=111,
                                payload=b"\x00" * 40, extensions=ext)
            assert fwd.handle_packet(PUB, send.protect(packet), seq) == rtp.OK
    assert fwd.producer_levels(10) == (3, 177, 2, 2)
    assert fwd.producer_levels(11) == (0, 0, 0, 0)
    assert fwd.producer_levels(99) is None


@pytest.mark.skipif(cython_unavailable_reason() is not None, reason="no Cython forwarder")
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.lists(st.tuples(st.integers(1, 14), st.binary(max_size=3)),
                                   max_size=4), st.booleans()), min_size=1, max_size=30))
def test_cython_counts_levels_as_the_twin(packets: list[tuple[list[tuple[int, bytes]],
                                                               bool]]) -> None:
    from sfu import _fastpath

    key = os.urandom(30)
    send, _ = session_pair(key=key)
    sides = []
    for impl in (_fastpath_fallback.Forwarder, _fastpath.Forwarder):
        fwd = impl(200_000)
        _, rx = session_pair(key=key)  # each its own receive session, the same key
        fwd.add_endpoint(PUB, rx, session_pair()[0], Capture(), -1, ("127.0.0.1", 9))
        fwd.add_producer(10, PUB, 0xA, rtp.CODEC_OPUS, audio_level_id=LEVEL_ID)
        sides.append(fwd)
    for seq, (elements, paused) in enumerate(packets):
        ext = rtp.write_extensions(elements) if elements else b""
        datagram = send.protect(rtp_packet(seq=seq, timestamp=seq, ssrc=0xA, payload_type=111,
                                           payload=b"\x01" * 20, extensions=ext))
        for fwd in sides:
            fwd.set_producer_paused(10, paused)
        assert sides[0].handle_packet(PUB, datagram, seq) == sides[1].handle_packet(
            PUB, datagram, seq)
    assert sides[0].producer_levels(10) == sides[1].producer_levels(10)


class ToneTrack(MediaStreamTrack):
    """Mono 48 kHz audio: a 440 Hz tone at ``amplitude`` (0: silence), optionally only
    ``burst_ms`` at the start of every ``period_ms`` (a click)."""

    kind = "audio"

    def __init__(self, amplitude: float, burst_ms: int = 0, period_ms: int = 0) -> None:
        super().__init__()
        self.amplitude, self.burst_ms, self.period_ms = amplitude, burst_ms, period_ms
        self._samples = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._samples / 48000 - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        t = (np.arange(960) + self._samples) / 48000
        amplitude = self.amplitude
        if self.period_ms and (self._samples * 1000 // 48000) % self.period_ms >= self.burst_ms:
            amplitude = 0.0
        samples = (amplitude * 32767 * np.sin(2 * math.pi * 440 * t)).astype(np.int16)
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48000, self._samples
        frame.time_base = fractions.Fraction(1, 48000)
        self._samples += 960
        return frame


@requires_isolated_network
async def test_a_room_hears_who_talks_not_who_clicks() -> None:
    async with running(make_config()) as server:
        url = f"http://127.0.0.1:{server.port}/ws"
        people = {name: Client(url, room="talk", name=name)
                  for name in ("talker", "silent", "clicker", "listener")}
        try:
            for client in people.values():
                await client.join()
            await people["talker"].publish([ToneTrack(0.3)])
            await people["silent"].publish([ToneTrack(0.0)])
            await people["clicker"].publish([ToneTrack(0.5, burst_ms=60, period_ms=2000)])
            started = time.monotonic()
            event = await people["listener"].next_event("active_speakers", 10)
            took = time.monotonic() - started
            talker = people["talker"].participant_id
            print(f"active_speakers after {took:.1f} s: {event}")
            assert [s["participant"] for s in event["speakers"]] == [talker]
            assert -40 <= event["speakers"][0]["level"] <= 0
            # Six seconds more: clicks every 2 s never make the clicker a speaker.
            deadline = time.monotonic() + 6
            while (left := deadline - time.monotonic()) > 0:
                try:
                    later = await people["listener"].next_event("active_speakers", left)
                except TimeoutError:
                    break
                assert [s["participant"] for s in later["speakers"]] == [talker], later
        finally:
            for client in people.values():
                await client.close()
