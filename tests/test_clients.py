"""Clients beyond Chromium: Firefox ESR, GStreamer webrtcbin and aiortc, alone with an
aiortc participant and all together with Chromium in one room.

Every participant publishes video (VP8) and audio (Opus) and must decode everyone
else's: frames decoded increasing, per publisher, on every receiver (getStats() in the
browsers, the pipeline's own counters in GStreamer, decoded frames in aiortc).

Firefox gathers no candidates without a non-loopback interface and a default route,
and libnice (GStreamer) skips loopback: the test gives its namespace a veth pair with
an address and a default route through it, and every client uses that address. The
namespace is the test's own (`unshare --net`), so nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from aiortc import AudioStreamTrack, VideoStreamTrack

from sfu.client import Client
from sfu.control.auth import mint_token
from sfu.server import Server
from tests.conftest import (
    CHROMIUM,
    jwt_config,
    requires_chromium,
    requires_isolated_network,
    running,
)
from tests.netns import requires_root_and_iptables, run
from tests.test_browser_room import launch_demo_page

CLIENTS = Path(__file__).parent / "clients"
ADDRESS = "10.79.0.1"
SECRET = "c" * 32
FIREFOX = "/usr/bin/firefox-esr"
SYSTEM_PYTHON = "/usr/bin/python3"


def gstreamer_missing() -> str | None:
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi, websocket; gi.require_version('GstWebRTC', '1.0'); "
         "from gi.repository import Gst; Gst.init(None); "
         "assert Gst.ElementFactory.find('webrtcbin') and Gst.ElementFactory.find('nicesrc')"],
        capture_output=True, text=True) if Path(SYSTEM_PYTHON).exists() else None
    if probe is None or probe.returncode != 0:
        return ("GStreamer webrtcbin for Debian's python3 is missing "
                "(scripts/install.sh --test installs it)")
    return None


def firefox_missing() -> str | None:
    if not Path(FIREFOX).exists() or shutil.which("node") is None:
        return "firefox-esr or node is missing (scripts/install.sh --test installs them)"
    if not (CLIENTS / "node_modules" / "puppeteer-core").is_dir():
        return "puppeteer-core is not installed in tests/clients (scripts/install.sh --test)"
    return None


requires_gstreamer = pytest.mark.skipif(gstreamer_missing() is not None,
                                        reason=gstreamer_missing() or "")
requires_firefox = pytest.mark.skipif(firefox_missing() is not None,
                                      reason=firefox_missing() or "")
pytestmark = [requires_isolated_network, requires_root_and_iptables, pytest.mark.browser]


class Participant(Protocol):
    name: str

    async def received(self) -> dict[str, tuple[int, int]]:
        """Publisher id → (video frames decoded, audio decoded: frames or packets)."""
        ...

    async def close(self) -> None: ...


@pytest.fixture(scope="module")
def veth() -> Iterator[str]:
    """An address that is not loopback, with a default route, in the test's namespace."""
    run("ip", "link", "add", "sfucl0", "type", "veth", "peer", "name", "sfucl1")
    try:
        run("ip", "addr", "add", f"{ADDRESS}/24", "dev", "sfucl0")
        run("ip", "link", "set", "sfucl0", "up")
        run("ip", "link", "set", "sfucl1", "up")
        run("ip", "route", "add", "default", "dev", "sfucl0")
        yield ADDRESS
    finally:
        subprocess.run(["ip", "link", "del", "sfucl0"], capture_output=True)


@pytest.fixture
async def room_server(veth: str) -> AsyncIterator[Server]:
    config = jwt_config(SECRET)
    config.server.host = "0.0.0.0"
    config.rtc.listen_ips = [veth]
    async with running(config) as server:
        yield server


def page_query(name: str) -> str:
    return f"room=mixed&name={name}&token={mint_token(SECRET, room='mixed', identity=name)}"


