# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The Cython forwarder: ``sfu._fastpath_fallback.Forwarder``'s interface and rules, in C.

Per incoming packet: one copy into a pooled buffer, libsrtp unprotect in place (the
libsrtp pylibsrtp bundles, called through the C pointers its cffi binding exposes),
then per Consumer: one copy into the send buffer, header rewrite, libsrtp protect in
place, ``sendto`` from C on the subscriber's ICE socket. No Python object is created
per outgoing packet (except on TURN-relayed endpoints, which have no plain socket).

The pure-Python twin (sfu/_fastpath_fallback.py) is the reference:
tests/test_forwarder_diff.py holds the two to byte-identical output and identical
counters. It has the same classes and methods in the same order, and the RTCP machines
of sfu/rtcp/ (NackGenerator, ReceiveStats, SrTranslator, KeyframeThrottle,
RetransmitBudget) are cdef classes here of the same names, with the same methods.
"""

import socket
import struct

from libc.stdint cimport (
    int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t,
)
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp, memcpy, memset
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from sfu import rtp as _rtp
from sfu.rtcp import nack as _nack
from sfu.rtcp import packets as _packets
from sfu.rtcp import retransmit as _retransmit

cdef extern from *:
    int __builtin_popcount(unsigned int x) nogil

from sfu._mmsg cimport (
    MSG_DONTWAIT, MSG_TRUNC, MSG_WAITFORONE, iovec, mmsghdr, recvmmsg, sendmmsg,
)

cdef extern from "<sys/socket.h>" nogil:
    struct sockaddr:
        pass
    ssize_t c_sendto "sendto" (int fd, const void *buf, size_t n, int flags,
                               const sockaddr *addr, unsigned int addrlen)

# -- constants shared with sfu/rtp.py and sfu/rtcp/ (one source of truth, read at import)

cdef int OK = _rtp.OK
cdef int RECEIVE_MAX_BATCHES = _rtp.RECEIVE_MAX_BATCHES
cdef uint16_t AF_INET_FAMILY = socket.AF_INET
cdef int LOUD_DBOV = _rtp.LOUD_DBOV
cdef int DROP_TOO_SHORT = _rtp.DROP_TOO_SHORT
cdef int DROP_BAD_VERSION = _rtp.DROP_BAD_VERSION
cdef int DROP_BAD_HEADER = _rtp.DROP_BAD_HEADER
cdef int DROP_UNKNOWN_ENDPOINT = _rtp.DROP_UNKNOWN_ENDPOINT
cdef int DROP_SRTP_FAIL = _rtp.DROP_SRTP_FAIL
cdef int DROP_UNKNOWN_SSRC = _rtp.DROP_UNKNOWN_SSRC
cdef int DROP_BAD_RTCP = _rtp.DROP_BAD_RTCP
cdef int DROP_TOO_LONG = _rtp.DROP_TOO_LONG
cdef int C_SENT = _rtp.C_SENT
cdef int C_SENT_BYTES = _rtp.C_SENT_BYTES
cdef int C_SKIP_PAYLOAD_TYPE = _rtp.C_SKIP_PAYLOAD_TYPE
cdef int C_SKIP_WAITING_KEYFRAME = _rtp.C_SKIP_WAITING_KEYFRAME
cdef int C_SKIP_BEFORE_START = _rtp.C_SKIP_BEFORE_START
cdef int C_SEND_ERROR = _rtp.C_SEND_ERROR
cdef int C_PROTECT_ERROR = _rtp.C_PROTECT_ERROR
cdef int C_RTP_IN = _rtp.C_RTP_IN
cdef int C_RTCP_IN = _rtp.C_RTCP_IN
cdef int C_KEYFRAME_REQUESTS_SENT = _rtp.C_KEYFRAME_REQUESTS_SENT
cdef int C_KEYFRAME_REQUESTS_THROTTLED = _rtp.C_KEYFRAME_REQUESTS_THROTTLED
cdef int C_NACK_IN = _rtp.C_NACK_IN
cdef int C_RR_IN = _rtp.C_RR_IN
cdef int C_SR_IN = _rtp.C_SR_IN
cdef int C_REMB_IN = _rtp.C_REMB_IN
cdef int C_SKIP_NOT_CONNECTED = _rtp.C_SKIP_NOT_CONNECTED
cdef int C_SKIP_TOO_LONG = _rtp.C_SKIP_TOO_LONG
cdef int C_SKIP_PAUSED = _rtp.C_SKIP_PAUSED
cdef int C_SR_SENT = _rtp.C_SR_SENT
cdef int SR_SIZE = _packets.SR_SIZE
cdef int C_RETRANSMITTED = _rtp.C_RETRANSMITTED
cdef int C_RETRANSMIT_MISSED = _rtp.C_RETRANSMIT_MISSED
cdef int HISTORY_SIZE = _rtp.HISTORY_SIZE
cdef int C_NACK_REQUESTED = _rtp.C_NACK_REQUESTED
cdef int C_NACK_RECOVERED = _rtp.C_NACK_RECOVERED
cdef int C_NACK_GAVE_UP = _rtp.C_NACK_GAVE_UP
cdef int C_KEYFRAME_WAITS = _rtp.C_KEYFRAME_WAITS
cdef int C_KEYFRAME_WAIT_US = _rtp.C_KEYFRAME_WAIT_US
cdef int64_t NACK_FIRST_DELAY_US = _nack.NACK_FIRST_DELAY_US
cdef int64_t NACK_MIN_RETRY_US = _nack.NACK_MIN_RETRY_US
cdef int64_t NACK_DEFAULT_RTT_US = _nack.NACK_DEFAULT_RTT_US
cdef int NACK_MAX_RETRIES = _nack.NACK_MAX_RETRIES
cdef int NACK_RECOVERED = _nack.NACK_RECOVERED
cdef int NACK_EARLIER = _nack.NACK_EARLIER
cdef int64_t NACK_MAX_AGE_US = _nack.NACK_MAX_AGE_US
cdef int C_NACK_OUT_OF_HISTORY = _rtp.C_NACK_OUT_OF_HISTORY
cdef int C_NACK_TOO_SOON = _rtp.C_NACK_TOO_SOON
cdef int C_NACK_BUDGET_EXCEEDED = _rtp.C_NACK_BUDGET_EXCEEDED
cdef int C_LOSS_LISTENER_ERRORS = _rtp.C_LOSS_LISTENER_ERRORS
cdef int C_SKIP_CONSUMER_PAUSED = _rtp.C_SKIP_CONSUMER_PAUSED
cdef int C_LAYER_SWITCHES = _rtp.C_LAYER_SWITCHES
cdef int C_SKIP_LAYER_PENDING = _rtp.C_SKIP_LAYER_PENDING
cdef int C_RID_BOUND = _rtp.C_RID_BOUND
cdef int C_TWCC_IN = _rtp.C_TWCC_IN
cdef int C_FEEDBACK_LISTENER_ERRORS = _rtp.C_FEEDBACK_LISTENER_ERRORS
cdef int C_PROBE_PACKETS = _rtp.C_PROBE_PACKETS
cdef int C_PROBE_BYTES = _rtp.C_PROBE_BYTES
cdef int TWCC_HISTORY = _rtp.TWCC_HISTORY
cdef int PROBE_MAX_PACKETS = _rtp.PROBE_MAX_PACKETS
cdef int PROBE_PADDING = _rtp.PROBE_PADDING
cdef int64_t RETRANSMIT_SHARE_PERCENT = _retransmit.RETRANSMIT_SHARE_PERCENT
cdef int64_t RETRANSMIT_MIN_PACKETS_PER_S = _retransmit.RETRANSMIT_MIN_PACKETS_PER_S
cdef int64_t RETRANSMIT_MIN_BYTES_PER_S = _retransmit.RETRANSMIT_MIN_BYTES_PER_S
cdef int64_t RETRANSMIT_BURST_US = _retransmit.RETRANSMIT_BURST_US
cdef int64_t RETRANSMIT_RATE_WINDOW_US = _retransmit.RETRANSMIT_RATE_WINDOW_US
cdef int64_t RETRANSMIT_DEFAULT_RTT_US = _retransmit.RETRANSMIT_DEFAULT_RTT_US
cdef int64_t RETRANSMIT_MIN_INTERVAL_US = _retransmit.RETRANSMIT_MIN_INTERVAL_US
cdef int64_t RETRANSMIT_TOKEN = _retransmit.RETRANSMIT_TOKEN
cdef int64_t RESENT_NEVER = _rtp.RESENT_NEVER
assert _nack.NACK_MAX_MISSING == NACK_CAPACITY, "NACK_CAPACITY differs from sfu.rtcp.nack"
cdef int N_COUNTERS = len(_rtp.COUNTER_NAMES)
cdef int MAX_PACKET_SIZE = _rtp.MAX_PACKET_SIZE
cdef int MAX_PROTECT_SIZE = _rtp.MAX_PROTECT_SIZE
cdef int CODEC_VP8 = _rtp.CODEC_VP8
cdef int CODEC_H264 = _rtp.CODEC_H264
cdef uint32_t SFU_RTCP_SSRC = _packets.SFU_RTCP_SSRC
assert N_COUNTERS <= 64, "Forwarder._counters is too small"

# -- libsrtp, from pylibsrtp's cffi binding -------------------------------------------

cdef srtp_fn c_protect = NULL
cdef srtp_fn c_unprotect = NULL
cdef srtp_fn c_protect_rtcp = NULL
cdef srtp_fn c_unprotect_rtcp = NULL


def _bind_libsrtp():
    """Take libsrtp's C entry points from pylibsrtp, checking the declared signatures."""
    global c_protect, c_unprotect, c_protect_rtcp, c_unprotect_rtcp
    from pylibsrtp._binding import ffi, lib

    expected = "srtp_err_status_t(*)(struct srtp_ctx_t_ *, void *, int *)"
    pointers = []
    for name in ("srtp_protect", "srtp_unprotect", "srtp_protect_rtcp", "srtp_unprotect_rtcp"):
        function = ffi.addressof(lib, name)
        if ffi.typeof(function).cname != expected:
            raise ImportError(f"pylibsrtp declares {name} as {ffi.typeof(function).cname}")
        pointers.append(int(ffi.cast("uintptr_t", function)))
    cdef uintptr_t address
    address = pointers[0]
    c_protect = <srtp_fn>address
    address = pointers[1]
    c_unprotect = <srtp_fn>address
    address = pointers[2]
    c_protect_rtcp = <srtp_fn>address
    address = pointers[3]
    c_unprotect_rtcp = <srtp_fn>address


_bind_libsrtp()


cdef void *_srtp_ctx(object session) except? NULL:
    """The srtp_t inside a pylibsrtp Session."""
    from pylibsrtp._binding import ffi

    return <void *><uintptr_t>int(ffi.cast("uintptr_t", session._srtp[0]))


# -- small helpers ----------------------------------------------------------------------

cdef inline uint16_t _u16(const uint8_t *p) noexcept nogil:
    return (p[0] << 8) | p[1]


cdef inline uint32_t _u32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline void _put16(uint8_t *p, uint16_t v) noexcept nogil:
    p[0] = v >> 8
    p[1] = v & 0xFF


