"""TURN credentials (TURN REST API scheme) and what coturn makes of them.

The scheme is checked against an independent HMAC (openssl's), then against coturn
itself: `turnutils_uclient` allocates and relays with a credential the SFU minted, and
is refused with an expired one or one signed with another secret. Plus the
`joined.ice_servers` a participant gets.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from sfu.config import Config, ConfigError, TurnConfig
from sfu.transport.coturn import Coturn, config_text
from sfu.transport.turn import credential, ephemeral_credentials
from sfu.transport.turn_pool import TurnPool, TurnServer, try_allocation
from tests.conftest import requires_isolated_network

SECRET = "north-wind-" + "x" * 12
UCLIENT = shutil.which("turnutils_uclient")


def test_credential_is_base64_hmac_sha1_of_the_username() -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is missing")
    username = "1700000000:alice"
    digest = subprocess.run([openssl, "dgst", "-sha1", "-hmac", SECRET, "-binary"],
                            input=username.encode(), capture_output=True, check=True).stdout
    assert credential(SECRET, username) == base64.b64encode(digest).decode()


def test_username_is_expiry_then_identity() -> None:
    username, password = ephemeral_credentials(SECRET, "alice:phone", 600, now=1_700_000_000.7)
    assert username == "1700000600:alice:phone"
    assert password == credential(SECRET, username)
    assert ephemeral_credentials(SECRET, "", 60, now=10)[0] == "70:participant"


def test_ice_servers_carry_udp_tcp_and_tls_urls_and_never_the_secret() -> None:
    turn = TurnConfig(host="10.1.2.3", secret=SECRET, credential_ttl_s=300)
    (server,) = TurnPool(turn).ice_servers("bob", now=1000)
    assert server["urls"] == ["turn:10.1.2.3:3478?transport=udp",
                              "turn:10.1.2.3:3478?transport=tcp",
                              "turns:10.1.2.3:5349?transport=tcp"]
    assert server["username"] == "1300:bob"
    assert SECRET not in str(server)
    assert TurnPool(TurnConfig()).ice_servers("bob") == []  # no TURN configured
    assert TurnServer("::1", 3478, 0).urls() == [
        "turn:[::1]:3478?transport=udp", "turn:[::1]:3478?transport=tcp"]


def test_turn_config_is_checked() -> None:
    for bad in (TurnConfig(host="10.0.0.1", secret="short"),
                TurnConfig(host="10.0.0.1", secret=SECRET, tls_port=3478),
                TurnConfig(host="turn.example", secret=SECRET, start_local=True),
                TurnConfig(start_local=True)):
        config = Config()
        config.turn = bad
        with pytest.raises(ConfigError, match="turn"):
            config.validate()


def test_coturn_config_allows_loopback_peers_only_on_loopback(tmp_path: object) -> None:
    from pathlib import Path

    directory = Path(str(tmp_path))
    cert, key = directory / "c.pem", directory / "k.pem"
    local = config_text(TurnConfig(host="127.0.0.1", secret=SECRET), directory, cert, key)
    shared = config_text(TurnConfig(host="10.0.0.1", secret=SECRET), directory, cert, key)
    assert "allow-loopback-peers" in local and "allow-loopback-peers" not in shared
    for text in (local, shared):
        assert "use-auth-secret" in text and f"static-auth-secret={SECRET}" in text


@pytest.fixture
def coturn() -> Iterator[Coturn]:
    if UCLIENT is None:
        pytest.skip("coturn is missing: scripts/install.sh --test installs it")
    with Coturn(TurnConfig(host="127.0.0.1", secret=SECRET, start_local=True)) as server:
        yield server


def allocate(username: str, password: str, transport: str = "udp"
             ) -> subprocess.CompletedProcess[str]:
    """turnutils_uclient: allocate, then relay 3 messages between two of its clients."""
    assert UCLIENT is not None
    flags = {"udp": [], "tcp": ["-t"], "tls": ["-t", "-S"]}[transport]
    return subprocess.run(
        [UCLIENT, *flags, "-u", username, "-w", password, "-n", "3", "-m", "1", "-y",
         "-e", "127.0.0.1", "127.0.0.1"],
        capture_output=True, text=True, timeout=60)


@requires_isolated_network
@pytest.mark.parametrize("transport", ["udp", "tcp", "tls"])
def test_coturn_accepts_a_minted_credential(coturn: Coturn, transport: str) -> None:
    result = allocate(*ephemeral_credentials(SECRET, "alice", 600), transport)
    assert result.returncode == 0, result.stdout[-2000:]
    received = re.findall(r"tot_recv_msgs=(\d+)", result.stdout)
    assert received and int(received[-1]) > 0, result.stdout[-2000:]  # relayed
    if transport == "tls":
        assert "client session connected with cipher" in result.stdout
    else:  # over TLS uclient's own pacing loses some of its messages; not coturn's doing
        assert "Total lost packets 0" in result.stdout


@requires_isolated_network
def test_coturn_refuses_expired_and_foreign_credentials(coturn: Coturn) -> None:
    expired = allocate(*ephemeral_credentials(SECRET, "alice", 600, now=time.time() - 3600))
    assert expired.returncode != 0
    assert "Cannot complete Allocation" in expired.stdout + expired.stderr
    username, _ = ephemeral_credentials(SECRET, "alice", 600)
    forged = allocate(username, credential("another secret, not the SFU's", username))
    assert forged.returncode != 0
    # coturn's own words for a failed message-integrity check on that user.
    assert f"Cannot find credentials of user <{username}>" in coturn.log_path.read_text()


def test_start_local_needs_an_ip() -> None:
    config = Config()
    config.turn = TurnConfig(host="", start_local=True)
    with pytest.raises(ConfigError, match="start_local"):
        config.validate()


@requires_isolated_network
async def test_sfu_serve_starts_coturn_and_hands_out_working_credentials() -> None:
    """`sfu serve` with `[turn] start_local` and `local_count = 2`: two coturns run
    (ports 3478 and 3480), a participant's `joined.ice_servers` names both, its
    credential allocates on each, and they all stop together."""
    count = 2
    import asyncio
    import os
    import signal
    import socket
    import sys

    import aiohttp

    if UCLIENT is None:
        pytest.skip("coturn is missing: scripts/install.sh --test installs it")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "SFU_SERVER_PORT": str(port), "SFU_TURN_HOST": "127.0.0.1",
           "SFU_TURN_SECRET": SECRET, "SFU_TURN_START_LOCAL": "true",
           "SFU_TURN_LOCAL_COUNT": str(count)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sfu", "serve", env=env, stdout=asyncio.subprocess.PIPE)
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            while b"serving" not in await process.stdout.readline():
                pass
        async with aiohttp.ClientSession() as session, session.ws_connect(
                f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.send_json({"type": "join", "room": "turn", "name": "alice"})
            joined = await ws.receive_json(timeout=10)
        servers = joined["ice_servers"]
        assert sorted(s["urls"][0] for s in servers) == [
            f"turn:127.0.0.1:{3478 + 2 * i}?transport=udp" for i in range(count)]
        result = await asyncio.to_thread(allocate, servers[0]["username"],
                                         servers[0]["credential"])
        assert result.returncode == 0, result.stdout[-2000:]
        for server in servers:  # each coturn grants an allocation (the pool's own check)
            port = int(server["urls"][0].split(":")[2].split("?")[0])
            assert await try_allocation(("127.0.0.1", port), server["username"],
                                        server["credential"]) is None
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
    left = subprocess.run(["pgrep", "-f", "sfu-coturn-"], capture_output=True, text=True)
    assert left.stdout == "", f"coturn still running: {left.stdout}"


@requires_isolated_network
def test_sfu_serve_says_why_when_coturn_cannot_start() -> None:
    """An address coturn cannot listen on (on no interface here): a clear error and
    exit status 2, not a traceback or a server without its TURN."""
    import os
    import sys

    if UCLIENT is None:
        pytest.skip("coturn is missing: scripts/install.sh --test installs it")
    env = {**os.environ, "SFU_SERVER_PORT": "0", "SFU_TURN_HOST": "192.0.2.1",
           "SFU_TURN_SECRET": SECRET, "SFU_TURN_START_LOCAL": "true"}
    done = subprocess.run([sys.executable, "-m", "sfu", "serve"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "coturn did not start on 192.0.2.1:3478" in done.stderr
    assert "Traceback" not in done.stderr