class LineReader:
    """A subprocess printing JSON lines; keeps the last one of each kind."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.last: dict[str, Any] = {}
        self.first_lines: list[str] = []
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                for key, value in message.items():
                    self.last[key] = value
            if len(self.first_lines) < 5:
                self.first_lines.append(line.decode(errors="replace").strip())

    async def wait_for(self, key: str, seconds: float) -> Any:
        async with asyncio.timeout(seconds):
            while key not in self.last:
                if self.process.returncode is not None:
                    raise RuntimeError(f"exited {self.process.returncode}: {self.first_lines}")
                await asyncio.sleep(0.1)
        return self.last[key]

    async def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        self._task.cancel()


class FirefoxParticipant:
    """The demo page in Firefox ESR, driven by puppeteer-core (tests/clients/)."""

    def __init__(self, name: str, reader: LineReader) -> None:
        self.name, self.reader = name, reader
        self.version = ""

    @classmethod
    async def start(cls, server: Server, name: str, *options: str) -> FirefoxParticipant:
        """``options``: "screen" shares a canvas as a screen too (firefox_participant.mjs)."""
        process = await asyncio.create_subprocess_exec(
            "node", str(CLIENTS / "firefox_participant.mjs"),
            f"http://{ADDRESS}:{server.port}/?autojoin=1&{page_query(name)}", *options,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL)
        participant = cls(name, LineReader(process))
        participant.version = await participant.reader.wait_for("browser", 60)
        return participant

    async def received(self) -> dict[str, tuple[int, int]]:
        stats = self.reader.last.get("stats", {})
        return {pid: (s["video"]["framesDecoded"], s["audio"]["totalSamplesReceived"])
                for pid, s in stats.items()}

    async def close(self) -> None:
        await self.reader.close()


class GstParticipant:
    """GStreamer webrtcbin under Debian's python3 (tests/clients/gst_participant.py)."""

    def __init__(self, name: str, reader: LineReader) -> None:
        self.name, self.reader = name, reader

    @classmethod
    async def start(cls, server: Server, name: str) -> GstParticipant:
        process = await asyncio.create_subprocess_exec(
            SYSTEM_PYTHON, str(CLIENTS / "gst_participant.py"),
            f"ws://{ADDRESS}:{server.port}/ws", "mixed", name,
            mint_token(SECRET, room="mixed", identity=name),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL)
        participant = cls(name, LineReader(process))
        await participant.reader.wait_for("frames", 30)
        return participant

    async def received(self) -> dict[str, tuple[int, int]]:
        frames, audio = self.reader.last.get("frames", {}), self.reader.last.get("audio", {})
        return {pid: (frames.get(pid, 0), audio.get(pid, 0)) for pid in {*frames, *audio}}

    async def close(self) -> None:
        await self.reader.close()


class AiortcParticipant:
    """sfu.client.Client: aiortc's encoders and decoders."""

    def __init__(self, name: str, client: Client) -> None:
        self.name, self.client = name, client
        self.video: Counter[str] = Counter()
        self.audio: Counter[str] = Counter()
        self._tasks: list[asyncio.Task[None]] = [asyncio.create_task(self._receive())]

    @classmethod
    async def start(cls, server: Server, name: str) -> AiortcParticipant:
        client = Client(f"ws://{ADDRESS}:{server.port}/ws", room="mixed", name=name,
                        token=mint_token(SECRET, room="mixed", identity=name),
                        host_addresses=(ADDRESS,))
        await client.join()
        participant = cls(name, client)
        await client.publish([VideoStreamTrack(), AudioStreamTrack()])
        return participant

    async def _receive(self) -> None:
        while True:
            info, track = await self.client.tracks.get()
            counter = self.video if info.kind == "video" else self.audio
            self._tasks.append(asyncio.create_task(self._count(track, counter,
                                                               info.participant)))

    async def _count(self, track: Any, counter: Counter[str], publisher: str) -> None:
        with contextlib.suppress(Exception):
            while True:
                await track.recv()
                counter[publisher] += 1

    async def received(self) -> dict[str, tuple[int, int]]:
        return {pid: (self.video[pid], self.audio[pid]) for pid in {*self.video, *self.audio}}

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.client.close()


class ChromiumParticipant:
    """The demo page in Debian's Chromium, driven by Playwright."""

    def __init__(self, name: str, page: Any, browser: Any) -> None:
        self.name, self.page, self.browser = name, page, browser
        self.version: str = browser.version

    @classmethod
    async def start(cls, server: Server, name: str, playwright: Any) -> ChromiumParticipant:
        browser, page = await launch_demo_page(playwright, CHROMIUM, ADDRESS, server.port,
                                               page_query(name))
        return cls(name, page, browser)

    async def received(self) -> dict[str, tuple[int, int]]:
        stats = await self.page.evaluate("() => window.sfu.inboundStats()")
        return {pid: (s["video"]["framesDecoded"], s["audio"]["totalSamplesReceived"])
                for pid, s in stats.items()}

    async def close(self) -> None:
        await self.browser.close()


