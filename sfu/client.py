"""A Python participant built on aiortc: join a room, publish tracks, receive others'.

For backends (bots, recorders) and for tests. Media goes through aiortc's own
encoders and decoders here: this is a client, not the SFU.

    client = Client("ws://127.0.0.1:8080/ws", room="demo", name="bot")
    await client.join()
    await client.publish([VideoStreamTrack()], data=True)
    info, track = await client.next_track()
    frame = await track.recv()
    await client.send_data({"text": "hi"}, topic="chat")
    message = await client.next_data()  # {"from", "payload", "topic"?, "reliable"}
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiortc import (
    MediaStreamTrack,
    RTCBundlePolicy,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.contrib.media import MediaRelay
from aiortc.exceptions import InvalidStateError

from sfu.control import codec
from sfu.transport import internals
from sfu.transport.internals import HostGathering, prepare_gathering

# A client receives every other participant's media on one socket, in bursts when the
# server has read a batch, while its own event loop may be busy decoding. With aioice's
# 256 KiB buffer an aiortc client decoding three videos lost ~1,000 datagrams in 30 s to
# a full buffer (ss -uamn: drops); Chromium asks for 1 MiB.
CLIENT_RECEIVE_BUFFER_BYTES = 2 << 20

# Errors that end the session (docs/protocol.md, "Error codes"): requests under way fail.
SESSION_ENDING = frozenset({"replaced", "kicked", "room_closed", "room_moved"})


def pattern_track() -> MediaStreamTrack:
    """A video track to publish when there is no camera: aiortc's green test frames."""
    return VideoStreamTrack()


class ServerError(RuntimeError):
    """The server answered a request with ``error``."""

    def __init__(self, message: dict[str, Any]) -> None:
        super().__init__(f"{message.get('code')}: {message.get('message')}")
        self.message = message


@dataclass(frozen=True)
class RemoteTrack:
    mid: str
    track_id: str
    participant: str
    kind: str


