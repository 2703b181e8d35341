"""HTTPS: the page, /healthz and the WebSocket over TLS with a configured or a
self-signed certificate, reloaded in place; and the client address behind a trusted
reverse proxy."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
from pathlib import Path

import aiohttp
import pytest

from sfu.config import Config, ConfigError
from sfu.control import tls
from sfu.control.admission import ConnectionLimiter, client_address
from tests.conftest import make_config, running


def peer_certificate(port: int) -> bytes:
    """The DER certificate the server presents now, unverified (blocking: in a thread,
    so the server's loop can answer)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port)) as raw, context.wrap_socket(raw) as conn:
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return der


@pytest.fixture
def self_signed_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tls, "SELF_SIGNED_DIRECTORY", tmp_path / "tls")
    return tmp_path / "tls"


async def test_self_signed_https_serves_the_page_and_the_websocket(
        self_signed_home: Path) -> None:
    config = make_config()
    config.server.tls_self_signed = True
    async with running(config) as server:
        assert server.tls is not None and server.port is not None
        base = f"https://127.0.0.1:{server.port}"
        # Trusting the certificate it made, for the names it made it for.
        trusted = ssl.create_default_context(cafile=str(server.tls.cert))
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/healthz", ssl=trusted) as response:
                assert response.status == 200
            async with session.get(f"{base}/", ssl=trusted) as response:
                assert response.status == 200 and "sfu" in await response.text()
            async with session.ws_connect(f"wss://127.0.0.1:{server.port}/ws",
                                          ssl=trusted) as ws:
                await ws.send_json({"type": "join", "room": "r", "name": "n", "id": 1})
                joined = await ws.receive_json(timeout=5)
                assert joined["type"] == "joined"
            # Plain HTTP on the TLS port gets no page.
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{server.port}/healthz") as response:
                    await response.read()
        first = await asyncio.to_thread(peer_certificate, server.port)
    # Made once and kept: the next start presents the same certificate.
    async with running(config) as server:
        assert server.port is not None
        assert await asyncio.to_thread(peer_certificate, server.port) == first
    assert next(self_signed_home.rglob("https-key.pem")).stat().st_mode & 0o077 == 0


async def test_a_renewed_certificate_is_served_after_reload(tmp_path: Path) -> None:
    cert, key = tls.write_self_signed(tmp_path, ["127.0.0.1"], "one")
    config = make_config()
    config.server.tls_cert, config.server.tls_key = str(cert), str(key)
    async with running(config) as server:
        assert server.port is not None
        before = await asyncio.to_thread(peer_certificate, server.port)
        # A renewal writes new files over the old ones, then SIGHUP.
        new_cert, new_key = tls.write_self_signed(tmp_path, ["127.0.0.1"], "two")
        cert.write_bytes(new_cert.read_bytes())
        key.write_bytes(new_key.read_bytes())
        server.reload_tls()
        after = await asyncio.to_thread(peer_certificate, server.port)
        assert after != before and after == ssl.PEM_cert_to_DER_cert(new_cert.read_text())
        # A broken renewal is refused and the running certificate stays.
        cert.write_text("not a certificate")
        server.reload_tls()
        assert await asyncio.to_thread(peer_certificate, server.port) == after
    print("sha-256 before/after:", hashlib.sha256(before).hexdigest()[:16],
          hashlib.sha256(after).hexdigest()[:16])


def test_tls_settings_are_checked() -> None:
    for change, key in (({"tls_cert": "a.pem"}, "server.tls_cert"),
                        ({"tls_self_signed": True, "tls_cert": "a", "tls_key": "b"},
                         "server.tls_self_signed"),
                        ({"trusted_proxies": ["proxy.example"]}, "server.trusted_proxies")):
        config = Config()
        for name, value in change.items():
            setattr(config.server, name, value)
        with pytest.raises(ConfigError, match=key):
            config.validate()


def test_the_client_behind_a_trusted_proxy_is_the_last_forwarded_address() -> None:
    trusted = ["10.0.0.2"]
    assert client_address("10.0.0.2", "203.0.113.9, 198.51.100.7", trusted) == "198.51.100.7"
    assert client_address("10.0.0.3", "198.51.100.7", trusted) == "10.0.0.3"  # not trusted
    assert client_address("10.0.0.2", None, trusted) == "10.0.0.2"
    assert client_address("10.0.0.2", " ", trusted) == "10.0.0.2"
    # The proxy itself is held only to the total cap.
    limiter = ConnectionLimiter(max_total=3, max_per_address=1)
    assert [limiter.admit("10.0.0.2", per_address=False) for _ in range(4)] == [
        None, None, None, "too_many_connections"]
