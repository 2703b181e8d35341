"""Plain descriptions of negotiated media, shared by the transports (which read them
out of SDP) and the rooms (which keep them): no aiortc object crosses this line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# What a track shows, and the kind each source is: a subscriber may treat them
# differently (a screen share is never downscaled to fit a small tile).
SOURCES = {"camera": "video", "microphone": "audio", "screen": "video",
           "screen_audio": "audio"}
DEFAULT_SOURCE = {"audio": "microphone", "video": "camera"}


@dataclass(frozen=True)
class CodecInfo:
    payload_type: int
    mime_type: str  # e.g. "video/VP8"
    clock_rate: int
    parameters: dict[str, Any]


@dataclass(frozen=True)
class PublishedMedia:
    """One m-line of a publish offer that carries media to the SFU."""

    mid: str
    kind: str
    ssrc: int
    codec: CodecInfo
    extensions: dict[str, int]  # URI → the publisher's id
    # Simulcast, low to high: the layers' RIDs (their SSRCs come with their first
    # packets), or their SSRCs (an SSRC group). Both empty: one stream, ``ssrc``.
    rids: tuple[str, ...] = ()
    layer_ssrcs: tuple[int, ...] = ()

    @property
    def layers(self) -> int:
        """How many simulcast layers: 1 for a plain stream."""
        return max(1, len(self.rids), len(self.layer_ssrcs))


@dataclass(frozen=True)
class DownTrack:
    """What the forwarder needs to rewrite a publisher's packets for one subscriber."""

    mid: str
    ssrc: int
    payload_type: int
    extensions: dict[str, int]  # URI → the subscriber's id (transport-cc among them)
