"""The pure-Python forwarder: the reference for, and the fallback to, ``sfu._fastpath``.

It takes SRTP/SRTCP datagrams that the transport diverted from a peer connection,
unprotects them once with that connection's receive session, and for each Consumer
of the Producer the packet belongs to rewrites the RTP header into the Consumer's
space, protects it with the subscriber's send session and sends it.

Nothing here raises into the caller for bad input: every packet ends in a counter.
``now_us`` is an input (the abs-send-time rewrite, the keyframe-request throttle and
the retransmission budget use it) so that tests drive both forwarders with the same clock.

It is the twin of sfu/_fastpath.pyx in structure, to be read side by side: the same
classes, methods in the same order, the same state (per-endpoint producer and consumer
lists, flags rather than None), and the RTCP machines of sfu.rtcp, which the Cython
file mirrors as cdef classes of the same names. Its tables (what sfu/_fastpath.pxd
declares for the Cython file) are in sfu/_fastpath_state.py; its RTCP path, the pyx
Forwarder's second half, in sfu/_fastpath_feedback.py.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, ClassVar

from sfu import rtp
from sfu._fastpath_feedback import _FeedbackPath
from sfu._fastpath_receive import _ReceivePath
from sfu._fastpath_state import (
    Address,
    SendTo,
    _Consumer,
    _Endpoint,
    _Producer,
    _producer_on,
    _unbound_on,
)
from sfu.rtcp import packets
from sfu.rtcp.keyframe import KeyframeThrottle
from sfu.rtcp.nack import NACK_EARLIER, NACK_RECOVERED, NackGenerator
from sfu.rtcp.stats import ReceiveStats


class Forwarder(_FeedbackPath, _ReceivePath):
    """Routes diverted SRTP between endpoints. Same interface as ``sfu._fastpath.Forwarder``."""

    implementation: ClassVar[str] = "python"

    def __init__(self, keyframe_request_interval_us: int = 500_000) -> None:
        self.keyframe_request_interval_us = keyframe_request_interval_us
        self._endpoints: dict[int, _Endpoint] = {}
        self._producers: dict[int, _Producer] = {}
        self._consumers: dict[int, _Consumer] = {}
        self._counters = [0] * len(rtp.COUNTER_NAMES)
        # set_loss_listener's listener, and the producer whose new gap it is to hear of
        # once the packet that showed it has been handled.
        self._loss_listener: Callable[[int], None] | None = None
        self._loss_pending = False
        self._loss_producer = 0
        self._feedback_listener: Callable[[int, bytes], None] | None = None

    # -- tables, pushed by the control plane -------------------------------------------

    def add_endpoint(self, endpoint: int, rx: Any, tx: Any, sendto: SendTo, fd: int,
                     addr: Address) -> None:
        """Register a transport: SRTP sessions, where to send, ``fd`` (for ``receive``)."""
        ep = _Endpoint(endpoint, rx, tx, sendto, addr, fd)
        self.remove_endpoint(endpoint)
        self._endpoints[endpoint] = ep
        # Bind the tables that name this endpoint, so no lookup happens per packet.
        for prod in self._producers.values():
            if prod.endpoint_id == endpoint:
                prod.endpoint = ep
                ep.producers.append(prod)
        for cons in self._consumers.values():
            if cons.endpoint_id == endpoint:
                cons.endpoint = ep
                ep.consumers.append(cons)

    def remove_endpoint(self, endpoint: int) -> None:
        ep = self._endpoints.pop(endpoint, None)
        if ep is None:
            return
        for prod in ep.producers:
            prod.endpoint = None
        for cons in ep.consumers:
            cons.endpoint = None
        ep.producers = []
        ep.consumers = []

    def add_producer(self, producer: int, endpoint: int, ssrc: int, codec: int,
                     rid: bytes = b"", rid_id: int = 0, mid: bytes = b"",
                     mid_id: int = 0, audio_level_id: int = 0) -> None:
        """Take ``endpoint``'s packets of SSRC ``ssrc`` as a producer.

        A simulcast layer named by RID (RFC 8852) may come with ``ssrc`` 0: the first
        packet of an unknown SSRC whose header extension ``rid_id`` is ``rid`` (and
        ``mid_id``, if not 0, is ``mid``) tells its SSRC. With ``audio_level_id`` the
        audio levels its packets carry (RFC 6464) are summed (``producer_levels``).
        """
        if producer in self._producers:
            raise ValueError(f"producer {producer} exists")
        rtp.check_layer_ids(rid, rid_id, mid, mid_id)
        prod = _Producer(producer, codec, rid, rid_id, mid, mid_id)
        if not 0 <= audio_level_id <= 255:
            raise ValueError("extension ids must be 0..255")
        prod.audio_level_id = audio_level_id
        self._attach_source(prod, endpoint, ssrc)
        self._producers[producer] = prod

    def _attach_source(self, prod: _Producer, endpoint: int, ssrc: int) -> None:
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

    def remove_producer(self, producer: int) -> None:
        prod = self._producers.pop(producer, None)
        if prod is None:
            return
        if prod.endpoint is not None:
            prod.endpoint.producers.remove(prod)
        for cons in list(prod.consumers):
            if cons.producer is prod:
                self.remove_consumer(cons.id)
            else:  # it was to switch to this layer: it stays where it is
                cons.target = None

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
        twcc_id: int = 0,
    ) -> None:
        """Forward ``producer`` to ``endpoint`` as SSRC ``ssrc``.

        ``payload_types`` maps the publisher's payload types to the subscriber's;
        ``ext_map`` maps the publisher's header-extension ids to the subscriber's (ids
        missing from it are dropped). The element whose output id is ``mid_id`` gets
        ``mid`` as its value, the one whose output id is ``abs_send_time_id`` the send
        time (0 disables either). The first packet forwarded gets sequence number
        ``seq_base`` and timestamp ``ts_base``. With ``twcc_id`` every packet sent
        carries, first among its extension elements, the endpoint's next
        transport-wide sequence number under that id.
        """
        if consumer in self._consumers:
            raise ValueError(f"consumer {consumer} exists")
        prod = self._producers.get(producer)
        if prod is None:
            raise ValueError(f"unknown producer {producer}")
        rtp.check_consumer_tables(payload_types, ext_map, mid, mid_id, abs_send_time_id,
                                  twcc_id)
        cons = _Consumer(
            consumer, prod, endpoint, ssrc, is_video, dict(payload_types), dict(ext_map),
            mid, mid_id, abs_send_time_id, seq_base & 0xFFFF, ts_base & 0xFFFFFFFF, twcc_id,
        )
        cons.endpoint = self._endpoints.get(endpoint)
        if cons.endpoint is not None:
            cons.endpoint.consumers.append(cons)
        self._consumers[consumer] = cons
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
                if cons.producer is prod:
                    cons.restart = cons.started
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
        if prod.endpoint is not None:
            prod.endpoint.producers.remove(prod)
        self._attach_source(prod, endpoint, ssrc)
        for cons in prod.consumers:
            if cons.producer is prod:
                cons.restart = cons.new_source = cons.started

    def set_consumer_source(self, consumer: int, producer: int) -> None:
        """Switch a consumer to another producer of the same codec (a simulcast layer)
        at that producer's next keyframe, asking it for one; until then the current
        one is forwarded. Sequence numbers continue from the last packet sent and
        timestamps move on by the time that passed, so the subscriber's decoder sees
        neither a gap nor a jump. A paused or not yet started consumer switches at once.
        """
        cons = self._consumers.get(consumer)
        prod = self._producers.get(producer)
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

    def _repoint(self, cons: _Consumer, prod: _Producer) -> None:
        """Make ``prod`` the consumer's source now: numbering continues, and it starts
        again at a keyframe, timestamps moving on from the last sent."""
        cons.producer.consumers.remove(cons)
        cons.producer = prod
        if cons.target is prod:
            cons.target = None
        else:
            prod.consumers.append(cons)
        if cons.started:
            cons.restart = cons.new_source = True

    def set_consumer_paused(self, consumer: int, paused: bool) -> None:
        """Stop (or resume) sending to one consumer (the subscriber hid the track). On
        resume it starts again at a keyframe, numbering on from its last packet."""
        cons = self._consumers.get(consumer)
        if cons is None:
            raise ValueError(f"unknown consumer {consumer}")
        if paused and cons.target is not None:
            self._repoint(cons, cons.target)
        if cons.paused and not paused:
            cons.restart = cons.started
        cons.paused = paused

    def remove_consumer(self, consumer: int) -> None:
        cons = self._consumers.pop(consumer, None)
        if cons is None:
            return
        if cons.endpoint is not None:
            cons.endpoint.consumers.remove(cons)
        cons.producer.consumers.remove(cons)
        if cons.target is not None:
            cons.target.consumers.remove(cons)

    # -- observation --------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        return dict(zip(rtp.COUNTER_NAMES, self._counters, strict=True))

    def consumer_stats(self, consumer: int) -> tuple[int, int]:
        """(packets, bytes) sent to a consumer; (0, 0) when it does not exist."""
        cons = self._consumers.get(consumer)
        return (cons.packets_sent, cons.bytes_sent) if cons else (0, 0)

    def consumer_report(self, consumer: int) -> tuple[int, ...] | None:
        """The subscriber's last receiver report on this consumer: (fraction lost of
        256, cumulative lost, jitter in RTP units, round trip in us or -1 if unknown)."""
        cons = self._consumers.get(consumer)
        return cons.sr.report() if cons is not None else None

    def consumer_started(self, consumer: int) -> bool:
        """Whether media flows to the consumer (for video: a keyframe has been sent)."""
        cons = self._consumers.get(consumer)
        return cons is not None and cons.started

    def consumer_source(self, consumer: int) -> tuple[int, int] | None:
        """(the producer a consumer forwards, the one it will switch to or -1)."""
        cons = self._consumers.get(consumer)
        if cons is None:
            return None
        return (cons.producer.id, cons.target.id if cons.target is not None else -1)

    def producer_stats(self, producer: int) -> tuple[int, int, int, int, int] | None:
        """(SSRC or 0 while unknown, packets and bytes received, width and height of
        its last VP8 keyframe or 0)."""
        prod = self._producers.get(producer)
        if prod is None:
            return None
        return (prod.ssrc if prod.bound else 0, prod.packets_in, prod.bytes_in, prod.width,
                prod.height)

    def producer_levels(self, producer: int) -> tuple[int, int, int, int] | None:
        """Cumulative, for an audio producer with ``audio_level_id``: (packets with a
        level, their levels (-dBov) summed, voiced ones, ones ``rtp.LOUD_DBOV`` loud)."""
        prod = self._producers.get(producer)
        if prod is None:
            return None
        return (prod.level_packets, prod.level_sum, prod.level_voiced, prod.level_loud)

    # -- the packet path ----------------------------------------------------------------

    def handle_packet(self, endpoint: int, data: bytes, now_us: int) -> int:
        """Take one SRTP or SRTCP datagram from ``endpoint``; return OK or a DROP_* reason."""
        if len(data) < rtp.RTP_HEADER_SIZE:
            status = rtp.DROP_TOO_SHORT
        elif len(data) > rtp.MAX_PACKET_SIZE:
            status = rtp.DROP_TOO_LONG
        elif data[0] >> 6 != rtp.RTP_VERSION:
            status = rtp.DROP_BAD_VERSION
        else:
            ep = self._endpoints.get(endpoint)
            status = rtp.DROP_UNKNOWN_ENDPOINT if ep is None else self._handle(ep, data, now_us)
        self._counters[status] += 1
        if self._loss_pending:
            self._notify_loss()
        return status

    def nack_due(self, producer: int, now_us: int) -> list[int]:
        """Sequence numbers to ask the publisher for now (in order). Each is asked again
        one round trip later (at least 20 ms), up to 8 times or for 1 s."""
        prod = self._producers.get(producer)
        if prod is None:
            return []
        due, gave_up = prod.nack.due(now_us)
        self._counters[rtp.C_NACK_GAVE_UP] += gave_up
        self._counters[rtp.C_NACK_REQUESTED] += len(due)
        return due

    def nack_deadline(self, producer: int) -> int:
        """The earliest ``now_us`` at which ``nack_due(producer, now_us)`` would return
        a sequence number or give an entry up; -1 when nothing is pending, and for an
        unknown producer. It may be past already (an entry asked for its last time is
        given up at the next call): call ``nack_due`` then at once."""
        prod = self._producers.get(producer)
        return -1 if prod is None else prod.nack.deadline()

    def set_loss_listener(self, listener: Callable[[int], None] | None) -> None:
        """Call ``listener(producer)`` when a newly detected gap in a producer's video
        makes its NACK deadline earlier than any still pending (so a timer armed for the
        next deadline can be armed earlier); None stops it. It is called after the
        packet that showed the gap has been handled, at most once per gap and never
        otherwise per packet; what it raises is counted (loss_listener_errors), not
        propagated."""
        self._loss_listener = listener

    def receive_report(self, producer: int, now_us: int) -> tuple[int, ...] | None:
        """A report block for a producer's stream (RFC 3550 §6.4.1), as (ssrc, fraction
        lost, cumulative lost, extended highest sequence, jitter, LSR, DLSR); None before
        its first packet. Starts the next reporting interval."""
        prod = self._producers.get(producer)
        if prod is None or not prod.bound:
            return None
        return prod.stats.report_block(prod.ssrc, now_us)

    def request_keyframe(self, producer: int, now_us: int) -> bool:
        """Ask the publisher for a keyframe (PLI), unless one was asked for too recently."""
        prod = self._producers.get(producer)
        if prod is None:
            return False
        return self._request_keyframe(prod, now_us)

    def send_rtcp(self, endpoint: int, packet: bytes) -> bool:
        """Protect and send RTCP the SFU originates (REMB, reports) to an endpoint."""
        ep = self._endpoints.get(endpoint)
        if ep is None or not packets.is_rtcp(packet) or len(packet) > rtp.MAX_PROTECT_SIZE:
            return False
        self._send_rtcp(ep, packet)
        return True

    def _handle(self, ep: _Endpoint, data: bytes, now_us: int) -> int:
        if packets.is_rtcp(data):  # RFC 5761 §4
            self._counters[rtp.C_RTCP_IN] += 1
            try:
                plain = ep.rx.unprotect_rtcp(data)
            except Exception:  # pylibsrtp.Error: authentication or replay failure
                return rtp.DROP_SRTP_FAIL
            return self._handle_rtcp(ep, plain, now_us)
        self._counters[rtp.C_RTP_IN] += 1
        try:
            plain = ep.rx.unprotect(data)
        except Exception:
            return rtp.DROP_SRTP_FAIL
        layout = rtp.parse_header(plain)
        if isinstance(layout, int):
            return layout
        ssrc = struct.unpack_from("!I", plain, 8)[0]
        prod = _producer_on(ep, ssrc)
        if prod is None:
            prod = self._bind(ep, ssrc, plain, layout)
            if prod is None:
                return rtp.DROP_UNKNOWN_SSRC
        self._record_arrival(prod, (plain[2] << 8) | plain[3],
                             struct.unpack_from("!I", plain, 4)[0], now_us)
        prod.packets_in += 1
        prod.bytes_in += len(plain)
        payload = plain[layout.payload_offset : layout.payload_end]
        if prod.codec == rtp.CODEC_VP8 and (size := rtp.vp8_keyframe_size(payload)):
            prod.width, prod.height = size
        if prod.paused:
            self._counters[rtp.C_SKIP_PAUSED] += 1
            return rtp.OK
        elements = rtp.read_extensions(plain, layout) if layout.ext_profile else []
        if elements is None:
            return rtp.DROP_BAD_HEADER
        if prod.audio_level_id:  # RFC 6464: V bit, then the level in -dBov
            level = next((v[0] for i, v in elements if i == prod.audio_level_id and v), None)
            if level is not None:
                prod.level_packets += 1
                prod.level_sum += level & 0x7F
                prod.level_voiced += level >> 7
                prod.level_loud += (level & 0x7F) <= rtp.LOUD_DBOV
        for cons in prod.consumers:
            if cons.producer is prod:
                self._forward(cons, plain, layout, elements, now_us)
            else:
                self._switch_layer(cons, prod, plain, layout, elements, now_us)
        return rtp.OK

    def _bind(self, ep: _Endpoint, ssrc: int, plain: bytes,
              layout: rtp.HeaderLayout) -> _Producer | None:
        """A packet of an unknown SSRC: the simulcast layer its RID names, now bound to
        that SSRC; None if it names none waiting for one."""
        if not layout.ext_profile or all(p.bound for p in ep.producers):
            return None
        elements = rtp.read_extensions(plain, layout)
        prod = _unbound_on(ep, elements) if elements else None
        if prod is not None:
            prod.ssrc = ssrc
            prod.bound = True
            self._counters[rtp.C_RID_BOUND] += 1
        return prod

    def _record_arrival(self, prod: _Producer, seq: int, timestamp: int, now_us: int) -> None:
        """Receive statistics, and gaps to ask for (video)."""
        stats = prod.stats
        started = stats.started
        highest = stats.highest
        ext = stats.on_arrival(seq, timestamp, now_us)
        if started and rtp.nacks_for_video(prod.codec):
            found = prod.nack.on_arrival(highest, ext, now_us)
            if found & NACK_RECOVERED:
                self._counters[rtp.C_NACK_RECOVERED] += 1
            if found & NACK_EARLIER and self._loss_listener is not None:
                self._loss_pending = True
                self._loss_producer = prod.id

    def _switch_layer(self, cons: _Consumer, prod: _Producer, plain: bytes,
                      layout: rtp.HeaderLayout, elements: list[tuple[int, bytes]],
                      now_us: int) -> None:
        """A packet of the layer a consumer is to switch to: switch at a keyframe."""
        if not rtp.is_keyframe_start(prod.codec,
                                     plain[layout.payload_offset : layout.payload_end]):
            self._counters[rtp.C_SKIP_LAYER_PENDING] += 1
            self._request_keyframe(prod, now_us)
            return
        cons.producer.consumers.remove(cons)
        cons.producer = prod
        cons.target = None
        cons.restart = cons.new_source = True  # a target is only set once started
        self._counters[rtp.C_LAYER_SWITCHES] += 1
        self._forward(cons, plain, layout, elements, now_us)

    def _forward(
        self,
        cons: _Consumer,
        plain: bytes,
        layout: rtp.HeaderLayout,
        elements: list[tuple[int, bytes]],
        now_us: int,
    ) -> None:
        counters = self._counters
        if cons.paused:
            counters[rtp.C_SKIP_CONSUMER_PAUSED] += 1
            return
        ep = cons.endpoint
        if ep is None:  # the subscriber's DTLS has not completed yet
            counters[rtp.C_SKIP_NOT_CONNECTED] += 1
            return
        out_pt = cons.payload_types.get(plain[1] & 0x7F)
        if out_pt is None:
            counters[rtp.C_SKIP_PAYLOAD_TYPE] += 1
            return
        seq = (plain[2] << 8) | plain[3]
        timestamp = struct.unpack_from("!I", plain, 4)[0]
        if not cons.started or cons.restart:
            if cons.is_video and not rtp.is_keyframe_start(
                cons.producer.codec, plain[layout.payload_offset : layout.payload_end]
            ):
                counters[rtp.C_SKIP_WAITING_KEYFRAME] += 1
                if not cons.waiting:
                    cons.waiting = True
                    cons.wait_started_us = now_us
                self._request_keyframe(cons.producer, now_us)
                return
            if cons.waiting:
                counters[rtp.C_KEYFRAME_WAITS] += 1
                counters[rtp.C_KEYFRAME_WAIT_US] += max(0, now_us - cons.wait_started_us)
                cons.waiting = False
            if not cons.started:
                cons.started = True
                cons.start_ext_seq = cons.highest_ext_seq = 0x10000 + seq
                cons.ts_offset = (cons.ts_base - timestamp) & 0xFFFFFFFF
                cons.budget.mark(now_us, cons.packets_sent, cons.bytes_sent)
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
            cons.last_out_ts, cons.last_out_us, cons.last_out_pt = out_ts, now_us, out_pt
            cons.last_out_marker = bool(plain[1] & 0x80)

        out_elements = []
        twcc_seq = -1
        if cons.twcc_id:
            twcc_seq = ep.twcc_next  # taken once the packet is sure to go out
            out_elements.append((cons.twcc_id, (twcc_seq & 0xFFFF).to_bytes(2, "big")))
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
        if twcc_seq >= 0:
            ep.twcc_next += 1

        plain_out = bytes(packet)
        if cons.history is not None:
            cons.history[out_seq % rtp.HISTORY_SIZE] = plain_out
            cons.resent_us[out_seq % rtp.HISTORY_SIZE] = rtp.RESENT_NEVER
        try:
            protected = ep.tx.protect(plain_out)
        except Exception:
            counters[rtp.C_PROTECT_ERROR] += 1
            return
        if twcc_seq >= 0:
            self._record_sent(ep, twcc_seq, len(protected), now_us)
        if self._send(ep, protected) != 0:
            counters[rtp.C_SEND_ERROR] += 1
            return
        cons.packets_sent += 1
        cons.bytes_sent += len(protected)
        cons.octets_sent += layout.payload_end - layout.payload_offset
        counters[rtp.C_SENT] += 1
        counters[rtp.C_SENT_BYTES] += len(protected)

    def _notify_loss(self) -> None:
        """Tell the loss listener of the new gap the last packet showed."""
        self._loss_pending = False
        listener = self._loss_listener
        if listener is None:
            return
        try:
            listener(self._loss_producer)
        except Exception:  # the packet path must go on, whatever the listener does
            self._counters[rtp.C_LOSS_LISTENER_ERRORS] += 1
