"""Real pylibsrtp session pairs and RTP packet builders for forwarder tests."""

from __future__ import annotations

import os
import struct
from typing import Any

from pylibsrtp import Policy, Session

PROFILES = {
    "AES128_CM_SHA1_80": (Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 30),
    "AEAD_AES_128_GCM": (Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 28),
    "AEAD_AES_256_GCM": (Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 44),
}


def session_pair(profile: str = "AES128_CM_SHA1_80") -> tuple[Session, Session]:
    """(sender, receiver) sessions sharing one key, as both ends of a DTLS-SRTP link."""
    libsrtp_profile, key_length = PROFILES[profile]
    key = os.urandom(key_length)
    sessions = []
    for ssrc_type in (Policy.SSRC_ANY_OUTBOUND, Policy.SSRC_ANY_INBOUND):
        policy = Policy(key=key, ssrc_type=ssrc_type, srtp_profile=libsrtp_profile)
        policy.allow_repeat_tx = True
        policy.window_size = 1024
        sessions.append(Session(policy))
    return sessions[0], sessions[1]


def rtp_packet(
    *,
    seq: int,
    timestamp: int,
    ssrc: int,
    payload_type: int = 96,
    marker: bool = False,
    payload: bytes = b"\x10\x00\x00\x9d\x01\x2a" + bytes(40),
    csrcs: tuple[int, ...] = (),
    extensions: bytes = b"",
    padding: int = 0,
) -> bytes:
    """An RTP packet; ``extensions`` is a whole extension block (profile, length, data)."""
    first = 0x80 | len(csrcs) | (0x10 if extensions else 0) | (0x20 if padding else 0)
    header = struct.pack(
        "!BBHII", first, (0x80 if marker else 0) | payload_type, seq, timestamp, ssrc
    )
    header += b"".join(struct.pack("!I", c) for c in csrcs)
    pad = bytes(padding - 1) + bytes([padding]) if padding else b""
    return header + extensions + payload + pad


class Capture:
    """A ``sendto`` that records what the forwarder sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def __call__(self, data: bytes, addr: Any) -> None:
        self.sent.append((bytes(data), addr))
