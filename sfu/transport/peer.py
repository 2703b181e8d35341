"""Per-participant aiortc peer connections whose media goes through the forwarder.

Two connections per participant (docs/architecture.md, "Ingress"): the client offers its send-only
tracks on the *publish* connection; the server offers send-only transceivers for the
participant's subscriptions on the *subscribe* connection. Neither ever carries media
through aiortc's RTCRtpReceiver/RTCRtpSender.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiortc import (
    MediaStreamTrack,
    RTCDataChannel,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.exceptions import InvalidStateError
from aiortc.sdp import candidate_from_sdp
from av.frame import Frame

from sfu import rtp
from sfu.fastpath import Forwarder
from sfu.media import CodecInfo, DownTrack, PublishedMedia
from sfu.transport import internals, sdp_extras
from sfu.transport.internals import HostGathering
from sfu.transport.turn_pool import TurnPool, TurnServer

logger = logging.getLogger(__name__)


def now_us() -> int:
    return time.monotonic_ns() // 1000


class PeerTransport:
    """One peer connection, its ICE/DTLS endpoint, and the divert into the forwarder."""

    role = "peer"  # "publish" or "subscribe" in the subclasses

    def __init__(
        self,
        endpoint: int,
        forwarder: Forwarder,
        gathering: HostGathering,
        on_connection_state: Callable[[PeerTransport, str], None],
        drops: Counter[str] | None = None,
    ) -> None:
        self.endpoint = endpoint
        # Media dropped before the forwarder, by reason (shared server-wide).
        self.drops: Counter[str] = drops if drops is not None else Counter()
        self.pc = internals.new_peer_connection()
        self._forwarder = forwarder
        self._gathering = gathering
        self._on_connection_state = on_connection_state
        self._remote_addr: tuple[Any, ...] | None = None
        self.selected: internals.SelectedPair | None = None
        self.turn_pool: TurnPool | None = None  # told when a selected pair is a relay
        self._relay: TurnServer | None = None
        # Media from an address other than the ICE-selected one (RFC 8445 §7.3: only
        # validated pairs carry media).
        self.drops_unvalidated_source = 0
        self.path_changes = 0  # times the peer moved its media to another valid pair
        self.connected = asyncio.Event()
        self.closing = False
        self.created = time.monotonic()
        self.pc.on("connectionstatechange", self._connection_state_changed)

    def _prepare(self) -> None:
        internals.prepare_gathering(self.pc, self._gathering, self._datagram_received)

    def _datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if self._remote_addr is not None and addr[:2] != self._remote_addr[:2] and (
                not self._follow(addr)):
            self.drops_unvalidated_source += 1
            self.drops["unvalidated_source"] += 1
            return
        self._forwarder.handle_packet(self.endpoint, data, now_us())

    def _follow(self, addr: tuple[Any, ...]) -> bool:
        """Media from another address: if ICE validated that pair, the peer moved its
        media there (its own failover, e.g. from a broken direct path to its TURN
        relay); send there too from now on, and check ICE consent there. Checked only
        when the address changes."""
        if not self.connected.is_set():
            return False
        pair = internals.follow_pair(self.pc, addr)
        if pair is None:
            return False
        logger.info("endpoint %d: media moved to %s (%s → %s)", self.endpoint,
                    pair.remote_addr, pair.local_type, pair.remote_type)
        rx, tx = internals.srtp_sessions(internals.dtls_transport(self.pc))
        self._select(pair)
        self._remote_addr = pair.remote_addr
        self._forwarder.add_endpoint(self.endpoint, rx, tx, pair.sendto, pair.fd,
                                     pair.remote_addr)
        self.path_changes += 1
        return True

    async def _connection_state_changed(self) -> None:
        state = self.pc.connectionState
        if state == "connected" and not self.connected.is_set():
            dtls = internals.dtls_transport(self.pc)
            rx, tx = internals.srtp_sessions(dtls)
            pair = internals.selected_pair(self.pc)
            if rx is None or tx is None or pair is None:
                logger.warning("endpoint %d connected without SRTP keys or pair", self.endpoint)
                return
            self._select(pair)
            self._remote_addr = pair.remote_addr
            self._forwarder.add_endpoint(
                self.endpoint, rx, tx, pair.sendto, pair.fd, pair.remote_addr
            )
            self.connected.set()
        elif state in ("failed", "closed"):
            self._forwarder.remove_endpoint(self.endpoint)
            self._select(None)
        self._on_connection_state(self, state)

    def _select(self, pair: internals.SelectedPair | None) -> None:
        """The pair media goes over (None: none any more); a relay's is counted by the
        TURN pool, whose load it is."""
        if self._relay is not None:
            TurnPool.relay_ended(self._relay)
            self._relay = None
        if pair is not None:
            self.selected = pair
            if pair.remote_type == "relay" and self.turn_pool is not None:
                self._relay = self.turn_pool.relay_started(str(pair.remote_addr[0]))

    @property
    def is_closed(self) -> bool:
        return bool(self.pc.connectionState == "closed")

    async def add_candidate(self, candidate: dict[str, Any]) -> None:
        """A trickled remote candidate (the client's RTCIceCandidate as JSON); raises
        ValueError when it is not an ICE candidate."""
        text = str(candidate["candidate"]).removeprefix("candidate:")
        if not text:
            return  # end of candidates
        try:
            parsed = candidate_from_sdp(text)
        except (ValueError, IndexError):
            raise ValueError("candidate is not an ICE candidate") from None
        parsed.sdpMid = candidate.get("sdpMid")
        parsed.sdpMLineIndex = candidate.get("sdpMLineIndex")
        await self.pc.addIceCandidate(parsed)

    async def close(self) -> None:
        self.closing = True  # a "closed" state from here on is ours, not a failure
        self._forwarder.remove_endpoint(self.endpoint)
        self._select(None)
        # Shielded: when the peer closed first, aiortc is already closing the connection
        # itself, and this call waits on that close's future, unshielded; cancelling
        # this caller (a leave cut short by the server stopping) would cancel the
        # future, and aiortc's own close would then fail setting it.
        await asyncio.shield(self.pc.close())
        # aiortc starts a transceiver's receiver and sender once DTLS connects; when the
        # peer's own close races ours, that can come after close() stopped them, and
        # they would run on (a task and a decoder thread each) with the closed
        # connection. Stopping again is a no-op for those already stopped.
        for transceiver in self.pc.getTransceivers():
            await transceiver.receiver.stop()
            await transceiver.sender.stop()


# The data channels a client may open on its publish connection (docs/protocol.md,
# "Data channels"), and how much unsent data one may hold before messages to it drop.
DATA_LABELS = ("reliable", "lossy")
MAX_DATA_BUFFERED = 1 << 20
DataHandler = Callable[[str, "str | bytes"], None]  # (label, message)


class PublishTransport(PeerTransport):
    """The client offers its tracks (and its data channels); the server answers
    receive-only. Data channels go both ways: the room's messages come back on them."""

    role = "publish"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._published_mids: set[str] = set()
        self.accept_simulcast = True  # else a simulcast offer gives its first layer
        self.on_data: DataHandler = lambda label, message: None
        self._channels: dict[str, RTCDataChannel] = {}
        self.pc.on("datachannel", self._data_channel)

    def _data_channel(self, channel: RTCDataChannel) -> None:
        label = channel.label
        if label not in DATA_LABELS or label in self._channels:
            self.drops["data_channel_refused"] += 1
            channel.close()
            return
        self._channels[label] = channel
        channel.on("message", lambda message: self.on_data(label, message))

    def send_data(self, label: str, text: str) -> bool:
        """Send on the participant's channel; False when it has none open, or holds
        too much unsent (a slow receiver loses messages, the server no memory)."""
        channel = self._channels.get(label)
        if (channel is None or channel.readyState != "open"
                or channel.bufferedAmount > MAX_DATA_BUFFERED):
            return False
        channel.send(text)
        return True

    def forget(self, mid: str) -> None:
        """Its track was unpublished: a later offer sending on the m-line again
        publishes a new track there."""
        self._published_mids.discard(mid)

    async def answer(self, offer_sdp: str) -> tuple[str, list[PublishedMedia]]:
        """Apply an offer; return the answer and the media it newly publishes. Simulcast
        video (RID layers, or an SSRC group) is received as layers when accepted, else
        as its first stream."""
        await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        self._prepare()
        for transceiver in self.pc.getTransceivers():
            internals.silence_rtcp(transceiver)
            internals.decline_rtx(transceiver)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        answer_sdp: str = self.pc.localDescription.sdp
        ssrcs = internals.remote_media_ssrcs(offer_sdp)
        simulcast = sdp_extras.offered_simulcast(offer_sdp) if self.accept_simulcast else {}
        if any(layers.rids for layers in simulcast.values()):
            answer_sdp = sdp_extras.accept_simulcast(offer_sdp, answer_sdp)
        media = []
        for transceiver in self.pc.getTransceivers():
            mid = transceiver.mid
            layers = simulcast.get(mid or "")
            if mid is None or mid in self._published_mids or (
                    mid not in ssrcs and layers is None):
                continue
            if transceiver.currentDirection not in ("recvonly", "sendrecv"):
                continue
            codecs = [
                c for c in internals.negotiated_codecs(transceiver)
                if not c.mime_type.lower().endswith("/rtx")
            ]
            if not codecs:
                continue
            self._published_mids.add(mid)
            extensions = internals.negotiated_extensions(transceiver)
            if layers is not None and layers.rids:
                extensions[rtp.URI_RID] = layers.rid_ext_id
            media.append(
                PublishedMedia(
                    mid=mid,
                    kind=transceiver.kind,
                    ssrc=layers.ssrcs[0] if layers and layers.ssrcs else ssrcs.get(mid, 0),
                    codec=codecs[0],
                    extensions=extensions,
                    rids=layers.rids if layers else (),
                    layer_ssrcs=layers.ssrcs if layers else (),
                )
            )
        return answer_sdp, media


class SilentTrack(MediaStreamTrack):
    """A track that never produces a frame, for send-only transceivers whose media the
    forwarder sends. Without a track aiortc's sender polls for one every 20 ms; with
    this one it waits on recv() forever, at no cost."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    async def recv(self) -> Frame:
        await asyncio.Event().wait()
        raise ConnectionError("unreachable: SilentTrack never produces a frame")


# The id subscribers are offered for the transport-wide sequence number: aiortc uses 1–3.
TWCC_EXTENSION_ID = 5


class SubscribeTransport(PeerTransport):
    """The server offers send-only transceivers; the client answers.

    A departed track's m-line is recycled (docs/protocol.md, "Recycled m-lines"): once
    the subscriber has answered it inactive, the next track of the same kind takes it —
    the same mid and position, with a fresh sender (a new SSRC and msid). So a
    subscriber's offer holds at most as many m-lines as it had tracks at once (plus
    those whose track left during the last negotiation), however many come and go.
    """

    role = "subscribe"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rejected_mids: set[str] = set()  # m-lines the last answer rejected
        # Every m-line an answer ever rejected (port 0): a browser stopped its side of
        # it, so it is never recycled on the same mid.
        self._refused_mids: set[str] = set()
        self._stopping: set[asyncio.Task[None]] = set()  # senders being stopped
        self.recycled = 0  # m-lines taken over by another track
        # Slot → the transceiver a subscription sends on: the router holds slot numbers,
        # never aiortc objects.
        self._slots: dict[int, RTCRtpTransceiver] = {}
        self._next_slot = 0
        self.offer_twcc = True  # offer transport-wide congestion control
        self._offer_sdp = ""  # the last offer, as sent (with transport-cc)
        self._answer_sdp = ""  # the last answer, as received

    def add_track(self, kind: str, codec: CodecInfo) -> int:
        """A slot for a new subscription: a send-only transceiver that offers exactly
        the publisher's codec, on a departed track's m-line when one of this kind is
        free, else on a new m-line."""
        self._next_slot += 1
        self._slots[self._next_slot] = self._add_transceiver(kind, codec)
        return self._next_slot

    def mid(self, slot: int) -> str | None:
        """The slot's m-line id: None until an offer has carried it."""
        mid: str | None = self._slots[slot].mid
        return mid

    def direction(self, slot: int) -> str:
        direction: str = self._slots[slot].direction
        return direction

    def _add_transceiver(self, kind: str, codec: CodecInfo) -> RTCRtpTransceiver:
        preferences = internals.codec_preferences(kind, codec)
        transceiver = self._free(kind)
        if transceiver is None:
            transceiver = self.pc.addTransceiver(SilentTrack(kind), direction="sendonly")
        else:
            for slot in [s for s, t in self._slots.items() if t is transceiver]:
                del self._slots[slot]  # the departed track's
            self._stop_sender(internals.renew_sender(transceiver, SilentTrack(kind)))
            transceiver.direction = "sendonly"
            self.recycled += 1
        transceiver.setCodecPreferences(preferences)
        internals.silence_rtcp(transceiver)
        self._prepare()
        return transceiver

    def _free(self, kind: str) -> RTCRtpTransceiver | None:
        """A transceiver of this kind whose track left and whose m-line the subscriber
        has since answered inactive: its side of the m-line is idle, so a new track there
        is a new `track` event (a browser fires one when an m-line's direction comes
        back to receiving, not when only its SSRC changes)."""
        for transceiver in self.pc.getTransceivers():
            if (transceiver.kind == kind and transceiver.mid is not None
                    and transceiver.direction == "inactive"
                    and transceiver.currentDirection == "inactive"
                    and transceiver.mid not in self._refused_mids):
                return transceiver
        return None

    def stop_track(self, slot: int) -> None:
        """The track left: its m-line goes inactive in the next offer (to be recycled
        once answered), and its sender's tasks end now."""
        transceiver = self._slots[slot]  # kept until the m-line is recycled
        transceiver.direction = "inactive"
        self._stop_sender(transceiver.sender)

    def _stop_sender(self, sender: RTCRtpSender) -> None:
        task = asyncio.create_task(internals.retire_sender(sender))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    @property
    def has_media(self) -> bool:
        """Whether an offer would carry any m-line."""
        return bool(self.pc.getTransceivers())

    @property
    def local_sdp(self) -> str:
        """The last offer made (to send again when it may have been lost)."""
        return self._offer_sdp

    async def create_offer(self) -> str | None:
        """A new offer, offering transport-wide congestion control besides what aiortc
        offers; None when the connection closed meanwhile."""
        try:
            await self.pc.setLocalDescription(await self.pc.createOffer())
        except InvalidStateError:
            return None
        self._offer_sdp = self.pc.localDescription.sdp
        if self.offer_twcc:
            self._offer_sdp = sdp_extras.offer_transport_cc(self._offer_sdp, TWCC_EXTENSION_ID)
        return self._offer_sdp

    async def apply_answer(self, answer_sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))
        self._answer_sdp = answer_sdp
        self._rejected_mids = internals.rejected_mids(answer_sdp)
        self._refused_mids |= self._rejected_mids

    def down_track(self, slot: int) -> DownTrack | None:
        """The negotiated parameters of a slot, once the answer is applied; None
        when the answer took none of its codecs or rejected its m-line (port 0, as a
        browser answers an m-line whose codecs it lacks: aiortc does not look)."""
        transceiver = self._slots[slot]
        codecs = internals.negotiated_codecs(transceiver)
        media = [c for c in codecs if not c.mime_type.lower().endswith("/rtx")]
        if transceiver.mid is None or not media or transceiver.mid in self._rejected_mids:
            return None
        extensions = internals.negotiated_extensions(transceiver)
        twcc_id = sdp_extras.answered_extension(self._answer_sdp, transceiver.mid, rtp.URI_TWCC)
        if twcc_id:  # aiortc does not know the extension: the answer's text says
            extensions[rtp.URI_TWCC] = twcc_id
        return DownTrack(
            mid=transceiver.mid,
            ssrc=internals.sender_ssrc(transceiver),
            payload_type=media[0].payload_type,
            extensions=extensions,
        )

