"""Real pylibsrtp session pairs and RTP packet builders for forwarder tests."""

from __future__ import annotations

import os
import struct
from typing import Any

import pytest
from pylibsrtp import Policy, Session

from sfu import _fastpath_fallback
from sfu.fastpath import cython_unavailable_reason

PROFILES = {
    "AES128_CM_SHA1_80": (Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 30),
    "AEAD_AES_128_GCM": (Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 28),
    "AEAD_AES_256_GCM": (Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 44),
}


def implementations() -> list[Any]:
    """pytest params of every Forwarder implementation (the Cython one skips with a
    reason when it is not usable)."""
    impls: list[Any] = [pytest.param(_fastpath_fallback.Forwarder, id="python")]
    reason = cython_unavailable_reason()
    if reason is None:
        from sfu import _fastpath

        impls.append(pytest.param(_fastpath.Forwarder, id="cython"))
    else:
        impls.append(pytest.param(None, id="cython", marks=pytest.mark.skip(reason=reason)))
    return impls


def session_pair(
    profile: str = "AES128_CM_SHA1_80", key: bytes | None = None
) -> tuple[Session, Session]:
    """(sender, receiver) sessions sharing one key, as both ends of a DTLS-SRTP link."""
    libsrtp_profile, key_length = PROFILES[profile]
    key = key or os.urandom(key_length)
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
