"""Several TURN servers (``[turn] host`` and ``servers``), health-checked and handed to
joiners least-loaded first.

Every ``health_interval_s`` each server gets a real TURN allocation over UDP with a
credential minted from the shared secret (RFC 8656 Allocate, then released): a server
that fails it leaves the pool, and is back when one succeeds. The load of a server is
this SFU's own accounting: the peer connections whose selected pair runs through one of
its relays now (the remote candidate is a relay on its address), then how often it was
handed out first; a joiner gets the healthy servers in that order (browsers prefer the
first server's relay candidates), so new relayed connections go to the least loaded.
(coturn's own allocation counts need its Prometheus exporter, which Debian's build
lacks.)
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aioice import stun
from aioice import turn as aioice_turn

from sfu.config import TurnConfig
from sfu.transport.turn import ephemeral_credentials

logger = logging.getLogger(__name__)
CHECK_TIMEOUT_S = 3.0
HEALTH_IDENTITY = "sfu-health-check"


@dataclass
class TurnServer:
    host: str
    port: int
    tls_port: int
    healthy: bool = True  # until a check says otherwise
    relayed: int = 0  # peer connections relayed through it now
    handed_first: int = 0  # joiners given it first
    checks: Counter[str] = field(default_factory=Counter)  # "ok" / "failed"

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    def urls(self) -> list[str]:
        host = f"[{self.host}]" if ":" in self.host else self.host
        urls = [f"turn:{host}:{self.port}?transport=udp",
                f"turn:{host}:{self.port}?transport=tcp"]
        if self.tls_port:
            urls.append(f"turns:{host}:{self.tls_port}?transport=tcp")
        return urls


def parse_server(entry: str, turn: TurnConfig) -> TurnServer:
    """``host``, ``host:port`` or ``host:port:tls_port`` (IPv4 or a name); the ports
    default to ``turn.port`` and ``turn.tls_port``."""
    host, *ports = entry.split(":")
    if not host or len(ports) > 2 or not all(p.isdigit() for p in ports):
        raise ValueError(f"{entry!r}: expected host, host:port or host:port:tls_port")
    port = int(ports[0]) if ports else turn.port
    tls_port = int(ports[1]) if len(ports) > 1 else turn.tls_port
    return TurnServer(host, port, tls_port)


class TurnPool:
    def __init__(self, turn: TurnConfig) -> None:
        self.turn = turn
        self.servers: list[TurnServer] = []
        if turn.host:
            self.servers.append(TurnServer(turn.host, turn.port, turn.tls_port))
            self.servers += [parse_server(entry, turn) for entry in turn.servers]
        self._task: asyncio.Task[None] | None = None

    def ordered(self) -> list[TurnServer]:
        """The healthy servers, least loaded first."""
        return sorted((s for s in self.servers if s.healthy),
                      key=lambda s: (s.relayed, s.handed_first))

    def ice_servers(self, identity: str, now: float | None = None) -> list[dict[str, Any]]:
        """What `joined.ice_servers` carries: one RTCIceServer per healthy server, least
        loaded first, each with its own ephemeral credential (the same secret)."""
        servers = self.ordered()
        if not servers:
            return []
        servers[0].handed_first += 1
        username, password = ephemeral_credentials(self.turn.secret, identity,
                                                   self.turn.credential_ttl_s, now)
        return [{"urls": s.urls(), "username": username, "credential": password}
                for s in servers]

    def relay_started(self, relay_host: str) -> TurnServer | None:
        """A peer connection's selected pair goes through a relay on ``relay_host``:
        counted against the server there (None if it is none of ours). Matched by
        address: a server listed by name, or relaying on another address than it
        listens on, is not counted, and only the hand-outs spread the load."""
        server = next((s for s in self.servers if s.host == relay_host), None)
        if server is not None:
            server.relayed += 1
        return server

    @staticmethod
    def relay_ended(server: TurnServer) -> None:
        server.relayed = max(0, server.relayed - 1)

    # -- health -----------------------------------------------------------------------

    def start(self) -> None:
        if self.servers and self.turn.health_interval_s > 0:
            self._task = asyncio.create_task(self._check_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _check_forever(self) -> None:
        while True:
            await self.check_all()
            await asyncio.sleep(self.turn.health_interval_s)

    async def check_all(self) -> None:
        results = await asyncio.gather(*(self.allocates(s) for s in self.servers))
        for server, ok in zip(self.servers, results, strict=True):
            server.checks["ok" if ok else "failed"] += 1
            if ok != server.healthy:
                logger.warning("TURN server %s %s the pool", server.name,
                               "is back in" if ok else "failed its check and left")
            server.healthy = ok

    async def allocates(self, server: TurnServer) -> bool:
        """Whether ``server`` grants a TURN allocation over UDP to a minted credential."""
        username, password = ephemeral_credentials(self.turn.secret, HEALTH_IDENTITY, 60)
        failure = await try_allocation((server.host, server.port), username, password)
        if failure is not None:
            logger.debug("TURN check of %s: %s", server.name, failure)
        return failure is None


async def try_allocation(server: tuple[str, int], username: str, password: str,
                         transport: str = "udp", tls: ssl.SSLContext | None = None,
                         timeout: float = CHECK_TIMEOUT_S) -> str | None:
    """Ask ``server`` for a TURN allocation (RFC 8656) over ``transport`` ("udp" or
    "tcp", with ``tls`` for TURNS) and release it: None when granted, else why not."""
    try:
        relayed, _ = await asyncio.wait_for(aioice_turn.create_turn_endpoint(
            asyncio.DatagramProtocol, server, username, password, lifetime=60,
            ssl=tls, transport=transport), timeout)
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except stun.TransactionFailed as exc:
        return f"refused: {exc}"
    except (OSError, stun.TransactionError) as exc:
        return str(exc) or type(exc).__name__
    except Exception as exc:  # whatever else a broken server makes aioice raise
        return f"{type(exc).__name__}: {exc}"
    relayed.close()
    return None
