"""ICE over TCP (sfu/transport/tcp_port.py): a Chromium whose UDP is dropped by iptables,
with no TURN configured, connects over the SFU's one TCP port and media flows both
ways with a Chromium on the test's side; hostile streams at the port are closed and
counted while the call runs."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sfu.control.auth import mint_token
from tests.conftest import (
    CHROMIUM,
    jwt_config,
    requires_chromium,
    requires_isolated_network,
    running,
)
from tests.netns import ClientNamespace, client_namespace, requires_root_and_iptables
from tests.test_browser_room import launch_demo_page, stats_by_name, wait_for
from tests.test_shared_port import binding_request
from tests.test_turn_topologies import STATE

pytestmark = [requires_isolated_network, requires_chromium, requires_root_and_iptables,
              pytest.mark.browser]

SECRET = "i" * 32
MEDIA_S = 40.0  # for video to flow both ways over TCP (measured 3–5 s)
DROP_ALL_UDP = [("-A", "OUTPUT", "-p", "udp", "-j", "DROP"),
                ("-A", "INPUT", "-p", "udp", "-j", "DROP")]


@pytest.fixture
def firewalled() -> Iterator[ClientNamespace]:
    with client_namespace("itcp", "10.87.0") as namespace:
        for rule in DROP_ALL_UDP:
            namespace.iptables(*rule)
        yield namespace


async def test_a_client_without_udp_connects_over_ice_tcp(firewalled: ClientNamespace) -> None:
    from playwright.async_api import async_playwright

    config = jwt_config(SECRET)
    config.server.host = "0.0.0.0"
    config.rtc.listen_ips = ["127.0.0.1", firewalled.host_address]
    assert not config.turn.host  # no TURN to fall back on
    async with running(config) as server, async_playwright() as playwright:
        assert server.port is not None and server.ctx.tcp_port is not None
        browsers = []
        try:
            pages = {}
            for name, executable, address in (
                    ("client", firewalled.chromium, firewalled.host_address),
                    ("host", CHROMIUM, "127.0.0.1")):
                token = mint_token(SECRET, room="tcp", identity=name)
                browser, pages[name] = await launch_demo_page(
                    playwright, executable, address, server.port,
                    f"room=tcp&name={name}&token={token}")
                browsers.append(browser)
            started = time.monotonic()

            async def both_ways() -> tuple[bool, Any]:
                client = await stats_by_name(pages["client"])
                host = await stats_by_name(pages["host"])
                ok = (client.get("host", {}).get("video", {}).get("framesDecoded", 0) > 10
                      and host.get("client", {}).get("video", {}).get("framesDecoded", 0) > 10)
                return ok, (client, host)

            await wait_for(both_ways, MEDIA_S, "video both ways with the client on TCP")
            print(f"media both ways {time.monotonic() - started:.1f} s after joining")
            state = await pages["client"].evaluate(STATE)
            print("client:", state)
            link = next(p for p in server.participants.values()
                        if p.participant.name == "client")
            for transport in (link.publish, link.subscribe):
                assert transport is not None and transport.selected is not None
                assert transport.selected.fd == -1  # a TCP stream, not a UDP socket
                assert transport.selected.local_type == "host"
            protocols = await pages["client"].evaluate(LOCAL_PROTOCOLS)
            assert protocols == ["tcp", "tcp"], protocols

            # Streams that name nobody, or say nothing that is STUN, are closed and
            # counted while the call goes on.
            drops = server.stats.transport_drops
            for payload in (binding_request(f"{os.urandom(4).hex()}:x"), b"GET / HTTP/1.1"):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.ctx.tcp_port)
                writer.write(len(payload).to_bytes(2, "big") + payload)
                assert await asyncio.wait_for(reader.read(10), 5) == b""  # closed by the server
                writer.close()
            assert (drops["tcp_unknown_ufrag"], drops["tcp_not_stun"]) == (1, 1)
            frames = (await stats_by_name(pages["host"]))["client"]["video"]["framesDecoded"]
            await asyncio.sleep(1)
            later = (await stats_by_name(pages["host"]))["client"]["video"]["framesDecoded"]
            assert later > frames + 10
        finally:
            for browser in browsers:
                await browser.close()


# The protocol of each connection's selected local candidate, as the browser sees it.
LOCAL_PROTOCOLS = """async () => {
    const out = [];
    for (const pc of [window.sfu.pubPc, window.sfu.subPc]) {
        const stats = await pc.getStats();
        for (const s of stats.values())
            if (s.type === 'transport' && s.selectedCandidatePairId) {
                const pair = stats.get(s.selectedCandidatePairId);
                out.push(stats.get(pair.localCandidateId).protocol);
            }
    }
    return out;
}"""
