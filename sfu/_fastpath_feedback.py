"""The pure-Python forwarder's RTCP path (sfu/_fastpath_fallback.py is the rest):
subscribers' feedback (keyframe requests, NACKs answered from history, receiver
reports, transport-wide feedback and probing), publishers' sender reports translated per consumer,
resending under new transport-wide numbers, and what the SFU sends itself. The same
methods, in the same order, as the second half of sfu/_fastpath.pyx's Forwarder.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from sfu import rtp
from sfu._fastpath_state import _Consumer, _consumer_on, _Endpoint, _Producer, _producer_on
from sfu.rtcp import packets
from sfu.rtcp.retransmit import retransmit_interval


class _FeedbackPath:
    """Forwarder's RTCP methods; the state they use is Forwarder's."""

    keyframe_request_interval_us: int
    _counters: list[int]
    _feedback_listener: Callable[[int, bytes], None] | None
    _endpoints: dict[int, _Endpoint]
    _consumers: dict[int, _Consumer]
    # send_calls(): class-level zeros, counted per instance from the first send.
    _send_tries = 0
    _sent_datagrams = 0

    def set_feedback_listener(self, listener: Callable[[int, bytes], None] | None) -> None:
        """Call ``listener(endpoint, packet)`` with each transport-wide feedback packet
        (RTPFB FMT 15, plain) an endpoint sends; what it raises is counted
        (feedback_listener_errors). ``sent_packets`` says what the numbers in it were."""
        self._feedback_listener = listener

    def sent_packets(self, endpoint: int, base_seq: int,
                     count: int) -> list[tuple[int, int, int] | None]:
        """For the ``count`` 16-bit transport-wide sequence numbers from ``base_seq``
        (as feedback names them): (extended number, send time, bytes) of each packet
        sent to ``endpoint`` under it, or None when unknown or forgotten."""
        ep = self._endpoints.get(endpoint)
        if ep is None or not ep.twcc_sent:
            return [None] * max(0, min(count, rtp.TWCC_HISTORY))
        latest = ep.twcc_next - 1
        result: list[tuple[int, int, int] | None] = []
        for k in range(max(0, min(count, rtp.TWCC_HISTORY))):
            ext = latest - ((latest - base_seq - k) & 0xFFFF)
            record = ep.twcc_sent[ext % rtp.TWCC_HISTORY] if ext >= 0 else None
            result.append(record if record is not None and record[0] == ext else None)
        return result

    def probe(self, consumer: int, count: int, now_us: int) -> int:
        """Send ``count`` padding-only packets (RFC 3550 §5.1: the P bit, no payload) on a
        video consumer's stream, at most PROBE_MAX_PACKETS, to probe its subscriber's
        bandwidth: they take the next sequence numbers (the media number on after them,
        and media older than the last sent is skipped from then on) and transport-wide
        numbers, which its feedback reports; its decoder ignores them. Duplicates of sent
        packets would not do: the subscriber's SRTP replay check drops them unreported.
        Returns the bytes sent; 0 unless the consumer is started, not waiting for a
        keyframe, not paused, has transport-wide numbers, and its last packet ended a
        frame (the marker bit): padding inside a frame would break the receiver's
        frame assembly (libwebrtc pads only between frames), so a probe waits."""
        cons = self._consumers.get(consumer)
        if (cons is None or cons.history is None or not cons.started or cons.restart
                or cons.paused or cons.endpoint is None or not cons.twcc_id
                or not cons.last_out_marker):
            return 0
        ep = cons.endpoint
        highest = (cons.highest_ext_seq - cons.start_ext_seq + cons.seq_base) & 0xFFFF
        sent = packets_sent = 0
        for k in range(min(count, rtp.PROBE_MAX_PACKETS)):
            twcc_seq = ep.twcc_next
            ep.twcc_next += 1
            packet = rtp.padding_packet(cons.last_out_pt, (highest + 1 + k) & 0xFFFF,
                                        cons.last_out_ts, cons.ssrc, cons.twcc_id, twcc_seq)
            try:
                protected = ep.tx.protect(packet)
            except Exception:
                self._counters[rtp.C_PROTECT_ERROR] += 1
                break
            self._record_sent(ep, twcc_seq, len(protected), now_us)
            packets_sent += 1  # its number is taken, sent or not
            if self._send(ep, protected) != 0:
                self._counters[rtp.C_SEND_ERROR] += 1
                break
            sent += len(protected)
            self._counters[rtp.C_PROBE_PACKETS] += 1
        if packets_sent:
            cons.seq_base = (highest + packets_sent + 1) & 0xFFFF
            cons.start_ext_seq = cons.highest_ext_seq + 1
        self._counters[rtp.C_PROBE_BYTES] += sent
        return sent

    def _handle_rtcp(self, ep: _Endpoint, plain: bytes, now_us: int) -> int:
        compound = packets.iter_rtcp(plain)  # the whole compound is validated first
        if compound is None:
            return rtp.DROP_BAD_RTCP
        counters = self._counters
        for packet_type, fmt, offset, length in compound:
            if packet_type == packets.RTCP_PSFB and fmt in (packets.PSFB_PLI, packets.PSFB_FIR):
                # PLI names the media SSRC at +8; FIR names it in each FCI entry (+12).
                ssrc_offset = offset + (8 if fmt == packets.PSFB_PLI else 12)
                if ssrc_offset + 4 > offset + length:
                    return rtp.DROP_BAD_RTCP
                cons = _consumer_on(ep, struct.unpack_from("!I", plain, ssrc_offset)[0])
                if cons is not None:
                    self._request_keyframe(cons.producer, now_us)
            elif packet_type == packets.RTCP_PSFB and fmt == packets.PSFB_AFB:
                counters[rtp.C_REMB_IN] += 1
            elif packet_type == packets.RTCP_RTPFB and fmt == packets.RTPFB_TWCC:
                counters[rtp.C_TWCC_IN] += 1
                self._feedback(ep, plain[offset : offset + length])
            elif packet_type == packets.RTCP_RTPFB and fmt == packets.RTPFB_NACK:
                counters[rtp.C_NACK_IN] += 1
                if length < 12:
                    return rtp.DROP_BAD_RTCP
                cons = _consumer_on(ep, struct.unpack_from("!I", plain, offset + 8)[0])
                if cons is not None:
                    self._answer_nack(cons, plain[offset + 12 : offset + length], now_us)
            elif packet_type == packets.RTCP_RR:
                counters[rtp.C_RR_IN] += 1
                if 8 + 24 * fmt > length:
                    return rtp.DROP_BAD_RTCP
                for block in range(offset + 8, offset + 8 + 24 * fmt, 24):
                    self._take_report_block(ep, plain, block, now_us)
            elif packet_type == packets.RTCP_SR:
                counters[rtp.C_SR_IN] += 1
                if length < packets.SR_SIZE:
                    return rtp.DROP_BAD_RTCP
                self._forward_sr(ep, plain[offset : offset + length], now_us)
        return rtp.OK

    def _forward_sr(self, ep: _Endpoint, report: bytes, now_us: int) -> None:
        """A publisher's SR to every started consumer of that stream, translated."""
        prod = _producer_on(ep, struct.unpack_from("!I", report, 4)[0])
        if prod is None:
            return
        # For the LSR/DLSR of our receiver reports (RFC 3550 §6.4.1).
        prod.stats.on_sender_report(struct.unpack_from("!I", report, 10)[0], now_us)
        for cons in prod.consumers:
            if cons.endpoint is None or not cons.started:
                continue
            self._send_rtcp(cons.endpoint, cons.sr.translate(
                report, cons.ssrc, cons.ts_offset, cons.packets_sent, cons.octets_sent,
                now_us))
            self._counters[rtp.C_SR_SENT] += 1

    def _take_report_block(self, ep: _Endpoint, plain: bytes, block: int,
                           now_us: int) -> None:
        """A subscriber's report on one consumer (RFC 3550 §6.4.1)."""
        ssrc, lost_word, _, jitter, lsr, dlsr = struct.unpack_from("!IIIIII", plain, block)
        cons = _consumer_on(ep, ssrc)
        if cons is None:
            return
        lost = lost_word & 0xFFFFFF
        if lost & 0x800000:
            lost -= 0x1000000
        cons.sr.on_report_block(lost_word >> 24, lost, jitter, lsr, dlsr, now_us)

    def _answer_nack(self, cons: _Consumer, fci: bytes, now_us: int) -> None:
        """Resend what a subscriber reports lost (RFC 4585 §6.2.1: each FCI entry is a
        packet id and a bitmask of the 16 after it), within the rules in
        sfu.rtcp.retransmit: the history window, the consumer's budget, one resend per
        interval."""
        counters = self._counters
        entries = struct.iter_unpack("!HH", fci[: len(fci) & ~3])
        if cons.history is None or not cons.started:  # nothing kept
            counters[rtp.C_NACK_OUT_OF_HISTORY] += sum(
                (1 | blp << 1).bit_count() for _, blp in entries)
            return
        cons.budget.refill(now_us, cons.packets_sent, cons.bytes_sent)
        interval = retransmit_interval(cons.sr.rtt())
        highest = (cons.highest_ext_seq - cons.start_ext_seq + cons.seq_base) & 0xFFFF
        for pid, blp in entries:
            asked = 1 | blp << 1  # bit k: pid + k
            inside = asked & rtp.history_window(highest, pid)
            counters[rtp.C_NACK_OUT_OF_HISTORY] += (asked ^ inside).bit_count()
            if not cons.budget.has_token():  # spent: no lookups
                counters[rtp.C_NACK_BUDGET_EXCEEDED] += inside.bit_count()
                continue
            for k in range(17):
                if inside >> k & 1:
                    self._retransmit(cons, (pid + k) & 0xFFFF, interval, now_us)

    def _retransmit(self, cons: _Consumer, seq: int, interval: int, now_us: int) -> None:
        """Send again one packet a subscriber reports lost, from its history: the same
        packet, sequence number and all, re-protected (libsrtp allows the repeat)."""
        counters = self._counters
        if not cons.budget.has_token():
            counters[rtp.C_NACK_BUDGET_EXCEEDED] += 1
            return
        slot = seq % rtp.HISTORY_SIZE
        kept = cons.history[slot] if cons.history else None
        if cons.endpoint is None or kept is None or (kept[2] << 8 | kept[3]) != seq:
            counters[rtp.C_RETRANSMIT_MISSED] += 1
            return
        resent = cons.resent_us[slot]
        if resent != rtp.RESENT_NEVER and now_us - resent < interval:
            counters[rtp.C_NACK_TOO_SOON] += 1
            return
        if not cons.budget.spend(len(kept)):
            counters[rtp.C_NACK_BUDGET_EXCEEDED] += 1
            return
        cons.resent_us[slot] = now_us
        if self._resend(cons, cons.endpoint, kept, now_us) >= 0:
            counters[rtp.C_RETRANSMITTED] += 1

    def _resend(self, cons: _Consumer, ep: _Endpoint, kept: bytes, now_us: int) -> int:
        """Protect and send a packet from a consumer's history again, under a new
        transport-wide sequence number (the first element, when it has one); the bytes
        sent, or -1 when that failed (counted)."""
        packet = bytearray(kept)
        twcc_seq = -1
        if cons.twcc_id:
            twcc_seq = ep.twcc_next
            ep.twcc_next += 1
            struct.pack_into("!H", packet, rtp.twcc_value_offset(packet), twcc_seq & 0xFFFF)
        try:
            protected = ep.tx.protect(bytes(packet))
        except Exception:
            self._counters[rtp.C_PROTECT_ERROR] += 1
            return -1
        if twcc_seq >= 0:
            self._record_sent(ep, twcc_seq, len(protected), now_us)
        if self._send(ep, protected) != 0:
            self._counters[rtp.C_SEND_ERROR] += 1
            return -1
        return len(protected)

    def _record_sent(self, ep: _Endpoint, twcc_seq: int, size: int, now_us: int) -> None:
        if not ep.twcc_sent:
            ep.twcc_sent = [None] * rtp.TWCC_HISTORY
        ep.twcc_sent[twcc_seq % rtp.TWCC_HISTORY] = (twcc_seq, now_us, size)

    def _feedback(self, ep: _Endpoint, packet: bytes) -> None:
        """Hand a subscriber's transport-wide feedback to the feedback listener."""
        listener = self._feedback_listener
        if listener is None:
            return
        try:
            listener(ep.id, packet)
        except Exception:  # the packet path must go on, whatever the listener does
            self._counters[rtp.C_FEEDBACK_LISTENER_ERRORS] += 1

    def _request_keyframe(self, prod: _Producer, now_us: int) -> bool:
        if not prod.keyframe.ready(now_us, self.keyframe_request_interval_us):
            self._counters[rtp.C_KEYFRAME_REQUESTS_THROTTLED] += 1
            return False
        ep = prod.endpoint
        if ep is None:
            return False
        prod.keyframe.on_request(now_us)
        self._counters[rtp.C_KEYFRAME_REQUESTS_SENT] += 1
        self._send_rtcp(ep, packets.build_pli(packets.SFU_RTCP_SSRC, prod.ssrc))
        return True

    def _send_rtcp(self, ep: _Endpoint, packet: bytes) -> None:
        """Protect and send RTCP the SFU originates; failures are counted."""
        try:
            protected = ep.tx.protect_rtcp(packet)
        except Exception:
            self._counters[rtp.C_PROTECT_ERROR] += 1
            return
        if self._send(ep, protected) != 0:
            self._counters[rtp.C_SEND_ERROR] += 1

    def _send(self, ep: _Endpoint, data: bytes) -> int:
        """0 when sent; -1 when the socket refused it (full buffer: dropped, as UDP may)."""
        self._send_tries += 1
        try:
            ep.sendto(data, ep.addr)
        except OSError:
            return -1
        self._sent_datagrams += 1
        return 0

    def send_calls(self) -> tuple[int, int]:
        """(send calls, datagrams sent): one call per datagram here (the C forwarder
        sends what one receive() batch forwards with one sendmmsg(2))."""
        return (self._send_tries, self._sent_datagrams)
