"""Three headless Chromium participants in one room see and hear each other."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sfu.server import Server
from tests.conftest import CHROMIUM, requires_chromium, requires_isolated_network

pytestmark = [requires_isolated_network, requires_chromium, pytest.mark.browser]

CHROMIUM_ARGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--autoplay-policy=no-user-gesture-required",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
NAMES = ("alice", "bob", "carol")
MEDIA_TIMEOUT_S = 20.0


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        instance = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield instance
        finally:
            await instance.close()


async def open_participant(
    browser: Any, port: int, room: str, name: str, query: str = ""
) -> Any:
    page = await (await browser.new_context()).new_page()
    await page.goto(f"http://127.0.0.1:{port}/?room={room}&name={name}&autojoin=1{query}")
    await page.evaluate("() => window.sfuReady")
    # Record control events from here on, for the leave assertions.
    await page.evaluate(
        """() => {
            window.testEvents = [];
            for (const type of ['participant_left', 'trackended'])
                window.sfu.addEventListener(type, e => window.testEvents.push(
                    {type, participant: e.detail.participant}));
        }"""
    )
    return page


async def launch_demo_page(playwright: Any, executable: str, address: str, port: int | None,
                           query: str, args: tuple[str, ...] = ()) -> tuple[Any, Any]:
    """(browser, page): a Chromium (maybe a wrapper that runs it in another network
    namespace) on the demo page at ``address``, joined; ``query`` holds room, name,
    token and the rest. getUserMedia needs a secure context, and only localhost counts
    by default: the flag makes the test address count too."""
    origin = f"--unsafely-treat-insecure-origin-as-secure=http://{address}:{port}"
    browser = await playwright.chromium.launch(executable_path=executable,
                                               args=[*CHROMIUM_ARGS, origin, *args])
    page = await (await browser.new_context()).new_page()
    await page.goto(f"http://{address}:{port}/?autojoin=1&{query}")
    await page.evaluate("() => window.sfuReady.then(() => true)")
    return browser, page


async def stats_by_name(page: Any) -> dict[str, Any]:
    """inboundStats() keyed by the sender's display name."""
    stats: dict[str, Any] = await page.evaluate("() => window.sfu.inboundStats()")
    return {entry["name"]: entry for entry in stats.values()}


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        ok, last = await predicate()
        if ok:
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last}")


def receiving(stats: dict[str, Any], others: list[str]) -> bool:
    return all(
        name in stats
        and stats[name]["video"]["framesDecoded"] > 0
        and stats[name]["audio"]["totalSamplesReceived"] > 0
        for name in others
    )


async def test_three_browsers_see_and_hear_each_other(server: Server, browser: Any) -> None:
    started = time.monotonic()
    assert server.port is not None
    pages = {name: await open_participant(browser, server.port, "room1", name) for name in NAMES}

    for name, page in pages.items():
        others = [n for n in NAMES if n != name]

        async def check(page: Any = page, others: list[str] = others) -> tuple[bool, Any]:
            stats = await stats_by_name(page)
            return receiving(stats, others), stats

        await wait_for(check, MEDIA_TIMEOUT_S, f"{name} to decode {others}")
    print(f"all media decoded {time.monotonic() - started:.1f} s after the first join")

    # Decoding keeps going: frames and audio samples increase over two seconds.
    before = {name: await stats_by_name(page) for name, page in pages.items()}
    await asyncio.sleep(2.0)
    after = {name: await stats_by_name(page) for name, page in pages.items()}
    for name in NAMES:
        for other in (n for n in NAMES if n != name):
            frames = after[name][other]["video"]["framesDecoded"] - before[name][other]["video"][
                "framesDecoded"]
            samples = after[name][other]["audio"]["totalSamplesReceived"] - before[name][other][
                "audio"]["totalSamplesReceived"]
            print(f"{name} <- {other}: +{frames} frames, +{samples} audio samples in 2 s")
            assert frames >= 10, f"{name} decoded only {frames} frames of {other} in 2 s"
            assert samples >= 48000, f"{name} got only {samples} audio samples of {other}"
            width = after[name][other]["video"]["frameWidth"]
            assert width > 0, f"{name} sees no resolution for {other}"

    # carol leaves: the others are told, and her tracks stop reaching them.
    carol_id = await pages["carol"].evaluate("() => window.sfu.self.id")
    await pages["carol"].evaluate("() => window.sfu.leave()")
    for name in ("alice", "bob"):

        async def told(page: Any = pages[name]) -> tuple[bool, Any]:
            events = await page.evaluate("() => window.testEvents")
            return {"type": "participant_left", "participant": carol_id} in events, events

        await wait_for(told, 5.0, f"{name} to get participant_left for carol")

    await asyncio.sleep(1.0)
    first = {name: await pages[name].evaluate("() => window.sfu.subPc.getStats().then(r => "
                                              "[...r.values()].filter(s => s.type === "
                                              "'inbound-rtp').map(s => [s.mid, s.bytesReceived]))")
             for name in ("alice", "bob")}
    await asyncio.sleep(1.5)
    for name in ("alice", "bob"):
        stats = await stats_by_name(pages[name])
        assert "carol" not in stats, f"{name} still lists carol's tracks: {stats}"
        assert receiving(stats, [n for n in ("alice", "bob") if n != name])
    # Whatever inbound streams remain, only the remaining participant's keep growing.
    second = {name: dict(await pages[name].evaluate(
        "() => window.sfu.subPc.getStats().then(r => [...r.values()].filter(s => s.type === "
        "'inbound-rtp').map(s => [s.mid, s.bytesReceived]))")) for name in ("alice", "bob")}
    for name in ("alice", "bob"):
        grown = [mid for mid, value in first[name] if second[name].get(mid, value) > value]
        assert len(grown) == 2, f"{name}: streams still growing after carol left: {grown}"


INBOUND_VIDEO_CODECS = """async () => {
    const report = await window.sfu.subPc.getStats();
    const codecs = [];
    for (const s of report.values())
        if (s.type === 'inbound-rtp' && s.kind === 'video' && s.codecId && s.framesDecoded > 0)
            codecs.push(report.get(s.codecId).mimeType);
    return codecs;
}"""


async def test_h264_publisher_reaches_a_vp8_publisher(server: Server, browser: Any) -> None:
    """The subscriber receives the codec the publisher sends: H.264 here, VP8 back."""
    assert server.port is not None
    alice = await open_participant(browser, server.port, "h264", "alice", "&codec=H264")
    bob = await open_participant(browser, server.port, "h264", "bob")
    for page, other, codec in ((bob, "alice", "video/H264"), (alice, "bob", "video/VP8")):

        async def check(page: Any = page, other: str = other, codec: str = codec
                        ) -> tuple[bool, Any]:
            stats = await stats_by_name(page)
            codecs = await page.evaluate(INBOUND_VIDEO_CODECS)
            return receiving(stats, [other]) and codecs == [codec], (codecs, stats)

        await wait_for(check, MEDIA_TIMEOUT_S, f"{codec} from {other} to decode")
    counters = server.forwarder.counters()
    print("forwarder counters:", {k: v for k, v in counters.items() if v})
    assert counters["drop_srtp_fail"] == 0 and counters["drop_bad_header"] == 0
