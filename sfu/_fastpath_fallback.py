"""The pure-Python forwarder: the reference for, and the fallback to, ``sfu._fastpath``.

It takes SRTP/SRTCP datagrams that the transport diverted from a peer connection,
unprotects them once with that connection's receive session, and for each Consumer
of the Producer the packet belongs to rewrites the RTP header into the Consumer's
space, protects it with the subscriber's send session and sends it.

Nothing here raises into the caller for bad input: every packet ends in a counter.
``now_us`` is an input (the abs-send-time rewrite, the keyframe-request throttle and
the retransmission budget use it) so that tests drive both forwarders with the same clock.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, ClassVar

from sfu import rtp
from sfu.rtcp import packets

Address = tuple[Any, ...]
SendTo = Callable[[bytes, Address], None]


def _key(endpoint: int, ssrc: int) -> int:
    """Table key of an SSRC on an endpoint: an SSRC only counts on its own endpoint."""
    return (endpoint << 32) | ssrc


class _Endpoint:
    """One DTLS-SRTP transport (one peer connection) and where to send to it."""

    __slots__ = ("addr", "rx", "sendto", "tx")

    def __init__(self, rx: Any, tx: Any, sendto: SendTo, addr: Address) -> None:
        self.rx = rx
        self.tx = tx
        self.sendto = sendto
        self.addr = addr


class _Producer:
    """An incoming track: one publisher SSRC on one endpoint."""

    __slots__ = (
        "clock_rate", "codec", "consumers", "endpoint", "id", "last_keyframe_request_us",
        "missing", "paused", "rtt_us", "rx_base", "rx_expected_prior", "rx_highest",
        "rx_jitter16",
        "rx_received", "rx_received_prior", "rx_transit", "sr_arrival_us", "sr_ntp_mid",
        "ssrc",
    )

    def __init__(self, producer_id: int, endpoint: int, ssrc: int, codec: int) -> None:
        self.id = producer_id
        self.endpoint = endpoint
        self.ssrc = ssrc
        self.codec = codec
        self.consumers: list[_Consumer] = []
        self.last_keyframe_request_us: int | None = None
        self.paused = False
        # Receive statistics for receiver reports (RFC 3550 A.3, A.8).
        self.clock_rate = rtp.clock_rate(codec)
        self.rx_base: int | None = None  # extended sequence number of the first packet
        self.rx_highest = 0
        self.rx_received = 0
        self.rx_expected_prior = 0
        self.rx_received_prior = 0
        self.rx_jitter16 = 0
        self.rx_transit: int | None = None
        self.sr_ntp_mid = 0  # of the last SR from the publisher
        self.sr_arrival_us: int | None = None
        # Lost packets to ask for: [extended seq, retries, next ask, first missed, last
        # asked], ascending by sequence number; and the NACK-to-arrival round trip.
        self.missing: list[list[int]] = []
        self.rtt_us = 0


class _Consumer:
    """One subscriber's copy of a Producer, with its own SSRC, numbering and ids."""

    __slots__ = (
        "abs_send_time_id",
        "bucket_us",
        "bytes_sent",
        "endpoint",
        "ext_map",
        "highest_ext_seq",
        "history",
        "id",
        "is_video",
        "last_out_ts",
        "last_out_us",
        "mid",
        "mid_id",
        "new_source",
        "octets_sent",
        "packets_sent",
        "payload_types",
        "producer",
        "rate_bytes",
        "rate_mark",
        "rate_packets",
        "report",
        "resent_us",
        "restart",
        "seq_base",
        "sr_sent",
        "ssrc",
        "start_ext_seq",
        "tokens_bytes",
        "tokens_packets",
        "ts_base",
        "ts_offset",
        "wait_started_us",
    )

    def __init__(
        self,
        consumer_id: int,
        producer: _Producer,
        endpoint: int,
        ssrc: int,
        is_video: bool,
        payload_types: dict[int, int],
        ext_map: dict[int, int],
        mid: bytes,
        mid_id: int,
        abs_send_time_id: int,
        seq_base: int,
        ts_base: int,
    ) -> None:
        self.id = consumer_id
        self.producer = producer
        self.endpoint = endpoint
        self.ssrc = ssrc
        self.is_video = is_video
        self.payload_types = payload_types
        self.ext_map = ext_map
        self.mid = mid
        self.mid_id = mid_id
        self.abs_send_time_id = abs_send_time_id
        self.seq_base = seq_base
        self.ts_base = ts_base
        # Set by the first packet forwarded (the first keyframe, for video).
        self.start_ext_seq: int | None = None
        self.highest_ext_seq = 0
        # Set when its producer resumes: start again at a keyframe, numbering on.
        self.restart = False
        # Set when its producer moved to a new source: timestamps continue from the
        # last one sent, advanced by the time that passed, not from the old offset.
        self.new_source = False
        self.last_out_ts = 0  # of the highest packet sent, and when it was sent
        self.last_out_us = 0
        self.wait_started_us: int | None = None  # waiting for a keyframe since
        # What the subscriber last reported: [fraction lost, cumulative lost, jitter, RTT
        # in us or -1]; and the NTP middle bits and time of the last SR sent to it.
        self.report: list[int] | None = None
        self.sr_sent = (0, 0)
        self.ts_offset = 0
        self.packets_sent = 0
        self.bytes_sent = 0
        self.octets_sent = 0  # payload octets, for sender reports
        # Rewritten packets by sequence number modulo HISTORY_SIZE, for retransmission.
        self.history: list[bytes | None] | None = (
            [None] * rtp.HISTORY_SIZE if is_video else None)
        # Answering its NACKs (sfu.rtp, RETRANSMIT_*): when each history slot was last
        # resent; the token buckets (millionths of a packet, of a byte) and when they were
        # last filled (None: before the first NACK); the forward rate (per second) they
        # are a share of, and (time, packets, bytes) when it was last measured.
        self.resent_us: list[int] = [rtp.RESENT_NEVER] * rtp.HISTORY_SIZE if is_video else []
        self.tokens_packets = 0
        self.tokens_bytes = 0
        self.bucket_us: int | None = None
        self.rate_packets = 0
        self.rate_bytes = 0
        self.rate_mark = (0, 0, 0)


