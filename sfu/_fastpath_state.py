"""The twin's tables: its endpoints, producers and consumers — what sfu/_fastpath.pxd
declares for the Cython forwarder — and the per-endpoint lookups by SSRC. The
forwarding rules that use them are in sfu/_fastpath_fallback.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sfu import rtp
from sfu.rtcp.keyframe import KeyframeThrottle
from sfu.rtcp.nack import NackGenerator
from sfu.rtcp.retransmit import RetransmitBudget
from sfu.rtcp.sr import SrTranslator
from sfu.rtcp.stats import ReceiveStats

Address = tuple[Any, ...]
SendTo = Callable[[bytes, Address], None]


def _producer_on(ep: _Endpoint, ssrc: int) -> _Producer | None:
    """The producer an endpoint publishes under ``ssrc``: an SSRC only counts on its own
    endpoint. A linear scan: an endpoint carries a handful of tracks."""
    for candidate in ep.producers:
        if candidate.ssrc == ssrc and candidate.bound:
            return candidate
    return None


def _unbound_on(ep: _Endpoint, elements: list[tuple[int, bytes]]) -> _Producer | None:
    """The simulcast layer an unknown SSRC's packet names by its RID (and mid) header
    extensions, among the endpoint's layers whose SSRC is not known yet."""
    for candidate in ep.producers:
        if candidate.bound:
            continue
        if (candidate.rid_id, candidate.rid) in elements and (
                candidate.mid_id == 0 or (candidate.mid_id, candidate.mid) in elements):
            return candidate
    return None


def _consumer_on(ep: _Endpoint, ssrc: int) -> _Consumer | None:
    """The consumer sent to an endpoint as ``ssrc``, or None."""
    for candidate in ep.consumers:
        if candidate.ssrc == ssrc:
            return candidate
    return None


# -- tables -----------------------------------------------------------------------------

class _Endpoint:
    """One DTLS-SRTP transport (one peer connection) and where to send to it."""

    __slots__ = ("addr", "consumers", "fd", "id", "producers", "rx", "sendto", "twcc_next",
                 "twcc_sent", "tx")

    def __init__(self, endpoint_id: int, rx: Any, tx: Any, sendto: SendTo,
                 addr: Address, fd: int) -> None:
        self.id = endpoint_id
        self.rx = rx
        self.tx = tx
        self.sendto = sendto
        self.addr = addr
        self.fd = fd  # its socket, to tell receive()'s datagrams by; -1: none
        self.producers: list[_Producer] = []  # published on this endpoint
        self.consumers: list[_Consumer] = []  # sent on this endpoint
        # The next transport-wide sequence number (extended), and what was sent under
        # the last TWCC_HISTORY of them: (number, send time, size), for feedback.
        self.twcc_next = 0
        self.twcc_sent: list[tuple[int, int, int] | None] = []  # made at the first use


class _Producer:
    """An incoming track (or one simulcast layer of it): one publisher SSRC on one
    endpoint, or, for a layer named by RID, the SSRC its first packet brings."""

    __slots__ = ("audio_level_id", "bound", "bytes_in", "clock_rate", "codec", "consumers",
                 "endpoint", "endpoint_id", "height", "id", "keyframe", "level_loud",
                 "level_packets", "level_sum", "level_voiced", "mid", "mid_id", "nack",
                 "packets_in", "paused", "rid", "rid_id", "ssrc", "stats", "width")

    def __init__(self, producer_id: int, codec: int, rid: bytes, rid_id: int, mid: bytes,
                 mid_id: int) -> None:
        self.id = producer_id
        self.codec = codec
        # Its consumers, and those waiting for its keyframe to switch to it (target).
        self.consumers: list[_Consumer] = []
        self.rid = rid  # RID and mid header-extension values and ids, to learn the SSRC
        self.rid_id = rid_id
        self.mid = mid
        self.mid_id = mid_id
        self.bound = True  # the SSRC is known
        self.packets_in = 0
        self.bytes_in = 0
        self.width = 0  # of the last keyframe (VP8), 0 unknown
        self.height = 0
        self.audio_level_id = 0  # ssrc-audio-level (RFC 6464) extension id, 0: none
        self.level_packets = 0  # packets that carried it, their levels (-dBov) summed,
        self.level_sum = 0  # and how many said voice activity
        self.level_voiced = 0
        self.level_loud = 0  # ... and how many were at least rtp.LOUD_DBOV loud
        self.paused = False
        self.clock_rate = rtp.clock_rate(codec)
        # Where the media comes from, and its receive state: set by _attach_source.
        self.endpoint_id = 0
        self.ssrc = 0
        self.endpoint: _Endpoint | None = None  # None until that endpoint is added
        self.keyframe = KeyframeThrottle()
        self.stats = ReceiveStats(self.clock_rate)
        self.nack = NackGenerator()


class _Consumer:
    """One subscriber's copy of a Producer, with its own SSRC, numbering and ids."""

    __slots__ = (
        "abs_send_time_id", "budget", "bytes_sent", "endpoint", "endpoint_id", "ext_map",
        "highest_ext_seq", "history", "id", "is_video", "last_out_marker", "last_out_pt",
        "last_out_ts",
        "last_out_us", "mid",
        "mid_id", "new_source", "octets_sent", "packets_sent", "paused", "payload_types",
        "producer", "resent_us", "restart", "seq_base", "sr", "ssrc", "start_ext_seq",
        "started", "target", "ts_base", "ts_offset", "twcc_id", "wait_started_us", "waiting",
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
        twcc_id: int,
    ) -> None:
        self.id = consumer_id
        self.endpoint_id = endpoint
        self.producer = producer
        self.endpoint: _Endpoint | None = None  # None until that endpoint is added
        self.ssrc = ssrc
        self.is_video = is_video
        self.payload_types = payload_types
        self.ext_map = ext_map
        self.mid = mid
        self.mid_id = mid_id
        self.abs_send_time_id = abs_send_time_id
        self.seq_base = seq_base
        self.ts_base = ts_base
        self.twcc_id = twcc_id  # the transport-wide sequence number's id, 0: none
        self.target: _Producer | None = None  # the layer to switch to at its keyframe
        self.paused = False  # by the subscriber: nothing is sent
        self.started = False  # by the first packet forwarded (the first keyframe, video)
        self.restart = False  # its producer resumed: start again at a keyframe
        # ... from another source: timestamps move on from the last one sent, advanced
        # by the time that passed, not from the old offset.
        self.new_source = False
        self.last_out_ts = 0  # of the highest packet sent, and when it was sent
        self.last_out_pt = 0  # and its payload type, and whether it ended a frame
        self.last_out_marker = False
        self.last_out_us = 0
        self.waiting = False  # for a keyframe, since wait_started_us
        self.wait_started_us = 0
        self.sr = SrTranslator()  # our last SR to the subscriber, its last report
        self.start_ext_seq = 0
        self.highest_ext_seq = 0
        self.ts_offset = 0
        self.packets_sent = 0
        self.bytes_sent = 0
        self.octets_sent = 0  # payload octets, for sender reports
        # Video only: rewritten packets by sequence number modulo HISTORY_SIZE, for
        # retransmission, and when each slot was last resent.
        self.history: list[bytes | None] | None = (
            [None] * rtp.HISTORY_SIZE if is_video else None)
        self.resent_us: list[int] = [rtp.RESENT_NEVER] * rtp.HISTORY_SIZE if is_video else []
        self.budget = RetransmitBudget()  # for answering its NACKs
