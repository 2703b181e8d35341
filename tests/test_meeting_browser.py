"""The demo page's meeting features in headless Chromium (docs/protocol.md, "Track
sources and screen share", "Data channels", "Participant metadata"): a publisher and a
viewer (``?publish=0``) chat over the reliable data channel, the publisher shares its
screen (Chromium's fake capture: --use-fake-ui-for-media-stream and
--use-fake-device-for-media-stream together make getDisplayMedia resolve headless with
a 1280x720 pattern), which the viewer sees in a tile of its own, through a restart and
until the share stops; metadata goes round. The server's side is in tests/test_data.py,
tests/test_sources.py and tests/test_metadata.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from sfu import events
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
from tests.test_browser_room import CHROMIUM_ARGS, wait_for

pytestmark = [requires_isolated_network, requires_chromium, pytest.mark.browser]

SECRET = "b" * 32
STEP_S = 20.0  # for anything to show at the other end (measured well under 2 s)
SCREEN_TILE = "figure.screen[data-source='screen']"


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with running(jwt_config(SECRET)) as instance:
        yield instance


async def open_page(browser: Any, server: Server, name: str,
                    query: str = "") -> tuple[Any, list[str]]:
    token = mint_token(SECRET, room="meet", identity=name, can_update_metadata=name == "alice")
    page = await (await browser.new_context()).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(f"http://127.0.0.1:{server.port}/?room=meet&name={name}&token={token}"
                    f"&autojoin=1{query}")
    await page.evaluate("() => window.sfuReady.then(() => true)")
    return page, errors


def until(page: Any, script: str) -> Any:
    """A wait_for predicate: ``script``'s value, true when it is truthy."""
    async def check() -> tuple[bool, Any]:
        value = await page.evaluate(script)
        return bool(value), value
    return check


def chat_from(participant: str, text: str) -> str:
    return (f"() => [...document.querySelectorAll('#chat-log li[data-from=\"{participant}\"]')]"
            f".some((li) => li.textContent.includes({text!r}))")


SCREEN_FRAMES = f"""() => {{
    const video = document.querySelector("{SCREEN_TILE} video");
    return video ? video.getVideoPlaybackQuality().totalVideoFrames : 0;
}}"""


async def test_chat_screen_share_and_metadata(server: Server) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            alice, alice_errors = await open_page(browser, server, "alice")
            carol, carol_errors = await open_page(browser, server, "carol", "&publish=0")
            alice_id = await alice.evaluate("() => window.sfu.self.id")
            carol_id = await carol.evaluate("() => window.sfu.self.id")
            assert await carol.evaluate("() => window.sfu.localTracks.length") == 0
            assert await carol.is_disabled("#screen")
            assert not await alice.is_disabled("#screen")

            # Chat both ways: the viewer's data-only publish connection carries it too.
            await alice.fill("#chat-input", "hello from alice")
            await alice.click("#chat-send")
            await wait_for(until(carol, chat_from(alice_id, "hello from alice")), STEP_S,
                           "alice's message at carol")
            await carol.fill("#chat-input", "carol here")
            await carol.press("#chat-input", "Enter")
            await wait_for(until(alice, chat_from(carol_id, "carol here")), STEP_S,
                           "carol's message at alice")
            assert await alice.evaluate(chat_from(alice_id, "hello from alice"))  # our own, shown
            too_large = await alice.evaluate("""() => {
                try { window.sfu.sendData('x'.repeat(20000)); } catch (e) { return e.code; }
            }""")
            assert too_large == "data_too_large"

            # Carol records what she asks of each track: a screen share gets no size.
            await carol.evaluate("""() => {
                window.asked = [];
                const original = window.sfu.setSubscription.bind(window.sfu);
                window.sfu.setSubscription = (track, fields) => {
                    window.asked.push([track, fields]);
                    return original(track, fields);
                };
            }""")
            await alice.click("#screen")
            sharing = "() => window.sfu.localTracks.some((t) => t.source === 'screen')"
            await wait_for(until(alice, sharing), STEP_S, "the screen share published")
            assert await alice.get_attribute("#screen", "aria-pressed") == "true"
            assert await alice.is_visible("#local-screen")
            await wait_for(until(carol, f"""() => {{
                const tile = document.querySelector("{SCREEN_TILE}[data-participant='{alice_id}']");
                return tile && tile.querySelector('video').videoWidth === 1280
                    && tile.querySelector('figcaption').textContent;
            }}"""), STEP_S, "alice's screen in its own tile at carol")
            assert await carol.inner_text(f"{SCREEN_TILE} figcaption") == "alice · screen"
            screen = await carol.evaluate(
                "() => Object.values(window.sfu.tracks).find((t) => t.source === 'screen')")
            assert screen["participant"] == alice_id and screen["kind"] == "video", screen
            published = next(p for p in server.room_info("meet")["participants"]
                             if p["id"] == alice_id)["tracks"]
            assert sorted(t["source"] for t in published) == ["camera", "microphone", "screen"]
            asked = await carol.evaluate("() => window.asked")
            assert not any(track == screen["id"] and "maxWidth" in fields
                           for track, fields in asked), asked

            # A restart publishes it all again on new connections: the same track ids,
            # the screen playing on, the data channels open again.
            before = await alice.evaluate("() => window.sfu.localTracks.map((t) => t.id)")
            await alice.evaluate("() => window.sfu.restart({relayOnly: false})")
            assert await alice.evaluate("() => window.sfu.localTracks.map((t) => t.id)") == before
            frames = await carol.evaluate(SCREEN_FRAMES)
            await wait_for(until(carol, f"() => ({SCREEN_FRAMES})() > {frames} + 20"), STEP_S,
                           "the screen after alice's restart")
            await alice.evaluate(
                "() => window.sfu.sendData({text: 'after the restart'}, {topic: 'chat'})")
            await wait_for(until(carol, chat_from(alice_id, "after the restart")), STEP_S,
                           "chat after the restart")

            await alice.click("#screen")
            await wait_for(until(carol, f"() => !document.querySelector(\"{SCREEN_TILE}\")"),
                           STEP_S, "the screen tile gone at carol")
            # The server tells carol before its answer reaches alice's page, which only
            # then drops the track from its own list.
            await wait_for(until(alice, "() => window.sfu.localTracks.length === 2"), STEP_S,
                           "alice's page to drop its screen track")
            assert await alice.get_attribute("#screen", "aria-pressed") == "false"
            assert await alice.evaluate("() => window.sfu.localTracks.length") == 2
            published = next(p for p in server.room_info("meet")["participants"]
                             if p["id"] == alice_id)["tracks"]
            assert sorted(t["source"] for t in published) == ["camera", "microphone"]

            # Metadata: alice's token allows it, carol's does not.
            await alice.evaluate("() => window.sfu.setMetadata({hand: true})")
            hand = f"() => window.sfu.participants['{alice_id}'].metadata.hand"
            await wait_for(until(carol, hand), STEP_S, "alice's metadata at carol")
            assert await alice.evaluate("() => window.sfu.self.metadata") == {"hand": True}
            refused = await carol.evaluate(
                "() => window.sfu.setMetadata({hand: true}).then(() => null, (e) => e.code)")
            assert refused == "forbidden"
            assert alice_errors == carol_errors == []
        finally:
            await browser.close()


