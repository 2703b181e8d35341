"""Camera and screen at once from Firefox ESR: a Chromium viewer receives both video
tracks, each with its source, and decodes both. Headless Firefox cannot capture a
screen, so its page shares a changing canvas as one (tests/clients/
firefox_participant.mjs); Chromium's real (fake-device) screen capture is in
tests/test_meeting_browser.py. Namespace, address and driver: tests/test_clients.py's."""

from __future__ import annotations

import time
from typing import Any

import pytest

from sfu.control.auth import mint_token
from sfu.server import Server
from tests.conftest import CHROMIUM, requires_chromium, requires_isolated_network
from tests.netns import requires_root_and_iptables
from tests.test_browser_room import launch_demo_page, wait_for
from tests.test_clients import (  # noqa: F401 - fixtures
    ADDRESS,
    SECRET,
    FirefoxParticipant,
    requires_firefox,
    room_server,
    veth,
)

pytestmark = [requires_isolated_network, requires_chromium, requires_root_and_iptables,
              requires_firefox, pytest.mark.browser]

MEDIA_S = 40.0  # for both tracks to decode (measured 3–6 s)


async def test_firefox_publishes_camera_and_screen_at_once(room_server: Server  # noqa: F811
                                                           ) -> None:
    from playwright.async_api import async_playwright

    firefox = await FirefoxParticipant.start(room_server, "firefox", "screen")
    try:
        screen_id = await firefox.reader.wait_for("screen", 30)
        async with async_playwright() as playwright:
            token = mint_token(SECRET, room="mixed", identity="viewer")
            browser, viewer = await launch_demo_page(
                playwright, CHROMIUM, ADDRESS, room_server.port,
                f"room=mixed&name=viewer&token={token}&publish=0")
            try:
                async def both_decode() -> tuple[bool, Any]:
                    stats = await viewer.evaluate("() => window.sfu.statsByTrack()")
                    video = {s["source"]: s for s in stats.values() if s["kind"] == "video"}
                    ok = (set(video) == {"camera", "screen"}
                          and all(s["frameWidth"] for s in video.values())
                          and video["screen"]["frameWidth"] == 1280)
                    return ok, video

                started = time.monotonic()
                await wait_for(both_decode, MEDIA_S, "Firefox's camera and screen at the viewer")
                print(f"both decoding {time.monotonic() - started:.1f} s after the viewer joined")
                tracks = await viewer.evaluate("() => Object.values(window.sfu.tracks)")
                screen = next(t for t in tracks if t["id"] == screen_id)
                assert (screen["source"], screen["name"], screen["kind"]) == (
                    "screen", "canvas", "video")
                caption = await viewer.inner_text("figure.screen figcaption")
                assert caption == "firefox · screen"
                info = room_server.room_info("mixed")
                publisher = next(p for p in info["participants"] if p["name"] == "firefox")
                assert sorted(t["source"] for t in publisher["tracks"]) == [
                    "camera", "microphone", "screen"]
            finally:
                await browser.close()
    finally:
        await firefox.close()