class Client:
    def __init__(
        self,
        url: str,
        *,
        room: str,
        name: str,
        token: str | None = None,
        binary: bool = False,
        host_addresses: tuple[str, ...] = ("127.0.0.1",),
        nat_type: str | None = None,
        relay_only: bool = False,
    ) -> None:
        """``binary`` speaks msgpack instead of JSON; ``host_addresses`` are the local
        addresses ICE gathers on (aioice alone would skip loopback); ``nat_type`` is what
        a NAT test found (``NatReport.nat_type``), for the server's traversal statistics;
        ``relay_only`` connects through the TURN servers `joined` names only (aiortc
        uses the first), as a browser with ``iceTransportPolicy: "relay"``."""
        self.url = url
        self.room = room
        self.name = name
        self.token = token
        self.binary = binary
        self.nat_type = nat_type
        self.relay_only = relay_only
        self._gathering = HostGathering(host_addresses, "", 20000, 29999,
                                        receive_buffer=CLIENT_RECEIVE_BUFFER_BYTES)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        # Server offers, each with the restart epoch it arrived in: an offer sent
        # before a `restarted` reply belongs to connections that are gone.
        self._offers: asyncio.Queue[tuple[int, dict[str, Any]]] = asyncio.Queue()
        self._epoch = 0
        self._restarting = False
        self._published: list[MediaStreamTrack] = []
        self._sources: list[str] | None = None  # of the published tracks, in order
        self._data = False  # data channels wanted (again after a restart)
        self._channels: dict[str, RTCDataChannel] = {}
        self.data: asyncio.Queue[dict[str, Any]] = asyncio.Queue()  # messages received
        self._relay = MediaRelay()
        self._offer_task: asyncio.Task[None] | None = None
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.tracks: asyncio.Queue[tuple[RemoteTrack, MediaStreamTrack]] = asyncio.Queue()
        self.mids: dict[str, RemoteTrack] = {}
        self.ice_servers: list[RTCIceServer] = []
        self.participant_id: str | None = None
        self.publish_pc: RTCPeerConnection | None = None
        self.subscribe_pc: RTCPeerConnection | None = None

    async def join(self) -> dict[str, Any]:
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(self.url)
        self._reader = asyncio.create_task(self._read_loop())
        self._offer_task = asyncio.create_task(self._offer_loop())
        message: dict[str, Any] = {"type": "join", "room": self.room, "name": self.name}
        if self.token is not None:
            message["token"] = self.token
        if self.nat_type is not None:
            message["nat_type"] = self.nat_type
        joined = await self.request(message)
        self.participant_id = joined["participant"]["id"]
        self._take_ice_servers(joined)
        return joined

    def _take_ice_servers(self, message: dict[str, Any]) -> None:
        self.ice_servers = [
            RTCIceServer(urls=s["urls"], username=s.get("username"),
                         credential=s.get("credential"))
            for s in message.get("ice_servers", [])
        ]

    async def publish(self, tracks: list[MediaStreamTrack], *,
                      sources: list[str] | None = None, data: bool = False
                      ) -> dict[str, Any]:
        """Publish tracks on the publish connection, each with its source (``camera``,
        ``microphone``, ``screen``, ``screen_audio``; by default by kind), and with
        ``data`` the two data channels too; returns the server's answer message. Once
        per connection (a restart publishes the same again)."""
        pc = self.publish_pc = self._new_pc()
        self._published, self._sources = list(tracks), sources
        self._data = self._data or data
        transceivers = [
            # aiortc stops a sender's track when its connection closes: send a relay's
            # proxy, so that a restart can publish the same source again.
            pc.addTransceiver(self._relay.subscribe(track, buffered=False),
                              direction="sendonly")
            for track in tracks
        ]
        if self._data:
            self._open_channels(pc)
        prepare_gathering(pc, self._gathering, None)
        await pc.setLocalDescription(await pc.createOffer())
        message: dict[str, Any] = {"type": "publish", "sdp": pc.localDescription.sdp}
        if sources:
            message["tracks"] = [{"mid": t.mid, "source": source}
                                 for t, source in zip(transceivers, sources, strict=True)]
        answer = await self.request(message)
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        return answer

    async def open_data(self) -> None:
        """The data channels alone (for a participant that publishes no media)."""
        await self.publish([], data=True)
        await self.data_open()

    async def data_open(self, timeout: float = 10.0) -> None:
        """Wait until both data channels are open."""
        async with asyncio.timeout(timeout):
            while not self._channels or any(
                    c.readyState != "open" for c in self._channels.values()):
                await asyncio.sleep(0.02)

    def _open_channels(self, pc: RTCPeerConnection) -> None:
        self._channels = {"reliable": pc.createDataChannel("reliable"),
                          "lossy": pc.createDataChannel("lossy", ordered=False,
                                                        maxRetransmits=0)}
        for label, channel in self._channels.items():
            channel.on("message", lambda message, label=label: self._data_received(
                label, message))

    def _data_received(self, label: str, message: str | bytes) -> None:
        envelope = orjson.loads(message)
        envelope["reliable"] = label == "reliable"
        self.data.put_nowait(envelope)

    async def send_data(self, payload: Any, *, to: list[str] | None = None,
                        topic: str | None = None, reliable: bool = True) -> None:
        """A message to everyone else in the room (or to ``to``), as JSON text."""
        envelope: dict[str, Any] = {"payload": payload}
        if to is not None:
            envelope["to"] = to
        if topic is not None:
            envelope["topic"] = topic
        self.send_raw_data(orjson.dumps(envelope).decode(), reliable)

    def send_raw_data(self, message: str | bytes, reliable: bool = True) -> None:
        """Exactly ``message`` on a data channel (tests send what a hostile client would)."""
        self._channels["reliable" if reliable else "lossy"].send(message)

    async def next_data(self, timeout: float = 10.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.data.get(), timeout)

    async def unpublish(self, track_id: str) -> dict[str, Any]:
        return await self.request({"type": "unpublish", "track": track_id})

    async def set_metadata(self, metadata: dict[str, Any]) -> dict[str, Any]:
        return await self.request({"type": "set_metadata", "metadata": metadata})

    async def subscribe(self, track_ids: list[str]) -> None:
        """Receive these tracks (with `[rooms] auto_subscribe` off); they come as a new
        offer, answered for you, then from ``next_track``."""
        await self.send({"type": "subscribe", "tracks": track_ids})

    async def unsubscribe(self, track_ids: list[str]) -> None:
        await self.send({"type": "unsubscribe", "tracks": track_ids})

    async def restart(self, relay_only: bool = False,
                      tracks: list[MediaStreamTrack] | None = None) -> dict[str, Any]:
        """Replace both peer connections and publish the same tracks again (or
        ``tracks``); the room keeps this participant's tracks and subscriptions (see
        docs/protocol.md), and unpublishes those not published again.
        ``relay_only`` is passed to the server; the new connections keep the client's
        own policy (``Client(relay_only=...)``), with the fresh ICE servers."""
        if tracks is not None:
            self._published = list(tracks)
        for pc in (self.publish_pc, self.subscribe_pc):
            if pc is not None:
                await pc.close()
        self.publish_pc = self.subscribe_pc = None
        self.mids.clear()
        self._restarting = True  # until `restarted`: offers that come are stale
        try:
            reply = await self.request({"type": "restart", "relay_only": relay_only})
        finally:
            self._restarting = False
        self._take_ice_servers(reply)
        if self._published or self._data:
            await self.publish(self._published, sources=self._sources)
        return reply

    async def next_track(self, timeout: float = 10.0) -> tuple[RemoteTrack, MediaStreamTrack]:
        return await asyncio.wait_for(self.tracks.get(), timeout)

    async def next_event(self, event_type: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next server event of a type (earlier events of other types are dropped)."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.events.get()
                if event["type"] == event_type:
                    return event

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        msg_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        await self.send({**message, "id": msg_id})
        reply = await asyncio.wait_for(future, 15)
        if reply["type"] == "error":
            raise ServerError(reply)
        return reply

    async def send(self, message: dict[str, Any]) -> None:
        assert self._ws is not None, "join() first"
        frame = codec.encode(message, self.binary)
        if isinstance(frame, bytes):
            await self._ws.send_bytes(frame)
        else:
            await self._ws.send_str(frame)

    async def leave(self) -> None:
        with contextlib.suppress(Exception):
            await self.request({"type": "leave"})
        await self.close()

    async def close(self) -> None:
        for task in (self._reader, self._offer_task):
            if task is not None:
                task.cancel()
        for pc in (self.publish_pc, self.subscribe_pc):
            if pc is not None:
                await pc.close()
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()

    def _new_pc(self) -> RTCPeerConnection:
        # One transport per connection, as browsers do with BUNDLE.
        policy = RTCIceTransportPolicy.RELAY if self.relay_only else RTCIceTransportPolicy.ALL
        return RTCPeerConnection(RTCConfiguration(
            iceServers=self.ice_servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE,
            iceTransportPolicy=policy))

    async def _read_loop(self) -> None:
        assert self._ws is not None
        async for frame in self._ws:
            if frame.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                continue
            message = codec.decode(frame.data, 1 << 24)
            if message["type"] == "restarted":
                self._epoch += 1
                self._restarting = False
            future = self._pending.pop(message.get("id"), None)
            if future is not None and not future.done():
                future.set_result(message)
            elif message["type"] == "offer":
                self._offers.put_nowait((-1 if self._restarting else self._epoch, message))
            else:
                if message["type"] == "error" and message.get("code") in SESSION_ENDING:
                    self._fail_pending(ServerError(message))
                self.events.put_nowait(message)
        # The socket is gone: nothing waiting will be answered.
        self._fail_pending(ConnectionError("the server closed the WebSocket"))

    def _fail_pending(self, error: Exception) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()

    async def _offer_loop(self) -> None:
        """Answer the server's subscribe offers one at a time, in order."""
        while True:
            epoch, offer = await self._offers.get()
            if epoch != self._epoch or self._restarting:
                continue  # for connections a restart replaced
            for item in offer["tracks"]:
                self.mids[item["mid"]] = RemoteTrack(
                    item["mid"], item["track"], item["participant"], item["kind"]
                )
            if self.subscribe_pc is None:
                self.subscribe_pc = self._new_pc()
                self.subscribe_pc.on("track", self._on_track)
            pc = self.subscribe_pc
            try:
                await self._recycle_receivers(pc, offer["sdp"])
                await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
                prepare_gathering(pc, self._gathering, None)
                await pc.setLocalDescription(await pc.createAnswer())
            except InvalidStateError:
                continue  # closed by a restart meanwhile
            if epoch == self._epoch and not self._restarting:
                await self.send({"type": "answer", "sdp": pc.localDescription.sdp})

    @staticmethod
    async def _recycle_receivers(pc: RTCPeerConnection, offer_sdp: str) -> None:
        """The server recycles the m-lines of departed tracks (docs/protocol.md,
        "Recycled m-lines"): when an offer makes an m-line inactive, its receiver stops
        (its decoder thread and task go now) and its track ends; when the m-line carries
        another source (a new SSRC), a fresh receiver takes it, and its track comes from
        ``next_track``."""
        if pc.remoteDescription is None:
            return
        silent = internals.silent_mids(offer_sdp)
        ssrcs = internals.remote_media_ssrcs(offer_sdp)
        before = internals.remote_media_ssrcs(pc.remoteDescription.sdp)
        for transceiver in pc.getTransceivers():
            mid = transceiver.mid
            if mid is None or transceiver.receiver.track is None:
                continue  # never received anything: nothing to free
            if mid in silent or ssrcs.get(mid) != before.get(mid):
                await internals.stop_receiver(internals.renew_receiver(transceiver))

    def _on_track(self, track: MediaStreamTrack) -> None:
        assert self.subscribe_pc is not None
        for transceiver in self.subscribe_pc.getTransceivers():
            if transceiver.receiver.track is track and transceiver.mid in self.mids:
                self.tracks.put_nowait((self.mids[transceiver.mid], track))
