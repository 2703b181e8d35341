"""`sfu serve --workers 2` (sfu/workers/): two rooms land on two worker processes,
media flows in both, one /metrics scrape and the admin API cover both, each worker's
webhooks arrive; `kill -9` of the worker holding one room: its two browser
participants are told `room_moved`, join again by themselves and see each other within
REJOIN_BOUND_S, while the other room's participants (aiortc) never stop receiving
video."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sfu.client import Client, pattern_track
from sfu.config import Config
from sfu.workers.placement import Placement
from sfu.workers.supervisor import worker_config
from tests.conftest import CHROMIUM, requires_chromium, requires_isolated_network
from tests.test_browser_room import launch_demo_page, stats_by_name, wait_for
from tests.test_events import receiver  # noqa: F401 (a fixture)

REJOIN_BOUND_S = 20.0  # measured: ~3 s from the kill to both pages decoding again
UDP_PORT = 7960


def up(workers: int, idle_s: float) -> Placement:
    placement = Placement(idle_s)
    for worker in range(workers):
        placement.worker_up(worker)
    return placement


def test_placement_puts_a_room_on_the_least_loaded_live_worker() -> None:
    placement = up(3, idle_s=10)
    assert placement.place("a", now=0) == 0
    placement.connected("a")
    assert placement.place("b", now=0) == 1
    placement.connected("b")
    placement.connected("b")
    assert placement.place("c", now=0) == 2
    assert placement.place("a", now=1) == 0  # placed once, for every later join
    assert placement.worker_lost(1) == ["b"]
    assert placement.place("b", now=2) in (0, 2) and placement.place("d", now=2) != 1
    placement.worker_up(1)
    assert placement.place("e", now=2) == 1


def test_an_idle_room_keeps_its_worker_for_the_grace_unless_kept() -> None:
    placement = up(2, idle_s=10)
    placement.place("a", now=0)
    placement.connected("a")
    placement.disconnected("a", now=1)
    assert placement.worker_of("a", now=10) == 0  # a dropped participant may resume
    assert placement.worker_of("a", now=12) is None
    placement.place("k", now=20)
    placement.keep("k", True, now=20)
    assert placement.worker_of("k", now=1000) is not None


def test_each_worker_has_its_own_ports_and_trusts_the_front() -> None:
    config = Config()
    config.rtc.port_per_connection, config.rtc.port_min, config.rtc.port_max = True, 40000, 40999
    second = worker_config(config, 1, 2)
    assert (second["server"]["host"], second["server"]["port"]) == ("127.0.0.1", 0)
    assert second["server"]["trusted_proxies"] == ["127.0.0.1"]
    assert (second["rtc"]["udp_port"], second["rtc"]["tcp_port"]) == (7883, 7882)
    assert (second["rtc"]["port_min"], second["rtc"]["port_max"]) == (40500, 40999)


@contextlib.asynccontextmanager
async def front(workers: int, webhook: str = "", **settings: str
                ) -> AsyncIterator[tuple[subprocess.Popen[str], int]]:
    env = {**os.environ, "SFU_RTC_UDP_PORT": str(UDP_PORT), "SFU_RTC_TCP_PORT": str(UDP_PORT),
           "SFU_WEBHOOKS_URLS": webhook, "SFU_WEBHOOKS_SECRET": "w" * 32, **settings}
    process = subprocess.Popen([sys.executable, "-m", "sfu", "serve", "--workers", str(workers),
                                "--port", "0"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 60)
        match = re.search(r"serving http://127\.0\.0\.1:(\d+)/ with (\d+) workers", line)
        assert match and int(match[2]) == workers, line
        yield process, int(match[1])
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)


def get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        body = response.read().decode()
    return json.loads(body) if path.startswith("/admin") else body


def rooms(port: int) -> dict[str, dict[str, Any]]:
    return {room["name"]: room for room in get(port, "/admin/rooms")["rooms"]}


def metric(text: str, name: str, worker: str) -> float:
    """The sum of ``name``'s samples from ``worker`` (every other label)."""
    pattern = rf'^{name}\{{(?:[^}}]*,)?worker="{worker}"\}} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, text, re.M))


@requires_isolated_network
async def test_the_front_answers_as_one_process_would() -> None:
    """A foreign Origin refused before the upgrade; a first frame that is no join gets
    the worker's own answer; a client that never joins gets join_timeout; the admin
    API places, lists, answers for and closes rooms on either worker."""
    import aiohttp

    async with front(2, SFU_AUTH_ALLOWED_ORIGINS="https://app.example",
                     SFU_LIMITS_JOIN_TIMEOUT_S="1") as (_, port), aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{port}/ws"
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url, headers={"Origin": "https://evil.example"})
        assert refused.value.status == 403
        origin = {"Origin": "https://app.example"}
        async with http.ws_connect(url, headers=origin) as ws:
            await ws.send_str("not json")
            assert (await ws.receive_json(timeout=5))["code"] == "bad_message"
        async with http.ws_connect(url, headers=origin) as ws:
            assert (await ws.receive_json(timeout=5))["code"] == "join_timeout"
        # The admin API across workers: rooms placed, listed, answered, closed.
        admin = f"http://127.0.0.1:{port}/admin"
        for name in ("a", "b"):
            async with http.post(f"{admin}/rooms", json={"name": name}) as response:
                assert response.status == 201, await response.text()
        async with http.get(f"{admin}/rooms") as response:
            listed = {r["name"]: r["worker"] for r in (await response.json())["rooms"]}
        assert listed == {"a": 0, "b": 1}, listed
        async with http.get(f"{admin}/rooms/b") as response:
            assert (await response.json())["name"] == "b"
        async with http.delete(f"{admin}/rooms/b") as response:
            assert response.status == 204
        async with http.get(f"{admin}/rooms/b") as response:
            assert response.status == 404
        async with http.get(f"{admin}/traversal") as response:
            assert set((await response.json())["workers"]) == {"0", "1"}


