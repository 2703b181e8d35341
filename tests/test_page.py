"""The demo page as people use it from their own machines: over HTTPS on an address that
is not loopback (a self-signed certificate, Chromium told to accept it), with the
controls every meeting has — camera and microphone off for everyone, another camera —
and what it says when something is wrong: an insecure page, a dropped WebSocket.

One participant ("guest") runs in a network namespace joined to the test's by a veth
pair, at the namespace's address, as a laptop on a LAN would; the other ("host") on the
test's side. Screenshots at desktop and phone sizes go to $SFU_SCREENSHOTS (the README's
are made with SFU_SCREENSHOTS=docs).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from sfu.control import tls
from sfu.control.auth import mint_token
from sfu.server import Server
from tests.conftest import (
    CHROMIUM,
    jwt_config,
    requires_chromium,
    requires_isolated_network,
    running,
)
from tests.netns import (
    IPTABLES,
    ClientNamespace,
    client_namespace,
    requires_root_and_iptables,
    run,
)
from tests.test_browser_room import CHROMIUM_ARGS, stats_by_name, wait_for

pytestmark = [requires_isolated_network, requires_chromium, requires_root_and_iptables,
              pytest.mark.browser]

SECRET = "p" * 32
ACCEPT_CERTIFICATE = "--ignore-certificate-errors"  # the test's self-signed one
# Chromium's fake cameras: the first I420, the second a Y16 depth camera (not a picture
# one would send), the third MJPEG: the test switches from the first to the third.
FAKE_CAMERAS = "--use-fake-device-for-media-stream=device-count=3"
MEDIA_S = 30.0
STEP_S = 10.0  # for a control to show at the other end (measured well under 1 s)


@pytest.fixture
def guest_namespace() -> Iterator[ClientNamespace]:
    with client_namespace("page", "10.91.0") as namespace:
        yield namespace


@pytest.fixture
async def https_server(guest_namespace: ClientNamespace, tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Server]:
    monkeypatch.setattr(tls, "SELF_SIGNED_DIRECTORY", tmp_path / "tls")
    config = jwt_config(SECRET)
    config.server.host = "0.0.0.0"
    config.server.tls_self_signed = True
    config.rtc.listen_ips = ["127.0.0.1", guest_namespace.host_address]
    async with running(config) as server:
        yield server


async def open_page(playwright: Any, executable: str, url: str,
                    args: tuple[str, ...] = ()) -> tuple[Any, Any, list[str]]:
    """(browser, page, page errors) at ``url``, not yet waited on."""
    browser = await playwright.chromium.launch(executable_path=executable,
                                               args=[*CHROMIUM_ARGS, *args])
    page = await (await browser.new_context()).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(url)
    return browser, page, errors


async def open_guest_and_host(playwright: Any, namespace: ClientNamespace, server: Server,
                              guest_args: tuple[str, ...] = ()) -> list[tuple[Any, Any, list[str]]]:
    """The guest (in the namespace) and the host, each on the HTTPS page at the
    namespace's address, joining: [(browser, page, page errors)] for each."""
    address, port = namespace.host_address, server.port
    return [await open_page(playwright, executable,
                            f"https://{address}:{port}/?autojoin=1&{query(name)}",
                            (ACCEPT_CERTIFICATE, *args))
            for name, executable, args in (("guest", namespace.chromium, guest_args),
                                           ("host", CHROMIUM, ()))]


def query(name: str) -> str:
    return f"room=page&name={name}&token={mint_token(SECRET, room='page', identity=name)}"


async def notice(page: Any) -> str | None:
    kind: str | None = await page.evaluate(
        "() => document.getElementById('notice').hidden ? null "
        ": document.getElementById('notice').dataset.kind")
    return kind


async def tile_shows(page: Any, participant: str, selector: str) -> bool:
    shown: bool = await page.locator(
        f'[data-participant="{participant}"] {selector}').is_visible()
    return shown


def video_consumer_packets(server: Server, subscriber: str, publisher: str) -> int:
    """What the forwarder sent ``subscriber`` of ``publisher``'s video, so far."""
    link = server.participants[subscriber]
    for subscription in link.participant.subscriptions.values():
        if subscription.track.participant == publisher and subscription.track.kind == "video":
            return server.forwarder.consumer_stats(subscription.consumer)[0]
    raise AssertionError(f"{subscriber} has no video subscription of {publisher}")


