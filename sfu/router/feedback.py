"""The RTCP a room's router originates: to each publisher, a receiver report and REMB
once an interval, and NACKs for lost video packets when they fall due (the per-packet
parts live in the forwarder). One timer, armed for the earliest deadline: a room with
nothing due wakes nobody."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from sfu.router.context import RouterContext
from sfu.router.participants import ParticipantLink
from sfu.router.room import Room, Track
from sfu.rtcp.packets import SFU_RTCP_SSRC, build_nack
from sfu.rtcp.remb import build_remb
from sfu.rtcp.reports import ReportBlock, build_rr
from sfu.transport.peer import now_us

NOTHING_DUE = -1


class FeedbackTimer:
    def __init__(self, ctx: RouterContext, room: Room,
                 links: Mapping[str, ParticipantLink],
                 remb_bps: Callable[[Track, int], int] = lambda track, maximum: maximum,
                 ) -> None:
        """``remb_bps(track, maximum)``: the bitrate to ask a track's publisher for."""
        self._ctx = ctx
        self._remb_bps = remb_bps
        self._room = room
        self._links = links
        rtc = ctx.config.rtc
        self._interval_us = rtc.feedback_interval_ms * 1000
        self._maximum = {"video": rtc.max_video_bitrate_bps, "audio": rtc.max_audio_bitrate_bps}
        self._next_report_us = NOTHING_DUE
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = NOTHING_DUE
        self.wakeups = 0  # times the timer fired: what an idle room costs

    def next_deadline(self) -> int:
        """When something is next due (microseconds, the now_us clock), or NOTHING_DUE."""
        deadlines = [self._next_report_us] if self._next_report_us != NOTHING_DUE else []
        if self._ctx.config.rtc.nack:
            forwarder = self._ctx.forwarder
            deadlines += [d for t in self._room.tracks.values() if t.kind == "video"
                          for p in t.producers
                          if (d := forwarder.nack_deadline(p)) != NOTHING_DUE]
        return min(deadlines, default=NOTHING_DUE)

    def wake(self) -> None:
        """Something changed (a track came or went, a packet went missing): arm the
        timer for the earliest deadline, if that is sooner than it is armed for."""
        if self._room.tracks and self._next_report_us == NOTHING_DUE:
            self._next_report_us = now_us() + self._interval_us
        elif not self._room.tracks:
            self._next_report_us = NOTHING_DUE
        self._arm(self.next_deadline())

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._armed_for = None, NOTHING_DUE

    def _arm(self, deadline: int) -> None:
        if deadline == NOTHING_DUE:
            self.stop()
            return
        if self._timer is not None and self._armed_for <= deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        delay = max(0.0, (deadline - now_us()) / 1e6)
        self._timer = asyncio.get_running_loop().call_later(delay, self._fire)
        self._armed_for = deadline

    def _fire(self) -> None:
        self._timer, self._armed_for = None, NOTHING_DUE
        self.wakeups += 1
        now = now_us()
        if self._next_report_us != NOTHING_DUE and now >= self._next_report_us:
            self._send_reports(now)
            self._next_report_us = max(self._next_report_us + self._interval_us, now)
        if self._ctx.config.rtc.nack:
            for track in list(self._room.tracks.values()):
                if track.kind == "video":
                    for producer in track.producers:
                        self._send_nacks(track, producer, now)
        self.wake()

    def _send_reports(self, now: int) -> None:
        """Each publisher gets one compound RTCP packet: a receiver report for its
        streams (loss, jitter, LSR/DLSR; RFC 3550 §6.4.2), then REMB for its tracks:
        their configured maximum bitrates, less where every subscriber's downlink is
        estimated and none can take that much (``remb_bps``). Browsers that negotiated
        goog-remb (the SFU does not offer publishers transport-cc) take REMB as their
        send target, so video ramps up instead of staying blurry, and a simulcast
        publisher drops the layers nobody can receive."""
        forwarder, remb = self._ctx.forwarder, self._ctx.config.rtc.remb
        for link in list(self._links.values()):
            if link.publish is None or not link.publish.connected.is_set():
                continue
            tracks = [self._room.tracks[t] for t in link.participant.tracks]
            reports = [forwarder.receive_report(p, now) for t in tracks for p in t.producers]
            blocks = [ReportBlock(*report) for report in reports if report is not None]
            if not blocks:
                continue
            packet = build_rr(SFU_RTCP_SSRC, blocks)
            if remb:
                packet += build_remb(SFU_RTCP_SSRC,
                                     sum(self._remb_bps(t, self._maximum[t.kind])
                                         for t in tracks),
                                     [block.ssrc for block in blocks])
            if forwarder.send_rtcp(link.publish.endpoint, packet):
                self._ctx.stats.rtcp_sent["rr"] += 1
                self._ctx.stats.rtcp_sent["remb"] += remb

    def _send_nacks(self, track: Track, producer: int, now: int) -> None:
        """Ask the publisher for the video packets that went missing (the forwarder
        tracks gaps and retry timing; this only sends what is due)."""
        link = self._links.get(track.participant)
        if link is None or link.publish is None:
            return
        forwarder = self._ctx.forwarder
        lost = forwarder.nack_due(producer, now)
        stats = forwarder.producer_stats(producer)
        if lost and stats and forwarder.send_rtcp(link.publish.endpoint,
                                                  build_nack(SFU_RTCP_SSRC, stats[0], lost)):
            self._ctx.stats.rtcp_sent["nack"] += 1

