"""Asking a publisher for the packets it lost (RFC 4585 generic NACK), sans IO.

``NackGenerator`` follows one producer's incoming sequence numbers: the gaps become
entries that fall due ``NACK_FIRST_DELAY_US`` later (reordered packets get the chance to
arrive first), are asked again one round trip later, and are given up after
``NACK_MAX_RETRIES`` asks or ``NACK_MAX_AGE_US``. The caller owns the clock (``now_us``)
and the socket; sfu/_fastpath.pyx mirrors this class as a cdef class of the same name.
"""

from __future__ import annotations

NACK_MAX_MISSING = 256  # a larger gap is left to a keyframe request
NACK_FIRST_DELAY_US = 5_000  # let reordered packets arrive before asking
NACK_MIN_RETRY_US = 20_000
NACK_DEFAULT_RTT_US = 100_000  # until a retransmission has been timed
NACK_MAX_RETRIES = 8
NACK_MAX_AGE_US = 1_000_000

# What NackGenerator.on_arrival reports, as bits.
NACK_RECOVERED = 1  # a packet asked for at least once arrived
NACK_EARLIER = 2  # a new gap made the deadline earlier than any entry still pending


class NackGenerator:
    """The lost packets of one producer, ascending by extended sequence number."""

    __slots__ = ("asked", "count", "ext", "first", "next", "retries", "rtt_us")

    def __init__(self) -> None:
        # Parallel lists, as the Cython twin's C arrays: extended sequence number, asks so
        # far, when to ask next, when it went missing, when it was last asked.
        self.ext: list[int] = []
        self.retries: list[int] = []
        self.next: list[int] = []
        self.first: list[int] = []
        self.asked: list[int] = []
        self.count = 0
        self.rtt_us = 0  # NACK-to-arrival round trip, smoothed; 0: not timed yet

    def on_arrival(self, highest: int, ext: int, now_us: int) -> int:
        """Take packet ``ext`` (extended sequence number) when ``highest`` was the highest
        seen: remember a gap, forget what arrives late. Returns NACK_* bits."""
        gap = ext - highest - 1
        if gap > NACK_MAX_MISSING:
            self._forget(0, self.count)  # too much to ask for: a keyframe request will do
            return 0
        if gap > 0:
            # Entries that stay (the oldest go when the list is full): is the new gap's
            # first ask earlier than all of theirs?
            drop = max(0, self.count + gap - NACK_MAX_MISSING)
            pending = self._deadline(drop)
            first_ask = now_us + NACK_FIRST_DELAY_US
            self._forget(0, drop)
            for lost in range(highest + 1, ext):
                self.ext.append(lost)
                self.retries.append(0)
                self.next.append(first_ask)
                self.first.append(now_us)
                self.asked.append(0)
            self.count += gap
            return NACK_EARLIER if pending < 0 or first_ask < pending else 0
        if gap < 0:
            for i in range(self.count):
                if self.ext[i] == ext:  # it came after all: late, or the retransmission
                    recovered = self.retries[i] > 0
                    if recovered:
                        sample = now_us - self.asked[i]
                        self.rtt_us = sample if not self.rtt_us else (
                            7 * self.rtt_us + sample) // 8
                    self._forget(i, i + 1)
                    return NACK_RECOVERED if recovered else 0
        return 0

    def due(self, now_us: int) -> tuple[list[int], int]:
        """The 16-bit sequence numbers to ask for now (in order), and how many entries
        were given up. Each is asked again one round trip later (at least 20 ms)."""
        due: list[int] = []
        gave_up = 0
        kept = 0
        retry_us = max(self.rtt_us or NACK_DEFAULT_RTT_US, NACK_MIN_RETRY_US)
        for i in range(self.count):
            if self.retries[i] >= NACK_MAX_RETRIES or now_us - self.first[i] > NACK_MAX_AGE_US:
                gave_up += 1
                continue
            if now_us >= self.next[i]:
                due.append(self.ext[i] & 0xFFFF)
                self.retries[i] += 1
                self.next[i] = now_us + retry_us
                self.asked[i] = now_us
            if kept != i:
                self.ext[kept] = self.ext[i]
                self.retries[kept] = self.retries[i]
                self.next[kept] = self.next[i]
                self.first[kept] = self.first[i]
                self.asked[kept] = self.asked[i]
            kept += 1
        self._forget(kept, self.count)
        return due, gave_up

    def deadline(self) -> int:
        """The earliest ``now_us`` at which ``due`` would return a sequence number or give
        an entry up; -1 when nothing is pending. An entry asked its last time can be
        given up at once: its deadline is when it was last asked (already past)."""
        return self._deadline(0)

    def _deadline(self, start: int) -> int:
        earliest = -1
        for i in range(start, self.count):
            if self.retries[i] >= NACK_MAX_RETRIES:
                at = self.asked[i]
            else:  # asked again at next; given up once older than NACK_MAX_AGE_US
                at = min(self.next[i], self.first[i] + NACK_MAX_AGE_US + 1)
            if earliest < 0 or at < earliest:
                earliest = at
        return earliest

    def _forget(self, start: int, end: int) -> None:
        """Remove entries start..end-1, keeping the order of the rest."""
        if end > start:
            del self.ext[start:end], self.retries[start:end], self.next[start:end]
            del self.first[start:end], self.asked[start:end]
            self.count -= end - start
