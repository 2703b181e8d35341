"""Simulcast from a Firefox ESR publisher (RID layers, as Chromium's): a Chromium viewer
gets the full layer, then the low one when it asks for a small size, then the full one
again. The namespace, address and Firefox driver are tests/test_clients.py's."""

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
from tests.test_simulcast_browser import TRACK_ID, VIDEO

pytestmark = [requires_isolated_network, requires_chromium, requires_root_and_iptables,
              requires_firefox, pytest.mark.browser]

SWITCH_S = 15.0  # to a layer asked for (measured 1–3 s)


async def test_a_firefox_publisher_sends_three_layers(room_server: Server) -> None:  # noqa: F811
    from playwright.async_api import async_playwright

    firefox = await FirefoxParticipant.start(room_server, "firefox")
    try:
        async with async_playwright() as playwright:
            token = mint_token(SECRET, room="mixed", identity="viewer")
            browser, viewer = await launch_demo_page(
                playwright, CHROMIUM, ADDRESS, room_server.port,
                f"room=mixed&name=viewer&token={token}&publish=0&max_width=4096")
            try:
                started = time.monotonic()

                async def width(expected: int) -> tuple[bool, Any]:
                    video = await viewer.evaluate(VIDEO)
                    return video["width"] == expected, video

                await wait_for(lambda: width(640), 40, "the full layer from Firefox")
                print(f"full layer after {time.monotonic() - started:.1f} s")
                info = room_server.room_info("mixed")
                publisher = next(p for p in info["participants"] if p["name"] == "firefox")
                video = next(t for t in publisher["tracks"] if t["kind"] == "video")
                viewer_info = next(p for p in info["participants"] if p["name"] == "viewer")
                layers = next(s["layers"] for s in viewer_info["subscriptions"]
                              if s["track"] == video["id"])
                print("layers as the SFU sees them:", layers)
                assert [layer["width"] for layer in layers] == [160, 320, 640]
                assert room_server.forwarder.counters()["rid_bound"] == 3

                track = await viewer.evaluate(TRACK_ID)
                for max_width, expected in ((200, 160), (4096, 640)):
                    asked = time.monotonic()
                    await viewer.evaluate(
                        f"() => window.sfu.setSubscription({track!r}, {{maxWidth: {max_width}}})")
                    await wait_for(lambda expected=expected: width(expected), SWITCH_S,
                                   f"the {expected}px layer")
                    print(f"max_width {max_width}: {expected}px after "
                          f"{time.monotonic() - asked:.1f} s")
            finally:
                await browser.close()
    finally:
        await firefox.close()
