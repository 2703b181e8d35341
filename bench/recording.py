"""The recorded stream the load publishers replay: real VP8 and Opus RTP payloads.

Made once at bench time with aiortc's own encoders (libvpx, libopus through PyAV)
from a synthetic moving picture and a frequency sweep, so that systems that decode
(aiortc's MediaRelay) get decodable media and every payload is distinct (the load
generator identifies forwarded packets by payload). Cached as JSON under
bench/results/.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder
from av import AudioFrame, VideoFrame

CACHE_DIR = Path("bench-results")  # beside the reports, in the current directory
VIDEO_CLOCK = 90_000
AUDIO_CLOCK = 48_000


@dataclass(frozen=True)
class RecordedPacket:
    offset_us: int  # when to send it, from the start of the recording
    kind: str  # "audio" | "video"
    timestamp: int  # RTP timestamp, from 0
    marker: bool
    payload: bytes


@dataclass(frozen=True)
class Recording:
    duration_us: int
    packets: list[RecordedPacket]

    def packets_per_second(self) -> float:
        return len(self.packets) * 1e6 / self.duration_us

    def looped(self, span_us: float) -> Iterator[tuple[int, int, RecordedPacket, int]]:
        """The recording played over and over for ``span_us`` of recording time: each
        packet's offset from the start, its position in ``packets``, the packet, and
        its RTP timestamp moved on by the loops before it."""
        clocks = {"audio": AUDIO_CLOCK, "video": VIDEO_CLOCK}
        loop_clock = {k: self.duration_us * c // 1_000_000 for k, c in clocks.items()}
        i = 0
        while True:
            loop, position = divmod(i, len(self.packets))
            packet = self.packets[position]
            offset = loop * self.duration_us + packet.offset_us
            if offset >= span_us:
                return
            i += 1
            yield (offset, position, packet,
                   (packet.timestamp + loop * loop_clock[packet.kind]) & 0xFFFFFFFF)


def load(seconds: int = 10, fps: int = 30, bitrate: int = 1_000_000,
         keyframe_interval_s: float = 1.0, width: int = 640, height: int = 480) -> Recording:
    """The recording for these parameters, from the cache or made now."""
    name = f"recording-{seconds}s-{fps}fps-{bitrate}bps-{keyframe_interval_s}kf-{width}x{height}"
    path = CACHE_DIR / f"{name}.json"
    if path.exists():
        return _read(path)
    recording = make(seconds, fps, bitrate, keyframe_interval_s, width, height)
    CACHE_DIR.mkdir(exist_ok=True)
    _write(path, recording)
    return recording


def make(seconds: int, fps: int, bitrate: int, keyframe_interval_s: float, width: int,
         height: int) -> Recording:
    packets: list[RecordedPacket] = []
    video = Vp8Encoder()
    video.target_bitrate = bitrate
    keyframe_every = max(1, round(keyframe_interval_s * fps))
    yy, xx = np.mgrid[0:height, 0:width]
    for n in range(seconds * fps):
        frame = _picture(n, xx, yy)
        frame.pts = n * VIDEO_CLOCK // fps
        frame.time_base = Fraction(1, VIDEO_CLOCK)
        payloads, timestamp = video.encode(frame, force_keyframe=n % keyframe_every == 0)
        offset = n * 1_000_000 // fps
        for i, payload in enumerate(payloads):
            packets.append(RecordedPacket(offset, "video", timestamp, i == len(payloads) - 1,
                                          payload))
    audio = OpusEncoder()
    samples = AUDIO_CLOCK // 50  # 20 ms frames
    for n in range(seconds * 50):
        t = (np.arange(samples) + n * samples) / AUDIO_CLOCK
        # A sweep, so no two Opus packets are the same.
        tone = np.sin(2 * math.pi * (200 + 40 * t) * t) * 8000
        pcm = np.repeat(tone.astype(np.int16), 2).reshape(1, -1)
        sound: AudioFrame = AudioFrame.from_ndarray(pcm, format="s16", layout="stereo")
        sound.sample_rate = AUDIO_CLOCK
        sound.pts = n * samples
        sound.time_base = Fraction(1, AUDIO_CLOCK)
        payloads, timestamp = audio.encode(sound)
        for payload in payloads:
            packets.append(RecordedPacket(n * 20_000, "audio", timestamp, False, payload))
    packets.sort(key=lambda p: (p.offset_us, p.kind))
    return Recording(seconds * 1_000_000, packets)


def _picture(n: int, xx: np.ndarray, yy: np.ndarray) -> VideoFrame:
    """A moving gradient with a bouncing square: content the encoder has to work on."""
    height, width = xx.shape
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[..., 0] = (xx + 3 * n) % 256
    image[..., 1] = (yy + 2 * n) % 256
    image[..., 2] = ((xx ^ yy) + n) % 256
    size = 80
    x = int((width - size) * (0.5 + 0.5 * math.sin(n / 17)))
    y = int((height - size) * (0.5 + 0.5 * math.cos(n / 23)))
    image[y:y + size, x:x + size] = 255 - image[y:y + size, x:x + size]
    return VideoFrame.from_ndarray(image, format="rgb24")


def _write(path: Path, recording: Recording) -> None:
    data = {
        "duration_us": recording.duration_us,
        "packets": [
            [p.offset_us, p.kind, p.timestamp, p.marker, base64.b64encode(p.payload).decode()]
            for p in recording.packets
        ],
    }
    path.write_text(json.dumps(data))


def _read(path: Path) -> Recording:
    data = json.loads(path.read_text())
    return Recording(
        data["duration_us"],
        [RecordedPacket(o, k, t, m, base64.b64decode(p)) for o, k, t, m, p in data["packets"]],
    )