class Forwarder:
    """Routes diverted SRTP between endpoints. Same interface as ``sfu._fastpath.Forwarder``."""

    implementation: ClassVar[str] = "python"

    def __init__(self, keyframe_request_interval_us: int = 500_000) -> None:
        self.keyframe_request_interval_us = keyframe_request_interval_us
        self._endpoints: dict[int, _Endpoint] = {}
        self._producers: dict[int, _Producer] = {}
        # (endpoint << 32 | ssrc) → Producer: an SSRC only counts on its own endpoint.
        self._producer_by_ssrc: dict[int, _Producer] = {}
        self._consumers: dict[int, _Consumer] = {}
        self._consumer_by_ssrc: dict[int, _Consumer] = {}
        self._counters = [0] * len(rtp.COUNTER_NAMES)

    # -- tables, pushed by the control plane -------------------------------------------

    def add_endpoint(
        self, endpoint: int, rx: Any, tx: Any, sendto: SendTo, fd: int, addr: Address
    ) -> None:
        """Register a transport: pylibsrtp sessions, and where to send (``fd`` unused here)."""
        self._endpoints[endpoint] = _Endpoint(rx, tx, sendto, addr)

    def remove_endpoint(self, endpoint: int) -> None:
        self._endpoints.pop(endpoint, None)

    def add_producer(self, producer: int, endpoint: int, ssrc: int, codec: int) -> None:
        if producer in self._producers:
            raise ValueError(f"producer {producer} exists")
        prod = _Producer(producer, endpoint, ssrc, codec)
        self._producers[producer] = prod
        self._producer_by_ssrc[_key(endpoint, ssrc)] = prod

    def remove_producer(self, producer: int) -> None:
        prod = self._producers.pop(producer, None)
        if prod is None:
            return
        self._producer_by_ssrc.pop(_key(prod.endpoint, prod.ssrc), None)
        for cons in list(prod.consumers):
            self.remove_consumer(cons.id)

    def add_consumer(
        self,
        consumer: int,
        producer: int,
        endpoint: int,
        ssrc: int,
        is_video: bool,
        payload_types: dict[int, int],
        ext_map: dict[int, int],
        mid: bytes,
        mid_id: int,
        abs_send_time_id: int,
        seq_base: int,
        ts_base: int,
    ) -> None:
        """Forward ``producer`` to ``endpoint`` as SSRC ``ssrc``.

        ``payload_types`` maps the publisher's payload types to the subscriber's;
        ``ext_map`` maps the publisher's header-extension ids to the subscriber's (ids
        missing from it are dropped). The element whose output id is ``mid_id`` gets
        ``mid`` as its value, the one whose output id is ``abs_send_time_id`` the send
        time (0 disables either). The first packet forwarded gets sequence number
        ``seq_base`` and timestamp ``ts_base``.
        """
        if consumer in self._consumers:
            raise ValueError(f"consumer {consumer} exists")
        prod = self._producers.get(producer)
        if prod is None:
            raise ValueError(f"unknown producer {producer}")
        rtp.check_consumer_tables(payload_types, ext_map, mid, mid_id, abs_send_time_id)
        cons = _Consumer(
            consumer, prod, endpoint, ssrc, is_video, dict(payload_types), dict(ext_map),
            mid, mid_id, abs_send_time_id, seq_base & 0xFFFF, ts_base & 0xFFFFFFFF,
        )
        self._consumers[consumer] = cons
        self._consumer_by_ssrc[_key(endpoint, ssrc)] = cons
        prod.consumers.append(cons)

    def set_producer_paused(self, producer: int, paused: bool) -> None:
        """Stop (or resume) forwarding a producer to all its consumers (server-side mute).

        On resume each consumer starts again at a keyframe (for video), its sequence
        numbers continuing from the last one it sent, so receivers see no gap, and its
        timestamps keeping their offset, so they reflect the time that passed.
        """
        prod = self._producers.get(producer)
        if prod is None:
            raise ValueError(f"unknown producer {producer}")
        if prod.paused and not paused:
            for cons in prod.consumers:
                cons.restart = cons.start_ext_seq is not None
        prod.paused = paused

    def move_producer(self, producer: int, endpoint: int, ssrc: int) -> None:
        """Take the producer's media from another endpoint and SSRC (the publisher
        reconnected: an ICE restart over TURN, say). Its consumers carry on: each starts
        again at a keyframe (for video), numbering on from its last packet, timestamps
        moving on by the time that passed. Receive statistics and NACK state start anew.
        """
        prod = self._producers.get(producer)
        if prod is None:
            raise ValueError(f"unknown producer {producer}")
        self._producer_by_ssrc.pop(_key(prod.endpoint, prod.ssrc), None)
        fresh = _Producer(producer, endpoint, ssrc, prod.codec)
        fresh.consumers = prod.consumers
        fresh.paused = prod.paused
        for cons in fresh.consumers:
            cons.producer = fresh
            cons.restart = cons.new_source = cons.start_ext_seq is not None
        self._producers[producer] = fresh
        self._producer_by_ssrc[_key(endpoint, ssrc)] = fresh

    def remove_consumer(self, consumer: int) -> None:
        cons = self._consumers.pop(consumer, None)
        if cons is None:
            return
        self._consumer_by_ssrc.pop(_key(cons.endpoint, cons.ssrc), None)
        cons.producer.consumers.remove(cons)

    # -- observation --------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        return dict(zip(rtp.COUNTER_NAMES, self._counters, strict=True))

    def consumer_stats(self, consumer: int) -> tuple[int, int]:
        """(packets, bytes) sent to a consumer; (0, 0) when it does not exist."""
        cons = self._consumers.get(consumer)
        return (cons.packets_sent, cons.bytes_sent) if cons else (0, 0)

    def buffer_pool(self) -> dict[str, int]:
        """Buffers held for reuse: none, this implementation allocates per packet."""
        return {"buffers": 0, "bytes": 0}

    def consumer_report(self, consumer: int) -> tuple[int, ...] | None:
        """The subscriber's last receiver report on this consumer: (fraction lost of
        256, cumulative lost, jitter in RTP units, round trip in us or -1 if unknown)."""
        cons = self._consumers.get(consumer)
        return tuple(cons.report) if cons is not None and cons.report is not None else None

    def consumer_started(self, consumer: int) -> bool:
        """Whether media flows to the consumer (for video: a keyframe has been sent)."""
        cons = self._consumers.get(consumer)
        return cons is not None and cons.start_ext_seq is not None

    # -- the packet path ----------------------------------------------------------------

    def handle_packet(self, endpoint: int, data: bytes, now_us: int) -> int:
        """Take one SRTP or SRTCP datagram from ``endpoint``; return OK or a DROP_* reason."""
        status = self._handle(endpoint, data, now_us)
        self._counters[status] += 1
        return status

    def request_keyframe(self, producer: int, now_us: int) -> bool:
        """Ask the publisher for a keyframe (PLI), unless one was asked for too recently."""
        prod = self._producers.get(producer)
        if prod is None:
            return False
        last = prod.last_keyframe_request_us
        if last is not None and now_us - last < self.keyframe_request_interval_us:
            self._counters[rtp.C_KEYFRAME_REQUESTS_THROTTLED] += 1
            return False
        endpoint = self._endpoints.get(prod.endpoint)
        if endpoint is None:
            return False
        prod.last_keyframe_request_us = now_us
        self._counters[rtp.C_KEYFRAME_REQUESTS_SENT] += 1
        self._send_rtcp(endpoint, packets.build_pli(packets.SFU_RTCP_SSRC, prod.ssrc))
        return True

    def send_rtcp(self, endpoint: int, packet: bytes) -> bool:
        """Protect and send RTCP the SFU originates (REMB, reports) to an endpoint."""
        target = self._endpoints.get(endpoint)
        if target is None or not packets.is_rtcp(packet) or len(packet) > rtp.MAX_PROTECT_SIZE:
            return False
        self._send_rtcp(target, packet)
        return True

    def _handle(self, endpoint_id: int, data: bytes, now_us: int) -> int:
        if len(data) < rtp.RTP_HEADER_SIZE:
            return rtp.DROP_TOO_SHORT
        if len(data) > rtp.MAX_PACKET_SIZE:
            return rtp.DROP_TOO_LONG
        if data[0] >> 6 != rtp.RTP_VERSION:
            return rtp.DROP_BAD_VERSION
        endpoint = self._endpoints.get(endpoint_id)
        if endpoint is None:
            return rtp.DROP_UNKNOWN_ENDPOINT
        if packets.is_rtcp(data):
            self._counters[rtp.C_RTCP_IN] += 1
            try:
                plain = endpoint.rx.unprotect_rtcp(data)
            except Exception:  # pylibsrtp.Error: authentication or replay failure
                return rtp.DROP_SRTP_FAIL
            return self._handle_rtcp(endpoint_id, plain, now_us)
        self._counters[rtp.C_RTP_IN] += 1
        try:
            plain = endpoint.rx.unprotect(data)
        except Exception:
            return rtp.DROP_SRTP_FAIL
        layout = rtp.parse_header(plain)
        if isinstance(layout, int):
            return layout
        ssrc = struct.unpack_from("!I", plain, 8)[0]
        prod = self._producer_by_ssrc.get(_key(endpoint_id, ssrc))
        if prod is None:
            return rtp.DROP_UNKNOWN_SSRC
        self._record_arrival(prod, plain, now_us)
        if prod.paused:
            self._counters[rtp.C_SKIP_PAUSED] += 1
            return rtp.OK
        elements = rtp.read_extensions(plain, layout) if layout.ext_profile else []
        if elements is None:
            return rtp.DROP_BAD_HEADER
        for cons in prod.consumers:
            self._forward(cons, plain, layout, elements, now_us)
        return rtp.OK

    def _record_arrival(self, prod: _Producer, plain: bytes, now_us: int) -> None:
        seq = (plain[2] << 8) | plain[3]
        if prod.rx_base is None:
            prod.rx_base = prod.rx_highest = 0x10000 + seq
        else:
            ext = rtp.extend_seq(prod.rx_highest, seq)
            if rtp.nacks_for_video(prod.codec):
                self._track_missing(prod, ext, now_us)
            prod.rx_highest = max(prod.rx_highest, ext)
        prod.rx_received += 1
        transit = (rtp.to_rtp_units(now_us, prod.clock_rate)
                   - struct.unpack_from("!I", plain, 4)[0]) & 0xFFFFFFFF
        if prod.rx_transit is not None:
            prod.rx_jitter16 = rtp.jitter_step(prod.rx_jitter16, transit, prod.rx_transit)
        prod.rx_transit = transit

    def _track_missing(self, prod: _Producer, ext: int, now_us: int) -> None:
        missing = prod.missing
        gap = ext - prod.rx_highest - 1
        if gap > rtp.NACK_MAX_MISSING:
            missing.clear()  # too much to ask for: a keyframe request will do
        elif gap > 0:
            first_ask = now_us + rtp.NACK_FIRST_DELAY_US
            missing.extend([lost, 0, first_ask, now_us, 0]
                           for lost in range(prod.rx_highest + 1, ext))
            del missing[: max(0, len(missing) - rtp.NACK_MAX_MISSING)]
        elif gap < 0:
            for i, entry in enumerate(missing):
                if entry[0] == ext:  # it came after all: late, or the retransmission
                    if entry[1]:
                        sample = now_us - entry[4]
                        prod.rtt_us = sample if not prod.rtt_us else (
                            7 * prod.rtt_us + sample) // 8
                    self._counters[rtp.C_NACK_RECOVERED] += entry[1] > 0
                    del missing[i]
                    break

    def nack_due(self, producer: int, now_us: int) -> list[int]:
        """Sequence numbers to ask the publisher for now (in order). Each is asked again
        one round trip later (at least 20 ms), up to 8 times or for 1 s."""
        prod = self._producers.get(producer)
        if prod is None:
            return []
        due = []
        kept = []
        retry_us = max(prod.rtt_us or rtp.NACK_DEFAULT_RTT_US, rtp.NACK_MIN_RETRY_US)
        for entry in prod.missing:
            if entry[1] >= rtp.NACK_MAX_RETRIES or now_us - entry[3] > rtp.NACK_MAX_AGE_US:
                self._counters[rtp.C_NACK_GAVE_UP] += 1
                continue
            if now_us >= entry[2]:
                due.append(entry[0] & 0xFFFF)
                entry[1] += 1
                entry[2] = now_us + retry_us
                entry[4] = now_us
            kept.append(entry)
        prod.missing = kept
        self._counters[rtp.C_NACK_REQUESTED] += len(due)
        return due

    def receive_report(self, producer: int, now_us: int) -> tuple[int, ...] | None:
        """A report block for a producer's stream (RFC 3550 §6.4.1), as (ssrc, fraction
        lost, cumulative lost, extended highest sequence, jitter, LSR, DLSR); None before
        its first packet. Starts the next reporting interval."""
        prod = self._producers.get(producer)
        if prod is None or prod.rx_base is None:
            return None
        expected = prod.rx_highest - prod.rx_base + 1
        expected_interval = expected - prod.rx_expected_prior
        lost_interval = expected_interval - (prod.rx_received - prod.rx_received_prior)
        prod.rx_expected_prior = expected
        prod.rx_received_prior = prod.rx_received
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        dlsr = 0
        if prod.sr_arrival_us is not None and now_us >= prod.sr_arrival_us:
            dlsr = ((now_us - prod.sr_arrival_us) * 65536 // 1_000_000) & 0xFFFFFFFF
        return (prod.ssrc, fraction, expected - prod.rx_received,
                prod.rx_highest & 0xFFFFFFFF, prod.rx_jitter16 >> 4, prod.sr_ntp_mid, dlsr)

    def _forward(
        self,
        cons: _Consumer,
        plain: bytes,
        layout: rtp.HeaderLayout,
        elements: list[tuple[int, bytes]],
        now_us: int,
    ) -> None:
        counters = self._counters
        endpoint = self._endpoints.get(cons.endpoint)
        if endpoint is None:  # the subscriber's DTLS has not completed yet
            counters[rtp.C_SKIP_NOT_CONNECTED] += 1
            return
        out_pt = cons.payload_types.get(plain[1] & 0x7F)
        if out_pt is None:
            counters[rtp.C_SKIP_PAYLOAD_TYPE] += 1
            return
        seq = (plain[2] << 8) | plain[3]
        timestamp = struct.unpack_from("!I", plain, 4)[0]
        if cons.start_ext_seq is None or cons.restart:
            if cons.is_video and not rtp.is_keyframe_start(
                cons.producer.codec, plain[layout.payload_offset : layout.payload_end]
            ):
                counters[rtp.C_SKIP_WAITING_KEYFRAME] += 1
                if cons.wait_started_us is None:
                    cons.wait_started_us = now_us
                self.request_keyframe(cons.producer.id, now_us)
                return
            if cons.wait_started_us is not None:
                counters[rtp.C_KEYFRAME_WAITS] += 1
                counters[rtp.C_KEYFRAME_WAIT_US] += max(0, now_us - cons.wait_started_us)
                cons.wait_started_us = None
            if cons.start_ext_seq is None:
                cons.start_ext_seq = cons.highest_ext_seq = 0x10000 + seq
                cons.ts_offset = (cons.ts_base - timestamp) & 0xFFFFFFFF
                cons.rate_mark = (now_us, cons.packets_sent, cons.bytes_sent)
            else:  # resuming: number on from the last packet sent
                cons.seq_base = (
                    cons.highest_ext_seq - cons.start_ext_seq + cons.seq_base + 1) & 0xFFFF
                cons.start_ext_seq = cons.highest_ext_seq = rtp.extend_seq(
                    cons.highest_ext_seq, seq)
                cons.restart = False
                if cons.new_source:  # at least one tick on, so no two frames share one
                    passed = rtp.to_rtp_units(max(0, now_us - cons.last_out_us),
                                              cons.producer.clock_rate)
                    cons.ts_offset = (cons.last_out_ts + max(1, passed) - timestamp
                                      ) & 0xFFFFFFFF
                    cons.new_source = False
        ext_seq = rtp.extend_seq(cons.highest_ext_seq, seq)
        if ext_seq < cons.start_ext_seq:
            counters[rtp.C_SKIP_BEFORE_START] += 1
            return
        out_seq = (ext_seq - cons.start_ext_seq + cons.seq_base) & 0xFFFF
        out_ts = (timestamp + cons.ts_offset) & 0xFFFFFFFF
        if ext_seq > cons.highest_ext_seq or ext_seq == cons.start_ext_seq:
            cons.highest_ext_seq = ext_seq
            cons.last_out_ts, cons.last_out_us = out_ts, now_us

        out_elements = []
        for ext_id, value in elements:
            out_id = cons.ext_map.get(ext_id)
            if out_id is None:
                continue
            if out_id == cons.mid_id:
                value = cons.mid
            elif out_id == cons.abs_send_time_id:
                value = rtp.abs_send_time(now_us).to_bytes(3, "big")
            out_elements.append((out_id, value))
        ext_block = rtp.write_extensions(out_elements)

        csrc_end = rtp.RTP_HEADER_SIZE + 4 * (plain[0] & 0x0F)
        first = (plain[0] & ~0x10) | (0x10 if ext_block else 0)
        packet = bytearray(plain[:csrc_end])
        packet[0] = first
        packet[1] = (plain[1] & 0x80) | out_pt
        struct.pack_into("!HII", packet, 2, out_seq, out_ts, cons.ssrc)
        packet += ext_block
        packet += plain[layout.payload_offset :]
        if len(packet) > rtp.MAX_PROTECT_SIZE:
            counters[rtp.C_SKIP_TOO_LONG] += 1
            return

        plain_out = bytes(packet)
        if cons.history is not None:
            cons.history[out_seq % rtp.HISTORY_SIZE] = plain_out
            cons.resent_us[out_seq % rtp.HISTORY_SIZE] = rtp.RESENT_NEVER
        try:
            protected = endpoint.tx.protect(plain_out)
        except Exception:
            counters[rtp.C_PROTECT_ERROR] += 1
            return
        try:
            endpoint.sendto(protected, endpoint.addr)
        except OSError:
            counters[rtp.C_SEND_ERROR] += 1
            return
        cons.packets_sent += 1
        cons.bytes_sent += len(protected)
        cons.octets_sent += layout.payload_end - layout.payload_offset
        counters[rtp.C_SENT] += 1
        counters[rtp.C_SENT_BYTES] += len(protected)

    def _handle_rtcp(self, endpoint_id: int, plain: bytes, now_us: int) -> int:
        compound = packets.iter_rtcp(plain)
        if compound is None:
            return rtp.DROP_BAD_RTCP
        counters = self._counters
        for packet_type, fmt, offset, length in compound:
            if packet_type == packets.RTCP_PSFB and fmt in (packets.PSFB_PLI, packets.PSFB_FIR):
                # PLI names the media SSRC at +8; FIR names it in each FCI entry (+12).
                ssrc_offset = offset + (8 if fmt == packets.PSFB_PLI else 12)
                if ssrc_offset + 4 > offset + length:
                    return rtp.DROP_BAD_RTCP
                ssrc = struct.unpack_from("!I", plain, ssrc_offset)[0]
                cons = self._consumer_by_ssrc.get(_key(endpoint_id, ssrc))
                if cons is not None:
                    self.request_keyframe(cons.producer.id, now_us)
            elif packet_type == packets.RTCP_PSFB and fmt == packets.PSFB_AFB:
                counters[rtp.C_REMB_IN] += 1
            elif packet_type == packets.RTCP_RTPFB and fmt == packets.RTPFB_NACK:
                counters[rtp.C_NACK_IN] += 1
                if length < 12:
                    return rtp.DROP_BAD_RTCP
                ssrc = struct.unpack_from("!I", plain, offset + 8)[0]
                cons = self._consumer_by_ssrc.get(_key(endpoint_id, ssrc))
                if cons is not None:
                    self._answer_nack(cons, plain[offset + 12 : offset + length], now_us)
            elif packet_type == packets.RTCP_RR:
                counters[rtp.C_RR_IN] += 1
                if 8 + 24 * fmt > length:
                    return rtp.DROP_BAD_RTCP
                for block in range(offset + 8, offset + 8 + 24 * fmt, 24):
                    self._take_report_block(endpoint_id, plain, block, now_us)
            elif packet_type == packets.RTCP_SR:
                counters[rtp.C_SR_IN] += 1
                if length < packets.SR_SIZE:
                    return rtp.DROP_BAD_RTCP
                self._forward_sr(endpoint_id, plain[offset : offset + length], now_us)
        return rtp.OK

    def _take_report_block(self, endpoint_id: int, plain: bytes, block: int,
                           now_us: int) -> None:
        """A subscriber's report on one consumer (RFC 3550 §6.4.1); RTT when its LSR is
        the last SR we sent it: arrival - sending - DLSR."""
        ssrc, lost_word, _, jitter, lsr, dlsr = struct.unpack_from("!IIIIII", plain, block)
        cons = self._consumer_by_ssrc.get(_key(endpoint_id, ssrc))
        if cons is None:
            return
        lost = lost_word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000
        rtt = cons.report[3] if cons.report is not None else -1
        ntp_mid, sent_us = cons.sr_sent
        if lsr and lsr == ntp_mid:
            sample = now_us - sent_us - dlsr * 1_000_000 // 65536
            if sample >= 0:
                rtt = sample
        cons.report = [lost_word >> 24, lost, jitter, rtt]

    def _answer_nack(self, cons: _Consumer, fci: bytes, now_us: int) -> None:
        """Resend what a subscriber reports lost (RFC 4585 §6.2.1: each FCI entry is a
        packet id and a bitmask of the 16 after it), within the rules in sfu.rtp
        (RETRANSMIT_*): the history window, the consumer's budget, one resend per
        interval."""
        counters = self._counters
        entries = struct.iter_unpack("!HH", fci[: len(fci) & ~3])
        if cons.history is None or cons.start_ext_seq is None:  # nothing kept
            counters[rtp.C_NACK_OUT_OF_HISTORY] += sum(
                (1 | blp << 1).bit_count() for _, blp in entries)
            return
        self._refill(cons, now_us)
        report = cons.report
        interval = rtp.retransmit_interval(report[3] if report is not None else -1)
        highest = (cons.highest_ext_seq - cons.start_ext_seq + cons.seq_base) & 0xFFFF
        endpoint = self._endpoints.get(cons.endpoint)
        for pid, blp in entries:
            asked = 1 | blp << 1  # bit k: pid + k
            inside = asked & rtp.history_window(highest, pid)
            counters[rtp.C_NACK_OUT_OF_HISTORY] += (asked ^ inside).bit_count()
            if cons.tokens_packets < rtp.RETRANSMIT_TOKEN:  # spent: no lookups
                counters[rtp.C_NACK_BUDGET_EXCEEDED] += inside.bit_count()
                continue
            for k in range(17):
                if inside >> k & 1:
                    self._retransmit(cons, endpoint, (pid + k) & 0xFFFF, interval, now_us)

    def _refill(self, cons: _Consumer, now_us: int) -> None:
        """Bring a consumer's retransmission budget up to ``now_us`` (sfu.rtp,
        RETRANSMIT_*)."""
        mark_us, mark_packets, mark_bytes = cons.rate_mark
        if now_us - mark_us >= rtp.RETRANSMIT_RATE_WINDOW_US:
            elapsed_ms = (now_us - mark_us) // 1000
            cons.rate_packets = (cons.packets_sent - mark_packets) * 1000 // elapsed_ms
            cons.rate_bytes = (cons.bytes_sent - mark_bytes) * 1000 // elapsed_ms
            cons.rate_mark = (now_us, cons.packets_sent, cons.bytes_sent)
        packets_per_s = rtp.retransmit_budget(cons.rate_packets, rtp.RETRANSMIT_MIN_PACKETS_PER_S)
        bytes_per_s = rtp.retransmit_budget(cons.rate_bytes, rtp.RETRANSMIT_MIN_BYTES_PER_S)
        if cons.bucket_us is None:  # the first NACK: a full bucket
            cons.bucket_us = now_us
            cons.tokens_packets = packets_per_s * rtp.RETRANSMIT_BURST_US
            cons.tokens_bytes = bytes_per_s * rtp.RETRANSMIT_BURST_US
            return
        elapsed = 0
        if now_us > cons.bucket_us:
            elapsed = min(now_us - cons.bucket_us, rtp.RETRANSMIT_BURST_US)
            cons.bucket_us = now_us
        cons.tokens_packets = min(packets_per_s * rtp.RETRANSMIT_BURST_US,
                                  cons.tokens_packets + elapsed * packets_per_s)
        cons.tokens_bytes = min(bytes_per_s * rtp.RETRANSMIT_BURST_US,
                                cons.tokens_bytes + elapsed * bytes_per_s)

    def _retransmit(self, cons: _Consumer, endpoint: _Endpoint | None, seq: int,
                    interval: int, now_us: int) -> None:
        """Send again one packet a subscriber reports lost, from its history: the same
        packet, sequence number and all, re-protected (libsrtp allows the repeat)."""
        counters = self._counters
        if cons.tokens_packets < rtp.RETRANSMIT_TOKEN:
            counters[rtp.C_NACK_BUDGET_EXCEEDED] += 1
            return
        slot = seq % rtp.HISTORY_SIZE
        kept = cons.history[slot] if cons.history else None
        if endpoint is None or kept is None or (kept[2] << 8 | kept[3]) != seq:
            counters[rtp.C_RETRANSMIT_MISSED] += 1
            return
        resent = cons.resent_us[slot]
        if resent != rtp.RESENT_NEVER and now_us - resent < interval:
            counters[rtp.C_NACK_TOO_SOON] += 1
            return
        cost = len(kept) * rtp.RETRANSMIT_TOKEN
        if cons.tokens_bytes < cost:
            counters[rtp.C_NACK_BUDGET_EXCEEDED] += 1
            return
        cons.tokens_packets -= rtp.RETRANSMIT_TOKEN
        cons.tokens_bytes -= cost
        cons.resent_us[slot] = now_us
        try:
            endpoint.sendto(endpoint.tx.protect(kept), endpoint.addr)
        except OSError:
            counters[rtp.C_SEND_ERROR] += 1
            return
        except Exception:
            counters[rtp.C_PROTECT_ERROR] += 1
            return
        counters[rtp.C_RETRANSMITTED] += 1

    def _forward_sr(self, endpoint_id: int, report: bytes, now_us: int) -> None:
        """A publisher's SR to every started consumer of that stream, translated."""
        ssrc = struct.unpack_from("!I", report, 4)[0]
        prod = self._producer_by_ssrc.get(_key(endpoint_id, ssrc))
        if prod is None:
            return
        # For the LSR/DLSR of our receiver reports (RFC 3550 §6.4.1).
        prod.sr_ntp_mid = struct.unpack_from("!I", report, 10)[0]
        prod.sr_arrival_us = now_us
        for cons in prod.consumers:
            endpoint = self._endpoints.get(cons.endpoint)
            if endpoint is None or cons.start_ext_seq is None:
                continue
            self._send_rtcp(endpoint, packets.translate_sr(
                report, cons.ssrc, cons.ts_offset, cons.packets_sent, cons.octets_sent))
            cons.sr_sent = (prod.sr_ntp_mid, now_us)
            self._counters[rtp.C_SR_SENT] += 1

    def _send_rtcp(self, endpoint: _Endpoint, packet: bytes) -> None:
        try:
            endpoint.sendto(endpoint.tx.protect_rtcp(packet), endpoint.addr)
        except OSError:
            self._counters[rtp.C_SEND_ERROR] += 1
        except Exception:
            self._counters[rtp.C_PROTECT_ERROR] += 1
