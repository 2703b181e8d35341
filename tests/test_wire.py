"""Two aiortc participants: what the SFU puts on the wire to a subscriber.

The subscriber's aiortc decrypts each forwarded packet; a hook on its receivers
records the RTP headers before they are depacketised.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from aiortc import AudioStreamTrack, VideoStreamTrack
from aiortc.sdp import SessionDescription
from av import VideoFrame

from sfu.client import Client
from sfu.server import Server
from sfu.transport import internals
from tests.conftest import requires_isolated_network

pytestmark = requires_isolated_network


def record_headers(client: Client) -> dict[str, list[tuple[int, int, int]]]:
    """mid → [(ssrc, payload type, sequence number)] of every RTP packet received."""
    assert client.subscribe_pc is not None
    seen: dict[str, list[tuple[int, int, int]]] = {}
    for transceiver in client.subscribe_pc.getTransceivers():
        receiver, log = transceiver.receiver, seen.setdefault(transceiver.mid or "", [])
        handle = receiver._handle_rtp_packet

        async def recording(packet: Any, arrival_time_ms: int, handle: Any = handle,
                            log: list[tuple[int, int, int]] = log) -> None:
            log.append((packet.ssrc, packet.payload_type, packet.sequence_number))
            await handle(packet, arrival_time_ms)

        setattr(receiver, "_handle_rtp_packet", recording)  # noqa: B010
    return seen


@pytest.mark.parametrize("binary", [False, True], ids=["json", "msgpack"])
async def test_forwarded_headers_use_subscriber_parameters(server: Server, binary: bool) -> None:
    url = f"ws://127.0.0.1:{server.port}/ws"
    alice = Client(url, room="wire", name="alice", binary=binary)
    bob = Client(url, room="wire", name="bob", binary=binary)
    try:
        await alice.join()
        await bob.join()
        answer = await alice.publish([AudioStreamTrack(), VideoStreamTrack()])
        assert sorted(t["kind"] for t in answer["tracks"]) == ["audio", "video"]

        received = {}
        for _ in range(2):
            info, track = await bob.next_track()
            received[info.kind] = (info, track)
        assert {info.participant for info, _ in received.values()} == {alice.participant_id}
        headers = record_headers(bob)

        # Media decodes at the subscriber: frames come out of aiortc's decoders.
        video_frames = [await asyncio.wait_for(received["video"][1].recv(), 10) for _ in range(5)]
        assert all(isinstance(f, VideoFrame) and f.width == 640 for f in video_frames)
        await asyncio.wait_for(received["audio"][1].recv(), 10)
        await asyncio.sleep(1.0)

        assert bob.subscribe_pc is not None and alice.publish_pc is not None
        offer = SessionDescription.parse(bob.subscribe_pc.remoteDescription.sdp)
        local = SessionDescription.parse(bob.subscribe_pc.localDescription.sdp)
        published = internals.remote_media_ssrcs(
            server.participants[alice.participant_id or ""].publish.pc.remoteDescription.sdp  # type: ignore[union-attr]
        )
        for media, mine in zip(offer.media, local.media, strict=True):
            mid = media.rtp.muxId
            log = headers[mid]
            assert len(log) >= 20, f"mid {mid}: only {len(log)} packets recorded"
            announced_ssrc = media.ssrc[0].ssrc
            negotiated_pt = mine.rtp.codecs[0].payloadType
            assert {ssrc for ssrc, _, _ in log} == {announced_ssrc}
            assert announced_ssrc not in published.values()  # rewritten, not the publisher's
            assert {pt for _, pt, _ in log} == {negotiated_pt}
            seqs = [seq for _, _, seq in log]
            gaps = [(a, b) for a, b in itertools.pairwise(seqs) if (b - a) & 0xFFFF != 1]
            assert gaps == [], f"mid {mid}: sequence numbers not continuous: {gaps[:5]}"
            print(f"mid {mid} ({media.kind}): {len(log)} packets, ssrc {announced_ssrc:#x}, "
                  f"pt {negotiated_pt}, seq {seqs[0]}..{seqs[-1]}")
        counters = server.forwarder.counters()
        assert counters["drop_srtp_fail"] == 0 and counters["drop_bad_header"] == 0
    finally:
        await alice.close()
        await bob.close()


async def test_internals_are_where_the_transport_expects(server: Server) -> None:
    """Fails loudly if an aiortc/aioice upgrade moved what sfu/transport/internals.py uses."""
    url = f"ws://127.0.0.1:{server.port}/ws"
    alice = Client(url, room="internals", name="alice")
    bob = Client(url, room="internals", name="bob")
    try:
        await alice.join()
        await bob.join()
        await alice.publish([VideoStreamTrack()])
        await bob.next_track()
        alice_peer = server.participants[alice.participant_id or ""]
        bob_peer = server.participants[bob.participant_id or ""]
        assert alice_peer.publish is not None and bob_peer.subscribe is not None
        await asyncio.wait_for(alice_peer.publish.connected.wait(), 10)
        await asyncio.wait_for(bob_peer.subscribe.connected.wait(), 10)
        internals.check_internals(alice_peer.publish.pc)
        internals.check_internals(bob_peer.subscribe.pc)
    finally:
        await alice.close()
        await bob.close()