cdef inline void _put32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = v >> 24
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF


cdef inline int64_t c_extend_seq(int64_t highest, uint16_t seq) noexcept nogil:
    cdef int64_t delta = <int64_t>((seq - <uint16_t>(highest & 0xFFFF)) & 0xFFFF)
    if delta >= 0x8000:
        delta -= 0x10000
    return highest + delta


cdef inline uint32_t c_abs_send_time(uint64_t now_us) noexcept nogil:
    # Modulo 64 s first (exact, see sfu.rtp.abs_send_time): now_us << 18 would overflow.
    return <uint32_t>(((now_us % 64000000) << 18) // 1000000)


cdef inline uint64_t c_to_rtp_units(uint64_t now_us, uint64_t rate) noexcept nogil:
    # As sfu.rtp.to_rtp_units: split so that now_us * rate cannot overflow.
    return (now_us // 1000000) * rate + (now_us % 1000000) * rate // 1000000


cdef inline int64_t c_jitter_step(int64_t jitter16, uint32_t transit,
                                  uint32_t previous) noexcept nogil:
    # One step of RFC 3550 A.8's estimator, as sfu.rtp.jitter_step.
    cdef int64_t d = <int64_t>(<uint32_t>(transit - previous))
    if d >= (<int64_t>1 << 31):
        d = (<int64_t>1 << 32) - d
    return jitter16 + d - ((jitter16 + 8) >> 4)


cdef inline uint32_t c_history_window(uint16_t highest, uint16_t pid) noexcept nogil:
    # As sfu.rtp.history_window: bit k set when pid + k is among the last HISTORY_SIZE.
    cdef int behind = <uint16_t>(highest - pid)
    if behind >= HISTORY_SIZE + 16:
        return 0
    cdef int low = max(0, behind - HISTORY_SIZE + 1)
    cdef int high = min(16, behind)
    return ((<uint32_t>1 << (high + 1)) - 1) & ~((<uint32_t>1 << low) - 1)


cdef inline int64_t c_retransmit_budget(int64_t rate, int64_t floor) noexcept nogil:
    # As sfu.rtcp.retransmit.retransmit_budget.
    return max(floor, rate * RETRANSMIT_SHARE_PERCENT // 100)


cdef inline int64_t c_retransmit_interval(int64_t rtt_us) noexcept nogil:
    # As sfu.rtcp.retransmit.retransmit_interval (-1: round trip not known yet).
    return max(RETRANSMIT_MIN_INTERVAL_US, rtt_us if rtt_us >= 0 else RETRANSMIT_DEFAULT_RTT_US)


cdef bint _vp8_keyframe_start(const uint8_t *p, int size) noexcept nogil:
    cdef int pos = _vp8_header(p, size)
    return pos >= 0 and not (p[pos] & 0x01)


cdef int _vp8_header(const uint8_t *p, int size) noexcept nogil:
    # Where the RFC 7741 §4.3 payload header starts, after the §4.2 descriptor, when the
    # packet starts partition 0 of a frame; else -1 (as sfu.rtp._vp8_header).
    if size < 1:
        return -1
    cdef uint8_t first = p[0]
    if not (first & 0x10) or (first & 0x07):
        return -1
    cdef int pos = 1
    cdef uint8_t ext
    if first & 0x80:
        if pos >= size:
            return -1
        ext = p[pos]
        pos += 1
        if ext & 0x80:
            if pos >= size:
                return -1
            pos += 2 if p[pos] & 0x80 else 1
        if ext & 0x40:
            pos += 1
        if ext & 0x30:
            pos += 1
    return pos if pos < size else -1


cdef void _vp8_keyframe_size(const uint8_t *p, int size, int *width,
                             int *height) noexcept nogil:
    # A keyframe's width and height (RFC 6386 §9.1), as sfu.rtp.vp8_keyframe_size.
    cdef int pos = _vp8_header(p, size)
    if pos < 0 or p[pos] & 0x01 or pos + 10 > size:
        return
    if p[pos + 3] != 0x9d or p[pos + 4] != 0x01 or p[pos + 5] != 0x2a:
        return
    width[0] = (p[pos + 6] | (p[pos + 7] << 8)) & 0x3FFF
    height[0] = (p[pos + 8] | (p[pos + 9] << 8)) & 0x3FFF


cdef bint _h264_keyframe(const uint8_t *p, int size) noexcept nogil:
    # RFC 6184 §5: IDR (5) or SPS (7), alone, in a STAP-A (24) or starting an FU-A (28).
    if size < 1:
        return False
    cdef int nal_type = p[0] & 0x1F
    cdef int pos, nal_size
    if nal_type == 5 or nal_type == 7:
        return True
    if nal_type == 24:
        pos = 1
        while pos + 2 < size:
            nal_size = (p[pos] << 8) | p[pos + 1]
            if (p[pos + 2] & 0x1F) == 5 or (p[pos + 2] & 0x1F) == 7:
                return True
            pos += 2 + nal_size
        return False
    if nal_type == 28 and size >= 2:
        return (p[1] & 0x80) != 0 and ((p[1] & 0x1F) == 5 or (p[1] & 0x1F) == 7)
    return False


cdef bint _is_keyframe_start(int codec, const uint8_t *p, int size) noexcept nogil:
    if codec == CODEC_VP8:
        return _vp8_keyframe_start(p, size)
    if codec == CODEC_H264:
        return _h264_keyframe(p, size)
    return True


cdef inline _Producer _producer_on(_Endpoint ep, uint32_t ssrc):
    """The producer an endpoint publishes under ``ssrc``: an SSRC only counts on its own
    endpoint. A linear scan: an endpoint carries a handful of tracks."""
    cdef _Producer candidate
    for candidate in ep.producers:
        if candidate.ssrc == ssrc and candidate.bound:
            return candidate
    return None


cdef inline _Consumer _consumer_on(_Endpoint ep, uint32_t ssrc):
    """The consumer sent to an endpoint as ``ssrc``, or None."""
    cdef _Consumer candidate
    for candidate in ep.consumers:
        if candidate.ssrc == ssrc:
            return candidate
    return None


def extend_seq(int64_t highest, int seq):
    """Same contract as ``sfu.rtp.extend_seq`` (RFC 3550 A.1)."""
    return c_extend_seq(highest, <uint16_t>(seq & 0xFFFF))


def abs_send_time(uint64_t now_us):
    """Same contract as ``sfu.rtp.abs_send_time``."""
    return c_abs_send_time(now_us)


def _address(bytes name):
    """(host, port) of a sockaddr_in / sockaddr_in6 the kernel filled in."""
    family, port = struct.unpack_from("=H", name)[0], struct.unpack_from("!H", name, 2)[0]
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, name[4:8]), port
    return socket.inet_ntop(socket.AF_INET6, name[8:24]), port


cdef void _source_key(const uint8_t *name, uint8_t *key) noexcept:
    """A sockaddr's family, port and address in 20 bytes (IPv4's address zero-padded)."""
    memset(key, 0, 20)
    memcpy(key, name, 4)  # family (host order), port (network order)
    if (<const uint16_t *>name)[0] == AF_INET_FAMILY:
        memcpy(key + 4, name + 4, 4)
    else:
        memcpy(key + 4, name + 8, 16)


cdef uint32_t _source_hash(int fd, const uint8_t *key) noexcept:
    cdef uint32_t h = 2166136261u ^ <uint32_t>fd  # FNV-1a
    cdef int i
    for i in range(20):
        h = (h ^ key[i]) * 16777619u
    return h


def _sockaddr(addr):
    """A sockaddr_in / sockaddr_in6 for (host, port), as the kernel wants it."""
    host, port = addr[0], addr[1]
    try:
        packed = socket.inet_pton(socket.AF_INET, host)
        return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + packed + bytes(8)
    except OSError:
        packed = socket.inet_pton(socket.AF_INET6, host)
        return (struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0) + packed
                + struct.pack("=I", 0))


# -- the RTCP machines: sfu/rtcp/*.py, class for class and method for method ------------

cdef class NackGenerator:
    """As sfu.rtcp.nack.NackGenerator: the lost packets of one producer."""

    cdef int on_arrival(self, int64_t highest, int64_t ext, int64_t now_us) noexcept:
        cdef int64_t gap = ext - highest - 1
        cdef int64_t lost, sample, pending, first_ask
        cdef int i, drop
        if gap > NACK_CAPACITY:
            self._forget(0, self.count)  # too much to ask for: a keyframe request will do
            return 0
        if gap > 0:
            # Entries that stay (the oldest go when the list is full): is the new gap's
            # first ask earlier than all of theirs?
            drop = <int>max(0, self.count + gap - NACK_CAPACITY)
            pending = self._deadline(drop)
            first_ask = now_us + NACK_FIRST_DELAY_US
            self._forget(0, drop)
            lost = highest + 1
            while lost < ext:
                i = self.count
                self.ext[i] = lost
                self.retries[i] = 0
                self.next[i] = first_ask
                self.first[i] = now_us
                self.asked[i] = 0
                self.count += 1
                lost += 1
            return NACK_EARLIER if pending < 0 or first_ask < pending else 0
        if gap < 0:
            for i in range(self.count):
                if self.ext[i] == ext:  # it came after all: late, or the retransmission
                    if self.retries[i]:
                        sample = now_us - self.asked[i]
                        self.rtt_us = sample if not self.rtt_us else (
                            7 * self.rtt_us + sample) // 8
                        self._forget(i, i + 1)
                        return NACK_RECOVERED
                    self._forget(i, i + 1)
                    return 0
        return 0

    cdef tuple due(self, int64_t now_us):
        cdef list due = []
        cdef int i, kept = 0, gave_up = 0
        cdef int64_t retry_us = max(self.rtt_us if self.rtt_us else NACK_DEFAULT_RTT_US,
                                    NACK_MIN_RETRY_US)
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
        self.count = kept
        return due, gave_up

    cdef int64_t deadline(self) noexcept:
        return self._deadline(0)

    cdef int64_t _deadline(self, int start) noexcept:
        cdef int64_t earliest = -1, at
        cdef int i
        for i in range(start, self.count):
            if self.retries[i] >= NACK_MAX_RETRIES:
                at = self.asked[i]
            else:  # asked again at next; given up once older than NACK_MAX_AGE_US
                at = min(self.next[i], self.first[i] + NACK_MAX_AGE_US + 1)
            if earliest < 0 or at < earliest:
                earliest = at
        return earliest

    cdef void _forget(self, int start, int end) noexcept:
        cdef int removed = end - start, j
        if removed <= 0:
            return
        for j in range(end, self.count):
            self.ext[j - removed] = self.ext[j]
            self.retries[j - removed] = self.retries[j]
            self.next[j - removed] = self.next[j]
            self.first[j - removed] = self.first[j]
            self.asked[j - removed] = self.asked[j]
        self.count -= removed


cdef class ReceiveStats:
    """As sfu.rtcp.stats.ReceiveStats: RFC 3550 A.3, A.8, and the last SR."""

    def __init__(self, int clock_rate):
        self.clock_rate = clock_rate

    cdef int64_t on_arrival(self, uint16_t seq, uint32_t timestamp, int64_t now_us) noexcept:
        cdef int64_t ext
        cdef uint32_t transit
        if not self.started:
            self.started = True
            ext = self.base = self.highest = 0x10000 + seq
        else:
            ext = c_extend_seq(self.highest, seq)
            self.highest = max(self.highest, ext)
        self.received += 1
        transit = <uint32_t>(c_to_rtp_units(now_us, self.clock_rate) - timestamp)
        if self.has_transit:
            self.jitter16 = c_jitter_step(self.jitter16, transit, self.transit)
        self.transit = transit
        self.has_transit = True
        return ext

    cdef void on_sender_report(self, uint32_t ntp_mid, int64_t now_us) noexcept:
        self.sr_seen = True
        self.sr_ntp_mid = ntp_mid
        self.sr_arrival_us = now_us

    cdef tuple report_block(self, uint32_t ssrc, int64_t now_us):
        if not self.started:
            return None
        cdef int64_t expected = self.highest - self.base + 1
        cdef int64_t expected_interval = expected - self.expected_prior
        cdef int64_t lost_interval = expected_interval - (self.received - self.received_prior)
        self.expected_prior = expected
        self.received_prior = self.received
        cdef int64_t fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        cdef int64_t dlsr = 0
        if self.sr_seen and now_us >= self.sr_arrival_us:
            dlsr = ((now_us - self.sr_arrival_us) * 65536 // 1000000) & 0xFFFFFFFF
        return (ssrc, fraction, expected - self.received, self.highest & 0xFFFFFFFF,
                self.jitter16 >> 4, self.sr_ntp_mid, dlsr)


cdef class SrTranslator:
    """As sfu.rtcp.sr.SrTranslator: our last SR to one subscriber, its last report."""

    def __init__(self):
        self.rtt_us = -1

    cdef int translate(self, const uint8_t *report, uint8_t *out, uint32_t ssrc,
                       uint32_t ts_offset, uint64_t packets_sent, uint64_t octets_sent,
                       int64_t now_us) noexcept:
        # As sfu.rtcp.packets.translate_sr; returns the length written to ``out``.
        self.sent_ntp_mid = _u32(report + 10)
        self.sent_us = now_us
        out[0] = 0x80
        out[1] = 200
        _put16(out + 2, 6)
        _put32(out + 4, ssrc)
        memcpy(out + 8, report + 8, 8)  # NTP time: the publisher's wall clock
        _put32(out + 16, _u32(report + 16) + ts_offset)
        _put32(out + 20, <uint32_t>(packets_sent & 0xFFFFFFFF))
        _put32(out + 24, <uint32_t>(octets_sent & 0xFFFFFFFF))
        return SR_SIZE

    cdef void on_report_block(self, int fraction, int64_t lost, uint32_t jitter,
                              uint32_t lsr, uint32_t dlsr, int64_t now_us) noexcept:
        cdef int64_t sample
        if not self.has_report:
            self.rtt_us = -1
        if lsr != 0 and lsr == self.sent_ntp_mid:
            sample = now_us - self.sent_us - (<int64_t>dlsr) * 1000000 // 65536
            if sample >= 0:
                self.rtt_us = sample
        self.fraction = fraction
        self.lost = lost
        self.jitter = jitter
        self.has_report = True

    cdef tuple report(self):
        if not self.has_report:
            return None
        return (self.fraction, self.lost, self.jitter, self.rtt_us)

    cdef int64_t rtt(self) noexcept:
        return self.rtt_us if self.has_report else -1


cdef class KeyframeThrottle:
    """As sfu.rtcp.keyframe.KeyframeThrottle: at most one request per interval."""

    cdef bint ready(self, int64_t now_us, int64_t interval_us) noexcept:
        return not self.requested or now_us - self.last_us >= interval_us

    cdef void on_request(self, int64_t now_us) noexcept:
        self.requested = True
        self.last_us = now_us


cdef class RetransmitBudget:
    """As sfu.rtcp.retransmit.RetransmitBudget: one consumer's token buckets."""

    cdef void mark(self, int64_t now_us, uint64_t packets_sent, uint64_t bytes_sent) noexcept:
        self.rate_mark_us = now_us
        self.rate_mark_packets = packets_sent
        self.rate_mark_bytes = bytes_sent

    cdef void refill(self, int64_t now_us, uint64_t packets_sent,
                     uint64_t bytes_sent) noexcept:
        cdef int64_t elapsed, packets_per_s, bytes_per_s
        if now_us - self.rate_mark_us >= RETRANSMIT_RATE_WINDOW_US:
            elapsed = (now_us - self.rate_mark_us) // 1000  # ms
            self.rate_packets = <int64_t>(packets_sent - self.rate_mark_packets) * 1000 // elapsed
            self.rate_bytes = <int64_t>(bytes_sent - self.rate_mark_bytes) * 1000 // elapsed
            self.mark(now_us, packets_sent, bytes_sent)
        packets_per_s = c_retransmit_budget(self.rate_packets, RETRANSMIT_MIN_PACKETS_PER_S)
        bytes_per_s = c_retransmit_budget(self.rate_bytes, RETRANSMIT_MIN_BYTES_PER_S)
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

    cdef bint has_token(self) noexcept:
        return self.tokens_packets >= RETRANSMIT_TOKEN

    cdef bint spend(self, int64_t length) noexcept:
        cdef int64_t cost = length * RETRANSMIT_TOKEN
        if self.tokens_bytes < cost:
            return False
        self.tokens_packets -= RETRANSMIT_TOKEN
        self.tokens_bytes -= cost
        return True


# -- tables -----------------------------------------------------------------------------

cdef class _Endpoint:
    def __dealloc__(self):
        free(self.twcc_ext)
        free(self.twcc_us)
        free(self.twcc_size)


cdef class _Producer:
    pass


cdef class _Consumer:
    def __dealloc__(self):
        free(self.history)
        free(self.history_length)
        free(self.resent_us)


cdef class Forwarder:
    """Routes diverted SRTP between endpoints, as ``sfu._fastpath_fallback.Forwarder``."""

    implementation = "cython"

    def __init__(self, int64_t keyframe_request_interval_us=500_000):
        self.keyframe_request_interval_us = keyframe_request_interval_us
        self._endpoints = {}
        self._producers = {}
        self._consumers = {}
        memset(self._counters, 0, sizeof(self._counters))
        self._loss_listener = None
        self._loss_pending = False
        self._loss_producer = 0
        self._feedback_listener = None
        self._index_sources()  # an empty table: memory starts zeroed, i.e. fd 0 everywhere
        self._batching = False
        self._queued = 0
        self._send_calls = self._send_datagrams = 0
        cdef int i
        for i in range(SEND_BATCH):
            self._out_vectors[i].iov_base = self._out[i]
            self._out_messages[i].msg_hdr.msg_name = self._out_names[i]
            self._out_messages[i].msg_hdr.msg_iov = &self._out_vectors[i]
            self._out_messages[i].msg_hdr.msg_iovlen = 1

    def add_endpoint(self, int64_t endpoint, rx, tx, sendto, int fd, addr):
        """Register a transport: pylibsrtp sessions, and where to send.

        With ``fd`` >= 0 packets go out by ``sendto(2)`` on that socket to ``addr``;
        with -1 (a TURN allocation) through the ``sendto`` callable.
        """
        cdef _Endpoint ep = _Endpoint()
        cdef bytes sa = _sockaddr(addr)
        ep.id = endpoint
        ep.rx_session = rx
        ep.tx_session = tx
        ep.rx_ctx = _srtp_ctx(rx)
        ep.tx_ctx = _srtp_ctx(tx)
        ep.py_sendto = sendto
        ep.addr = addr
        ep.fd = fd
        memcpy(ep.sockaddr, PyBytes_AS_STRING(sa), len(sa))
        ep.sockaddr_len = len(sa)
        ep.producers = []
        ep.consumers = []
        self.remove_endpoint(endpoint)
        self._endpoints[endpoint] = ep
        self._index_sources()
        # Bind the tables that name this endpoint, so no lookup happens per packet.
        cdef _Producer prod
        cdef _Consumer cons
        for prod in self._producers.values():
            if prod.endpoint_id == endpoint:
                prod.endpoint = ep
                ep.producers.append(prod)
        for cons in self._consumers.values():
            if cons.endpoint_id == endpoint:
                cons.endpoint = ep
                ep.consumers.append(cons)

    def remove_endpoint(self, int64_t endpoint):
        cdef _Endpoint ep = self._endpoints.pop(endpoint, None)
        cdef _Producer prod
        cdef _Consumer cons
        if ep is None:
            return
        for prod in ep.producers:
            prod.endpoint = None
        for cons in ep.consumers:
            cons.endpoint = None
        ep.producers = []
        ep.consumers = []
        self._index_sources()

    cdef void _index_sources(self):
        # Every endpoint with a socket of its own, by (socket, peer address): receive()
        # finds a datagram's endpoint here without a Python object.
        cdef _Endpoint ep
        cdef uint8_t key[20]
        cdef uint32_t slot
        cdef int placed = 0
        for slot in range(SOURCE_SLOTS):
            self._source_fd[slot] = -1
        for ep in self._endpoints.values():
            if ep.fd < 0 or placed >= SOURCE_SLOTS // 2:
                continue  # no socket (TURN, TCP), or a table too full: the Python way
            _source_key(ep.sockaddr, key)
            slot = _source_hash(ep.fd, key) & (SOURCE_SLOTS - 1)
            # The later endpoint of two with one address has it (a client reusing the
            # port of one that vanished), as the twin's dict has.
            while self._source_fd[slot] >= 0 and not (
                    self._source_fd[slot] == ep.fd
                    and memcmp(self._source_addr[slot], key, 20) == 0):
                slot = (slot + 1) & (SOURCE_SLOTS - 1)
            placed += self._source_fd[slot] < 0
            self._source_fd[slot] = ep.fd
            memcpy(self._source_addr[slot], key, 20)
            self._source_endpoint[slot] = <void *>ep

    cdef int _source_slot(self, int fd, const uint8_t *name) noexcept:
        cdef uint8_t key[20]
        _source_key(name, key)
        cdef uint32_t slot = _source_hash(fd, key) & (SOURCE_SLOTS - 1)
        cdef int probes
        for probes in range(SOURCE_SLOTS):  # at most half full: ends at a free slot
            if self._source_fd[slot] < 0:
                return -1
            if self._source_fd[slot] == fd and memcmp(self._source_addr[slot], key, 20) == 0:
                return slot
            slot = (slot + 1) & (SOURCE_SLOTS - 1)
        return -1

    def add_producer(self, int64_t producer, int64_t endpoint, uint32_t ssrc, int codec,
                     bytes rid=b"", int rid_id=0, bytes mid=b"", int mid_id=0,
                     int audio_level_id=0):
        """Take an endpoint's packets of one SSRC, or of one RID (see the twin's)."""
        if producer in self._producers:
            raise ValueError(f"producer {producer} exists")
        _rtp.check_layer_ids(rid, rid_id, mid, mid_id)
        cdef _Producer prod = _Producer()
        prod.id = producer
        prod.codec = codec
        prod.consumers = []
        prod.paused = False
        prod.clock_rate = _rtp.clock_rate(codec)
        prod.rid = rid
        prod.rid_id = rid_id
        prod.mid = mid
        prod.mid_id = mid_id
        prod.packets_in = prod.bytes_in = 0
        prod.width = prod.height = 0
        if not 0 <= audio_level_id <= 255:
            raise ValueError("extension ids must be 0..255")
        prod.audio_level_id = audio_level_id
        prod.level_packets = prod.level_sum = prod.level_voiced = prod.level_loud = 0
        self._attach_source(prod, endpoint, ssrc)
        self._producers[producer] = prod

    cdef int _attach_source(self, _Producer prod, int64_t endpoint, uint32_t ssrc) except -1:
        # Where the producer's media comes from, with its receive state started anew.
        prod.endpoint_id = endpoint
        prod.ssrc = ssrc
        prod.bound = ssrc != 0 or not prod.rid
        prod.keyframe = KeyframeThrottle()
        prod.stats = ReceiveStats(prod.clock_rate)
        prod.nack = NackGenerator()
        prod.endpoint = self._endpoints.get(endpoint)
        if prod.endpoint is not None:
            prod.endpoint.producers.append(prod)
        return 0

    def remove_producer(self, int64_t producer):
        cdef _Producer prod = self._producers.pop(producer, None)
        cdef _Consumer cons
        if prod is None:
            return
        if prod.endpoint is not None:
            prod.endpoint.producers.remove(prod)
        for cons in list(prod.consumers):
            if cons.producer is prod:
                self.remove_consumer(cons.id)
            else:  # it was to switch to this layer: it stays where it is
                cons.target = None

    def add_consumer(self, int64_t consumer, int64_t producer, int64_t endpoint, uint32_t ssrc,
                     bint is_video, dict payload_types, dict ext_map, bytes mid, int mid_id,
                     int abs_send_time_id, int seq_base, int64_t ts_base, int twcc_id=0):
        """Forward ``producer`` to ``endpoint`` as SSRC ``ssrc`` (see the twin's docstring)."""
        if consumer in self._consumers:
            raise ValueError(f"consumer {consumer} exists")
        cdef _Producer prod = self._producers.get(producer)
        if prod is None:
            raise ValueError(f"unknown producer {producer}")
        _rtp.check_consumer_tables(payload_types, ext_map, mid, mid_id, abs_send_time_id,
                                   twcc_id)
        cdef _Consumer cons = _Consumer()
        cons.id = consumer
        cons.endpoint_id = endpoint
        cons.producer = prod
        cons.ssrc = ssrc
        cons.is_video = is_video
        for i in range(128):
            cons.payload_types[i] = -1
        for key, value in payload_types.items():
            cons.payload_types[key] = value
        memset(cons.ext_map, 0, sizeof(cons.ext_map))
        for key, value in ext_map.items():
            cons.ext_map[key] = value
        memcpy(cons.mid, PyBytes_AS_STRING(mid), len(mid))
        cons.mid_len = len(mid)
        cons.mid_id = mid_id
        cons.abs_send_time_id = abs_send_time_id
        cons.twcc_id = twcc_id
        cons.target = None
        cons.paused = False
        cons.seq_base = seq_base & 0xFFFF
        cons.ts_base = ts_base & 0xFFFFFFFF
        cons.started = False
        cons.restart = False
        cons.new_source = False
        cons.last_out_ts = 0
        cons.last_out_pt = 0
        cons.last_out_marker = False
        cons.last_out_us = 0
        cons.waiting = False
        cons.wait_started_us = 0
        cons.sr = SrTranslator()
        cons.start_ext_seq = 0
        cons.highest_ext_seq = 0
        cons.ts_offset = 0
        cons.packets_sent = 0
        cons.bytes_sent = 0
        cons.octets_sent = 0
        cons.budget = RetransmitBudget()
        if is_video:
            cons.history = <uint8_t *>calloc(HISTORY_SIZE, MAX_PROTECT_SIZE)
            cons.history_length = <uint16_t *>calloc(HISTORY_SIZE, sizeof(uint16_t))
            cons.resent_us = <int64_t *>calloc(HISTORY_SIZE, sizeof(int64_t))
            if cons.history == NULL or cons.history_length == NULL or cons.resent_us == NULL:
                raise MemoryError()
            for i in range(HISTORY_SIZE):
                cons.resent_us[i] = RESENT_NEVER
        cons.endpoint = self._endpoints.get(endpoint)
        if cons.endpoint is not None:
            cons.endpoint.consumers.append(cons)
        self._consumers[consumer] = cons
        prod.consumers.append(cons)

    def set_producer_paused(self, int64_t producer, bint paused):
        """Stop (or resume) forwarding a producer (see the twin's docstring)."""
        cdef _Producer prod = self._producers.get(producer)
        cdef _Consumer cons
        if prod is None:
            raise ValueError(f"unknown producer {producer}")
        if prod.paused and not paused:
            for cons in prod.consumers:
                if cons.producer is prod:
                    cons.restart = cons.started
        prod.paused = paused

    def move_producer(self, int64_t producer, int64_t endpoint, uint32_t ssrc):
        """Take the producer's media from another endpoint and SSRC (see the twin's)."""
        cdef _Producer prod = self._producers.get(producer)
        cdef _Consumer cons
        if prod is None:
            raise ValueError(f"unknown producer {producer}")
        if prod.endpoint is not None:
            prod.endpoint.producers.remove(prod)
        self._attach_source(prod, endpoint, ssrc)
        for cons in prod.consumers:
            if cons.producer is prod:
                cons.restart = cons.new_source = cons.started

    def set_consumer_source(self, int64_t consumer, int64_t producer):
        """Switch a consumer to another layer at its next keyframe (see the twin's)."""
        cdef _Consumer cons = self._consumers.get(consumer)
        cdef _Producer prod = self._producers.get(producer)
        if cons is None or prod is None:
            raise ValueError(f"unknown consumer {consumer} or producer {producer}")
        if prod.codec != cons.producer.codec:
            raise ValueError("a consumer can only switch to a producer of the same codec")
        if cons.target is not None and cons.target is not prod:
            cons.target.consumers.remove(cons)
            cons.target = None
        if prod is cons.producer or cons.target is prod:
            return
        if cons.paused or not cons.started:
            self._repoint(cons, prod)  # nothing is on screen to keep until a keyframe
            return
        cons.target = prod
        prod.consumers.append(cons)

    cdef void _repoint(self, _Consumer cons, _Producer prod):
        """Make ``prod`` the consumer's source now (as the twin's)."""
        cons.producer.consumers.remove(cons)
        cons.producer = prod
        if cons.target is prod:
            cons.target = None
        else:
            prod.consumers.append(cons)
        if cons.started:
            cons.restart = cons.new_source = True

    def set_consumer_paused(self, int64_t consumer, bint paused):
        """Stop (or resume) sending to one consumer (see the twin's docstring)."""
        cdef _Consumer cons = self._consumers.get(consumer)
        if cons is None:
            raise ValueError(f"unknown consumer {consumer}")
        if paused and cons.target is not None:
            self._repoint(cons, cons.target)
        if cons.paused and not paused:
            cons.restart = cons.started
        cons.paused = paused

    def remove_consumer(self, int64_t consumer):
        cdef _Consumer cons = self._consumers.pop(consumer, None)
        if cons is None:
            return
        if cons.endpoint is not None:
            cons.endpoint.consumers.remove(cons)
        cons.producer.consumers.remove(cons)
        if cons.target is not None:
            cons.target.consumers.remove(cons)

    # -- observation ------------------------------------------------------------------

    def counters(self):
        return {name: self._counters[i] for i, name in enumerate(_rtp.COUNTER_NAMES)}

    def send_calls(self):
        """(send calls, datagrams sent): sendto(2) or a TURN send one each, sendmmsg(2)
        one per receive() batch and socket (the twin sends one at a time)."""
        return (self._send_calls, self._send_datagrams)

    def consumer_stats(self, int64_t consumer):
        """(packets, bytes) sent to a consumer; (0, 0) when it does not exist."""
        cdef _Consumer cons = self._consumers.get(consumer)
        if cons is None:
            return (0, 0)
        return (cons.packets_sent, cons.bytes_sent)

    def consumer_report(self, int64_t consumer):
        """The subscriber's last receiver report on this consumer (see the twin)."""
        cdef _Consumer cons = self._consumers.get(consumer)
        if cons is None:
            return None
        return cons.sr.report()

    def consumer_started(self, int64_t consumer):
        cdef _Consumer cons = self._consumers.get(consumer)
        return cons is not None and cons.started

    def consumer_source(self, int64_t consumer):
        """(the producer a consumer forwards, the one it will switch to or -1)."""
        cdef _Consumer cons = self._consumers.get(consumer)
        if cons is None:
            return None
        return (cons.producer.id, cons.target.id if cons.target is not None else -1)

    def producer_stats(self, int64_t producer):
        """(SSRC or 0, packets and bytes received, last keyframe's width and height)."""
        cdef _Producer prod = self._producers.get(producer)
        if prod is None:
            return None
        return (prod.ssrc if prod.bound else 0, prod.packets_in, prod.bytes_in, prod.width,
                prod.height)

    def producer_levels(self, int64_t producer):
        """(packets with an audio level, their levels summed, voiced, loud) (see the
        twin's)."""
        cdef _Producer prod = self._producers.get(producer)
        if prod is None:
            return None
        return (prod.level_packets, prod.level_sum, prod.level_voiced, prod.level_loud)

    # -- the packet path --------------------------------------------------------------

    def receive(self, sock, int64_t now_us):
        """Read the datagrams waiting on ``sock`` with recvmmsg(2) (see the twin's)."""
        cdef int fd = sock.fileno()
        cdef int i
        cdef list leftovers = []
        for i in range(RECEIVE_BATCH):
            self._vectors[i].iov_base = self._batch[i]
            self._vectors[i].iov_len = BUFFER_SIZE
        self._batching = True
        try:
            self._receive_batches(fd, now_us, leftovers)
        finally:
            self._flush()
            self._batching = False
        return leftovers

    cdef int _receive_batches(self, int fd, int64_t now_us, list leftovers) except -1:
        cdef int n, i, length, slot, status, batches = 0
        cdef uint8_t *data
        while batches < RECEIVE_MAX_BATCHES:
            for i in range(RECEIVE_BATCH):
                self._messages[i].msg_hdr.msg_name = self._names[i]
                self._messages[i].msg_hdr.msg_namelen = 28
                self._messages[i].msg_hdr.msg_iov = &self._vectors[i]
                self._messages[i].msg_hdr.msg_iovlen = 1
                self._messages[i].msg_hdr.msg_control = NULL
                self._messages[i].msg_hdr.msg_controllen = 0
                self._messages[i].msg_hdr.msg_flags = 0
            n = recvmmsg(fd, self._messages, RECEIVE_BATCH, MSG_DONTWAIT, NULL)
            if n <= 0:
                break
            batches += 1
            for i in range(n):
                length = self._messages[i].msg_len
                data = self._batch[i]
                slot = -1
                if (12 <= length <= MAX_PACKET_SIZE and 128 <= data[0] <= 191
                        and not self._messages[i].msg_hdr.msg_flags & MSG_TRUNC):
                    slot = self._source_slot(fd, self._names[i])
                if slot < 0:  # STUN, DTLS, or media from where no endpoint is: Python's
                    leftovers.append((PyBytes_FromStringAndSize(<char *>data, length),
                                      _address(PyBytes_FromStringAndSize(
                                          <char *>self._names[i], 28))))
                    continue
                memcpy(self._rx, data, length)  # as handle_packet's one copy
                status = self._handle(<_Endpoint>self._source_endpoint[slot], length, now_us)
                self._counters[status] += 1
                if self._loss_pending:
                    self._flush()  # before Python runs: it may remove an endpoint
                    self._notify_loss()
            self._flush()
            if n < RECEIVE_BATCH:
                break
        return 0

    def handle_packet(self, endpoint, bytes data, int64_t now_us):
        """Take one SRTP or SRTCP datagram from ``endpoint``; return OK or a DROP_* reason.

        ``endpoint`` stays the caller's int object: converting it to C and back for
        the table lookup would allocate a new int per packet.
        """
        cdef int length = PyBytes_GET_SIZE(data)
        cdef int status
        cdef _Endpoint ep
        if length < 12:
            status = DROP_TOO_SHORT
        elif length > MAX_PACKET_SIZE:
            status = DROP_TOO_LONG
        elif (<uint8_t>PyBytes_AS_STRING(data)[0]) >> 6 != 2:
            status = DROP_BAD_VERSION
        else:
            ep = self._endpoints.get(endpoint)
            if ep is None:
                status = DROP_UNKNOWN_ENDPOINT
            else:
                # The one copy of the incoming packet: libsrtp decrypts in place.
                memcpy(self._rx, PyBytes_AS_STRING(data), length)
                status = self._handle(ep, length, now_us)
        self._counters[status] += 1
        if self._loss_pending:  # a C flag: no Python call unless a new gap was seen
            self._notify_loss()
        return status

    def nack_due(self, int64_t producer, int64_t now_us):
        """Sequence numbers to ask the publisher for now (see the twin's docstring)."""
        cdef _Producer prod = self._producers.get(producer)
        cdef list due
        cdef int gave_up
        if prod is None:
            return []
        due, gave_up = prod.nack.due(now_us)
        self._counters[C_NACK_GAVE_UP] += gave_up
        self._counters[C_NACK_REQUESTED] += len(due)
        return due

    def nack_deadline(self, int64_t producer):
        """When ``nack_due`` has something to do, or -1 (see the twin's docstring)."""
        cdef _Producer prod = self._producers.get(producer)
        if prod is None:
            return -1
        return prod.nack.deadline()

    def set_loss_listener(self, listener):
        """Hear of new gaps that bring a NACK deadline forward (see the twin's)."""
        self._loss_listener = listener

    def set_feedback_listener(self, listener):
        """Hear of subscribers' transport-wide feedback (see the twin's docstring)."""
        self._feedback_listener = listener

    def sent_packets(self, int64_t endpoint, int base_seq, int count):
        """What was sent under transport-wide sequence numbers (see the twin's)."""
        cdef _Endpoint ep = self._endpoints.get(endpoint)
        cdef int n = max(0, min(count, TWCC_HISTORY)), k, slot
        cdef int64_t latest, ext
        cdef list result = []
        if ep is None or ep.twcc_ext == NULL:
            return [None] * n
        latest = ep.twcc_next - 1
        for k in range(n):
            ext = latest - ((latest - base_seq - k) & 0xFFFF)
            slot = ext % TWCC_HISTORY if ext >= 0 else 0
            if ext >= 0 and ep.twcc_ext[slot] == ext:
                result.append((ext, ep.twcc_us[slot], ep.twcc_size[slot]))
            else:
                result.append(None)
        return result

    def probe(self, int64_t consumer, int count, int64_t now_us):
        """Send padding-only packets on a consumer's stream to probe (see the twin's)."""
        cdef _Consumer cons = self._consumers.get(consumer)
        cdef _Endpoint ep
        cdef uint16_t highest
        cdef uint8_t *out = self._tx
        cdef int k, n, packets_sent = 0
        cdef int64_t sent = 0, twcc_seq
        if (cons is None or cons.history == NULL or not cons.started or cons.restart
                or cons.paused or cons.endpoint is None or not cons.twcc_id
                or not cons.last_out_marker):
            return 0
        ep = cons.endpoint
        highest = <uint16_t>((cons.highest_ext_seq - cons.start_ext_seq + cons.seq_base)
                             & 0xFFFF)
        for k in range(min(count, PROBE_MAX_PACKETS)):
            twcc_seq = ep.twcc_next
            ep.twcc_next += 1
            # As sfu.rtp.padding_packet: header, the one element, the padding.
            out[0] = 0x80 | 0x20 | 0x10
            out[1] = cons.last_out_pt
            _put16(out + 2, <uint16_t>(highest + 1 + k))
            _put32(out + 4, cons.last_out_ts)
            _put32(out + 8, cons.ssrc)
            if cons.twcc_id <= 14:
                _put16(out + 12, 0xBEDE)
                _put16(out + 14, 1)
                out[16] = (cons.twcc_id << 4) | 1
                _put16(out + 17, <uint16_t>(twcc_seq & 0xFFFF))
                out[19] = 0
            else:
                _put16(out + 12, 0x1000)
                _put16(out + 14, 1)
                out[16] = cons.twcc_id
                out[17] = 2
                _put16(out + 18, <uint16_t>(twcc_seq & 0xFFFF))
            memset(out + 20, 0, PROBE_PADDING - 1)
            out[20 + PROBE_PADDING - 1] = PROBE_PADDING
            n = 20 + PROBE_PADDING
            if c_protect(ep.tx_ctx, out, &n) != 0:
                self._counters[C_PROTECT_ERROR] += 1
                break
            self._record_sent(ep, twcc_seq, n, now_us)
            packets_sent += 1  # its number is taken, sent or not
            if self._send(ep, out, n, C_PROBE_PACKETS) != 0:
                self._counters[C_SEND_ERROR] += 1
                break
            sent += n
            self._counters[C_PROBE_PACKETS] += 1
        if packets_sent:
            cons.seq_base = <uint16_t>(highest + packets_sent + 1)
            cons.start_ext_seq = cons.highest_ext_seq + 1
        self._counters[C_PROBE_BYTES] += sent
        return sent

    def receive_report(self, int64_t producer, int64_t now_us):
        """A report block for a producer's stream (see the twin's docstring)."""
        cdef _Producer prod = self._producers.get(producer)
        if prod is None or not prod.bound:
            return None
        return prod.stats.report_block(prod.ssrc, now_us)

    def request_keyframe(self, int64_t producer, int64_t now_us):
        """Ask the publisher for a keyframe (PLI), unless one was asked for too recently."""
        cdef _Producer prod = self._producers.get(producer)
        if prod is None:
            return False
        return self._request_keyframe(prod, now_us)

    def send_rtcp(self, endpoint, bytes packet):
        """Protect and send RTCP the SFU originates (REMB, reports) to an endpoint."""
        cdef _Endpoint ep = self._endpoints.get(endpoint)
        cdef int n = PyBytes_GET_SIZE(packet)
        if ep is None or n < 2 or not (192 <= <uint8_t>PyBytes_AS_STRING(packet)[1] <= 223) \
                or n > MAX_PROTECT_SIZE:
            return False
        memcpy(self._rtcp, PyBytes_AS_STRING(packet), n)
        self._send_rtcp(ep, self._rtcp, n)
        return True

    cdef int _handle(self, _Endpoint ep, int length, int64_t now_us):
        cdef uint8_t *p = self._rx
        cdef int n = length
        if 192 <= p[1] <= 223:  # RTCP (RFC 5761 §4)
            self._counters[C_RTCP_IN] += 1
            if c_unprotect_rtcp(ep.rx_ctx, p, &n) != 0:
                return DROP_SRTP_FAIL
            return self._handle_rtcp(ep, n, now_us)
        self._counters[C_RTP_IN] += 1
        if c_unprotect(ep.rx_ctx, p, &n) != 0:
            return DROP_SRTP_FAIL
        # Header layout (RFC 3550 §5.1), as sfu.rtp.parse_header.
        if n < 12:
            return DROP_TOO_SHORT
        if p[0] >> 6 != 2:
            return DROP_BAD_VERSION
        cdef int offset = 12 + 4 * (p[0] & 0x0F)
        cdef int ext_profile = 0, ext_offset = 0, ext_length = 0
        if p[0] & 0x10:
            if offset + 4 > n:
                return DROP_BAD_HEADER
            ext_profile = _u16(p + offset)
            ext_length = 4 * _u16(p + offset + 2)
            ext_offset = offset + 4
            offset = ext_offset + ext_length
        if offset > n:
            return DROP_BAD_HEADER
        cdef int end = n
        cdef int padding
        if p[0] & 0x20:
            padding = p[n - 1]
            if padding == 0 or offset + padding > n:
                return DROP_BAD_HEADER
            end = n - padding
        cdef _Producer prod = _producer_on(ep, _u32(p + 8))
        if prod is None:
            prod = self._bind(ep, _u32(p + 8), ext_profile, ext_offset, ext_length)
            if prod is None:
                return DROP_UNKNOWN_SSRC
        self._record_arrival(prod, _u16(p + 2), _u32(p + 4), now_us)
        prod.packets_in += 1
        prod.bytes_in += n
        if prod.codec == CODEC_VP8:
            _vp8_keyframe_size(p + offset, end - offset, &prod.width, &prod.height)
        if prod.paused:
            self._counters[C_SKIP_PAUSED] += 1
            return OK
        if self._read_elements(ext_profile, ext_offset, ext_length) < 0:
            return DROP_BAD_HEADER
        cdef int i
        cdef uint8_t level
        if prod.audio_level_id:  # RFC 6464: V bit, then the level in -dBov
            for i in range(self._el_count):
                if self._el_id[i] == prod.audio_level_id and self._el_length[i] >= 1:
                    level = p[self._el_offset[i]]
                    prod.level_packets += 1
                    prod.level_sum += level & 0x7F
                    prod.level_voiced += level >> 7
                    prod.level_loud += (level & 0x7F) <= LOUD_DBOV
                    break
        cdef _Consumer cons
        for cons in prod.consumers:
            if cons.producer is prod:
                self._forward(cons, n, offset, end, now_us)
            else:
                self._switch_layer(cons, prod, n, offset, end, now_us)
        return OK

    cdef int _read_elements(self, int ext_profile, int ext_offset, int ext_length):
        """Extension elements (RFC 8285) into _el_*, as sfu.rtp.read_extensions; -1 when
        the block is malformed."""
        cdef const uint8_t *p = self._rx
        cdef int pos = ext_offset, ext_end = ext_offset + ext_length, count = 0
        cdef int ext_id, el_length
        self._el_count = 0
        if ext_profile == 0xBEDE:
            while pos < ext_end:
                if p[pos] == 0:
                    pos += 1
                    continue
                ext_id = p[pos] >> 4
                if ext_id == 15:
                    break
                el_length = (p[pos] & 0x0F) + 1
                if pos + 1 + el_length > ext_end:
                    return -1
                self._el_id[count] = ext_id
                self._el_offset[count] = pos + 1
                self._el_length[count] = el_length
                count += 1
                pos += 1 + el_length
        elif (ext_profile & 0xFFF0) == 0x1000:
            while pos < ext_end:
                ext_id = p[pos]
                if ext_id == 0:
                    pos += 1
                    continue
                if pos + 2 > ext_end:
                    return -1
                el_length = p[pos + 1]
                if pos + 2 + el_length > ext_end:
                    return -1
                self._el_id[count] = ext_id
                self._el_offset[count] = pos + 2
                self._el_length[count] = el_length
                count += 1
                pos += 2 + el_length
        self._el_count = count
        return 0

    cdef _Producer _bind(self, _Endpoint ep, uint32_t ssrc, int ext_profile, int ext_offset,
                         int ext_length):
        """A packet of an unknown SSRC: the simulcast layer its RID names, now bound to
        that SSRC (as the twin's)."""
        cdef _Producer candidate
        cdef bint waiting = False
        for candidate in ep.producers:
            waiting = waiting or not candidate.bound
        if not ext_profile or not waiting:
            return None
        if self._read_elements(ext_profile, ext_offset, ext_length) < 0 or not self._el_count:
            return None
        for candidate in ep.producers:
            if not candidate.bound and self._has_element(candidate.rid_id, candidate.rid) and (
                    candidate.mid_id == 0 or self._has_element(candidate.mid_id, candidate.mid)):
                candidate.ssrc = ssrc
                candidate.bound = True
                self._counters[C_RID_BOUND] += 1
                return candidate
        return None

    cdef bint _has_element(self, int ext_id, bytes value):
        cdef int i, size = PyBytes_GET_SIZE(value)
        for i in range(self._el_count):
            if self._el_id[i] == ext_id and self._el_length[i] == size and memcmp(
                    self._rx + self._el_offset[i], PyBytes_AS_STRING(value), size) == 0:
                return True
        return False

    cdef void _record_arrival(self, _Producer prod, uint16_t seq, uint32_t timestamp,
                              int64_t now_us):
        """Receive statistics, and gaps to ask for (video)."""
        cdef ReceiveStats stats = prod.stats
        cdef bint started = stats.started
        cdef int64_t highest = stats.highest
        cdef int64_t ext = stats.on_arrival(seq, timestamp, now_us)
        cdef int found
        if started and (prod.codec == CODEC_VP8 or prod.codec == CODEC_H264):
            found = prod.nack.on_arrival(highest, ext, now_us)
            if found & NACK_RECOVERED:
                self._counters[C_NACK_RECOVERED] += 1
            if found & NACK_EARLIER and self._loss_listener is not None:
                self._loss_pending = True
                self._loss_producer = prod.id

    cdef void _switch_layer(self, _Consumer cons, _Producer prod, int length,
                            int payload_offset, int payload_end, int64_t now_us):
        """A packet of the layer a consumer is to switch to: switch at a keyframe."""
        if not _is_keyframe_start(prod.codec, self._rx + payload_offset,
                                  payload_end - payload_offset):
            self._counters[C_SKIP_LAYER_PENDING] += 1
            self._request_keyframe(prod, now_us)
            return
        cons.producer.consumers.remove(cons)
        cons.producer = prod
        cons.target = None
        cons.restart = cons.new_source = True  # a target is only set once started
        self._counters[C_LAYER_SWITCHES] += 1
        self._forward(cons, length, payload_offset, payload_end, now_us)

    cdef void _forward(self, _Consumer cons, int length, int payload_offset, int payload_end,
                       int64_t now_us):
        cdef uint64_t *counters = self._counters
        if cons.paused:
            counters[C_SKIP_CONSUMER_PAUSED] += 1
            return
        cdef _Endpoint ep = cons.endpoint
        if ep is None:  # the subscriber's DTLS has not completed yet
            counters[C_SKIP_NOT_CONNECTED] += 1
            return
        cdef const uint8_t *src = self._rx
        cdef int out_pt = cons.payload_types[src[1] & 0x7F]
        if out_pt < 0:
            counters[C_SKIP_PAYLOAD_TYPE] += 1
            return
        cdef uint16_t seq = _u16(src + 2)
        cdef uint32_t timestamp = _u32(src + 4)
        if not cons.started or cons.restart:
            if cons.is_video and not _is_keyframe_start(
                    cons.producer.codec, src + payload_offset, payload_end - payload_offset):
                counters[C_SKIP_WAITING_KEYFRAME] += 1
                if not cons.waiting:
                    cons.waiting = True
                    cons.wait_started_us = now_us
                self._request_keyframe(cons.producer, now_us)
                return
            if cons.waiting:
                counters[C_KEYFRAME_WAITS] += 1
                counters[C_KEYFRAME_WAIT_US] += max(0, now_us - cons.wait_started_us)
                cons.waiting = False
            if not cons.started:
                cons.started = True
                cons.start_ext_seq = cons.highest_ext_seq = 0x10000 + seq
                cons.ts_offset = cons.ts_base - timestamp
                cons.budget.mark(now_us, cons.packets_sent, cons.bytes_sent)
            else:  # resuming: number on from the last packet sent
                cons.seq_base = <uint16_t>(
                    (cons.highest_ext_seq - cons.start_ext_seq + cons.seq_base + 1) & 0xFFFF)
                cons.start_ext_seq = cons.highest_ext_seq = c_extend_seq(
                    cons.highest_ext_seq, seq)
                cons.restart = False
                if cons.new_source:  # at least one tick on, so no two frames share one
                    cons.ts_offset = cons.last_out_ts - timestamp + <uint32_t>max(
                        <uint64_t>1, c_to_rtp_units(<uint64_t>max(0, now_us - cons.last_out_us),
                                                    cons.producer.clock_rate))
                    cons.new_source = False
        cdef int64_t ext_seq = c_extend_seq(cons.highest_ext_seq, seq)
        if ext_seq < cons.start_ext_seq:
            counters[C_SKIP_BEFORE_START] += 1
            return
        if ext_seq > cons.highest_ext_seq or ext_seq == cons.start_ext_seq:
            cons.highest_ext_seq = ext_seq
            cons.last_out_ts = timestamp + cons.ts_offset
            cons.last_out_us = now_us
            cons.last_out_pt = out_pt
            cons.last_out_marker = (src[1] & 0x80) != 0

        # Size first, so nothing is written past the buffer: rewriting can grow a packet
        # (a longer mid, one-byte elements turned two-byte).
        cdef int i, out_id, value_length
        cdef int count = self._el_count
        cdef int body = 0, elements = 0
        cdef bint one_byte = True
        if cons.twcc_id:  # first, where _resend finds it
            elements = 1
            body = 2
            one_byte = cons.twcc_id <= 14
        for i in range(count):
            out_id = cons.ext_map[self._el_id[i]]
            if out_id == 0:
                continue
            if out_id == cons.mid_id:
                value_length = cons.mid_len
            elif out_id == cons.abs_send_time_id:
                value_length = 3
            else:
                value_length = self._el_length[i]
            if not (1 <= out_id <= 14 and 1 <= value_length <= 16):
                one_byte = False
            elements += 1
            body += value_length
        cdef int header_end = 12 + 4 * (src[0] & 0x0F)
        cdef int ext_block = 0
        if elements:
            body += elements if one_byte else 2 * elements
            body = (body + 3) & ~3
            ext_block = 4 + body
        cdef int out_length = header_end + ext_block + (length - payload_offset)
        if out_length > MAX_PROTECT_SIZE:
            counters[C_SKIP_TOO_LONG] += 1
            return

        # The one copy per subscriber: SRTP encrypts in place and keys differ per Consumer.
        cdef uint8_t *out = self._out_buffer(ep)
        memcpy(out, src, header_end)
        out[0] = (src[0] & ~0x10) | (0x10 if elements else 0)
        out[1] = (src[1] & 0x80) | out_pt
        cdef uint16_t out_seq = <uint16_t>((ext_seq - cons.start_ext_seq + cons.seq_base) & 0xFFFF)
        _put16(out + 2, out_seq)
        _put32(out + 4, timestamp + cons.ts_offset)
        _put32(out + 8, cons.ssrc)
        cdef int pos = header_end
        cdef uint32_t send_time
        cdef int64_t twcc_seq = -1
        if elements:
            _put16(out + pos, 0xBEDE if one_byte else 0x1000)
            _put16(out + pos + 2, body // 4)
            pos += 4
            if cons.twcc_id:
                twcc_seq = ep.twcc_next
                ep.twcc_next += 1
                if one_byte:
                    out[pos] = (cons.twcc_id << 4) | 1
                    pos += 1
                else:
                    out[pos] = cons.twcc_id
                    out[pos + 1] = 2
                    pos += 2
                _put16(out + pos, <uint16_t>(twcc_seq & 0xFFFF))
                pos += 2
            for i in range(count):
                out_id = cons.ext_map[self._el_id[i]]
                if out_id == 0:
                    continue
                if one_byte:
                    pos += 1  # the id/length byte is written below, once the length is known
                else:
                    out[pos] = out_id
                    pos += 2
                if out_id == cons.mid_id:
                    value_length = cons.mid_len
                    memcpy(out + pos, cons.mid, value_length)
                elif out_id == cons.abs_send_time_id:
                    value_length = 3
                    send_time = c_abs_send_time(now_us)
                    out[pos] = send_time >> 16
                    out[pos + 1] = (send_time >> 8) & 0xFF
                    out[pos + 2] = send_time & 0xFF
                else:
                    value_length = self._el_length[i]
                    memcpy(out + pos, src + self._el_offset[i], value_length)
                if one_byte:
                    out[pos - 1] = (out_id << 4) | (value_length - 1)
                else:
                    out[pos - 1] = value_length
                pos += value_length
            while pos < header_end + ext_block:
                out[pos] = 0
                pos += 1
        memcpy(out + pos, src + payload_offset, length - payload_offset)

        cdef int slot
        if cons.history != NULL:
            slot = out_seq % HISTORY_SIZE
            memcpy(cons.history + slot * MAX_PROTECT_SIZE, out, out_length)
            cons.history_length[slot] = out_length
            cons.resent_us[slot] = RESENT_NEVER
        cdef int n = out_length
        if c_protect(ep.tx_ctx, out, &n) != 0:
            counters[C_PROTECT_ERROR] += 1
            return
        if twcc_seq >= 0:
            self._record_sent(ep, twcc_seq, n, now_us)
        if self._send(ep, out, n, C_SENT) != 0:
            counters[C_SEND_ERROR] += 1
            return
        cons.packets_sent += 1
        cons.bytes_sent += n
        cons.octets_sent += payload_end - payload_offset
        counters[C_SENT] += 1
        counters[C_SENT_BYTES] += n

    cdef int _handle_rtcp(self, _Endpoint ep, int length, int64_t now_us):
        cdef const uint8_t *p = self._rx
        cdef int pos = 0, packet_length
        # Validate the whole compound first, as sfu.rtcp.packets.iter_rtcp does.
        while pos < length:
            if pos + 4 > length or p[pos] >> 6 != 2:
                return DROP_BAD_RTCP
            packet_length = 4 * (_u16(p + pos + 2) + 1)
            if pos + packet_length > length:
                return DROP_BAD_RTCP
            pos += packet_length
        cdef int packet_type, fmt, ssrc_offset, entry
        cdef uint32_t ssrc
        cdef _Consumer cons
        pos = 0
        while pos < length:
            packet_type = p[pos + 1]
            fmt = p[pos] & 0x1F
            packet_length = 4 * (_u16(p + pos + 2) + 1)
            if packet_type == 206 and (fmt == 1 or fmt == 4):
                # PLI names the media SSRC at +8; FIR names it in each FCI entry (+12).
                ssrc_offset = pos + (8 if fmt == 1 else 12)
                if ssrc_offset + 4 > pos + packet_length:
                    return DROP_BAD_RTCP
                ssrc = _u32(p + ssrc_offset)
                cons = _consumer_on(ep, ssrc)
                if cons is not None:
                    self._request_keyframe(cons.producer, now_us)
            elif packet_type == 206 and fmt == 15:
                self._counters[C_REMB_IN] += 1
            elif packet_type == 205 and fmt == 15:
                self._counters[C_TWCC_IN] += 1
                self._feedback(ep, pos, packet_length)
            elif packet_type == 205 and fmt == 1:
                self._counters[C_NACK_IN] += 1
                if packet_length < 12:
                    return DROP_BAD_RTCP
                ssrc = _u32(p + pos + 8)
                cons = _consumer_on(ep, ssrc)
                if cons is not None:
                    self._answer_nack(cons, pos + 12, pos + packet_length, now_us)
            elif packet_type == 201:
                self._counters[C_RR_IN] += 1
                if 8 + 24 * fmt > packet_length:
                    return DROP_BAD_RTCP
                for entry in range(pos + 8, pos + 8 + 24 * fmt, 24):
                    self._take_report_block(ep, entry, now_us)
            elif packet_type == 200:
                self._counters[C_SR_IN] += 1
                if packet_length < SR_SIZE:
                    return DROP_BAD_RTCP
                self._forward_sr(ep, pos, now_us)
            pos += packet_length
        return OK

    cdef void _forward_sr(self, _Endpoint ep, int pos, int64_t now_us):
        """A publisher's SR to every started consumer of that stream, translated."""
        cdef const uint8_t *report = self._rx + pos
        cdef _Producer prod = _producer_on(ep, _u32(report + 4))
        cdef _Consumer cons
        cdef int n
        if prod is None:
            return
        # For the LSR/DLSR of our receiver reports (RFC 3550 §6.4.1).
        prod.stats.on_sender_report(_u32(report + 10), now_us)
        for cons in prod.consumers:
            if cons.endpoint is None or not cons.started:
                continue
            n = cons.sr.translate(report, self._rtcp, cons.ssrc, cons.ts_offset,
                                  cons.packets_sent, cons.octets_sent, now_us)
            self._send_rtcp(cons.endpoint, self._rtcp, n)
            self._counters[C_SR_SENT] += 1

    cdef void _take_report_block(self, _Endpoint ep, int block, int64_t now_us):
        """A subscriber's report on one consumer (RFC 3550 §6.4.1)."""
        cdef const uint8_t *p = self._rx + block
        cdef _Consumer cons = _consumer_on(ep, _u32(p))
        cdef int64_t lost
        if cons is None:
            return
        lost = _u32(p + 4) & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000
        cons.sr.on_report_block(p[4], lost, _u32(p + 12), _u32(p + 16), _u32(p + 20), now_us)

    cdef void _answer_nack(self, _Consumer cons, int fci, int fci_end, int64_t now_us):
        """Resend what a subscriber reports lost (RFC 4585 §6.2.1: each FCI entry is a
        packet id and a bitmask of the 16 after it), within the rules in sfu.rtp
        (RETRANSMIT_*), as the twin's _answer_nack."""
        cdef const uint8_t *p = self._rx
        cdef uint64_t *counters = self._counters
        cdef int entry, k
        cdef uint16_t pid, highest
        cdef uint32_t asked, inside
        cdef int64_t interval
        if cons.history == NULL or not cons.started:  # nothing kept
            entry = fci
            while entry + 4 <= fci_end:
                counters[C_NACK_OUT_OF_HISTORY] += __builtin_popcount(
                    1 | (<uint32_t>_u16(p + entry + 2) << 1))
                entry += 4
            return
        cons.budget.refill(now_us, cons.packets_sent, cons.bytes_sent)
        interval = c_retransmit_interval(cons.sr.rtt())
        highest = <uint16_t>((cons.highest_ext_seq - cons.start_ext_seq + cons.seq_base) & 0xFFFF)
        entry = fci
        while entry + 4 <= fci_end:
            pid = _u16(p + entry)
            asked = 1 | (<uint32_t>_u16(p + entry + 2) << 1)  # bit k: pid + k
            inside = asked & c_history_window(highest, pid)
            counters[C_NACK_OUT_OF_HISTORY] += __builtin_popcount(asked ^ inside)
            entry += 4
            if not cons.budget.has_token():  # spent: no lookups
                counters[C_NACK_BUDGET_EXCEEDED] += __builtin_popcount(inside)
                continue
            for k in range(17):
                if (inside >> k) & 1:
                    self._retransmit(cons, <uint16_t>(pid + k), interval, now_us)

    cdef void _retransmit(self, _Consumer cons, uint16_t seq, int64_t interval, int64_t now_us):
        """Send again one packet a subscriber reports lost, from its history (as the
        twin's _retransmit): the same packet, re-protected (libsrtp allows the repeat)."""
        cdef int slot = seq % HISTORY_SIZE
        cdef uint8_t *kept
        cdef int n
        if not cons.budget.has_token():
            self._counters[C_NACK_BUDGET_EXCEEDED] += 1
            return
        if cons.endpoint is None or cons.history_length[slot] == 0:
            self._counters[C_RETRANSMIT_MISSED] += 1
            return
        kept = cons.history + slot * MAX_PROTECT_SIZE
        if _u16(kept + 2) != seq:
            self._counters[C_RETRANSMIT_MISSED] += 1
            return
        if cons.resent_us[slot] != RESENT_NEVER and now_us - cons.resent_us[slot] < interval:
            self._counters[C_NACK_TOO_SOON] += 1
            return
        n = cons.history_length[slot]
        if not cons.budget.spend(n):
            self._counters[C_NACK_BUDGET_EXCEEDED] += 1
            return
        cons.resent_us[slot] = now_us
        if self._resend(cons, cons.endpoint, kept, n, now_us) >= 0:
            self._counters[C_RETRANSMITTED] += 1

    cdef int _resend(self, _Consumer cons, _Endpoint ep, const uint8_t *kept, int length,
                     int64_t now_us):
        """Protect and send a kept packet again, under a new transport-wide sequence
        number (as the twin's); the bytes sent, or -1 (counted)."""
        cdef int n = length
        cdef int64_t twcc_seq = -1
        cdef int header_end
        memcpy(self._tx, kept, n)
        if cons.twcc_id:
            twcc_seq = ep.twcc_next
            ep.twcc_next += 1
            header_end = 12 + 4 * (self._tx[0] & 0x0F)
            _put16(self._tx + header_end + 4 + (1 if _u16(self._tx + header_end) == 0xBEDE
                                                else 2), <uint16_t>(twcc_seq & 0xFFFF))
        if c_protect(ep.tx_ctx, self._tx, &n) != 0:
            self._counters[C_PROTECT_ERROR] += 1
            return -1
        if twcc_seq >= 0:
            self._record_sent(ep, twcc_seq, n, now_us)
        if self._send(ep, self._tx, n, C_RETRANSMITTED) != 0:
            self._counters[C_SEND_ERROR] += 1
            return -1
        return n

    cdef int _record_sent(self, _Endpoint ep, int64_t twcc_seq, int size,
                          int64_t now_us) except -1:
        cdef int slot = twcc_seq % TWCC_HISTORY, i
        if ep.twcc_ext == NULL:
            ep.twcc_ext = <int64_t *>calloc(TWCC_HISTORY, sizeof(int64_t))
            ep.twcc_us = <int64_t *>calloc(TWCC_HISTORY, sizeof(int64_t))
            ep.twcc_size = <int32_t *>calloc(TWCC_HISTORY, sizeof(int32_t))
            if ep.twcc_ext == NULL or ep.twcc_us == NULL or ep.twcc_size == NULL:
                raise MemoryError()
            for i in range(TWCC_HISTORY):
                ep.twcc_ext[i] = -1
        ep.twcc_ext[slot] = twcc_seq
        ep.twcc_us[slot] = now_us
        ep.twcc_size[slot] = size
        return 0

    cdef void _feedback(self, _Endpoint ep, int offset, int length):
        """Hand a subscriber's transport-wide feedback to the feedback listener."""
        listener = self._feedback_listener
        if listener is None:
            return
        try:
            listener(ep.id, PyBytes_FromStringAndSize(<char *>self._rx + offset, length))
        except Exception:  # the packet path must go on, whatever the listener does
            self._counters[C_FEEDBACK_LISTENER_ERRORS] += 1

    cdef bint _request_keyframe(self, _Producer prod, int64_t now_us):
        if not prod.keyframe.ready(now_us, self.keyframe_request_interval_us):
            self._counters[C_KEYFRAME_REQUESTS_THROTTLED] += 1
            return False
        cdef _Endpoint ep = prod.endpoint
        if ep is None:
            return False
        prod.keyframe.on_request(now_us)
        self._counters[C_KEYFRAME_REQUESTS_SENT] += 1
        # Picture Loss Indication (RFC 4585 §6.3.1): PSFB, FMT 1, no FCI.
        cdef uint8_t *out = self._rtcp
        out[0] = 0x81
        out[1] = 206
        _put16(out + 2, 2)
        _put32(out + 4, SFU_RTCP_SSRC)
        _put32(out + 8, prod.ssrc)
        self._send_rtcp(ep, out, 12)
        return True

    cdef void _send_rtcp(self, _Endpoint ep, uint8_t *data, int length):
        """Protect in place and send RTCP the SFU originates; failures are counted."""
        cdef int n = length
        if c_protect_rtcp(ep.tx_ctx, data, &n) != 0:
            self._counters[C_PROTECT_ERROR] += 1
        elif self._send(ep, data, n, -1) != 0:
            self._counters[C_SEND_ERROR] += 1

    cdef uint8_t *_out_buffer(self, _Endpoint ep):
        """Where to build the next packet for ``ep``: while receive() batches, the send
        queue's next slot (no copy when it is queued), else the one _tx buffer."""
        if not self._batching or ep.fd < 0:
            return self._tx
        if self._queued == SEND_BATCH or (self._queued and self._queue_fd != ep.fd):
            self._flush()
        return self._out[self._queued]

    cdef int _send(self, _Endpoint ep, uint8_t *data, int length, int undo):
        """0 when sent, or queued for receive()'s sendmmsg(2); -1 when the socket
        refused it (full buffer: dropped, as UDP may). A queued datagram the socket
        then refuses is counted by _flush: a send error, and ``undo`` (the counter its
        caller will have counted it in, or -1) taken back."""
        cdef ssize_t sent
        cdef int slot
        if ep.fd >= 0 and self._batching:
            # Built in its slot by _out_buffer (which made room), or elsewhere: copied
            # into the slot _out_buffer makes room for now.
            if self._queued == SEND_BATCH or data != self._out[self._queued]:
                memcpy(self._out_buffer(ep), data, length)
            slot = self._queued
            self._queue_fd = ep.fd
            memcpy(self._out_names[slot], ep.sockaddr, ep.sockaddr_len)
            self._out_messages[slot].msg_hdr.msg_namelen = ep.sockaddr_len
            self._out_vectors[slot].iov_len = length
            self._out_undo[slot] = undo
            self._queued = slot + 1
            return 0
        if ep.fd >= 0:
            self._send_calls += 1
            sent = c_sendto(ep.fd, data, length, MSG_DONTWAIT, <const sockaddr *>ep.sockaddr,
                            ep.sockaddr_len)
            if sent != length:
                return -1
            self._send_datagrams += 1
            return 0
        self._send_calls += 1
        try:
            ep.py_sendto(PyBytes_FromStringAndSize(<char *>data, length), ep.addr)
        except OSError:
            return -1
        self._send_datagrams += 1
        return 0

    cdef void _flush(self):
        """Send the queue with sendmmsg(2); a datagram the socket refuses (a full
        buffer) is dropped and counted, as _send counts one, and the rest go on."""
        cdef int start = 0, sent, undo
        while start < self._queued:
            sent = sendmmsg(self._queue_fd, &self._out_messages[start], self._queued - start,
                            MSG_DONTWAIT)
            self._send_calls += 1
            if sent > 0:
                self._send_datagrams += sent
                start += sent
                continue
            self._counters[C_SEND_ERROR] += 1  # the first of the rest failed: skip it
            undo = self._out_undo[start]
            if undo >= 0:
                self._counters[undo] -= 1
            if undo == C_SENT:
                self._counters[C_SENT_BYTES] -= self._out_vectors[start].iov_len
            start += 1
        self._queued = 0

    cdef int _notify_loss(self) except -1:
        """Tell the loss listener of the new gap the last packet showed."""
        self._loss_pending = False
        listener = self._loss_listener
        if listener is None:
            return 0
        try:
            listener(self._loss_producer)
        except Exception:  # the packet path must go on, whatever the listener does
            self._counters[C_LOSS_LISTENER_ERRORS] += 1
        return 0


# -- the floor, for bench/fastpath.py ---------------------------------------------------

def floor_forward(list packets, list sessions, list fds, list addrs):
    """What forwarding cannot go below: per (packet, subscriber) one copy, one libsrtp
    protect and one sendto, with no parsing or rewriting. Returns packets sent.

    ``packets`` are plaintext RTP; each subscriber gets every packet with the same
    sequence number, which libsrtp accepts from sessions with allow_repeat_tx.
    """
    cdef int count = len(sessions)
    if count > 64 or len(fds) != count or len(addrs) != count:
        raise ValueError("1 to 64 subscribers, with one fd and address each")
    cdef void *contexts[64]
    cdef int c_fds[64]
    cdef uint8_t sockaddrs[64][28]
    cdef unsigned int sockaddr_lengths[64]
    cdef int i, j, n, sent = 0
    cdef uint8_t buffer[1500 + 160]
    cdef bytes packet, sa
    for j in range(count):
        contexts[j] = _srtp_ctx(sessions[j])
        c_fds[j] = fds[j]
        sa = _sockaddr(addrs[j])
        memcpy(sockaddrs[j], PyBytes_AS_STRING(sa), len(sa))
        sockaddr_lengths[j] = len(sa)
    for packet in packets:
        for j in range(count):
            n = PyBytes_GET_SIZE(packet)
            memcpy(buffer, PyBytes_AS_STRING(packet), n)
            if c_protect(contexts[j], buffer, &n) != 0:
                continue
            if c_sendto(c_fds[j], buffer, n, MSG_DONTWAIT, <const sockaddr *>sockaddrs[j],
                        sockaddr_lengths[j]) == n:
                sent += 1
    return sent




def floor_relay(int fd, object inbound, list routes, double seconds):
    """The floor for a room, for bench/roomfloor.py: a blocking loop reading ``fd``
    with one ``recvmmsg`` per wake-up (no event loop, no Python per packet), and per
    datagram one libsrtp unprotect, then per route of its source one copy and one
    protect, sent with one ``sendmmsg`` per batch read (the cheapest way out). No
    ICE, RTCP or timers: what no forwarder can skip.

    ``routes`` are (source sockaddr, session, destination sockaddr) with sockaddrs as
    ``_sockaddr`` makes them; ``fd`` must have a receive timeout (SO_RCVTIMEO) so the
    loop sees its deadline. Returns (datagrams received, datagrams forwarded).
    """
    cdef int count = len(routes)
    if count > 64:
        raise ValueError("at most 64 routes")
    cdef void *in_ctx = _srtp_ctx(inbound)
    cdef void *contexts[64]
    cdef uint8_t sources[64][16]
    cdef uint8_t destinations[64][16]
    cdef int i, j, n, length, n_out, sent, queued, received = 0, forwarded = 0
    cdef timespec now
    for j in range(count):
        source, session, destination = routes[j]
        if len(source) != 16 or len(destination) != 16:
            raise ValueError("IPv4 sockaddrs only")
        memcpy(sources[j], PyBytes_AS_STRING(source), 16)
        memcpy(destinations[j], PyBytes_AS_STRING(destination), 16)
        contexts[j] = _srtp_ctx(session)
    cdef mmsghdr messages[64]
    cdef iovec vectors[64]
    cdef uint8_t names[64][16]
    cdef mmsghdr out_messages[64]
    cdef iovec out_vectors[64]
    cdef uint8_t *slots = <uint8_t *>calloc(64, BUFFER_SIZE)
    cdef uint8_t *out = <uint8_t *>calloc(64, BUFFER_SIZE)
    if slots == NULL or out == NULL:
        free(slots)
        free(out)
        raise MemoryError()
    memset(messages, 0, sizeof(messages))
    memset(out_messages, 0, sizeof(out_messages))
    for i in range(64):
        vectors[i].iov_base = slots + i * BUFFER_SIZE
        vectors[i].iov_len = 1500
        messages[i].msg_hdr.msg_iov = &vectors[i]
        messages[i].msg_hdr.msg_iovlen = 1
        messages[i].msg_hdr.msg_name = names[i]
        out_vectors[i].iov_base = out + i * BUFFER_SIZE
        out_messages[i].msg_hdr.msg_iov = &out_vectors[i]
        out_messages[i].msg_hdr.msg_iovlen = 1
        out_messages[i].msg_hdr.msg_namelen = 16
    clock_gettime(CLOCK_MONOTONIC, &now)
    cdef double deadline = now.tv_sec + now.tv_nsec * 1e-9 + seconds
    try:
        while now.tv_sec + now.tv_nsec * 1e-9 < deadline:
            for i in range(64):
                messages[i].msg_hdr.msg_namelen = 16
            n = recvmmsg(fd, messages, 64, MSG_WAITFORONE, NULL)
            queued = 0
            for i in range(n):
                length = messages[i].msg_len
                if c_unprotect(in_ctx, slots + i * BUFFER_SIZE, &length) != 0:
                    continue
                received += 1
                for j in range(count):
                    if memcmp(names[i], sources[j], 8) != 0:  # family, port, address
                        continue
                    if queued == 64:
                        sent = sendmmsg(fd, out_messages, queued, MSG_DONTWAIT)
                        forwarded += max(sent, 0)
                        queued = 0
                    n_out = length
                    memcpy(out + queued * BUFFER_SIZE, slots + i * BUFFER_SIZE, length)
                    if c_protect(contexts[j], out + queued * BUFFER_SIZE, &n_out) != 0:
                        continue
                    out_vectors[queued].iov_len = n_out
                    out_messages[queued].msg_hdr.msg_name = destinations[j]
                    queued += 1
            if queued:
                sent = sendmmsg(fd, out_messages, queued, MSG_DONTWAIT)
                forwarded += max(sent, 0)
            clock_gettime(CLOCK_MONOTONIC, &now)
    finally:
        free(slots)
        free(out)
    return received, forwarded


def _session(bytes key, int profile, int ssrc_type):
    from pylibsrtp import Policy, Session

    policy = Policy(key=key, ssrc_type=ssrc_type, srtp_profile=profile)
    policy.allow_repeat_tx = True
    return Session(policy)


def self_check():
    """None when C protect/unprotect interoperate with pylibsrtp's Python API for every
    profile this pylibsrtp offers; otherwise what went wrong."""
    import os
    from pylibsrtp import Error, Policy

    profiles = {
        "AES128_CM_SHA1_80": (Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 30),
        "AEAD_AES_128_GCM": (Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 28),
        "AEAD_AES_256_GCM": (Policy.SRTP_PROFILE_AEAD_AES_256_GCM, 44),
    }
    rtp_packet = bytes.fromhex("80601234000003e8deadbeef") + os.urandom(160)
    rtcp_packet = bytes.fromhex("81ce000200000001deadbeef")
    cdef uint8_t buffer[1500 + 160]
    cdef int n
    for name, (profile, key_length) in profiles.items():
        key = os.urandom(key_length)
        for is_rtcp, plain in ((False, rtp_packet), (True, rtcp_packet)):
            c_sender = _session(key, profile, Policy.SSRC_ANY_OUTBOUND)
            py_receiver = _session(key, profile, Policy.SSRC_ANY_INBOUND)
            n = len(plain)
            memcpy(buffer, PyBytes_AS_STRING(plain), n)
            if (c_protect_rtcp if is_rtcp else c_protect)(_srtp_ctx(c_sender), buffer, &n):
                return f"{name}: libsrtp protect from C failed"
            protected = PyBytes_FromStringAndSize(<char *>buffer, n)
            try:
                back = (py_receiver.unprotect_rtcp if is_rtcp else py_receiver.unprotect)(
                    protected)
            except Error as exc:
                return f"{name}: pylibsrtp cannot unprotect what C protected: {exc}"
            if back != plain:
                return f"{name}: C protect and pylibsrtp unprotect disagree"
            py_sender = _session(key, profile, Policy.SSRC_ANY_OUTBOUND)
            c_receiver = _session(key, profile, Policy.SSRC_ANY_INBOUND)
            protected = (py_sender.protect_rtcp if is_rtcp else py_sender.protect)(plain)
            n = len(protected)
            memcpy(buffer, PyBytes_AS_STRING(protected), n)
            if (c_unprotect_rtcp if is_rtcp else c_unprotect)(_srtp_ctx(c_receiver), buffer, &n):
                return f"{name}: libsrtp unprotect from C rejected pylibsrtp's packet"
            if PyBytes_FromStringAndSize(<char *>buffer, n) != plain:
                return f"{name}: pylibsrtp protect and C unprotect disagree"
    return None
