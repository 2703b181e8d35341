"""The diagnostics page (sfu/web/diagnostics.html) in Chromium, against a server with a
real coturn: it joins, gathers host candidates, gets a relay candidate over each TURN
transport (UDP, TCP, TLS), and sees its own video come back through the SFU with a
round-trip time; with TURN gone, each TURN row says it failed. With SFU_SCREENSHOTS set
it saves the screenshot the README shows."""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest

from sfu.config import TurnConfig
from sfu.transport.coturn import Coturn
from tests.conftest import (
    CHROMIUM,
    make_config,
    requires_chromium,
    requires_isolated_network,
    running,
)
from tests.test_browser_room import CHROMIUM_ARGS

pytestmark = [requires_isolated_network, requires_chromium, pytest.mark.browser,
              pytest.mark.skipif(shutil.which("turnserver", path="/usr/bin:/usr/sbin") is None,
                                 reason="needs coturn (scripts/install.sh --test)")]

TURN = TurnConfig(host="127.0.0.1", secret="g" * 24, relay_port_min=53000,
                  relay_port_max=53099)


async def diagnose(playwright: Any, port: int, screenshot: str | None = None
                   ) -> dict[str, Any]:
    # The development coturn's certificate is its own: TURNS would fail verification.
    browser = await playwright.chromium.launch(
        executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, "--ignore-certificate-errors"])
    try:
        page = await (await browser.new_context()).new_page()
        await page.goto(f"http://127.0.0.1:{port}/diagnostics.html")
        report: dict[str, Any] = await page.evaluate("() => window.diagnostics")
        if screenshot:
            await page.set_viewport_size({"width": 1100, "height": 760})
            await page.screenshot(path=screenshot, full_page=True)
        return report
    finally:
        await browser.close()


async def test_the_diagnostics_page_reports_candidates_turn_and_a_loopback() -> None:
    from playwright.async_api import async_playwright

    config = make_config()
    config.turn = TURN
    directory = os.environ.get("SFU_SCREENSHOTS")
    async with async_playwright() as playwright:
        with Coturn(TURN) as coturn:
            async with running(config) as server:
                assert server.port is not None
                report = await diagnose(playwright, server.port,
                                        directory and f"{directory}/diagnostics.png")
                results = {c["check"]: c["result"] for c in report["checks"]}
                print("\n", report["checks"], report.get("loopback"))
                assert results["signalling (WebSocket)"] == "ok"
                # No [diagnostics] stun: no NAT test (tests/test_nat_page.py runs it).
                assert results["NAT mapping"] == "none"
                assert results["host candidates"] == "ok"
                turn_rows = {k: v for k, v in results.items() if k.startswith("TURN ")}
                assert turn_rows == {"TURN turn:127.0.0.1:3478?transport=udp": "ok",
                                     "TURN turn:127.0.0.1:3478?transport=tcp": "ok",
                                     "TURN turns:127.0.0.1:5349?transport=tcp": "ok"}, results
                loop = report["loopback"]
                assert results["video through the SFU"] == "ok", loop
                assert loop["fps"] >= 5 and loop["packets"] > 0 and loop["loss"] < 0.05, loop
                assert loop["rttMs"] is not None and 0 <= loop["rttMs"] < 500, loop

                coturn.stop()
                report = await diagnose(playwright, server.port)
                results = {c["check"]: c["result"] for c in report["checks"]}
                assert [v for k, v in results.items() if k.startswith("TURN ")] == [
                    "failed"] * 3, results
                assert results["video through the SFU"] == "ok"  # direct, no TURN needed
