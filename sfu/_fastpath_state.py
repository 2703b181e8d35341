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
        if candidate.ssrc == ssrc:
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

    __slots__ = ("addr", "consumers", "id", "producers", "rx", "sendto", "tx")

    def __init__(self, endpoint_id: int, rx: Any, tx: Any, sendto: SendTo,
                 addr: Address) -> None:
        self.id = endpoint_id
        self.rx = rx
        self.tx = tx
        self.sendto = sendto
        self.addr = addr
        self.producers: list[_Producer] = []  # published on this endpoint
        self.consumers: list[_Consumer] = []  # sent on this endpoint


class _Producer:
    """An incoming track: one publisher SSRC on one endpoint."""

    __slots__ = ("clock_rate", "codec", "consumers", "endpoint", "endpoint_id", "id",
                 "keyframe", "nack", "paused", "ssrc", "stats")

    def __init__(self, producer_id: int, codec: int) -> None:
        self.id = producer_id
        self.codec = codec
        self.consumers: list[_Consumer] = []
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
        "highest_ext_seq", "history", "id", "is_video", "last_out_ts", "last_out_us", "mid",
        "mid_id", "new_source", "octets_sent", "packets_sent", "payload_types", "producer",
        "resent_us", "restart", "seq_base", "sr", "ssrc", "start_ext_seq", "started",
        "ts_base", "ts_offset", "wait_started_us", "waiting",
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
        self.started = False  # by the first packet forwarded (the first keyframe, video)
        self.restart = False  # its producer resumed: start again at a keyframe
        # ... from another source: timestamps move on from the last one sent, advanced
        # by the time that passed, not from the old offset.
        self.new_source = False
        self.last_out_ts = 0  # of the highest packet sent, and when it was sent
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
