"""RTCP packets: constants, builders and parsers (no I/O, no state).

Bit layouts: RFC 3550 §6 (SR, RR, compounds), RFC 4585 §6 (feedback: generic NACK, PLI),
RFC 5104 §4.3.1 (FIR), demultiplexing RFC 5761 §4. The Cython forwarder implements the
parsers it needs per packet in C (sfu/_fastpath.pyx) and reads these constants.
"""

from __future__ import annotations

import struct

from sfu.rtp import RTP_VERSION

# RTCP packet types (RFC 3550 §12.1, RFC 4585 §6.1).
RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_RTPFB = 205
RTCP_PSFB = 206
RTPFB_NACK = 1
RTPFB_TWCC = 15  # transport-wide congestion control feedback
PSFB_PLI = 1
PSFB_FIR = 4
PSFB_AFB = 15  # REMB lives here (draft-alvestrand-rmcat-remb)

# SSRC the SFU puts in the "sender SSRC" field of RTCP it originates.
SFU_RTCP_SSRC = 1


def is_rtcp(data: bytes) -> bool:
    """RTCP packet types 192–223 sit where RTP's marker+payload type is (RFC 5761 §4)."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def build_pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    """Picture Loss Indication (RFC 4585 §6.3.1): PSFB, FMT 1, no FCI."""
    return struct.pack("!BBHII", 0x80 | PSFB_PLI, RTCP_PSFB, 2, sender_ssrc, media_ssrc)


def iter_rtcp(data: bytes) -> list[tuple[int, int, int, int]] | None:
    """(packet type, count/FMT, offset, length) of each packet in a compound, or None."""
    packets = []
    pos = 0
    size = len(data)
    while pos < size:
        if pos + 4 > size or data[pos] >> 6 != RTP_VERSION:
            return None
        length = 4 * (((data[pos + 2] << 8) | data[pos + 3]) + 1)
        if pos + length > size:
            return None
        packets.append((data[pos + 1], data[pos] & 0x1F, pos, length))
        pos += length
    return packets


SR_SIZE = 28  # header, sender SSRC, NTP (8), RTP timestamp, packet and octet counts


def translate_sr(report: bytes, ssrc: int, ts_offset: int, packets: int, octets: int) -> bytes:
    """A publisher's sender report (RFC 3550 §6.4.1) in one subscriber's space.

    The NTP time stays (it is the publisher's wall clock, which lip sync needs); the RTP
    timestamp moves by the subscriber's offset; the counts become what this subscriber
    was sent (payload octets, as §6.4.1 defines them); report blocks are dropped (they
    describe what the publisher received, not the subscriber's stream).
    """
    rtp_ts = (struct.unpack_from("!I", report, 16)[0] + ts_offset) & 0xFFFFFFFF
    return (struct.pack("!BBHI", 0x80, RTCP_SR, 6, ssrc) + report[8:16]
            + struct.pack("!III", rtp_ts, packets & 0xFFFFFFFF, octets & 0xFFFFFFFF))


def nack_sequences(fci: bytes) -> list[int]:
    """Sequence numbers a generic NACK asks for (RFC 4585 §6.2.1): each FCI entry is a
    packet id and a bitmask of the 16 that follow it."""
    sequences = []
    for pos in range(0, len(fci) - 3, 4):
        pid, blp = struct.unpack_from("!HH", fci, pos)
        sequences.append(pid)
        sequences.extend((pid + bit + 1) & 0xFFFF for bit in range(16) if blp >> bit & 1)
    return sequences


def build_nack(sender_ssrc: int, media_ssrc: int, sequences: list[int]) -> bytes:
    """Generic NACK (RFC 4585 §6.2.1) for 16-bit sequence numbers, in the given order:
    each entry covers its packet id and the 16 numbers after it."""
    entries: list[list[int]] = []
    for seq in sequences:
        if entries and 0 < (seq - entries[-1][0]) & 0xFFFF <= 16:
            entries[-1][1] |= 1 << (((seq - entries[-1][0]) & 0xFFFF) - 1)
        else:
            entries.append([seq, 0])
    fci = b"".join(struct.pack("!HH", pid, blp) for pid, blp in entries)
    return struct.pack("!BBHII", 0x80 | RTPFB_NACK, RTCP_RTPFB, 2 + len(entries),
                       sender_ssrc, media_ssrc) + fci