async def test_two_people_meet_over_https_and_plain_http_says_why_it_cannot(
        https_server: Server, guest_namespace: ClientNamespace) -> None:
    from playwright.async_api import async_playwright

    address = guest_namespace.host_address
    async with async_playwright() as playwright:
        (guest, guest_page, guest_errors), (host, host_page, host_errors) = (
            await open_guest_and_host(playwright, guest_namespace, https_server))
        try:
            for page in (guest_page, host_page):
                await page.evaluate("() => window.sfuReady.then(() => true)")
                assert await page.evaluate("() => window.isSecureContext")
            for page, other in ((guest_page, "host"), (host_page, "guest")):

                async def decoding(page: Any = page, other: str = other) -> tuple[bool, Any]:
                    stats = await stats_by_name(page)
                    return other in stats and stats[other]["video"]["framesDecoded"] > 0, stats

                await wait_for(decoding, MEDIA_S, f"{other}'s video over HTTPS")
            assert guest_errors == host_errors == []
        finally:
            await guest.close()
            await host.close()

        # The same page over plain HTTP on that address: not a secure context, so no
        # camera; it says so and joins as a viewer instead of throwing.
        config = jwt_config(SECRET)
        config.server.host = address
        config.rtc.listen_ips = [address]
        plain = Server(config)
        await plain.start()
        try:
            browser, page, errors = await open_page(
                playwright, guest_namespace.chromium,
                f"http://{address}:{plain.port}/?autojoin=1&{query('plain')}")
            try:
                await page.evaluate("() => window.sfuReady.then(() => true)")
                assert not await page.evaluate("() => window.isSecureContext")
                assert await notice(page) == "insecure"
                text = await page.locator("#notice-text").inner_text()
                print("insecure notice:", text)
                assert "HTTPS" in text
                https = await page.locator("#notice-https").get_attribute("href")
                assert https is not None and https.startswith(f"https://{address}:")
                assert errors == [], errors
                assert await page.evaluate("() => window.sfu.joined !== null")
            finally:
                await browser.close()
        finally:
            await plain.stop()


async def test_mute_another_camera_and_a_dropped_websocket(
        https_server: Server, guest_namespace: ClientNamespace) -> None:
    from playwright.async_api import async_playwright

    address, port = guest_namespace.host_address, https_server.port
    assert IPTABLES is not None
    async with async_playwright() as playwright:
        (guest, guest_page, guest_errors), (host, host_page, _) = await open_guest_and_host(
            playwright, guest_namespace, https_server, (FAKE_CAMERAS,))
        try:
            for page in (guest_page, host_page):
                await page.evaluate("() => window.sfuReady.then(() => true)")
            guest_id = await guest_page.evaluate("() => window.sfu.self.id")
            host_id = await host_page.evaluate("() => window.sfu.self.id")

            async def host_decodes_guest() -> tuple[bool, Any]:
                stats = await stats_by_name(host_page)
                return "guest" in stats and stats["guest"]["video"]["framesDecoded"] > 0, stats

            await wait_for(host_decodes_guest, MEDIA_S, "the guest's video at the host")
            assert await host_page.locator("#count").inner_text() == "2 in the room"

            # Camera off: the host's tile of the guest says so, and the SFU forwards no
            # video of it (a paused producer), not just black frames.
            await guest_page.click("#camera")
            assert await guest_page.get_attribute("#camera", "aria-pressed") == "true"
            await wait_for(lambda: _shown(host_page, guest_id, ".muted-video", True), STEP_S,
                           "the camera-off overlay")
            await asyncio.sleep(0.5)  # what was in flight
            before = video_consumer_packets(https_server, host_id, guest_id)
            paused_before = https_server.forwarder.counters()["skip_paused"]
            await asyncio.sleep(1.5)
            assert video_consumer_packets(https_server, host_id, guest_id) == before
            assert https_server.forwarder.counters()["skip_paused"] > paused_before
            await guest_page.click("#camera")
            await wait_for(lambda: _shown(host_page, guest_id, ".muted-video", False), STEP_S,
                           "the overlay to go")
            await wait_for(lambda: _grows(https_server, host_id, guest_id, before), STEP_S,
                           "video forwarded again")
            await guest_page.click("#mic")
            await wait_for(lambda: _shown(host_page, guest_id, ".muted-audio", True), STEP_S,
                           "the mic-off badge")
            await guest_page.click("#mic")

            # Another camera: the published track is replaced in place and the host goes
            # on decoding it.
            cameras = await guest_page.eval_on_selector_all(
                "#camera-select option", "options => options.map(o => [o.value, o.text])")
            print("cameras:", cameras)
            assert len(cameras) == 3
            label = ("() => window.sfu.pubPc.getSenders().find(s => s.track?.kind === "
                     "'video').track.label")
            first_label = await guest_page.evaluate(label)
            other = cameras[2][0]
            await guest_page.select_option("#camera-select", other)
            await wait_for(lambda: _differs(guest_page, label, first_label), STEP_S,
                           "the other camera on the sender")
            frames = (await stats_by_name(host_page))["guest"]["video"]["framesDecoded"]
            await wait_for(lambda: _frames_beyond(host_page, frames + 30), STEP_S,
                           "the host decoding the other camera")

            # The WebSocket drops (the guest's network goes away a while): the page says
            # it is reconnecting, resumes when the network is back, and the call goes on
            # as the same participant.
            block = ("OUTPUT", "-p", "tcp", "-d", address, "--dport", str(port),
                     "-j", "REJECT", "--reject-with", "tcp-reset")
            guest_namespace.iptables("-I", *block)
            run("ip", "netns", "exec", guest_namespace.name, "ss", "-K", "dst", address,
                "dport", "=", str(port))
            await wait_for(lambda: _notice_is(guest_page, "reconnecting"), STEP_S,
                           "the reconnecting notice")
            dropped_at = time.monotonic()
            await asyncio.sleep(2)
            guest_namespace.iptables("-D", *block)
            await wait_for(lambda: _notice_is(guest_page, "reconnected"), 20,
                           "the reconnected notice")
            print(f"resumed {time.monotonic() - dropped_at:.1f} s after the drop")
            assert await guest_page.evaluate("() => window.sfu.self.id") == guest_id
            assert list(https_server.participants) == [guest_id, host_id] or set(
                https_server.participants) == {guest_id, host_id}
            frames = (await stats_by_name(host_page))["guest"]["video"]["framesDecoded"]
            await wait_for(lambda: _frames_beyond(host_page, frames + 30), STEP_S,
                           "video after the resume")
            assert guest_errors == [], guest_errors

            directory = os.environ.get("SFU_SCREENSHOTS")
            if directory:
                for size, (width, height) in {"desktop": (1280, 800),
                                              "phone": (390, 844)}.items():
                    await host_page.set_viewport_size({"width": width, "height": height})
                    await asyncio.sleep(1.0)
                    await host_page.screenshot(path=f"{directory}/page-{size}.png")
        finally:
            await guest.close()
            await host.close()


