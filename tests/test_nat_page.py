"""The browser's NAT mapping test (sfu/web/nat-test.js) agrees with `sfu doctor`.

Behind each of tests/test_doctor.py's NATs (the same namespaces, routers and
coturn on two addresses), `sfu doctor --stun` runs first; then a Chromium inside the
client's namespace opens the diagnostics page, which tests the mapping against the
STUN server the SFU names ([diagnostics] stun → GET /nat-test.json), and then the demo
page, which runs the same test and reports its verdict at join. A browser cannot test
filtering, so the page must agree on the mapping behaviour, report the symmetric NAT
as "symmetric" and every other as "cone", and the server must hold that at join. A
sixth maps per destination address (a port range for each), a seventh forwards no
UDP: the page says "udp_blocked" (the doctor gets no answer). Each demo page's
connection (its chat's data channels) counts under its verdict in the traversal
table: direct for every NAT, relayed (TURN over TCP) for the one without UDP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from sfu.config import Config, TurnConfig
from sfu.control.auth import mint_token
from sfu.diagnostics.nat import ADDRESS_DEPENDENT
from sfu.transport.coturn import Coturn
from tests.conftest import jwt_config, requires_chromium, requires_isolated_network, running
from tests.netns import chromium_in, requires_root_and_iptables
from tests.test_browser_room import CHROMIUM_ARGS
from tests.test_doctor import OTHER, PRIMARY, ROOM, TURNSERVER, Nat, behind_nat, stun_server

pytestmark = [requires_isolated_network, requires_root_and_iptables, requires_chromium,
              pytest.mark.browser, pytest.mark.skipif(
                  TURNSERVER is None, reason="needs coturn (scripts/install.sh --test)")]

SECRET = "p" * 32
# TURN for the page that has no UDP: over TCP, beside the STUN server's ports.
TURN = TurnConfig(host=PRIMARY, port=3480, tls_port=0, secret="t" * 24,
                  relay_port_min=54000, relay_port_max=54099)
CONNECT_TIMEOUT_S = 30  # measured: 0.04-0.2 s direct, 0.1 s relayed over TURN/TCP
STUN_URLS = [f"stun:{PRIMARY}:3478", f"stun:{OTHER}:3478", f"stun:{OTHER}:3479"]


async def doctor_in(nat: Nat) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", nat.client, sys.executable, "-m", "sfu", "doctor", "--stun",
        f"{PRIMARY}:3478", "--timeout", "0.6", "--json", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=Path(__file__).parent.parent)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    report: dict[str, Any] = json.loads(out)
    return report


async def page_in(playwright: Any, nat: Nat, port: int) -> dict[str, Any]:
    """The diagnostics page's NAT test, then the demo page joined as a viewer."""
    origin = f"--unsafely-treat-insecure-origin-as-secure=http://{PRIMARY}:{port}"
    with chromium_in(nat.client) as chromium:
        browser = await playwright.chromium.launch(executable_path=chromium,
                                                   args=[*CHROMIUM_ARGS, origin])
        try:
            page = await browser.new_page()
            await page.goto(f"http://{PRIMARY}:{port}/diagnostics.html")
            result: dict[str, Any] = await page.evaluate("() => window.natTest")
            token = mint_token(SECRET, room="nat-page", identity=nat.kind)
            await page.goto(f"http://{PRIMARY}:{port}/?autojoin=1&publish=0&room=nat-page"
                            f"&name={nat.kind}&token={token}")
            await page.evaluate("() => window.sfuReady.then(() => true)")
            result["demo"] = await page.evaluate("() => window.sfuNat")
            # Its connection for the chat's data channels: counted under its NAT type.
            await page.wait_for_function("() => window.sfu.pubPc?.connectionState === "
                                         "'connected'", timeout=CONNECT_TIMEOUT_S * 1000)
            return result
        finally:
            await browser.close()


def nat_page_config() -> Config:
    config = jwt_config(SECRET)
    config.server.host, config.rtc.listen_ips, config.rtc.ice_tcp = "0.0.0.0", [PRIMARY], False
    config.diagnostics.stun = [f"{PRIMARY}:3478", f"{OTHER}:3479"]
    config.turn = TURN
    return config


async def test_the_page_tells_the_mapping_as_the_doctor_does() -> None:
    from playwright.async_api import async_playwright

    with stun_server(), contextlib.ExitStack() as stack:
        nats = [stack.enter_context(behind_nat(kind, i))
                for i, kind in enumerate([*ROOM, "address-dependent", "udp-blocked"])]
        stack.enter_context(Coturn(TURN))
        async with running(nat_page_config()) as server:
            assert server.port is not None
            # The doctor first: the browser's requests would open the restricted NAT's filter.
            doctors = await asyncio.gather(*(doctor_in(nat) for nat in nats[:-1]))
            async with async_playwright() as playwright:
                pages = await asyncio.gather(*(page_in(playwright, nat, server.port)
                                               for nat in nats))
            reported = {p["name"]: p["nat_type"]
                        for p in server.room_info("nat-page")["participants"]}
            table = server.traversal()
    print("\ntraversal:", json.dumps(table, indent=1))
    # Every page's connection went direct to the SFU, but the one without UDP: relayed.
    outcomes = {nat_type: (row["attempted"], row["direct"], row["relayed"], row["failed"])
                for nat_type, row in table.items()}
    assert outcomes == {"cone": (4, 4, 0, 0), "symmetric": (2, 2, 0, 0),
                        "udp_blocked": (1, 0, 1, 0)}, table
    blocked = pages.pop()
    assert (blocked["mapped"], blocked["mapping"], blocked["natType"]) == (
        [], None, "udp_blocked"), blocked
    assert blocked["demo"]["natType"] == reported["udp-blocked"] == "udp_blocked", reported
    for nat, doctor, page in zip(nats[:-1], doctors, pages, strict=True):
        print(f"\n{nat.kind}: doctor {doctor['mapping']} ({doctor['rfc3489']}); page "
              f"{page['mapping']} → {page['natType']}, mapped {page['mapped']} in {page['ms']} ms")
        assert page["stun"] == STUN_URLS
        assert page["mapping"] == doctor["mapping"], (nat.kind, doctor, page)
        expected = "symmetric" if doctor["rfc3489"] == "symmetric" else "cone"
        if nat.kind == "address-dependent":
            assert doctor["mapping"] == ADDRESS_DEPENDENT, doctor
        assert page["natType"] == page["demo"]["natType"] == expected, (nat.kind, page)
        assert reported[nat.kind] == expected, reported
