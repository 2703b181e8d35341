"""A load-generator participant: aiortc for ICE and DTLS only, SRTP in and out by hand.

Publishing replays the recording, re-stamped and SRTP-protected once before the
timed phase, at its recorded pace times ``rate``. Receiving logs the clear RTP header
of every packet (SSRC, sequence number, arrival time) and decrypts one packet in
``SAMPLE_EVERY`` to check it and to identify which sent packet it is (bench/analysis.py).
Once connected, a subscribe connection's socket is read in C (bench/_receiver.pyx:
recvmmsg, one record per packet, no Python object, the kernel's arrival time) when
that extension is built and the event loop is asyncio's own (uvloop's UDP transport
cannot stop reading); else in Python, one callback per packet. Above real time (the
saturation sweep) the C path reads every such socket once per POLL_S rather than when
each datagram arrives: woken per datagram, the generator spent as much CPU as the
server it measured, and there the two share the machine's cores. At real time it reads
on arrival, as a receiver would (a poll every millisecond would cost more than the
packets).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

import sdp_transform  # type: ignore[import-untyped]
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.rtcrtpparameters import RTCRtpCodecCapability

from sfu import rtp
from sfu.transport import internals
from sfu.transport.peer import SilentTrack
from sfu.transport.shared_port import set_buffers

from .recording import Recording

SAMPLE_EVERY = 64
PACING_SLOT_S = 0.001
POLL_S = 0.001
RECEIVE_BUFFER = 4 << 20  # a poll period of the highest rate, with room for a late one

_receiver: Any
try:
    from . import _receiver
except ImportError:  # not built (SFU_PUREPYTHON): receive in Python
    _receiver = None


def c_receive_available() -> bool:
    return _receiver is not None

OPUS = RTCRtpCodecCapability(mimeType="audio/opus", clockRate=48000, channels=2)
VP8 = RTCRtpCodecCapability(mimeType="video/VP8", clockRate=90000)


@dataclass
class ReceivedStream:
    """Everything one subscriber got on one SSRC."""

    seqs: array = field(default_factory=lambda: array("H"))  # type: ignore[type-arg]
    times: array = field(default_factory=lambda: array("d"))  # type: ignore[type-arg]
    octets: int = 0
    # (index into seqs, decrypted payload) of sampled packets
    samples: list[tuple[int, bytes]] = field(default_factory=list)
    sample_failures: int = 0


@dataclass
class SentStream:
    kind: str
    seq_base: int
    times: array = field(default_factory=lambda: array("d"))  # type: ignore[type-arg]
    positions: array = field(default_factory=lambda: array("I"))  # type: ignore[type-arg]


class MediaConnection:
    """One peer connection of the load generator."""

    def __init__(self, gathering: internals.HostGathering) -> None:
        self.pc = RTCPeerConnection(
            RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        )
        self._gathering = gathering
        self.received: dict[int, ReceivedStream] = {}
        self.rtcp_packets = 0
        self._rx: Any = None
        self._pair: internals.SelectedPair | None = None
        self._prepared = False
        self._receiver: Any = None  # sfu_bench._receiver.Receiver once reading in C
        self._reader_fd = -1
        self._samples: list[tuple[int, bytes]] = []  # (record index, datagram)

    def prepare(self) -> None:
        """Once transceivers exist: our host candidates, and SRTP diverted to us."""
        if not self._prepared:
            internals.prepare_gathering(self.pc, self._gathering, self._datagram_received)
            self._prepared = True
        for transceiver in self.pc.getTransceivers():
            internals.silence_rtcp(transceiver)

    async def wait_connected(self, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while self.pc.connectionState != "connected":
                if self.pc.connectionState in ("failed", "closed"):
                    raise ConnectionError(f"peer connection {self.pc.connectionState}")
                await asyncio.sleep(0.02)
        dtls = internals.dtls_transport(self.pc)
        self._rx, _ = internals.srtp_sessions(dtls)
        self._pair = internals.selected_pair(self.pc)

    def receive_in_c(self, poll: bool = False) -> str:
        """Read this connection's socket with bench/_receiver.pyx from now on, on
        arrival or with ``poll`` every POLL_S. Returns how it is read: "c", "c-polled",
        or "python" (Python keeps reading) when the extension is not built or the loop
        cannot hand over."""
        protocol = internals.selected_protocol(self.pc)
        transport: Any = getattr(protocol, "transport", None)
        if _receiver is None or not hasattr(transport, "pause_reading"):
            return "python"
        transport.pause_reading()  # asyncio stops reading the socket; we read a dup
        sock = transport.get_extra_info("socket")
        set_buffers(sock, RECEIVE_BUFFER, send=False)
        self._reader_fd = os.dup(sock.fileno())
        self._receiver = _receiver.Receiver(self._reader_fd, SAMPLE_EVERY)
        self._stun_received = protocol.datagram_received
        loop = asyncio.get_running_loop()
        if not poll:
            loop.add_reader(self._reader_fd, self._drain)
            return "c"
        _POLLED.add(self)
        global _poller
        if _poller is None or _poller.done():
            _poller = loop.create_task(_poll())
        return "c-polled"

    def _drain(self) -> None:
        others, samples = self._receiver.drain()
        for data, addr in others:  # STUN, DTLS, RTCP: where they went before
            self._stun_received(data, addr)
        self._samples += samples

    def collect(self) -> None:
        """Turn the C records into ``received`` (after the run)."""
        if self._receiver is None:
            return
        self._drain()
        raw_ssrcs, raw_seqs, raw_lengths, raw_times = self._receiver.records()
        ssrcs, seqs, lengths, times = array("I"), array("H"), array("H"), array("d")
        ssrcs.frombytes(raw_ssrcs)
        seqs.frombytes(raw_seqs)
        lengths.frombytes(raw_lengths)
        times.frombytes(raw_times)
        position: dict[int, int] = {}  # record index → index in its stream
        for i, ssrc in enumerate(ssrcs):
            stream = self.received.get(ssrc)
            if stream is None:
                stream = self.received[ssrc] = ReceivedStream()
            position[i] = len(stream.seqs)
            stream.seqs.append(seqs[i])
            stream.times.append(times[i])
            stream.octets += lengths[i]
        for index, datagram in self._samples:
            self._sample(self.received[ssrcs[index]], position[index], datagram)
        self._samples = []

    def tx_session(self) -> Any:
        return internals.srtp_sessions(internals.dtls_transport(self.pc))[1]

    def sendto(self, datagram: bytes) -> None:
        assert self._pair is not None
        self._pair.sendto(datagram, self._pair.remote_addr)

    def _datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) < 12:
            return
        if 192 <= data[1] <= 223:
            self.rtcp_packets += 1
            return
        ssrc = int.from_bytes(data[8:12], "big")
        stream = self.received.get(ssrc)
        if stream is None:
            stream = self.received[ssrc] = ReceivedStream()
        index = len(stream.seqs)
        stream.seqs.append((data[2] << 8) | data[3])
        stream.times.append(time.monotonic())
        stream.octets += len(data)
        if index % SAMPLE_EVERY == 0:
            self._sample(stream, index, data)

    def _sample(self, stream: ReceivedStream, index: int, data: bytes) -> None:
        """Decrypt one packet: it must authenticate, and its payload tells which sent
        packet it was."""
        if self._rx is None:
            return
        try:
            plain = self._rx.unprotect(data)
        except Exception:
            stream.sample_failures += 1
            return
        layout = rtp.parse_header(plain)
        if isinstance(layout, rtp.HeaderLayout):
            stream.samples.append((index, plain[layout.payload_offset:layout.payload_end]))
        else:
            stream.sample_failures += 1

    async def close(self) -> None:
        if self._reader_fd >= 0:
            if self in _POLLED:
                _POLLED.discard(self)
            else:
                asyncio.get_running_loop().remove_reader(self._reader_fd)
            os.close(self._reader_fd)
            self._reader_fd = -1
        await self.pc.close()


_POLLED: set[MediaConnection] = set()
_poller: asyncio.Task[None] | None = None


async def _poll() -> None:
    """Read every C-read socket each POLL_S while any is left."""
    while _POLLED:
        await asyncio.sleep(POLL_S)
        for connection in list(_POLLED):
            connection._drain()


# Simulcast layers the load generator publishes: of each video frame, the first packet,
# the first two, all (about the share of packets of 1/4, 1/2 and full resolution).
LAYER_PACKETS_PER_FRAME = (1, 2, 1 << 30)


class Publisher:
    """Replays the recording on a publish connection; with ``layers`` > 1, its video as
    that many simulcast layers (an ``a=ssrc-group:SIM`` in the offer), each a subset of
    every frame's packets (LAYER_PACKETS_PER_FRAME), each frame's first packet in all
    of them, so every layer has the keyframes."""

    def __init__(self, connection: MediaConnection, layers: int = 1,
                 audio_only: bool = False) -> None:
        self.connection = connection
        self.audio_only = audio_only
        self.sent: dict[str, SentStream] = {}
        self._plan: list[tuple[float, bytes, str]] = []
        self.layers = layers
        self.layer_ssrcs: list[int] = []  # after the primary SSRC, set by offer()

    def add_transceivers(self) -> None:
        pc = self.connection.pc
        for kind, codec in (("audio", OPUS), ("video", VP8)):
            if kind == "video" and self.audio_only:
                continue
            transceiver = pc.addTransceiver(SilentTrack(kind), direction="sendonly")
            transceiver.setCodecPreferences([codec])

    def offer(self, offer_sdp: str) -> str:
        """The offer to send: with layers, the video m-line's extra SSRCs and their
        SIM group (aiortc writes neither)."""
        if self.layers == 1:
            return offer_sdp
        parsed = sdp_transform.parse(offer_sdp)
        video = next(m for m in parsed["media"] if m["type"] == "video")
        primary = int(video["ssrcs"][0]["id"])
        cname = video["ssrcs"][0]["value"]
        self.layer_ssrcs = [random.getrandbits(32) for _ in range(self.layers - 1)]
        video["ssrcs"] += [{"id": s, "attribute": "cname", "value": cname}
                           for s in self.layer_ssrcs]
        video["ssrcGroups"] = [{"semantics": "SIM", "ssrcs": " ".join(
            str(s) for s in [primary, *self.layer_ssrcs])}]
        written: str = sdp_transform.write(parsed)
        return written

    def plan(self, recording: Recording, seconds: float, rate: float) -> None:
        """Re-stamp and protect every packet of the run now, before anything is timed."""
        tx = self.connection.tx_session()
        streams = {}
        level_id = 0  # the audio level extension (RFC 6464), when the answer took it
        for transceiver in self.connection.pc.getTransceivers():
            codecs = internals.negotiated_codecs(transceiver)
            streams[transceiver.kind] = (internals.sender_ssrc(transceiver),
                                         codecs[0].payload_type)
            if transceiver.kind == "audio":
                level_id = internals.negotiated_extensions(transceiver).get(
                    rtp.URI_AUDIO_LEVEL, 0)
        # Every audio packet says "voice, -40 dBov", as a browser's do while one talks:
        # the server's active-speaker counting runs on all of them.
        level_block = bytes([0xBE, 0xDE, 0, 1, level_id << 4, 0x80 | 40, 0, 0])
        # Each stream sent: kind, and for video layers its index; "video" is the top.
        layer_keys = [f"video{k}" for k in range(self.layers - 1)]
        ssrcs = dict(zip(layer_keys, self.layer_ssrcs, strict=True))
        counts = {key: 0 for key in [*streams, *layer_keys]}
        for key in counts:
            self.sent[key] = SentStream(key[:5], random.getrandbits(16))
        limits = dict(zip(layer_keys, LAYER_PACKETS_PER_FRAME, strict=False))
        frame_timestamp, in_frame = -1, 0
        plan = []
        total_us = seconds * 1e6 * rate  # recording time covered by the run
        for offset, position, packet, timestamp in recording.looped(total_us):
            if packet.kind not in streams:
                continue
            ssrc, payload_type = streams[packet.kind]
            keys = [packet.kind]
            if packet.kind == "video" and self.layers > 1:
                in_frame = in_frame + 1 if timestamp == frame_timestamp else 0
                frame_timestamp = timestamp
                keys += [key for key, limit in limits.items() if in_frame < limit]
            for key in keys:
                sent = self.sent[key]
                seq = (sent.seq_base + counts[key]) & 0xFFFF
                counts[key] += 1
                # A layer's frame ends at its last packet.
                marker = packet.marker or in_frame + 1 == limits.get(key, 0)
                extended = key == "audio" and level_id > 0
                header = bytes([0x90 if extended else 0x80,
                                (0x80 if marker else 0) | payload_type])
                header += seq.to_bytes(2, "big") + timestamp.to_bytes(4, "big")
                header += ssrcs.get(key, ssrc).to_bytes(4, "big")
                if extended:
                    header += level_block
                plan.append((offset / rate / 1e6, tx.protect(header + packet.payload), key))
                sent.positions.append(position)
        self._plan = plan

    async def run(self) -> None:
        """Send the plan on time; records the actual send time of every packet.

        Packets due within the next PACING_SLOT_S go out together (a browser's pacer
        sends in bursts of a few milliseconds): at high replay rates, one timer per
        millisecond rather than one per packet."""
        start = time.monotonic()
        sendto = self.connection.sendto
        sent = self.sent
        behind = 0
        for due, datagram, kind in self._plan:
            now = time.monotonic() - start
            if due > now + PACING_SLOT_S:
                behind = 0
                await asyncio.sleep(due - now)
            else:
                behind += 1
                if behind % 32 == 0:  # running late: still let the receivers in
                    await asyncio.sleep(0)
            sendto(datagram)
            sent[kind].times.append(time.monotonic())

    @property
    def planned(self) -> int:
        return len(self._plan)


def set_remote(pc: RTCPeerConnection, sdp: str, kind: str) -> Any:
    return pc.setRemoteDescription(RTCSessionDescription(sdp, kind))
