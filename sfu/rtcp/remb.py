"""Receiver Estimated Maximum Bitrate (draft-alvestrand-rmcat-remb-03 §2.2).

A payload-specific feedback message (PT 206, FMT 15, "application layer feedback")
whose FCI is the ASCII tag "REMB", the number of SSRCs, the bitrate as a 6-bit
exponent and an 18-bit mantissa, then the SSRCs it applies to. Browsers that
negotiated ``goog-remb`` and not transport-cc use it as their send-side target.
"""

from __future__ import annotations

import struct

from sfu.rtcp.packets import PSFB_AFB, RTCP_PSFB

MAX_MANTISSA = (1 << 18) - 1


def encode_bitrate(bitrate: int) -> tuple[int, int]:
    """(exponent, mantissa) with mantissa << exponent the largest value <= ``bitrate``."""
    if bitrate < 0:
        raise ValueError("bitrate must be >= 0")
    exponent = 0
    while (bitrate >> exponent) > MAX_MANTISSA:
        exponent += 1
    if exponent > 63:
        raise ValueError("bitrate too large for REMB")
    return exponent, bitrate >> exponent


def build_remb(sender_ssrc: int, bitrate: int, media_ssrcs: list[int]) -> bytes:
    if not 1 <= len(media_ssrcs) <= 255:
        raise ValueError("REMB carries 1 to 255 SSRCs")
    exponent, mantissa = encode_bitrate(bitrate)
    words = 2 + 2 + len(media_ssrcs)  # sender SSRC, media SSRC (0), "REMB", bitrate, SSRCs
    return (
        struct.pack("!BBHII", 0x80 | PSFB_AFB, RTCP_PSFB, words, sender_ssrc, 0)
        + b"REMB"
        + struct.pack("!BBH", len(media_ssrcs), (exponent << 2) | (mantissa >> 16),
                      mantissa & 0xFFFF)
        + b"".join(struct.pack("!I", ssrc) for ssrc in media_ssrcs)
    )
