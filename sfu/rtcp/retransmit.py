"""Answering subscribers' NACKs within a budget, sans IO.

``RetransmitBudget`` is one consumer's token buckets: a share of what is forwarded to
it, refilled from the caller's clock (``now_us``). sfu/_fastpath.pyx mirrors it as a
cdef class of the same name.
"""

from __future__ import annotations

# Answering subscribers' NACKs. A generic NACK asks for up to 17 packets per 4-byte entry,
# so one SRTCP datagram can ask for 5,695; a subscriber must not turn that into traffic
# (and CPU) that hurts the rest of the room. Three rules, checked in this order per
# sequence number asked for, cheapest first, the same in both forwarders (RetransmitBudget
# below is rule 2):
# 1. Only the last HISTORY_SIZE sequence numbers sent to the consumer are looked at; the
#    rest are counted (nack_out_of_history) from the entry alone, without a lookup.
# 2. A token bucket per consumer, in packets and in bytes (nack_budget_exceeded). It
#    refills at a share of what is forwarded to that consumer, measured between NACKs at
#    least RETRANSMIT_RATE_WINDOW_US apart, with a floor (the first second, slow streams,
#    a lost keyframe); it holds RETRANSMIT_BURST_US of that rate and starts full.
#    (libwebrtc caps retransmissions at the send rate in the same way.)
# 3. A packet is resent at most once per interval: the subscriber's round trip, from its
#    receiver reports, else RETRANSMIT_DEFAULT_RTT_US; at least RETRANSMIT_MIN_INTERVAL_US
#    (nack_too_soon). mediasoup's RtpRetransmissionBuffer and libwebrtc's packet history
#    do the same: a second NACK within one round trip is for the copy already on its way.
# Tokens are kept in millionths (a packet costs RETRANSMIT_TOKEN, a byte as much), so
# refilling `elapsed µs × rate per s` stays in integers.
RETRANSMIT_SHARE_PERCENT = 50  # of the consumer's forward rate, in packets and in bytes
RETRANSMIT_MIN_PACKETS_PER_S = 50
RETRANSMIT_MIN_BYTES_PER_S = 50 * 1200  # fifty full-size packets
RETRANSMIT_BURST_US = 1_000_000
RETRANSMIT_RATE_WINDOW_US = 1_000_000
RETRANSMIT_DEFAULT_RTT_US = 100_000
RETRANSMIT_MIN_INTERVAL_US = 20_000
RETRANSMIT_TOKEN = 1_000_000


def retransmit_budget(rate: int, floor: int) -> int:
    """Tokens a second a consumer may spend on retransmissions: a share of its forward
    ``rate`` (per second), at least ``floor``."""
    return max(floor, rate * RETRANSMIT_SHARE_PERCENT // 100)


def retransmit_interval(rtt_us: int) -> int:
    """How long a resent packet is not resent again: the subscriber's round trip (-1:
    not known yet)."""
    return max(RETRANSMIT_MIN_INTERVAL_US, rtt_us if rtt_us >= 0 else RETRANSMIT_DEFAULT_RTT_US)


class RetransmitBudget:
    """One consumer's retransmission token buckets (rule 2 above)."""

    __slots__ = ("bucket_started", "bucket_us", "rate_bytes", "rate_mark_bytes",
                 "rate_mark_packets", "rate_mark_us", "rate_packets", "tokens_bytes",
                 "tokens_packets")

    def __init__(self) -> None:
        # Millionths of a packet, of a byte; when last filled (bucket_started: since
        # the first NACK).
        self.bucket_started = False
        self.bucket_us = 0
        self.tokens_packets = 0
        self.tokens_bytes = 0
        # The forward rate (per second) the buckets are a share of, and the time and
        # counts when it was last measured.
        self.rate_packets = 0
        self.rate_bytes = 0
        self.rate_mark_us = 0
        self.rate_mark_packets = 0
        self.rate_mark_bytes = 0

    def mark(self, now_us: int, packets_sent: int, bytes_sent: int) -> None:
        """Start measuring the forward rate (the consumer's first packet)."""
        self.rate_mark_us = now_us
        self.rate_mark_packets = packets_sent
        self.rate_mark_bytes = bytes_sent

    def refill(self, now_us: int, packets_sent: int, bytes_sent: int) -> None:
        """Bring the buckets up to ``now_us``, given what the consumer has been sent."""
        if now_us - self.rate_mark_us >= RETRANSMIT_RATE_WINDOW_US:
            elapsed_ms = (now_us - self.rate_mark_us) // 1000
            self.rate_packets = (packets_sent - self.rate_mark_packets) * 1000 // elapsed_ms
            self.rate_bytes = (bytes_sent - self.rate_mark_bytes) * 1000 // elapsed_ms
            self.mark(now_us, packets_sent, bytes_sent)
        packets_per_s = retransmit_budget(self.rate_packets, RETRANSMIT_MIN_PACKETS_PER_S)
        bytes_per_s = retransmit_budget(self.rate_bytes, RETRANSMIT_MIN_BYTES_PER_S)
        if not self.bucket_started:  # the first NACK: a full bucket
            self.bucket_started = True
            self.bucket_us = now_us
            self.tokens_packets = packets_per_s * RETRANSMIT_BURST_US
            self.tokens_bytes = bytes_per_s * RETRANSMIT_BURST_US
            return
        elapsed = 0
        if now_us > self.bucket_us:
            elapsed = min(now_us - self.bucket_us, RETRANSMIT_BURST_US)
            self.bucket_us = now_us
        self.tokens_packets = min(packets_per_s * RETRANSMIT_BURST_US,
                                  self.tokens_packets + elapsed * packets_per_s)
        self.tokens_bytes = min(bytes_per_s * RETRANSMIT_BURST_US,
                                self.tokens_bytes + elapsed * bytes_per_s)

    def has_token(self) -> bool:
        """Whether one more packet may be resent (its bytes are checked by ``spend``)."""
        return self.tokens_packets >= RETRANSMIT_TOKEN

    def spend(self, length: int) -> bool:
        """Take one packet of ``length`` bytes from the buckets; False when the bytes
        bucket cannot pay (nothing is taken)."""
        cost = length * RETRANSMIT_TOKEN
        if self.tokens_bytes < cost:
            return False
        self.tokens_packets -= RETRANSMIT_TOKEN
        self.tokens_bytes -= cost
        return True
