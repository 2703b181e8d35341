"""DTLS with a participant whose certificate is RSA (as GStreamer's webrtcbin presents).

The SFU answers `a=setup:active`, so it is the DTLS client of every publisher. aiortc
alone offers only ECDHE-ECDSA suites, which an RSA server cannot pick: ICE completes,
then DTLS fails with "no shared cipher". sfu.transport.internals adds the ECDHE-RSA
suites; here an aiortc participant with an RSA certificate publishes (it is the DTLS
server) and receives (the DTLS client), once with the fix and once with aiortc's own
cipher list to show the failure it prevents.
"""

from __future__ import annotations

import asyncio

import pytest
from aiortc import RTCPeerConnection, VideoStreamTrack
from aiortc.rtcdtlstransport import RTCCertificate, generate_certificate
from cryptography.hazmat.primitives.asymmetric import rsa

from sfu.client import Client
from sfu.server import Server
from sfu.transport import internals
from tests.conftest import make_config, requires_isolated_network, running

pytestmark = requires_isolated_network

AIORTC_CIPHERS = (b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:"
                  b"ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA")


class RsaClient(Client):
    """A participant whose DTLS certificate is RSA 2048 (it must accept RSA suites too,
    to be a DTLS server with that certificate)."""

    def _new_pc(self) -> RTCPeerConnection:
        pc = super()._new_pc()
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        certificate = RTCCertificate(key=key, cert=generate_certificate(key))  # type: ignore[arg-type]
        create = certificate._create_ssl_context

        def create_accepting_rsa(srtp_profiles: object) -> object:
            # Its own list: the test below takes the SFU's RSA suites away, not these.
            context = create(srtp_profiles)  # type: ignore[arg-type]
            context.set_cipher_list(AIORTC_CIPHERS + b":ECDHE-RSA-AES128-GCM-SHA256")
            return context

        certificate._create_ssl_context = create_accepting_rsa  # type: ignore[method-assign,assignment]
        pc._RTCPeerConnection__certificates = [certificate]  # type: ignore[attr-defined]
        return pc


async def rsa_call(server: Server) -> tuple[str, str]:
    """(RSA publisher's connection state, ECDSA subscriber's frames or error) after
    the RSA participant publishes video and an ordinary one subscribes; and the RSA
    participant subscribes to the ordinary one's video."""
    url = f"ws://127.0.0.1:{server.port}/ws"
    rsa_peer = RsaClient(url, room="rsa", name="rsa")
    plain = Client(url, room="rsa", name="plain")
    try:
        await rsa_peer.join()
        await plain.join()
        await rsa_peer.publish([VideoStreamTrack()])
        await plain.publish([VideoStreamTrack()])
        _, from_rsa = await plain.next_track()
        _, to_rsa = await rsa_peer.next_track()
        await asyncio.wait_for(from_rsa.recv(), 10)
        await asyncio.wait_for(to_rsa.recv(), 10)
        return "decoded", "decoded"
    except TimeoutError:
        assert rsa_peer.publish_pc is not None
        return "timeout", rsa_peer.publish_pc.connectionState
    finally:
        await rsa_peer.close()
        await plain.close()


async def test_rsa_participant_publishes_and_receives() -> None:
    async with running(make_config()) as server:
        assert await rsa_call(server) == ("decoded", "decoded")


async def test_without_rsa_suites_dtls_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(internals, "DTLS_CIPHERS", AIORTC_CIPHERS)
    async with running(make_config()) as server:
        outcome, state = await rsa_call(server)
        assert outcome == "timeout" and state in ("failed", "connecting", "closed"), state
