"""Receive statistics of one incoming stream, for receiver reports (RFC 3550 A.3, A.8),
sans IO: the caller gives each packet's sequence number, timestamp and arrival time.
sfu/_fastpath.pyx mirrors ``ReceiveStats`` as a cdef class of the same name."""

from __future__ import annotations

from sfu import rtp


class ReceiveStats:
    """Sequence numbers, loss and jitter of a producer's stream, and its last SR."""

    __slots__ = (
        "base", "clock_rate", "expected_prior", "has_transit", "highest", "jitter16",
        "received", "received_prior", "sr_arrival_us", "sr_ntp_mid", "sr_seen", "started",
        "transit",
    )

    def __init__(self, clock_rate: int) -> None:
        self.clock_rate = clock_rate
        self.started = False  # base and highest are set by the first packet
        self.base = 0  # extended sequence number of the first packet
        self.highest = 0
        self.received = 0
        self.expected_prior = 0
        self.received_prior = 0
        self.jitter16 = 0  # scaled by 16, as in A.8
        self.has_transit = False
        self.transit = 0
        self.sr_seen = False  # the publisher's last SR: NTP middle bits, when it came
        self.sr_ntp_mid = 0
        self.sr_arrival_us = 0

    def on_arrival(self, seq: int, timestamp: int, now_us: int) -> int:
        """Count one packet; returns its extended sequence number."""
        if not self.started:
            self.started = True
            ext = self.base = self.highest = 0x10000 + seq
        else:
            ext = rtp.extend_seq(self.highest, seq)
            self.highest = max(self.highest, ext)
        self.received += 1
        transit = (rtp.to_rtp_units(now_us, self.clock_rate) - timestamp) & 0xFFFFFFFF
        if self.has_transit:
            self.jitter16 = rtp.jitter_step(self.jitter16, transit, self.transit)
        self.transit = transit
        self.has_transit = True
        return ext

    def on_sender_report(self, ntp_mid: int, now_us: int) -> None:
        """The publisher's SR: its NTP middle bits and arrival, for LSR/DLSR."""
        self.sr_seen = True
        self.sr_ntp_mid = ntp_mid
        self.sr_arrival_us = now_us

    def report_block(self, ssrc: int, now_us: int) -> tuple[int, ...] | None:
        """(ssrc, fraction lost, cumulative lost, extended highest sequence, jitter, LSR,
        DLSR) (RFC 3550 §6.4.1); None before the first packet. Starts the next
        reporting interval."""
        if not self.started:
            return None
        expected = self.highest - self.base + 1
        expected_interval = expected - self.expected_prior
        lost_interval = expected_interval - (self.received - self.received_prior)
        self.expected_prior = expected
        self.received_prior = self.received
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        dlsr = 0
        if self.sr_seen and now_us >= self.sr_arrival_us:
            dlsr = ((now_us - self.sr_arrival_us) * 65536 // 1_000_000) & 0xFFFFFFFF
        return (ssrc, fraction, expected - self.received, self.highest & 0xFFFFFFFF,
                self.jitter16 >> 4, self.sr_ntp_mid, dlsr)
