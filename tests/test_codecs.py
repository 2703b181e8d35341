"""A subscriber that cannot receive a publisher's codec is told so, not left with a
black tile: the SFU forwards and never transcodes, so the publisher's codec is the only
one it can offer (docs/protocol.md, `subscription_failed`)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from aiortc import RTCSessionDescription, VideoStreamTrack

from sfu import events
from sfu.client import Client
from sfu.server import Server
from tests.conftest import requires_isolated_network

pytestmark = requires_isolated_network


class NoH264Client(Client):
    """Answers like a browser without H.264 (Firefox before its OpenH264 plugin has
    downloaded): an offered H.264-only video m-line is rejected (port 0)."""

    async def send(self, message: dict[str, Any]) -> None:
        if message.get("type") == "answer":
            sections = message["sdp"].split("\r\nm=")
            for i, section in enumerate(sections):
                if section.startswith("video") and "H264/90000" in section:
                    sections[i] = re.sub(r"^video \d+", "video 0", section)
            message = {**message, "sdp": "\r\nm=".join(sections)}
        await super().send(message)


async def test_subscriber_without_the_codec_gets_subscription_failed(server: Server) -> None:
    url = f"ws://127.0.0.1:{server.port}/ws"
    alice = Client(url, room="codecs", name="alice")
    bob = NoH264Client(url, room="codecs", name="bob")
    carol = Client(url, room="codecs", name="carol")  # can decode H.264
    heard: list[events.Event] = []

    async def listen(event: events.Event) -> None:
        heard.append(event)

    server.events.add_listener(listen)
    try:
        for client in (alice, bob, carol):
            await client.join()
        pc = alice._new_pc()
        alice.publish_pc = pc
        transceiver = pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
        from aiortc.rtcrtpsender import RTCRtpSender

        h264 = [c for c in RTCRtpSender.getCapabilities("video").codecs
                if c.mimeType == "video/H264"]
        transceiver.setCodecPreferences(h264)
        from sfu.transport.internals import prepare_gathering

        prepare_gathering(pc, alice._gathering, None)
        await pc.setLocalDescription(await pc.createOffer())
        answer = await alice.request({"type": "publish", "sdp": pc.localDescription.sdp})
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        (track,) = answer["tracks"]

        failed = await bob.next_event("subscription_failed", timeout=15)
        assert failed["track"] == track["id"] and failed["codec"] == "video/H264"
        assert failed["participant"] == alice.participant_id and failed["reason"] == "codec"
        # Carol, who can, decodes it; bob's subscription forwards nothing.
        info, received = await carol.next_track()
        assert info.track_id == track["id"]
        await asyncio.wait_for(received.recv(), 15)
        bob_peer = server.participants[bob.participant_id or ""]
        (subscription,) = bob_peer.participant.subscriptions.values()
        assert subscription.failed and not subscription.active
        await asyncio.sleep(0.2)
        assert [e.participant for e in heard if isinstance(e, events.SubscriptionFailed)] == [
            bob.participant_id]
    finally:
        for client in (alice, bob, carol):
            await client.close()