async def test_data_between_a_browser_an_aiortc_participant_and_the_backend(
        server: Server) -> None:
    """One room: the page's chat, an aiortc bot and the backend (embedding API) reach
    each other, on the reliable channel in order, and on the lossy one."""
    from playwright.async_api import async_playwright

    heard: list[events.DataReceived] = []

    async def listen(event: events.Event) -> None:
        if isinstance(event, events.DataReceived):
            heard.append(event)

    server.events.add_listener(listen)
    bot = Client(f"ws://127.0.0.1:{server.port}/ws", room="meet", name="bot",
                 token=mint_token(SECRET, room="meet", identity="bot"))
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            alice, errors = await open_page(browser, server, "alice")
            await alice.evaluate("""() => {
                window.gotData = [];
                window.sfu.addEventListener('data', (e) => window.gotData.push(e.detail));
            }""")
            alice_id = await alice.evaluate("() => window.sfu.self.id")
            await bot.join()
            await bot.open_data()

            # Browser → bot and backend: the chat box, in order.
            for n in range(5):
                await alice.fill("#chat-input", f"line {n}")
                await alice.click("#chat-send")
            got = [await bot.next_data() for _ in range(5)]
            assert [(m["from"], m["topic"], m["payload"]["text"], m["reliable"]) for m in got] == [
                (alice_id, "chat", f"line {n}", True) for n in range(5)]
            await wait_for(lambda: backend_heard(heard, alice_id, 5), STEP_S,
                           "alice's messages at the backend")
            assert [e.payload["text"] for e in heard] == [f"line {n}" for n in range(5)]

            # Bot → browser, reliable (into the chat box) and lossy.
            await bot.send_data({"text": "hello from the bot"}, topic="chat")
            await wait_for(until(alice, chat_from(bot.participant_id or "", "hello from the bot")),
                           STEP_S, "the bot's message in alice's chat")
            await bot.send_data({"position": [1, 2]}, topic="cursor", reliable=False)
            await wait_for(until(alice, "() => window.gotData.find((d) => d.topic === 'cursor')"),
                           STEP_S, "the bot's lossy message at alice")
            lossy = await alice.evaluate(
                "() => window.gotData.find((d) => d.topic === 'cursor')")
            assert lossy == {"from": bot.participant_id, "payload": {"position": [1, 2]},
                             "topic": "cursor", "reliable": False}

            # Backend → both: `from` null, the page shows it as the server's.
            assert server.send_data("meet", {"text": "the room closes soon"}, topic="chat") == 2
            assert (await bot.next_data())["from"] is None
            await wait_for(until(alice, chat_from("", "the room closes soon")), STEP_S,
                           "the backend's message in alice's chat")
            assert "Server" in await alice.inner_text("#chat-log li[data-from='']")
            assert errors == []
        finally:
            await bot.close()
            await browser.close()


async def backend_heard(heard: list[events.DataReceived], sender: str, count: int
                        ) -> tuple[bool, Any]:
    """A wait_for predicate: the backend has heard ``count`` messages of ``sender``."""
    texts = [e.payload for e in heard if e.participant == sender]
    return len(texts) >= count, texts
