"""Receiver reports (RFC 3550 §6.4.2) the SFU sends its publishers."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from sfu.rtcp.packets import RTCP_RR


@dataclass(frozen=True)
class ReportBlock:
    """One report block (RFC 3550 §6.4.1): how a stream from the publisher arrived."""

    ssrc: int
    fraction_lost: int  # of 256, since the previous report
    cumulative_lost: int  # signed 24-bit
    highest_sequence: int  # extended, low 32 bits
    jitter: int  # RTP timestamp units
    lsr: int  # middle 32 bits of the last SR's NTP time, 0 if none
    dlsr: int  # delay since that SR, 1/65536 s


def build_rr(sender_ssrc: int, blocks: list[ReportBlock]) -> bytes:
    if len(blocks) > 31:
        raise ValueError("at most 31 report blocks")
    body = b"".join(
        struct.pack(
            "!IB3sIIII", block.ssrc, block.fraction_lost,
            (max(-(1 << 23), min((1 << 23) - 1, block.cumulative_lost)) & 0xFFFFFF).to_bytes(
                3, "big"),
            block.highest_sequence & 0xFFFFFFFF, block.jitter & 0xFFFFFFFF,
            block.lsr & 0xFFFFFFFF, block.dlsr & 0xFFFFFFFF,
        )
        for block in blocks
    )
    return struct.pack("!BBHI", 0x80 | len(blocks), RTCP_RR, 1 + 6 * len(blocks),
                       sender_ssrc) + body
