# C-level types of the Cython forwarder (sfu/_fastpath.pyx).

cimport cython
from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from sfu._mmsg cimport iovec, mmsghdr

# libsrtp 2.x in-place API, as pylibsrtp's cffi binding declares it:
# srtp_err_status_t fn(srtp_t ctx, void *packet, int *len)
ctypedef int (*srtp_fn)(void *ctx, void *packet, int *length) noexcept nogil

cdef enum:
    # Every buffer the forwarder owns: one datagram plus libsrtp's largest trailer
    # (SRTCP index + tag + MKI), rounded up.
    BUFFER_SIZE = 1500 + 160
    # Most extension elements a 1500-byte packet can hold (two bytes each at least).
    MAX_ELEMENTS = 750
    # Lost packets a producer remembers to ask for (sfu.rtcp.nack.NACK_MAX_MISSING).
    NACK_CAPACITY = 256
    # Datagrams one recvmmsg(2) reads at most, and the table of the endpoints' sources
    # (open addressing, rebuilt when endpoints change; a power of two, >= 2x endpoints).
    RECEIVE_BATCH = 32
    SOURCE_SLOTS = 4096
    # Datagrams receive() queues for one sendmmsg(2) at most (a batch's fan-out).
    SEND_BATCH = 64


# -- the RTCP machines of sfu/rtcp/, same names and methods (final: called directly) ----

@cython.final
cdef class NackGenerator:
    # Lost packets to ask for, ascending: extended sequence number, asks so far, when to
    # ask next, when it went missing, when it was last asked; and the round trip.
    cdef int count
    cdef int64_t ext[NACK_CAPACITY]
    cdef int retries[NACK_CAPACITY]
    cdef int64_t next[NACK_CAPACITY]
    cdef int64_t first[NACK_CAPACITY]
    cdef int64_t asked[NACK_CAPACITY]
    cdef int64_t rtt_us

    cdef int on_arrival(self, int64_t highest, int64_t ext, int64_t now_us) noexcept
    cdef tuple due(self, int64_t now_us)
    cdef int64_t deadline(self) noexcept
    cdef int64_t _deadline(self, int start) noexcept
    cdef void _forget(self, int start, int end) noexcept


@cython.final
cdef class ReceiveStats:
    # RFC 3550 A.3, A.8; and the publisher's last SR.
    cdef int clock_rate
    cdef bint started
    cdef int64_t base
    cdef int64_t highest
    cdef int64_t received
    cdef int64_t expected_prior
    cdef int64_t received_prior
    cdef int64_t jitter16
    cdef bint has_transit
    cdef uint32_t transit
    cdef bint sr_seen
    cdef uint32_t sr_ntp_mid
    cdef int64_t sr_arrival_us

    cdef int64_t on_arrival(self, uint16_t seq, uint32_t timestamp, int64_t now_us) noexcept
    cdef void on_sender_report(self, uint32_t ntp_mid, int64_t now_us) noexcept
    cdef tuple report_block(self, uint32_t ssrc, int64_t now_us)


@cython.final
cdef class SrTranslator:
    # Our last SR to the subscriber, and the subscriber's last report.
    cdef uint32_t sent_ntp_mid
    cdef int64_t sent_us
    cdef bint has_report
    cdef int fraction
    cdef int64_t lost
    cdef uint32_t jitter
    cdef int64_t rtt_us

    cdef int translate(self, const uint8_t *report, uint8_t *out, uint32_t ssrc,
                       uint32_t ts_offset, uint64_t packets_sent, uint64_t octets_sent,
                       int64_t now_us) noexcept
    cdef void on_report_block(self, int fraction, int64_t lost, uint32_t jitter,
                              uint32_t lsr, uint32_t dlsr, int64_t now_us) noexcept
    cdef tuple report(self)
    cdef int64_t rtt(self) noexcept


@cython.final
cdef class KeyframeThrottle:
    cdef bint requested
    cdef int64_t last_us

    cdef bint ready(self, int64_t now_us, int64_t interval_us) noexcept
    cdef void on_request(self, int64_t now_us) noexcept


@cython.final
cdef class RetransmitBudget:
    # Token buckets (millionths of a packet, of a byte) and when they were last filled;
    # the forward rate (per second) they are a share of, and the time and counts when
    # it was last measured.
    cdef bint bucket_started
    cdef int64_t bucket_us
    cdef int64_t tokens_packets
    cdef int64_t tokens_bytes
    cdef int64_t rate_packets
    cdef int64_t rate_bytes
    cdef int64_t rate_mark_us
    cdef uint64_t rate_mark_packets
    cdef uint64_t rate_mark_bytes

    cdef void mark(self, int64_t now_us, uint64_t packets_sent, uint64_t bytes_sent) noexcept
    cdef void refill(self, int64_t now_us, uint64_t packets_sent,
                     uint64_t bytes_sent) noexcept
    cdef bint has_token(self) noexcept
    cdef bint spend(self, int64_t length) noexcept


