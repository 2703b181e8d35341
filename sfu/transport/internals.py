"""Every touch of aiortc and aioice private internals, and nothing else (with
sfu.transport.ice_pairs, which mends how aioice selects a pair).

aiortc terminates ICE and DTLS for us, but its RTP path decodes and re-encodes, so
SRTP is diverted before it reaches aiortc (docs/architecture.md, "Ingress"). That needs private
attributes; they are named here and in ice_pairs only, pinned by pyproject.toml
(aiortc 1.16.x, aioice 0.13.x), and ``check_internals`` (run by tests/test_wire.py
against live objects) fails loudly if they move.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aioice import ice as aioice_ice
from aioice import turn as aioice_turn
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
    sdp,
)
from aiortc.codecs import CODECS
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcpeerconnection import find_common_codecs
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters

from sfu.media import CodecInfo
from sfu.transport import ice_pairs, tcp_port
from sfu.transport.shared_port import SharedSocket, set_buffers
from sfu.transport.tcp_port import TcpPort

DatagramHandler = Callable[[bytes, tuple[Any, ...]], None]


@dataclass(frozen=True)
class HostGathering:
    """Where the SFU's ICE host candidates are bound and what they announce: the
    shared socket of each listen address, or (none) a port each from the range."""

    listen_ips: tuple[str, ...]
    announced_ip: str
    port_min: int
    port_max: int
    shared: dict[str, SharedSocket] = field(default_factory=dict)  # by listen address
    tcp: dict[str, TcpPort] = field(default_factory=dict)  # ICE-TCP, by listen address
    receive_buffer: int = aioice_turn.UDP_SOCKET_BUFFER_SIZE  # SO_RCVBUF of a port's own


@dataclass(frozen=True)
class SelectedPair:
    """The nominated ICE pair: how to send to the peer."""

    sendto: Callable[[bytes, tuple[Any, ...]], None]
    remote_addr: tuple[Any, ...]
    fd: int  # -1 when not a plain UDP socket (a TURN allocation)
    local_type: str
    remote_type: str


def new_peer_connection() -> RTCPeerConnection:
    """A server-side peer connection: no STUN/TURN servers, one transport per
    connection, DTLS with peers whose certificates are RSA as well as ECDSA."""
    pc = RTCPeerConnection(
        RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    )
    accept_rsa_peers(pc)
    return pc


# aiortc 1.16's suites, each followed by its ECDHE-RSA twin.
DTLS_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    b"ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA"
)


def accept_rsa_peers(pc: RTCPeerConnection) -> None:
    """Let DTLS succeed with a peer whose certificate is RSA (GStreamer's webrtcbin).

    aiortc offers only ECDHE-ECDSA cipher suites, and a suite names the key type of
    the DTLS *server's* certificate. The SFU answers ``a=setup:active``, so it is the
    DTLS client of every publisher: against an RSA server no suite matches and the
    handshake fails with "no shared cipher" once ICE has completed. Adding the
    ECDHE-RSA suites changes nothing against ECDSA peers (the server still picks an
    ECDSA suite for its ECDSA certificate).
    """
    for certificate in pc._RTCPeerConnection__certificates:  # type: ignore[attr-defined]
        create = certificate._create_ssl_context

        def create_accepting_rsa(srtp_profiles: Any, create: Any = create) -> Any:
            context = create(srtp_profiles)
            context.set_cipher_list(DTLS_CIPHERS)
            return context

        setattr(certificate, "_create_ssl_context", create_accepting_rsa)  # noqa: B010


def dtls_transport(pc: RTCPeerConnection) -> RTCDtlsTransport:
    """The one DTLS transport of a max-bundle connection (the data channels' when it
    carries no media)."""
    transceivers = pc.getTransceivers()
    if transceivers:
        transport: RTCDtlsTransport = transceivers[0].receiver.transport
        return transport
    if pc.sctp is not None:
        sctp_transport: RTCDtlsTransport = pc.sctp.transport
        return sctp_transport
    raise ValueError("peer connection has no transceiver or data channel yet")


def _ice_connection(pc: RTCPeerConnection) -> aioice_ice.Connection:
    return dtls_transport(pc).transport.iceGatherer._connection


def prepare_gathering(
    pc: RTCPeerConnection, gathering: HostGathering, on_datagram: DatagramHandler | None
) -> None:
    """Gather host candidates our way, with SRTP/SRTCP diverted to ``on_datagram``.

    With ``on_datagram`` None nothing is diverted: a client keeps aiortc's media path.

    aioice gathers on every interface except loopback, on random ports; the SFU needs
    configured addresses (``rtc.listen_ips``, loopback included), a port range and an
    announced address. Call after the connection has its first transceiver and
    before ``setLocalDescription`` (which is when aiortc gathers).
    """
    connection = _ice_connection(pc)
    if getattr(connection, "_sfu_prepared", False):
        return
    setattr(connection, "_sfu_prepared", True)  # noqa: B010 - not an aioice attribute
    ice_pairs.guard_consent(connection)
    ice_pairs.keep_best_nomination(connection, lambda: _remote_sdp(pc))
    if connection._transport_policy == aioice_ice.TransportPolicy.RELAY:
        return  # a relay-only client: aioice gathers its TURN relay

    async def gather_candidates() -> None:
        if connection._local_candidates_start:
            return
        connection._local_candidates_start = True
        for component in connection._components:
            for address in gathering.listen_ips:
                shared = gathering.shared.get(address)
                if shared is not None:
                    protocol = aioice_ice.StunProtocol(connection)
                    protocol.connection_made(shared.endpoint(connection.local_username,
                                                             protocol))
                else:
                    protocol = await _bind_host(connection, address, gathering)
                if on_datagram is not None:
                    divert(protocol, on_datagram)
                host, port = protocol.transport.get_extra_info("sockname")[:2]
                protocol.local_candidate = Candidate(
                    foundation=candidate_foundation("host", "udp", host),
                    component=component,
                    transport="udp",
                    priority=candidate_priority(component, "host"),
                    host=gathering.announced_ip or host,
                    port=port,
                    type="host",
                )
                connection._protocols.append(protocol)
                connection._local_candidates.append(protocol.local_candidate)
                tcp = gathering.tcp.get(address)
                if tcp is not None:
                    _add_tcp_candidate(connection, component, tcp, gathering, on_datagram)
        connection._local_candidates_end = True

    # Replacing methods on instances is this module's job: setattr says so to mypy.
    setattr(connection, "gather_candidates", gather_candidates)  # noqa: B010


def _add_tcp_candidate(connection: aioice_ice.Connection, component: int, tcp: TcpPort,
                       gathering: HostGathering, on_datagram: DatagramHandler | None) -> None:
    """A passive TCP host candidate (RFC 6544) on the ICE-TCP port."""
    protocol = aioice_ice.StunProtocol(connection)
    protocol.connection_made(tcp.endpoint(connection.local_username, protocol))
    if on_datagram is not None:
        divert(protocol, on_datagram)
    host, port = tcp.address
    protocol.local_candidate = Candidate(
        foundation=candidate_foundation("host", "tcp", host),
        component=component,
        transport="tcp",
        priority=tcp_port.candidate_priority(component),
        host=gathering.announced_ip or host,
        port=port,
        type="host",
        tcptype="passive",
    )
    connection._protocols.append(protocol)
    connection._local_candidates.append(protocol.local_candidate)


def _remote_sdp(pc: RTCPeerConnection) -> str | None:
    description = pc.remoteDescription
    return None if description is None else str(description.sdp)


async def _bind_host(
    connection: aioice_ice.Connection, address: str, gathering: HostGathering
) -> aioice_ice.StunProtocol:
    loop = asyncio.get_running_loop()
    span = gathering.port_max - gathering.port_min + 1
    start = random.randrange(span)
    last_error: OSError | None = None
    for i in range(min(span, 200)):
        port = gathering.port_min + (start + i) % span
        try:
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: aioice_ice.StunProtocol(connection), local_addr=(address, port)
            )
        except OSError as exc:
            last_error = exc
            continue
        sock = transport.get_extra_info("socket")
        if sock is not None:
            set_buffers(sock, gathering.receive_buffer, send=False)
        return protocol
    raise OSError(f"no free UDP port on {address} in the configured range: {last_error}")


def divert(protocol: aioice_ice.StunProtocol, on_datagram: DatagramHandler) -> None:
    """Send RTP/RTCP (first byte 128–191, RFC 7983) to ``on_datagram``, before aioice.

    aioice would first try to parse every datagram as STUN (a raised ValueError per
    media packet), then queue it for aiortc's per-packet await chain. STUN (0–3) and
    DTLS (20–63) continue into aioice unchanged.
    """
    stun_received = protocol.datagram_received

    def datagram_received(data: bytes, addr: tuple[Any, ...]) -> None:
        if data and 127 < data[0] < 192:
            on_datagram(data, addr)
        else:
            stun_received(data, addr)

    setattr(protocol, "datagram_received", datagram_received)  # noqa: B010


def selected_protocol(pc: RTCPeerConnection) -> Any:
    """The aioice protocol (socket) of the nominated pair, or None: its ``transport``
    is the asyncio datagram transport, its ``datagram_received`` what reads it."""
    pair = _ice_connection(pc)._nominated.get(1)
    return None if pair is None else pair.protocol


def srtp_sessions(dtls: RTCDtlsTransport) -> tuple[Any, Any]:
    """The pylibsrtp (receive, send) sessions DTLS produced; (None, None) before that."""
    return dtls._rx_srtp, dtls._tx_srtp


def selected_pair(pc: RTCPeerConnection) -> SelectedPair | None:
    connection = _ice_connection(pc)
    pair = connection._nominated.get(1)
    if pair is None:
        return None
    return _describe(pc, pair)


def follow_pair(pc: RTCPeerConnection, addr: tuple[Any, ...]) -> SelectedPair | None:
    """The pair whose remote end is ``addr``, if ICE checks have validated it; it
    becomes aioice's selected pair.

    The peer may move its media to another valid pair mid-call: as controlling agent
    by nominating it (aioice then changes its own nominated pair), as controlled
    agent (Chrome does) by switching when the first stops answering — say, the
    direct path breaks and its TURN relay pair still works. Media from a validated
    pair is legitimate (RFC 8445 §7.3); anything else is not. Where the media went,
    consent freshness (RFC 7675: checked on the pair data is sent on) and DTLS go
    too: left on the broken pair, aioice's consent would fail and close a connection
    whose media still flows.
    """
    pair = ice_pairs.follow(_ice_connection(pc), addr)
    return None if pair is None else _describe(pc, pair)


def _describe(pc: RTCPeerConnection, pair: aioice_ice.CandidatePair) -> SelectedPair:
    transport = pair.protocol.transport
    fd = -1
    # A TURN allocation's transport reports the socket to the TURN server: not ours to use.
    if not isinstance(transport, aioice_turn.TurnTransport):
        sock = transport.get_extra_info("socket")
        if sock is not None:
            fd = sock.fileno()
    return SelectedPair(
        sendto=transport.sendto,
        remote_addr=pair.remote_addr,
        fd=fd,
        local_type=pair.local_candidate.type,
        remote_type=_signalled_type(pc, pair.remote_candidate),
    )


def _signalled_type(pc: RTCPeerConnection, candidate: Any) -> str:
    """The remote candidate's type as the peer signalled it.

    aioice takes the candidates of one m-line; a browser that gathers per m-line
    (bundlePolicy "balanced") may nominate one listed under another, which aioice then
    calls peer-reflexive although the SDP says what it is (a TURN relay, say).
    """
    text = _remote_sdp(pc)
    if candidate.type != "prflx" or text is None:
        return str(candidate.type)
    signalled = ice_pairs.signalled_candidates(text).get(ice_pairs.address(candidate))
    return "prflx" if signalled is None else str(signalled.type)


def silence_rtcp(transceiver: RTCRtpTransceiver) -> None:
    """Stop aiortc's own RTCP for a transceiver: the SFU originates RTCP itself.

    aiortc's sender would send sender reports with zero NTP time and counts for a
    stream whose packets it never saw; its receiver, empty receiver reports. Each also
    runs a loop that wakes every 0.5-1.5 s to build them: in a room of ten who all
    publish audio and video, 180 senders and 20 receivers, 200 wake-ups a second for
    nothing (7-22 % of the server's CPU per packet in 4x4 and 1x24 rooms, README
    "Performance"). Both loops are replaced, before aiortc starts them (once DTLS is
    up and the transceiver's direction negotiated), by a task that only waits to be
    cancelled and tells stop() it started and ended, as aiortc's own does.
    """

    async def no_rtcp(*args: Any) -> None:
        return None

    for part, class_name in ((transceiver.sender, "RTCRtpSender"),
                             (transceiver.receiver, "RTCRtpReceiver")):
        setattr(part, "_send_rtcp", no_rtcp)  # noqa: B010
        setattr(part, "_run_rtcp", _idle_rtcp_loop(  # noqa: B010
            getattr(part, f"_{class_name}__rtcp_started"),
            getattr(part, f"_{class_name}__rtcp_exited")))


def _idle_rtcp_loop(started: asyncio.Event,
                    exited: asyncio.Event) -> Callable[[], Coroutine[Any, Any, None]]:
    async def idle_rtcp_loop() -> None:
        started.set()
        # Until stop() cancels it; then end as aiortc's loop does, swallowing the
        # cancellation: stop() waits for ``exited``, not for the task.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.get_running_loop().create_future()
        exited.set()

    return idle_rtcp_loop


def decline_rtx(transceiver: RTCRtpTransceiver) -> None:
    """Leave RTX out of the answer about to be made for this transceiver.

    The SFU asks publishers for lost packets and forwards what comes back; without RTX
    negotiated, a browser retransmits on the original SSRC and sequence number (RFC
    4585), which needs no unwrapping. aiortc sets the codecs to answer with in
    setRemoteDescription: this runs between it and createAnswer.
    """
    transceiver._codecs = [c for c in transceiver._codecs
                           if not c.mimeType.lower().endswith("/rtx")]


def negotiated_codecs(transceiver: RTCRtpTransceiver) -> list[CodecInfo]:
    """Codecs both sides agreed on, with the payload types used on the wire."""
    return [
        CodecInfo(c.payloadType, c.mimeType, c.clockRate, dict(c.parameters))
        for c in transceiver._codecs
        if c.payloadType is not None
    ]


def negotiated_extensions(transceiver: RTCRtpTransceiver) -> dict[str, int]:
    """Header-extension URI → id, as negotiated on this transceiver."""
    return {ext.uri: ext.id for ext in transceiver._headerExtensions}


def sender_ssrc(transceiver: RTCRtpTransceiver) -> int:
    """The SSRC the server's offer announced for a send-only transceiver."""
    ssrc: int = transceiver.sender._ssrc
    return ssrc


def renew_sender(transceiver: RTCRtpTransceiver, track: MediaStreamTrack) -> RTCRtpSender:
    """Give a transceiver a fresh sender, to recycle its m-line for another track: the
    next offer announces the new sender's SSRC and msid on the same mid. Returns the
    old sender, for the caller to stop.

    aiortc keeps a transceiver's sender for life, and a sender starts once: the old
    one, stopped, would never send again, and its SSRC belongs to the departed track.
    """
    old = transceiver.sender
    sender = RTCRtpSender(track, old.transport)
    sender._stream_id = old._stream_id  # the connection's one stream, as aiortc gives it
    transceiver._RTCRtpTransceiver__sender = sender  # type: ignore[attr-defined]
    transceiver.receiver._set_rtcp_ssrc(sender._ssrc)
    return old


def retire_sender(sender: RTCRtpSender) -> Coroutine[Any, Any, None]:
    """Stop a sender for good: the returned coroutine ends its two tasks if it started,
    and from now on it never starts. aiortc starts the sender of every transceiver whose
    negotiated direction sends, after each description applied: a departed track's
    m-line still does until the subscriber answers the offer that makes it inactive,
    and a sender stopped before it started would start then and run until the
    connection closes."""

    async def never_send(parameters: Any) -> None:
        return None

    setattr(sender, "send", never_send)  # noqa: B010
    return sender.stop()


def renew_receiver(transceiver: RTCRtpTransceiver) -> RTCRtpReceiver:
    """Give a (client's) transceiver a fresh receiver, with no track yet; returns the
    old one, for ``stop_receiver``.

    aiortc keeps a transceiver's receiver for life and starts it once, registered for
    the SSRC of the first offer: when the offerer recycles the m-line for another
    source (another SSRC), the old receiver would route it nowhere, and aiortc fires
    no `track` event for a transceiver whose receiver has a track. With a fresh
    receiver the next setRemoteDescription makes a new track and fires `track`.
    """
    old = transceiver.receiver
    receiver = RTCRtpReceiver(transceiver.kind, old.transport)
    receiver._set_rtcp_ssrc(transceiver.sender._ssrc)
    transceiver._RTCRtpTransceiver__receiver = receiver  # type: ignore[attr-defined]
    return old


async def stop_receiver(receiver: RTCRtpReceiver) -> None:
    """Stop a receiver (its decoder thread and RTCP task) and end its track, even if
    it never started (then nothing else would ever end it)."""
    track = receiver.track
    await receiver.stop()
    if track is not None and track.readyState == "live":
        # What the decoder thread sends when it stops: recv() then ends the track.
        track._queue.put_nowait(None)  # type: ignore[attr-defined]


def remote_media_ssrcs(description_sdp: str) -> dict[str, int]:
    """mid → the primary (first) SSRC each m-line of a remote description announces."""
    parsed = sdp.SessionDescription.parse(description_sdp)
    result = {}
    for media in parsed.media:
        if media.rtp.muxId and media.ssrc:
            # With an FID group (media, rtx) the media SSRC comes first.
            fid = next((g for g in media.ssrc_group if g.semantic == "FID"), None)
            result[media.rtp.muxId] = int(fid.items[0]) if fid else media.ssrc[0].ssrc
    return result


def silent_mids(description_sdp: str) -> set[str]:
    """Mids of the m-lines on which the side that wrote a description sends nothing:
    rejected (port 0), or inactive or recvonly."""
    parsed = sdp.SessionDescription.parse(description_sdp)
    return {media.rtp.muxId for media in parsed.media if media.rtp.muxId and (
        media.port == 0 or media.direction in ("inactive", "recvonly"))}


def rejected_mids(description_sdp: str) -> set[str]:
    """Mids of the m-lines a description rejects (port 0, RFC 3264 §6), as a browser
    answers an m-line whose codecs it lacks; aiortc applies such an answer as if the
    m-line were accepted."""
    parsed = sdp.SessionDescription.parse(description_sdp)
    return {media.rtp.muxId for media in parsed.media if media.port == 0 and media.rtp.muxId}


def check_internals(pc: RTCPeerConnection) -> None:
    """Raise AssertionError naming the first internal this module needs that has moved.

    ``pc`` must have at least one transceiver and be connected.
    """
    dtls = dtls_transport(pc)
    certificates = getattr(pc, "_RTCPeerConnection__certificates", None)
    assert certificates, "RTCPeerConnection.__certificates is gone"
    assert all(hasattr(c, "_create_ssl_context") for c in certificates), (
        "RTCCertificate._create_ssl_context is gone")
    for owner, name in (
        (dtls, "_rx_srtp"),
        (dtls, "_tx_srtp"),
        (dtls.transport, "iceGatherer"),
        (dtls.transport.iceGatherer, "_connection"),
    ):
        assert hasattr(owner, name), f"{type(owner).__name__}.{name} is gone"
    connection = _ice_connection(pc)
    for name in (
        "_protocols", "_nominated", "_components", "_local_candidates",
        "_local_candidates_start", "_local_candidates_end", "_closing", "query_consent",
        "check_complete", "ice_controlling", "_check_list",
    ):
        assert hasattr(connection, name), f"aioice Connection.{name} is gone"
    assert connection._nominated.get(1) is not None, "no nominated pair for component 1"
    assert hasattr(aioice_ice.StunProtocol, "datagram_received")
    for transceiver in pc.getTransceivers():
        for name in ("_codecs", "_headerExtensions"):
            assert hasattr(transceiver, name), f"RTCRtpTransceiver.{name} is gone"
        # What renew_sender and renew_receiver replace: the objects behind the properties.
        assert getattr(transceiver, "_RTCRtpTransceiver__sender", None) is transceiver.sender, (
            "RTCRtpTransceiver.__sender is gone")
        assert getattr(transceiver, "_RTCRtpTransceiver__receiver", None) is (
            transceiver.receiver), "RTCRtpTransceiver.__receiver is gone"
        assert hasattr(transceiver.sender, "_ssrc"), "RTCRtpSender._ssrc is gone"
        assert hasattr(transceiver.sender, "_stream_id"), "RTCRtpSender._stream_id is gone"
        assert hasattr(transceiver.receiver, "_set_rtcp_ssrc"), (
            "RTCRtpReceiver._set_rtcp_ssrc is gone")
        track = transceiver.receiver.track
        assert track is None or hasattr(track, "_queue"), "RemoteStreamTrack._queue is gone"
        for part, class_name in ((transceiver.sender, "RTCRtpSender"),
                                 (transceiver.receiver, "RTCRtpReceiver")):
            for name in ("_send_rtcp", "_run_rtcp", f"_{class_name}__rtcp_started",
                         f"_{class_name}__rtcp_exited", f"_{class_name}__rtcp_task"):
                assert hasattr(part, name), f"{class_name}.{name} is gone"
    rx, tx = srtp_sessions(dtls)
    for session in (rx, tx):
        assert session is not None and hasattr(session, "_srtp"), "pylibsrtp Session._srtp"


def codec_preferences(kind: str, codec: CodecInfo) -> list[RTCRtpCodecCapability]:
    """aiortc's codec capabilities compatible with the publisher's codec (no RTX)."""
    remote = RTCRtpCodecParameters(
        mimeType=codec.mime_type,
        clockRate=codec.clock_rate,
        payloadType=codec.payload_type,
        parameters=dict(codec.parameters),
    )
    common = find_common_codecs(CODECS[kind], [remote])
    capabilities = [
        c for c in RTCRtpSender.getCapabilities(kind).codecs
        if any(
            c.mimeType.lower() == m.mimeType.lower() and c.parameters == m.parameters
            for m in common
        )
    ]
    if not capabilities:
        raise ValueError(f"no codec compatible with the publisher's {codec.mime_type}")
    return capabilities