async def _shown(page: Any, participant: str, selector: str, shown: bool) -> tuple[bool, Any]:
    now = await tile_shows(page, participant, selector)
    return now == shown, now


async def _grows(server: Server, subscriber: str, publisher: str,
                 before: int) -> tuple[bool, Any]:
    now = video_consumer_packets(server, subscriber, publisher)
    return now > before, now


async def _differs(page: Any, script: str, before: str) -> tuple[bool, Any]:
    now = await page.evaluate(script)
    return now != before, now


async def _frames_beyond(page: Any, frames: int) -> tuple[bool, Any]:
    stats = await stats_by_name(page)
    now = stats.get("guest", {}).get("video", {}).get("framesDecoded", 0)
    return now >= frames, now


async def _notice_is(page: Any, kind: str) -> tuple[bool, Any]:
    now = await notice(page)
    return now == kind, now


@pytest.mark.parametrize(("args", "kind", "publishes"), [
    # The browser refuses the camera and microphone: watching only.
    (("--deny-permission-prompts",), "permission", 0),
    # No camera (Chromium's fake devices, none of them): the microphone alone.
    (("--use-fake-device-for-media-stream=device-count=0",), "no-camera", 1),
], ids=["permission-refused", "no-camera"])
async def test_the_page_says_what_keeps_it_from_publishing(
        args: tuple[str, ...], kind: str, publishes: int) -> None:
    from playwright.async_api import async_playwright

    from tests.conftest import make_config

    config = make_config()
    server = Server(config)
    await server.start()
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM,
                args=[a for a in CHROMIUM_ARGS if a != "--use-fake-ui-for-media-stream"
                      or kind != "permission"] + list(args))
            page = await (await browser.new_context()).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            try:
                await page.goto(f"http://127.0.0.1:{server.port}/?autojoin=1&room=e&name=n")
                await page.evaluate("() => window.sfuReady.then(() => true)")
                assert await notice(page) == kind
                print(f"{kind}:", await page.locator("#notice-text").inner_text())
                published = await page.evaluate("() => window.sfu.localTracks.length")
                assert published == publishes
                assert errors == [], errors
            finally:
                await browser.close()
    finally:
        await server.stop()


async def test_the_page_says_when_the_server_cannot_be_reached() -> None:
    from playwright.async_api import async_playwright

    from tests.conftest import make_config

    server = Server(make_config())
    await server.start()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM,
                                                   args=CHROMIUM_ARGS)
        page = await (await browser.new_context()).new_page()
        try:
            await page.goto(f"http://127.0.0.1:{server.port}/?room=e&name=n")
            await server.stop()  # the page is loaded; its server is gone
            await page.click("#join")
            await wait_for(lambda: _notice_is(page, "unreachable"), STEP_S,
                           "the unreachable notice")
            print("unreachable:", await page.locator("#notice-text").inner_text())
            assert await page.locator("#notice-retry").is_visible()
        finally:
            await browser.close()