cdef class _Endpoint:
    cdef readonly int64_t id
    cdef object rx_session      # pylibsrtp.Session: keeps its srtp_t alive
    cdef object tx_session
    cdef void *rx_ctx           # srtp_t
    cdef void *tx_ctx
    cdef object py_sendto       # used when there is no plain UDP socket (TURN)
    cdef object addr
    cdef int fd
    cdef uint8_t sockaddr[28]   # sockaddr_in or sockaddr_in6, ready for sendto
    cdef unsigned int sockaddr_len
    cdef list producers         # _Producer published on this endpoint
    cdef list consumers         # _Consumer sent on this endpoint
    # The next transport-wide sequence number (extended); what was sent under the last
    # TWCC_HISTORY of them (number, send time, size), allocated at the first use.
    cdef int64_t twcc_next
    cdef int64_t *twcc_ext
    cdef int64_t *twcc_us
    cdef int32_t *twcc_size


cdef class _Producer:
    cdef readonly int64_t id
    cdef int64_t endpoint_id
    cdef uint32_t ssrc
    cdef int codec
    cdef list consumers         # and those waiting for its keyframe to switch to it
    cdef bytes rid              # RID and mid header-extension values and ids, to learn
    cdef int rid_id             # the SSRC of a simulcast layer from its first packet
    cdef bytes mid
    cdef int mid_id
    cdef bint bound             # the SSRC is known
    cdef uint64_t packets_in
    cdef uint64_t bytes_in
    cdef int width              # of the last keyframe (VP8), 0 unknown
    cdef int height
    cdef int audio_level_id     # ssrc-audio-level (RFC 6464) extension id, 0: none
    cdef uint64_t level_packets  # packets that carried it, their levels (-dBov) summed,
    cdef uint64_t level_sum      # and how many said voice activity
    cdef uint64_t level_voiced
    cdef uint64_t level_loud     # ... and how many were at least LOUD_DBOV loud
    cdef bint paused
    cdef _Endpoint endpoint     # None until that endpoint is added
    cdef int clock_rate
    # Set anew by Forwarder._attach_source.
    cdef KeyframeThrottle keyframe
    cdef ReceiveStats stats
    cdef NackGenerator nack


cdef class _Consumer:
    cdef readonly int64_t id
    cdef int64_t endpoint_id
    cdef _Producer producer
    cdef _Endpoint endpoint     # None until that endpoint is added
    cdef uint32_t ssrc
    cdef bint is_video
    cdef int16_t payload_types[128]   # publisher PT -> subscriber PT, -1: none
    cdef uint8_t ext_map[256]         # publisher ext id -> subscriber id, 0: drop
    cdef uint8_t mid[16]
    cdef int mid_len
    cdef int mid_id
    cdef int abs_send_time_id
    cdef int twcc_id            # the transport-wide sequence number's id, 0: none
    cdef _Producer target       # the layer to switch to at its keyframe, or None
    cdef bint paused            # by the subscriber: nothing is sent
    cdef uint16_t seq_base
    cdef uint32_t ts_base
    cdef bint started
    cdef bint restart           # its producer resumed: start again at a keyframe
    cdef bint new_source        # ... from another source: timestamps move on from the last
    cdef uint32_t last_out_ts   # of the highest packet sent, and when it was sent
    cdef int last_out_pt        # and its payload type, and whether it ended a frame
    cdef bint last_out_marker
    cdef int64_t last_out_us
    cdef bint waiting           # for a keyframe, since wait_started_us
    cdef int64_t wait_started_us
    cdef SrTranslator sr        # our last SR to the subscriber, its last report
    cdef int64_t start_ext_seq
    cdef int64_t highest_ext_seq
    cdef uint32_t ts_offset
    cdef uint64_t packets_sent
    cdef uint64_t bytes_sent
    cdef uint64_t octets_sent   # payload octets, for sender reports
    # Video only: rewritten packets by sequence number modulo HISTORY_SIZE, each in a
    # MAX_PROTECT_SIZE slot, for retransmission, and when each slot was last resent;
    # allocated once, never grown.
    cdef uint8_t *history
    cdef uint16_t *history_length
    cdef int64_t *resent_us
    cdef RetransmitBudget budget   # for answering its NACKs


