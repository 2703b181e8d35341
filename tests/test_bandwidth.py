"""A Chromium publisher ramps its video bitrate up because the SFU sends REMB, and
does not without it (Chrome starts near 300 kbit/s and, with goog-remb negotiated and
no other feedback, waits for REMB)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sfu.server import Server
from tests.conftest import make_config, requires_chromium, requires_isolated_network
from tests.test_browser_room import browser, open_participant  # noqa: F401 (fixture)

pytestmark = [requires_isolated_network, requires_chromium, pytest.mark.browser]

SECONDS = 20
RAMPED_BPS = 1_000_000  # stated level: reached within 20 s with REMB
FLAT_BPS = 700_000  # and not approached without it

TARGET_BITRATE = """async () => {
    let target = 0;
    for (const s of (await window.sfu.pubPc.getStats()).values())
        if (s.type === 'outbound-rtp' && s.kind === 'video') target += s.targetBitrate || 0;
    return target;
}"""


async def highest_target(browser: Any, remb: bool) -> list[float]:  # noqa: F811
    config = make_config()
    config.rtc.remb = remb
    server = Server(config)
    await server.start()
    try:
        assert server.port is not None
        page = await open_participant(browser, server.port, f"bw{int(remb)}", "pub")
        samples = []
        for _ in range(SECONDS):
            await asyncio.sleep(1)
            samples.append(await page.evaluate(TARGET_BITRATE))
        assert (server.rtcp_sent["remb"] > 0) == remb
        await page.close()
        return samples
    finally:
        await server.stop()


async def test_remb_lets_the_publisher_ramp_up(browser: Any) -> None:  # noqa: F811
    with_remb = await highest_target(browser, remb=True)
    without = await highest_target(browser, remb=False)
    print("targetBitrate per second, with REMB:", [round(x / 1000) for x in with_remb], "kbit/s")
    print("targetBitrate per second, without:  ", [round(x / 1000) for x in without], "kbit/s")
    assert max(with_remb) >= RAMPED_BPS
    assert max(without) < FLAT_BPS
