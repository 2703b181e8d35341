"""Can this network use the SFU's TURN servers? ``sfu doctor --server URL`` joins a room
on the SFU as any client would, takes the TURN URLs and the credential minted for it
from `joined.ice_servers`, and asks each URL for an allocation: TURN over UDP, over TCP,
over TLS. A network that blocks UDP still connects through TURN over TCP or TLS; one
that passes only HTTPS, through TLS on 443 alone.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from sfu.client import Client
from sfu.transport.turn_pool import try_allocation


@dataclass(frozen=True)
class TurnReach:
    url: str
    ok: bool
    ms: float | None  # how long the allocation took, when granted
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        outcome = f"ok, {self.ms:.0f} ms" if self.ok else f"FAILED: {self.error}"
        return f"TURN               {self.url}: {outcome}"


def parse_turn_url(url: str) -> tuple[str, int, str, bool]:
    """(host, port, transport, tls) of a ``turn:`` or ``turns:`` URL (RFC 7065)."""
    scheme, _, rest = url.partition(":")
    if scheme not in ("turn", "turns") or not rest:
        raise ValueError(f"not a TURN URL: {url}")
    parts = urlsplit(f"//{rest}")
    query = dict(p.partition("=")[::2] for p in parts.query.split("&") if p)
    tls = scheme == "turns"
    transport = query.get("transport", "tcp" if tls else "udp")
    if parts.hostname is None or transport not in ("udp", "tcp"):
        raise ValueError(f"not a TURN URL: {url}")
    return parts.hostname, parts.port or (5349 if tls else 3478), transport, tls


async def check_turn_urls(ice_servers: list[dict[str, Any]], timeout: float,
                          verify_tls: bool = True) -> list[TurnReach]:
    """One allocation per TURN URL of ``ice_servers`` (RTCIceServer dictionaries)."""
    context = ssl.create_default_context()
    if not verify_tls:  # a development coturn's own certificate
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    results = []
    for entry in ice_servers:
        urls = entry.get("urls", [])
        for url in [urls] if isinstance(urls, str) else urls:
            if not str(url).startswith("turn"):
                continue
            host, port, transport, tls = parse_turn_url(url)
            started = time.monotonic()
            error = await try_allocation((host, port), entry.get("username", ""),
                                         entry.get("credential", ""), transport,
                                         context if tls else None, timeout)
            results.append(TurnReach(url, error is None,
                                     None if error else (time.monotonic() - started) * 1000,
                                     error))
    return results


async def sfu_ice_servers(server_url: str, room: str, token: str | None
                          ) -> list[dict[str, Any]]:
    """What the SFU at ``server_url`` (http[s]://host:port) gives a joiner."""
    ws_url = server_url.replace("http", "ws", 1).rstrip("/") + "/ws"
    client = Client(ws_url, room=room, name="sfu doctor", token=token)
    try:
        joined = await client.join()
    finally:
        await client.close()
    servers: list[dict[str, Any]] = joined.get("ice_servers", [])
    return servers
