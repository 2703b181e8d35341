"""Sender reports to one subscriber, and what it reports back, sans IO.

Per consumer: the publisher's SR translated into the subscriber's space (the last one
sent is remembered), and the subscriber's receiver reports on that stream, with the
round trip from their LSR/DLSR (RFC 3550 §6.4.1). sfu/_fastpath.pyx mirrors
``SrTranslator`` as a cdef class of the same name.
"""

from __future__ import annotations

import struct

from sfu.rtcp import packets


class SrTranslator:
    """The SR last sent to one subscriber, and the subscriber's last report."""

    __slots__ = ("fraction", "has_report", "jitter", "lost", "rtt_us", "sent_ntp_mid",
                 "sent_us")

    def __init__(self) -> None:
        self.sent_ntp_mid = 0  # NTP middle bits of the last SR sent, and when
        self.sent_us = 0
        self.has_report = False
        self.fraction = 0  # of 256
        self.lost = 0  # cumulative, signed
        self.jitter = 0  # RTP units
        self.rtt_us = -1  # -1: not known yet

    def translate(self, report: bytes, ssrc: int, ts_offset: int, packets_sent: int,
                  octets_sent: int, now_us: int) -> bytes:
        """The publisher's SR ``report`` for this subscriber (sfu.rtcp.packets.translate_sr),
        remembered as sent at ``now_us``."""
        self.sent_ntp_mid = struct.unpack_from("!I", report, 10)[0]
        self.sent_us = now_us
        return packets.translate_sr(report, ssrc, ts_offset, packets_sent, octets_sent)

    def on_report_block(self, fraction: int, lost: int, jitter: int, lsr: int, dlsr: int,
                        now_us: int) -> None:
        """The subscriber's report block on this stream; a round trip when its LSR is the
        last SR sent: arrival - sending - DLSR."""
        if not self.has_report:
            self.rtt_us = -1
        if lsr and lsr == self.sent_ntp_mid:
            sample = now_us - self.sent_us - dlsr * 1_000_000 // 65536
            if sample >= 0:
                self.rtt_us = sample
        self.fraction = fraction
        self.lost = lost
        self.jitter = jitter
        self.has_report = True

    def report(self) -> tuple[int, ...] | None:
        """(fraction lost of 256, cumulative lost, jitter, round trip in us or -1); None
        before the first report."""
        if not self.has_report:
            return None
        return (self.fraction, self.lost, self.jitter, self.rtt_us)

    def rtt(self) -> int:
        """The subscriber's round trip in us; -1 when not known."""
        return self.rtt_us if self.has_report else -1