cdef class Forwarder:
    cdef readonly int64_t keyframe_request_interval_us
    cdef dict _endpoints        # id -> _Endpoint
    cdef dict _producers        # id -> _Producer
    cdef dict _consumers        # id -> _Consumer
    cdef uint64_t _counters[64]
    # The buffer pool: fixed at construction, never grown.
    cdef uint8_t _rx[BUFFER_SIZE]     # an incoming packet, unprotected in place
    cdef uint8_t _tx[BUFFER_SIZE]     # one outgoing copy, rewritten and protected in place
    cdef uint8_t _rtcp[BUFFER_SIZE]   # RTCP the SFU originates
    # Extension elements of the packet being forwarded: id, offset, length.
    cdef uint16_t _el_id[MAX_ELEMENTS]
    cdef uint16_t _el_offset[MAX_ELEMENTS]
    cdef uint16_t _el_length[MAX_ELEMENTS]
    cdef int _el_count
    # set_loss_listener's listener, and the producer whose new gap it is to hear of once
    # the packet that showed it has been handled.
    cdef object _loss_listener
    cdef bint _loss_pending
    cdef int64_t _loss_producer
    cdef object _feedback_listener
    # receive(): the batch's buffers and headers, and each endpoint's source address
    # (its socket and the peer's sockaddr) to the endpoint, for datagrams read in C.
    cdef uint8_t _batch[RECEIVE_BATCH][BUFFER_SIZE]
    cdef uint8_t _names[RECEIVE_BATCH][28]
    cdef mmsghdr _messages[RECEIVE_BATCH]
    cdef iovec _vectors[RECEIVE_BATCH]
    cdef int _source_fd[SOURCE_SLOTS]           # -1: a free slot
    cdef uint8_t _source_addr[SOURCE_SLOTS][20]  # family, port, address (as sockaddr)
    cdef void *_source_endpoint[SOURCE_SLOTS]   # borrowed: _endpoints holds it
    # While receive() runs, what it sends waits here for one sendmmsg(2) per socket
    # and batch: each datagram in its slot, with its destination copied (the endpoint
    # may be gone by the flush) and the counter to take back if the send fails.
    cdef bint _batching
    cdef int _queued
    cdef int _queue_fd
    cdef uint8_t _out[SEND_BATCH][BUFFER_SIZE]
    cdef uint8_t _out_names[SEND_BATCH][28]
    cdef mmsghdr _out_messages[SEND_BATCH]
    cdef iovec _out_vectors[SEND_BATCH]
    cdef int _out_undo[SEND_BATCH]
    cdef uint64_t _send_calls       # sendto and sendmmsg calls made, and datagrams sent
    cdef uint64_t _send_datagrams

    cdef int _attach_source(self, _Producer producer, int64_t endpoint, uint32_t ssrc) except -1
    cdef void _repoint(self, _Consumer consumer, _Producer producer)
    cdef int _handle(self, _Endpoint endpoint, int length, int64_t now_us)
    cdef int _receive_batches(self, int fd, int64_t now_us, list leftovers) except -1
    cdef void _index_sources(self)
    cdef int _source_slot(self, int fd, const uint8_t *name) noexcept
    cdef int _read_elements(self, int ext_profile, int ext_offset, int ext_length)
    cdef _Producer _bind(self, _Endpoint endpoint, uint32_t ssrc, int ext_profile,
                         int ext_offset, int ext_length)
    cdef bint _has_element(self, int ext_id, bytes value)
    cdef void _switch_layer(self, _Consumer consumer, _Producer producer, int length,
                            int payload_offset, int payload_end, int64_t now_us)
    cdef void _record_arrival(self, _Producer producer, uint16_t seq, uint32_t timestamp,
                              int64_t now_us)
    cdef int _handle_rtcp(self, _Endpoint endpoint, int length, int64_t now_us)
    cdef void _forward(self, _Consumer consumer, int length, int payload_offset,
                       int payload_end, int64_t now_us)
    cdef uint8_t *_out_buffer(self, _Endpoint endpoint)
    cdef int _send(self, _Endpoint endpoint, uint8_t *data, int length, int undo)
    cdef void _flush(self)
    cdef void _forward_sr(self, _Endpoint endpoint, int offset, int64_t now_us)
    cdef void _take_report_block(self, _Endpoint endpoint, int block, int64_t now_us)
    cdef void _answer_nack(self, _Consumer consumer, int fci, int fci_end, int64_t now_us)
    cdef void _retransmit(self, _Consumer consumer, uint16_t seq, int64_t interval,
                          int64_t now_us)
    cdef int _resend(self, _Consumer consumer, _Endpoint endpoint, const uint8_t *kept,
                     int length, int64_t now_us)
    cdef int _record_sent(self, _Endpoint endpoint, int64_t twcc_seq, int size,
                          int64_t now_us) except -1
    cdef void _feedback(self, _Endpoint endpoint, int offset, int length)
    cdef bint _request_keyframe(self, _Producer producer, int64_t now_us)
    cdef void _send_rtcp(self, _Endpoint endpoint, uint8_t *data, int length)
    cdef int _notify_loss(self) except -1