class Watcher:
    """An aiortc participant that publishes a pattern and times the frames it gets."""

    def __init__(self, port: int, name: str) -> None:
        self.client = Client(f"ws://127.0.0.1:{port}/ws", room="b", name=name)
        self.frames: list[float] = []

    async def start(self) -> None:
        await self.client.join()
        await self.client.publish([pattern_track()])

    async def watch(self) -> None:
        _, track = await self.client.next_track(30)
        while True:
            await track.recv()
            self.frames.append(time.monotonic())

    def longest_gap(self, since: float) -> float:
        times = [since, *(t for t in self.frames if t >= since), time.monotonic()]
        return max(b - a for a, b in itertools.pairwise(times))


async def decoding(page: Any, other: str) -> tuple[bool, Any]:
    stats = await stats_by_name(page)
    frames = stats.get(other, {}).get("video", {}).get("framesDecoded", 0)
    return frames > 10, frames


@requires_isolated_network
@requires_chromium
@pytest.mark.browser
async def test_two_workers_two_rooms_and_a_worker_killed(
        receiver: tuple[str, list[tuple[bytes, dict[str, str]]], list[int]]  # noqa: F811
) -> None:
    from playwright.async_api import async_playwright

    hook, calls, _ = receiver
    async with front(2, hook) as (_, port), async_playwright() as playwright:
        browsers = []
        watchers = [Watcher(port, "w1"), Watcher(port, "w2")]
        tasks: list[asyncio.Task[None]] = []
        try:
            pages = {}
            for name in ("p1", "p2"):  # room a first: the first worker
                browser, pages[name] = await launch_demo_page(
                    playwright, CHROMIUM, "127.0.0.1", port, f"room=a&name={name}")
                browsers.append(browser)
            for watcher in watchers:
                await watcher.start()
            tasks = [asyncio.create_task(w.watch()) for w in watchers]
            await wait_for(lambda: decoding(pages["p1"], "p2"), 30, "p1 decoding p2")
            await wait_for(lambda: decoding(pages["p2"], "p1"), 30, "p2 decoding p1")
            await wait_for(lambda: _async(all(len(w.frames) > 10 for w in watchers)), 30,
                           "the aiortc participants receiving")
            placed = rooms(port)
            assert placed["a"]["participants"] == placed["b"]["participants"] == 2, placed
            assert placed["a"]["pid"] != placed["b"]["pid"], placed  # two processes
            # Each worker's events leave by its own webhooks.
            events = [json.loads(body) for body, _ in calls]
            joined = {(e["room"], e["name"]) for e in events if e["type"] == "participant_joined"}
            assert joined >= {("a", "p1"), ("a", "p2"), ("b", "w1"), ("b", "w2")}, events
            text = get(port, "/metrics")
            for worker in ("0", "1"):
                assert metric(text, "sfu_participants", worker) == 2, text
                assert metric(text, "sfu_forwarded_packets_total", worker) > 0, text

            killed = placed["a"]["pid"]
            os.kill(killed, signal.SIGKILL)
            cut = time.monotonic()
            for name, other in (("p1", "p2"), ("p2", "p1")):
                await wait_for(lambda n=name, o=other: _rejoined(pages[n], o, port, killed),
                               REJOIN_BOUND_S, f"{name} back in room a, decoding {other}")
            back = time.monotonic() - cut
            print(f"\nroom a back with video both ways {back:.1f} s after the kill")
            placed = rooms(port)
            assert placed["a"]["pid"] != killed and placed["a"]["participants"] == 2, placed
            assert placed["b"]["participants"] == 2, placed
            gaps = [w.longest_gap(cut) for w in watchers]
            print(f"room b's longest gap between frames meanwhile: {max(gaps):.2f} s")
            assert max(gaps) < 1.0, gaps  # untouched
            # The dead worker was started again.
            await wait_for(lambda: _async(json.loads(get(port, "/readyz"))["workers"] == 2),
                           30, "two workers live again")
            text = get(port, "/metrics")
            assert metric(text, "sfu_participants", "0") + metric(
                text, "sfu_participants", "1") == 4, text
        finally:
            for task in tasks:
                task.cancel()
            for watcher in watchers:
                await watcher.client.close()
            for browser in browsers:
                await browser.close()


async def _async(value: bool) -> tuple[bool, bool]:
    return value, value


async def _rejoined(page: Any, other: str, port: int, killed: int) -> tuple[bool, Any]:
    room = rooms(port).get("a")
    if room is None or room["pid"] == killed:
        return False, room
    return await decoding(page, other)
