"""The RTCP the SFU originates on timers: receiver reports and REMB to publishers once
an interval, and NACKs for lost video packets every 20 ms (the per-packet parts live in
the forwarders)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from sfu.rtcp import packets
from sfu.rtcp.remb import build_remb
from sfu.rtcp.reports import ReportBlock, build_rr
from sfu.transport.peer import now_us

if TYPE_CHECKING:
    from sfu.server import Server

NACK_POLL_S = 0.02


async def feedback_loop(server: Server) -> None:
    """Once an interval, every publisher gets one compound RTCP packet: a receiver
    report for its streams (loss, jitter, LSR/DLSR; RFC 3550 §6.4.2), then REMB at
    its tracks' configured maximum bitrates. Browsers that negotiated goog-remb
    (and not transport-cc, which aiortc does not offer) take REMB as their send
    target, so video ramps up instead of staying blurry."""
    rtc = server.config.rtc
    maximum = {"video": rtc.max_video_bitrate_bps, "audio": rtc.max_audio_bitrate_bps}
    while True:
        await asyncio.sleep(rtc.feedback_interval_ms / 1000)
        now = now_us()
        for peer in list(server.peers.values()):
            if peer.publish is None or not peer.publish.connected.is_set():
                continue
            mine = [p for p in server.publications.values()
                    if p.track.participant == peer.id]
            reports = [server.forwarder.receive_report(p.producer, now) for p in mine]
            blocks = [ReportBlock(*report) for report in reports if report is not None]
            if not blocks:
                continue
            packet = build_rr(packets.SFU_RTCP_SSRC, blocks)
            if rtc.remb:
                packet += build_remb(packets.SFU_RTCP_SSRC,
                                     sum(maximum[p.track.kind] for p in mine),
                                     [p.media.ssrc for p in mine])
            if server.forwarder.send_rtcp(peer.publish.endpoint, packet):
                server.rtcp_sent["rr"] += 1
                server.rtcp_sent["remb"] += rtc.remb

async def nack_loop(server: Server) -> None:
    """Every 20 ms, ask publishers for the video packets that went missing (the
    forwarders track gaps and retry timing; this only sends what is due)."""
    while True:
        await asyncio.sleep(NACK_POLL_S)
        now = now_us()
        for publication in list(server.publications.values()):
            peer = server.peers.get(publication.track.participant)
            if peer is None or peer.publish is None or publication.track.kind != "video":
                continue
            lost = server.forwarder.nack_due(publication.producer, now)
            if lost and server.forwarder.send_rtcp(peer.publish.endpoint, packets.build_nack(
                    packets.SFU_RTCP_SSRC, publication.media.ssrc, lost)):
                server.rtcp_sent["nack"] += 1
