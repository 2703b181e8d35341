"""aiortc's MediaRelay as a system under test: bench/mediarelay_server.py in its own process.

It decodes every published track and re-encodes it once per subscriber, so its
forwarded packets are new packets (payloads not in the recording, its own packet
count): the bench counts its loss from sequence gaps only and has no latency for it.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from typing import Any

import aiohttp

from .signalling import SubscribeOffer
from .systems import ProcessSystem, free_port, wait_http

POLL_SECONDS = 0.1


class MediaRelaySystem(ProcessSystem):
    """`python -m sfu_bench.mediarelay_server`, one process."""

    name = "mediarelay"
    max_rooms = 1  # the room is the whole server (job())

    def __init__(self) -> None:
        super().__init__()
        self._url = ""

    def skip_reason(self, address: str) -> str | None:
        # The relay decodes and encodes: it needs aiortc's codecs (PyAV, libvpx, libopus).
        for module in ("aiortc.contrib.media", "aiortc.codecs.vpx", "aiortc.codecs.opus"):
            try:
                importlib.import_module(module)
            except ImportError as exc:
                return f"{module} cannot be imported: {exc}"
        return None

    async def start(self, address: str) -> None:
        host = address if address.startswith("127.") else "127.0.0.1"
        port = free_port(host)
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sfu_bench.mediarelay_server",
            "--host", host, "--port", str(port), "--address", address,
            env={**os.environ}, stdout=asyncio.subprocess.DEVNULL,
        )
        self._url = f"http://{host}:{port}"
        try:
            await wait_http(f"{self._url}/publishers")
        except BaseException:
            await self.stop()
            raise

    def job(self, room: str) -> dict[str, Any]:
        # One relay per run: the room is the whole server.
        return {"signalling": "sfu_bench.mediarelay:MediaRelaySignalling",
                "signalling_args": {"url": self._url}}



def sdp_mids(sdp: str) -> list[str]:
    """The mid of every m-line, in order."""
    return [line.split(":", 1)[1].strip() for line in sdp.splitlines()
            if line.startswith("a=mid:")]


class MediaRelaySignalling:
    """bench/mediarelay_server.py's HTTP API: one subscribe connection per publisher."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = ""
        self._session: aiohttp.ClientSession | None = None
        self._subscriptions: dict[str, str] = {}  # publisher name → the server's id
        self._pending: list[str] = []  # publishers seen, not yet subscribed to

    async def join(self, name: str) -> None:
        self.name = name
        self._session = aiohttp.ClientSession()

    async def publish(self, offer_sdp: str) -> str:
        reply = await self._post("/publish", {"name": self.name, "sdp": offer_sdp})
        sdp: str = reply["sdp"]
        return sdp

    async def set_quality(self, quality: str) -> None:
        """The simulcast scenario is sfu's alone: nothing to ask for here."""

    async def next_offer(self) -> SubscribeOffer:
        while not self._pending:
            assert self._session is not None
            async with self._session.get(f"{self.url}/publishers") as response:
                response.raise_for_status()
                names: list[str] = (await response.json())["publishers"]
            self._pending = [n for n in names if n != self.name and n not in self._subscriptions]
            if not self._pending:
                await asyncio.sleep(POLL_SECONDS)
        publisher = self._pending.pop(0)
        reply = await self._post("/subscribe", {"name": self.name, "publisher": publisher})
        self._subscriptions[publisher] = reply["id"]
        sdp: str = reply["sdp"]
        return SubscribeOffer(connection=publisher, sdp=sdp,
                              publishers=dict.fromkeys(sdp_mids(sdp), publisher))

    async def answer(self, offer: SubscribeOffer, answer_sdp: str) -> None:
        subscription = self._subscriptions[offer.connection]
        await self._post("/answer", {"id": subscription, "sdp": answer_sdp})

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self._session is not None
        async with self._session.post(f"{self.url}{path}", json=body) as response:
            if response.status >= 400:
                raise RuntimeError(f"mediarelay refused {path}: {response.status} "
                                   f"{await response.text()}")
            reply: dict[str, Any] = await response.json()
            return reply