def ids_by_name(server: Server) -> dict[str, str]:
    return {link.participant.name: link.id for link in server.participants.values()}


def publications(server: Server) -> list[tuple[str, str, str]]:
    """(publisher name, kind, codec) of every publication in the room, sorted; one
    entry each, so none hides another."""
    names = {pid: name for name, pid in ids_by_name(server).items()}
    return sorted((names.get(t.participant, t.participant), t.kind, t.media.codec.mime_type)
                  for t in server.tracks.values())


def every_publication(participants: list[Participant]) -> list[tuple[str, str, str]]:
    """What ``publications`` must be: each participant's audio in Opus and video in
    VP8, as every client here publishes them."""
    return sorted((p.name, kind, codec) for p in participants
                  for kind, codec in (("audio", "audio/opus"), ("video", "video/VP8")))


async def everyone_decodes_everyone(server: Server, participants: list[Participant],
                                    seconds: float) -> dict[str, dict[str, tuple[int, int]]]:
    """Wait until every receiver has decoded video and audio from every other
    participant, then check both go on rising; returns the last counts by receiver
    name and publisher name. Raises AssertionError naming what is missing."""
    names = {p.name for p in participants}
    deadline = time.monotonic() + seconds

    async def snapshot() -> dict[str, dict[str, tuple[int, int]]]:
        by_id = {pid: name for name, pid in ids_by_name(server).items()}
        out = {}
        for p in participants:
            counts = await p.received()
            out[p.name] = {by_id.get(pid, pid): c for pid, c in counts.items()}
        return out

    def missing(counts: dict[str, dict[str, tuple[int, int]]],
                before: dict[str, dict[str, tuple[int, int]]] | None) -> list[str]:
        gaps = []
        for receiver in names:
            for publisher in names - {receiver}:
                now = counts[receiver].get(publisher, (0, 0))
                then = before[receiver].get(publisher, (0, 0)) if before else (0, 0)
                if now[0] <= then[0] or now[1] <= then[1]:
                    gaps.append(f"{receiver} from {publisher}: {then} → {now}")
        return gaps

    counts = await snapshot()
    while missing(counts, None) and time.monotonic() < deadline:
        await asyncio.sleep(1)
        counts = await snapshot()
    assert not missing(counts, None), missing(counts, None)
    before = counts
    await asyncio.sleep(3)
    counts = await snapshot()
    assert not missing(counts, before), missing(counts, before)
    return counts


@pytest.mark.parametrize("kind", [
    pytest.param(FirefoxParticipant, id="firefox", marks=requires_firefox),
    pytest.param(GstParticipant, id="gstreamer", marks=requires_gstreamer),
])
async def test_client_and_aiortc(room_server: Server, kind: Any) -> None:
    """One client of this kind and an aiortc participant decode each other."""
    bot = await AiortcParticipant.start(room_server, "bot")
    other = await kind.start(room_server, kind.__name__.removesuffix("Participant").lower())
    try:
        counts = await everyone_decodes_everyone(room_server, [bot, other], 45)
        print(f"\n{getattr(other, 'version', '') or kind.__name__}: {counts}")
        assert publications(room_server) == every_publication([bot, other])
    finally:
        await other.close()
        await bot.close()


@requires_chromium
@requires_firefox
@requires_gstreamer
async def test_mixed_room(room_server: Server) -> None:
    """Chromium, Firefox, GStreamer and aiortc in one room: each decodes every other's
    video and audio."""
    from playwright.async_api import async_playwright

    participants: list[Participant] = []
    async with async_playwright() as playwright:
        try:
            participants.append(await AiortcParticipant.start(room_server, "aiortc"))
            participants.append(await GstParticipant.start(room_server, "gstreamer"))
            participants.append(await FirefoxParticipant.start(room_server, "firefox"))
            participants.append(await ChromiumParticipant.start(room_server, "chromium",
                                                                playwright))
            counts = await everyone_decodes_everyone(room_server, participants, 60)
            print("\nmixed room, (video frames, audio) decoded by receiver from publisher:")
            for receiver, row in counts.items():
                print(f"  {receiver:10} {row}")
            assert publications(room_server) == every_publication(participants)
        finally:
            for participant in reversed(participants):
                await participant.close()
