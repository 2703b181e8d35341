"""How a load participant talks to each system under test.

Every system has its own signalling; the load generator only needs: join, publish an
offer and get the answer, and receive subscribe offers (with which publisher each
m-line carries) and answer them.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp


@dataclass(frozen=True)
class SubscribeOffer:
    connection: str  # the subscribe connection this offer is for (one or several)
    sdp: str
    publishers: dict[str, str]  # mid → publisher name


class Signalling(Protocol):
    async def join(self, name: str) -> None: ...
    async def publish(self, offer_sdp: str) -> str: ...
    async def next_offer(self) -> SubscribeOffer: ...
    async def answer(self, offer: SubscribeOffer, answer_sdp: str) -> None: ...
    async def set_quality(self, quality: str) -> None:
        """Ask for this simulcast quality of every video track (where the system can)."""
    async def close(self) -> None: ...


class SfuSignalling:
    """sfu's control channel (docs/protocol.md), JSON frames."""

    def __init__(self, url: str, room: str) -> None:
        self.url = url
        self.room = room
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._offers: asyncio.Queue[SubscribeOffer] = asyncio.Queue()
        self._names: dict[str, str] = {}  # participant id → name
        self._video_tracks: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    async def join(self, name: str) -> None:
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(self.url, max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        joined = await self._request({"type": "join", "room": self.room, "name": name})
        for participant in joined["participants"]:
            self._names[participant["id"]] = participant["name"]
        self._video_tracks += [t["id"] for t in joined["tracks"] if t["kind"] == "video"]

    async def publish(self, offer_sdp: str) -> str:
        answer = await self._request({"type": "publish", "sdp": offer_sdp})
        sdp: str = answer["sdp"]
        return sdp

    async def next_offer(self) -> SubscribeOffer:
        return await self._offers.get()

    async def answer(self, offer: SubscribeOffer, answer_sdp: str) -> None:
        assert self._ws is not None
        await self._ws.send_json({"type": "answer", "sdp": answer_sdp})

    async def set_quality(self, quality: str) -> None:
        assert self._ws is not None
        for track in self._video_tracks:
            await self._ws.send_json({"type": "set_subscription", "track": track,
                                      "quality": quality})

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()

    async def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self._ws is not None
        msg_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._replies[msg_id] = future
        await self._ws.send_json({**message, "id": msg_id})
        reply: dict[str, Any] = await asyncio.wait_for(future, 30)
        if reply["type"] == "error":
            raise RuntimeError(f"sfu refused {message['type']}: {reply}")
        return reply

    async def _read(self) -> None:
        assert self._ws is not None
        async for frame in self._ws:
            message = frame.json()
            future = self._replies.pop(message.get("id"), None)
            if future is not None:
                future.set_result(message)
            elif message["type"] == "track_published" and message["track"]["kind"] == "video":
                self._video_tracks.append(message["track"]["id"])
            elif message["type"] == "participant_joined":
                participant = message["participant"]
                self._names[participant["id"]] = participant["name"]
            elif message["type"] == "offer":
                publishers = {
                    t["mid"]: self._names.get(t["participant"], t["participant"])
                    for t in message["tracks"]
                }
                self._offers.put_nowait(SubscribeOffer("subscribe", message["sdp"], publishers))
