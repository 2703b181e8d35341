"""Shared fixtures: an in-process server, and the isolation checks WebRTC tests need."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Generator
from typing import Any

# Imported now, not first at the end of a run: pytest's assertion rewriting of a late
# import can hit CPython 3.11.7's spurious "AST constructor recursion depth mismatch"
# (python/cpython#106905) after threaded tests (aiortc encodes in threads).
import hypothesis  # noqa: F401
import pytest

from sfu.config import Config
from sfu.fastpath import cython_unavailable_reason
from sfu.server import Server

CHROMIUM = "/usr/bin/chromium"

# CI (CI=true) provides everything a test can ask for: root, Chromium, Firefox, GStreamer,
# coturn, iptables, the Cython extension. There a skip means a requirement went missing,
# so it fails the test rather than letting the run pass without it.
SKIPS_FAIL = os.environ.get("CI", "").lower() == "true"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if SKIPS_FAIL and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where its requirement must be present: {reason}"


def network_is_isolated() -> bool:
    """True inside a namespace whose only interface is loopback (docs/architecture.md,
    "Testing WebRTC here")."""
    # /proc/net/dev follows the network namespace; /sys/class/net would need a remount.
    try:
        with open("/proc/net/dev") as dev:
            names = {line.split(":")[0].strip() for line in dev.readlines()[2:]}
    except OSError:
        return False
    return names == {"lo"}


requires_isolated_network = pytest.mark.skipif(
    not network_is_isolated(),
    reason="WebRTC tests run only in a network namespace with nothing but loopback: "
    "run them through scripts/test.sh (as root it wraps pytest in `unshare --net`)",
)

requires_chromium = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None,
    reason=f"{CHROMIUM} is missing: scripts/install.sh installs Debian's chromium",
)


def make_config(**rtc: object) -> Config:
    config = Config()
    config.server.port = 0
    config.rtc.udp_port = 0  # one UDP port, a free one: tests may run servers side by side
    config.rtc.tcp_port = 0
    for key, value in rtc.items():
        setattr(config.rtc, key, value)
    return config


def jwt_config(secret: str) -> Config:
    """A config whose joins need HS256 tokens signed with ``secret``."""
    config = make_config()
    config.auth.mode, config.auth.secret = "jwt", secret
    return config


@contextlib.asynccontextmanager
async def running(config: Config) -> AsyncIterator[Server]:
    """A started server, stopped on the way out."""
    instance = Server(config)
    await instance.start()
    try:
        yield instance
    finally:
        await instance.stop()


def _forwarder_params() -> list[Any]:
    reason = cython_unavailable_reason()
    cython_marks = [] if reason is None else [pytest.mark.skip(reason=reason)]
    return [pytest.param("cython", marks=cython_marks), pytest.param("python")]


@pytest.fixture(params=_forwarder_params())
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Server]:
    """A running server on a free port, once with each forwarder."""
    instance = Server(make_config(forwarder=request.param))
    assert instance.forwarder.implementation == request.param
    await instance.start()
    try:
        yield instance
    finally:
        await instance.stop()


@contextlib.asynccontextmanager
async def publisher_and_subscriber(
    server: Server, room: str
) -> AsyncIterator[tuple[Any, Any, Any]]:
    """alice publishes video, bob receives it: (alice, bob, bob's track), once bob has
    decoded a first frame (every connection is up)."""
    from aiortc import VideoStreamTrack

    from sfu.client import Client

    url = f"ws://127.0.0.1:{server.port}/ws"
    alice = Client(url, room=room, name="alice")
    bob = Client(url, room=room, name="bob")
    try:
        await alice.join()
        await bob.join()
        await alice.publish([VideoStreamTrack()])
        _, track = await bob.next_track()
        await asyncio.wait_for(track.recv(), 10)
        yield alice, bob, track
    finally:
        await alice.close()
        await bob.close()
