"""Video survives a lossy network: 5 % of one participant's UDP dropped both ways.

The test builds a network namespace joined to its own by a veth pair, drops 5 % of the
namespace's UDP in each direction with `iptables -m statistic` (this kernel has no
netem), and runs one Chromium inside it (a two-line wrapper around `ip netns exec`;
Playwright talks to it over a pipe). Another Chromium, on a clean link, watches its
video for 30 s. Run with the SFU's NACKs to publishers and without.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from sfu.auth import mint_token
from sfu.server import Server
from tests.conftest import CHROMIUM, make_config, requires_chromium, requires_isolated_network
from tests.netns import ClientNamespace, client_namespace, requires_root_and_iptables
from tests.test_browser_room import launch_demo_page

LOSS = 0.05
SECONDS = 30
SECRET = "l" * 32

pytestmark = [
    requires_isolated_network, requires_chromium, requires_root_and_iptables,
    pytest.mark.browser,
]


@pytest.fixture
def lossy() -> Iterator[ClientNamespace]:
    """A namespace losing 5 % of its UDP each way, and a Chromium that runs in it."""
    with client_namespace("loss", "10.88.0") as namespace:
        for chain in ("INPUT", "OUTPUT"):
            namespace.iptables("-A", chain, "-p", "udp", "-m", "statistic", "--mode",
                               "random", "--probability", str(LOSS), "-j", "DROP")
        yield namespace


STATS = """async () => {
    const out = {inbound: {}, outbound: {}};
    for (const s of (await window.sfu.subPc.getStats()).values())
        if (s.type === 'inbound-rtp' && s.kind === 'video')
            out.inbound = {frames: s.framesDecoded || 0, freezes: s.freezeCount || 0,
                           nacks: s.nackCount || 0, lost: s.packetsLost || 0,
                           received: s.packetsReceived || 0};
    for (const s of (await window.sfu.pubPc.getStats()).values())
        if (s.type === 'outbound-rtp' && s.kind === 'video')
            out.outbound = {retransmitted: s.retransmittedPacketsSent || 0,
                            nacks: s.nackCount || 0, sent: s.packetsSent || 0};
    return out;
}"""


async def call(playwright: Any, lossy: ClientNamespace, nack: bool) -> dict[str, Any]:
    config = make_config()
    config.server.host = "0.0.0.0"
    config.auth.mode, config.auth.secret = "jwt", SECRET
    config.rtc.listen_ips = ["127.0.0.1", lossy.host_address]
    config.rtc.nack = nack
    server = Server(config)
    await server.start()
    browsers = []
    try:
        pages = {}
        for name, executable, host in (("lossy", lossy.chromium, lossy.host_address),
                                       ("clean", CHROMIUM, "127.0.0.1")):
            token = mint_token(SECRET, room="lossy", identity=name)
            browser, pages[name] = await launch_demo_page(
                playwright, executable, host, server.port,
                f"room=lossy&name={name}&token={token}")
            browsers.append(browser)
        await asyncio.sleep(5)  # connected, ramped, decoding
        start = {name: await page.evaluate(STATS) for name, page in pages.items()}
        await asyncio.sleep(SECONDS)
        end = {name: await page.evaluate(STATS) for name, page in pages.items()}
        counters = server.forwarder.counters()
        return {
            "fps_of_lossy_at_clean": (end["clean"]["inbound"]["frames"]
                                      - start["clean"]["inbound"]["frames"]) / SECONDS,
            "freezes_of_lossy_at_clean": end["clean"]["inbound"]["freezes"]
            - start["clean"]["inbound"]["freezes"],
            "fps_of_clean_at_lossy": (end["lossy"]["inbound"]["frames"]
                                      - start["lossy"]["inbound"]["frames"]) / SECONDS,
            "freezes_of_clean_at_lossy": end["lossy"]["inbound"]["freezes"]
            - start["lossy"]["inbound"]["freezes"],
            "nacks_sent_by_lossy_receiver": end["lossy"]["inbound"]["nacks"],
            "video_packets_sent_by_lossy_publisher": end["lossy"]["outbound"]["sent"]
            - start["lossy"]["outbound"]["sent"],
            "retransmitted_by_lossy_publisher": end["lossy"]["outbound"]["retransmitted"],
            "sfu_nack_requested": counters["nack_requested"],
            "sfu_nack_recovered": counters["nack_recovered"],
            "sfu_retransmitted": counters["retransmitted"],
        }
    finally:
        for browser in browsers:
            await browser.close()
        await server.stop()


async def test_video_survives_five_percent_loss(lossy: ClientNamespace) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        with_nack = await call(playwright, lossy, nack=True)
        without = await call(playwright, lossy, nack=False)
    print(f"\n{LOSS:.0%} loss on one participant's UDP, {SECONDS} s:")
    for key in with_nack:
        print(f"  {key:34} with NACK {with_nack[key]:>8.1f}   without {without[key]:>8.1f}")
    # Loss repaired in both directions: the lossy receiver asks the SFU, the SFU asks
    # the lossy publisher, and both retransmit.
    assert with_nack["nacks_sent_by_lossy_receiver"] > 0
    assert with_nack["sfu_retransmitted"] > 0
    assert with_nack["sfu_nack_requested"] > 0
    assert with_nack["retransmitted_by_lossy_publisher"] > 0
    assert without["sfu_nack_requested"] == 0
    # Video keeps going: at least 10 fps decoded (Chrome's fake camera sends ~20), and
    # few freezes. A freeze is a frame late by 150 ms or 3 frame times (Chrome's
    # definition); with repair, a lost packet costs one round trip on loopback, so
    # freezes should be rare: at most one per 10 s.
    assert with_nack["fps_of_lossy_at_clean"] >= 10
    assert with_nack["fps_of_clean_at_lossy"] >= 10
    assert with_nack["freezes_of_lossy_at_clean"] <= SECONDS / 10
