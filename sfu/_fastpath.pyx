# cython: language_level=3
"""The Cython fast path. So far: the sequence/time arithmetic in C.

The Cython ``Forwarder`` (libsrtp called from C, pooled buffers, sendto from C) is
the next step (issue #4). Until it exists ``sfu.forwarding`` selects the pure-Python
``sfu.forwarder.Forwarder`` and says why.
"""

from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t

# False until this module has a Forwarder with the twin's interface.
HAS_FORWARDER = False


cdef inline int64_t c_extend_seq(int64_t highest, uint16_t seq) noexcept nogil:
    cdef int64_t delta = <int64_t>((seq - <uint16_t>(highest & 0xFFFF)) & 0xFFFF)
    if delta >= 0x8000:
        delta -= 0x10000
    return highest + delta


cdef inline uint32_t c_abs_send_time(uint64_t now_us) noexcept nogil:
    # Modulo 64 s first (exact, see sfu.rtp.abs_send_time): now_us << 18 would overflow.
    return <uint32_t>(((now_us % 64000000) << 18) // 1000000)


def extend_seq(int64_t highest, int seq):
    """Same contract as ``sfu.rtp.extend_seq`` (RFC 3550 A.1)."""
    return c_extend_seq(highest, <uint16_t>(seq & 0xFFFF))


def abs_send_time(uint64_t now_us):
    """Same contract as ``sfu.rtp.abs_send_time``."""
    return c_abs_send_time(now_us)
