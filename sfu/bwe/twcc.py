"""Transport-wide feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1).

An RTPFB message (PT 205, FMT 15) in which the receiver reports, for a contiguous range
of transport-wide sequence numbers, which packets arrived and when:

    header (4) | sender SSRC | media SSRC | base seq (16) | status count (16)
    | reference time (24, signed, x 64 ms) | feedback packet count (8)
    | packet status chunks (16 bits each) | receive deltas (1 or 2 bytes each) | padding

A status chunk is either a run (one symbol repeated up to 8191 times) or a vector of 14
one-bit or 7 two-bit symbols. Symbols: 0 not received, 1 received with a small delta
(1 byte, unsigned, 0–63.75 ms), 2 received with a large or negative delta (2 bytes,
signed), 3 reserved. Deltas are in 250 µs units; the first is from the reference time,
each next one from the previous received packet.

``parse_feedback`` reads hostile input: every defect is a ValueError, never an IndexError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from sfu.rtcp.packets import RTCP_RTPFB

RTPFB_TWCC = 15
HEADER_SIZE = 20  # RTCP header, two SSRCs, base seq + status count, ref time + fb count
REFERENCE_TIME_UNIT_US = 64_000
DELTA_UNIT_US = 250
SEQ_MODULUS = 1 << 16
MAX_STATUS_COUNT = (1 << 16) - 1
MAX_RUN_LENGTH = (1 << 13) - 1
ONE_BIT_SYMBOLS = 14  # per one-bit status vector chunk
TWO_BIT_SYMBOLS = 7  # per two-bit status vector chunk
REFERENCE_MIN = -(1 << 23)  # the 24-bit signed reference time, in 64 ms units
REFERENCE_MAX = (1 << 23) - 1
SMALL_DELTA_MAX = 255  # in 250 µs units
LARGE_DELTA_MIN = -(1 << 15)
LARGE_DELTA_MAX = (1 << 15) - 1

NOT_RECEIVED = 0
SMALL_DELTA = 1
LARGE_DELTA = 2  # also any negative delta
RESERVED_SYMBOL = 3


@dataclass(frozen=True)
class TwccFeedback:
    sender_ssrc: int
    media_ssrc: int
    base_seq: int
    reference_time_us: int
    feedback_count: int
    # (16-bit transport seq, arrival µs on the reference time's clock or None if lost),
    # in sequence order from base_seq, wrapping mod 2**16.
    arrivals: list[tuple[int, int | None]]


def parse_feedback(packet: bytes) -> TwccFeedback:
    """One RTCP packet, header included (split a compound with sfu.rtcp.packets.iter_rtcp)."""
    if len(packet) < HEADER_SIZE:
        raise ValueError(f"TWCC feedback too short: {len(packet)} bytes, need {HEADER_SIZE}")
    first, packet_type, length_words = struct.unpack_from("!BBH", packet)
    if first >> 6 != 2:
        raise ValueError(f"not RTP version 2 (version {first >> 6})")
    if packet_type != RTCP_RTPFB or first & 0x1F != RTPFB_TWCC:
        raise ValueError(f"not transport-wide feedback (PT {packet_type}, FMT {first & 0x1F})")
    size = 4 * (length_words + 1)
    if size != len(packet):
        raise ValueError(f"length field says {size} bytes, the packet has {len(packet)}")
    end = size
    if first & 0x20:  # RFC 3550 padding: the last byte counts the padding bytes
        padding = packet[-1]
        if not 1 <= padding <= size - HEADER_SIZE:
            raise ValueError(f"bad padding count {padding}")
        end -= padding
    sender_ssrc, media_ssrc, base_seq, status_count, word = struct.unpack_from(
        "!IIHHI", packet, 4)
    if status_count == 0:
        raise ValueError("feedback reports no packets")  # libwebrtc refuses these too
    reference = word >> 8
    if reference > REFERENCE_MAX:
        reference -= 1 << 24
    reference_time_us = reference * REFERENCE_TIME_UNIT_US
    symbols, pos = _read_chunks(packet, HEADER_SIZE, end, status_count)

    arrivals: list[tuple[int, int | None]] = []
    ticks = 0  # 250 µs units since the reference time
    for i, symbol in enumerate(symbols):
        seq = (base_seq + i) % SEQ_MODULUS
        if symbol == NOT_RECEIVED:
            arrivals.append((seq, None))
            continue
        width = 1 if symbol == SMALL_DELTA else 2
        if pos + width > end:
            raise ValueError(f"receive deltas truncated at packet {i} of {status_count}")
        ticks += int.from_bytes(packet[pos:pos + width], "big", signed=width == 2)
        pos += width
        arrivals.append((seq, reference_time_us + ticks * DELTA_UNIT_US))
    # What is left before `end` is the draft's zero padding to a 32-bit boundary.
    return TwccFeedback(sender_ssrc, media_ssrc, base_seq, reference_time_us,
                        word & 0xFF, arrivals)


def _read_chunks(packet: bytes, pos: int, end: int, count: int) -> tuple[list[int], int]:
    """``count`` status symbols and the offset of the first receive delta."""
    symbols: list[int] = []
    while len(symbols) < count:
        if pos + 2 > end:
            raise ValueError(f"status chunks truncated: {len(symbols)} of {count} packets")
        chunk = (packet[pos] << 8) | packet[pos + 1]
        pos += 2
        if not chunk & 0x8000:  # run length: symbol in bits 1–2, length in 3–15
            # A run may reach past the status count (seen from real senders): cut it.
            run = min(chunk & MAX_RUN_LENGTH, count - len(symbols))
            symbols.extend([(chunk >> 13) & 0x3] * run)
        elif chunk & 0x4000:
            symbols.extend((chunk >> shift) & 0x3 for shift in range(12, -1, -2))
        else:
            symbols.extend((chunk >> shift) & 0x1 for shift in range(13, -1, -1))
    del symbols[count:]  # a last vector chunk's unused slots
    if RESERVED_SYMBOL in symbols:
        raise ValueError(f"reserved status symbol at packet {symbols.index(RESERVED_SYMBOL)}")
    return symbols, pos


def build_feedback(sender_ssrc: int, media_ssrc: int, base_seq: int, reference_time_us: int,
                   feedback_count: int, arrivals: list[tuple[int, int | None]]) -> bytes:
    """The packet reporting ``arrivals`` (as in TwccFeedback) against ``reference_time_us``.

    The reference time must be a multiple of 64 ms; arrival times are rounded to the
    nearest 250 µs from it (rounded from the reference, not from the previous packet, so
    the error does not accumulate). Each step between received packets must fit the large
    delta (−8192 … +8191.75 ms): a longer gap needs a new feedback packet.
    """
    for name, value, bits in (("sender_ssrc", sender_ssrc, 32), ("media_ssrc", media_ssrc, 32),
                              ("base_seq", base_seq, 16), ("feedback_count", feedback_count, 8)):
        if not 0 <= value < 1 << bits:
            raise ValueError(f"{name} {value} does not fit {bits} bits")
    reference, rest = divmod(reference_time_us, REFERENCE_TIME_UNIT_US)
    if rest or not REFERENCE_MIN <= reference <= REFERENCE_MAX:
        raise ValueError(f"reference time {reference_time_us} µs is not a 24-bit multiple of "
                         "64 ms")
    if not 1 <= len(arrivals) <= MAX_STATUS_COUNT:
        raise ValueError(f"feedback reports 1 to {MAX_STATUS_COUNT} packets, not {len(arrivals)}")

    symbols: list[int] = []
    deltas = bytearray()
    previous = 0  # 250 µs units since the reference time
    for i, (seq, arrival_us) in enumerate(arrivals):
        if seq != (base_seq + i) % SEQ_MODULUS:
            raise ValueError(f"sequence {seq} at position {i} does not follow base {base_seq}")
        if arrival_us is None:
            symbols.append(NOT_RECEIVED)
            continue
        ticks = (arrival_us - reference_time_us + DELTA_UNIT_US // 2) // DELTA_UNIT_US
        delta = ticks - previous
        previous = ticks
        if 0 <= delta <= SMALL_DELTA_MAX:
            symbols.append(SMALL_DELTA)
            deltas.append(delta)
        elif LARGE_DELTA_MIN <= delta <= LARGE_DELTA_MAX:
            symbols.append(LARGE_DELTA)
            deltas += delta.to_bytes(2, "big", signed=True)
        else:
            raise ValueError(f"arrival of sequence {seq} is {delta * DELTA_UNIT_US} µs from the "
                             "previous one, more than a receive delta holds")

    body = (struct.pack("!IIHHI", sender_ssrc, media_ssrc, base_seq, len(arrivals),
                        ((reference % (1 << 24)) << 8) | feedback_count)
            + _encode_chunks(symbols) + deltas)
    # Padding as libwebrtc writes it (and so what browsers send): the P bit, zeros, and
    # the count in the last byte.
    padding = -(4 + len(body)) % 4
    if padding:
        body += bytes(padding - 1) + bytes([padding])
    first = 0x80 | (0x20 if padding else 0) | RTPFB_TWCC
    return struct.pack("!BBH", first, RTCP_RTPFB, (4 + len(body)) // 4 - 1) + body


def _encode_chunks(symbols: list[int]) -> bytes:
    """Runs where a symbol repeats for a whole vector's worth or to the end, vectors
    otherwise: one-bit (14 symbols) when nothing needs a large delta, else two-bit (7)."""
    out = bytearray()
    i, count = 0, len(symbols)
    while i < count:
        symbol = symbols[i]
        run = 1
        while i + run < count and run < MAX_RUN_LENGTH and symbols[i + run] == symbol:
            run += 1
        if run >= ONE_BIT_SYMBOLS or i + run == count:
            chunk = (symbol << 13) | run
            i += run
        elif max(symbols[i:i + ONE_BIT_SYMBOLS]) <= SMALL_DELTA:
            chunk = 0x8000
            for k, s in enumerate(symbols[i:i + ONE_BIT_SYMBOLS]):
                chunk |= s << (13 - k)
            i += ONE_BIT_SYMBOLS
        else:
            chunk = 0xC000
            for k, s in enumerate(symbols[i:i + TWO_BIT_SYMBOLS]):
                chunk |= s << (12 - 2 * k)
            i += TWO_BIT_SYMBOLS
        out += chunk.to_bytes(2, "big")
    return bytes(out)
