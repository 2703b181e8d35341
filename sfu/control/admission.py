"""Which control connections may open: caps in all and per remote address (no I/O).

A flood of WebSockets must not take the file descriptors that health checks and running
calls need, so every open connection counts against a cap derived from the process's
descriptor limit, and one address cannot take them all.
"""

from __future__ import annotations

import resource
from collections import Counter

# Descriptors kept out of the WebSocket budget: listening sockets, log files, webhook
# deliveries, a local coturn's pipes, and the HTTP headroom below.
RESERVED_FDS = 128
# HTTP connections allowed beyond the WebSocket caps, in all and per address, so that
# health checks, metrics scrapes, page loads and WebSocket handshakes still get in (and
# a refused WebSocket is told why) while the WebSockets are at their caps; beyond these,
# connections are shed at accept (sfu.control.listener).
HTTP_HEADROOM = 32
HTTP_HEADROOM_PER_ADDRESS = 8

# What a refused connection is told: the error code and its message.
REFUSALS = {
    "too_many_connections": "the server has too many connections; try again later",
    "too_many_connections_from_address": "too many connections from your address",
}


def http_limiter(websockets: ConnectionLimiter) -> ConnectionLimiter:
    """The caps on HTTP connections at accept: the WebSocket caps plus headroom."""
    return ConnectionLimiter(websockets.max_total + HTTP_HEADROOM,
                             websockets.max_per_address + HTTP_HEADROOM_PER_ADDRESS)


def fds_per_connection(listen_ips: int) -> int:
    """A participant's WebSocket, one UDP socket per peer connection (two) and listening
    address, and one more for a restart, whose new connections overlap the old."""
    return 1 + 2 * listen_ips + 1


def connection_budget(configured: int, listen_ips: int, fd_limit: int | None = None) -> int:
    """``configured`` if set, else what the soft descriptor limit leaves room for."""
    if configured > 0:
        return configured
    if fd_limit is None:
        fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return max(1, (fd_limit - RESERVED_FDS) // fds_per_connection(listen_ips))


def raise_fd_limit() -> int:
    """Raise the soft descriptor limit to the hard one (what a server process may
    use without privileges); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


class ConnectionLimiter:
    """Open control connections, in all and by remote address."""

    def __init__(self, max_total: int, max_per_address: int) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.open = 0
        self.by_address: Counter[str] = Counter()
        # Why connections were refused or closed early, for /metrics.
        self.refused: Counter[str] = Counter()

    def admit(self, address: str, per_address: bool = True) -> str | None:
        """Count a new connection from ``address`` and return None, or return why it
        is refused (an error code) without counting it. ``per_address`` False: only
        the total cap applies (a trusted reverse proxy, carrying many clients)."""
        if self.open >= self.max_total:
            reason = "too_many_connections"
        elif per_address and self.by_address[address] >= self.max_per_address:
            reason = "too_many_connections_from_address"
        else:
            self.open += 1
            self.by_address[address] += 1
            return None
        self.refused[reason] += 1
        return reason

    def release(self, address: str) -> None:
        self.open -= 1
        self.by_address[address] -= 1
        if self.by_address[address] <= 0:
            del self.by_address[address]


def client_address(remote: str, forwarded_for: str | None, trusted_proxies: list[str]) -> str:
    """Whom a request comes from: its peer, or, when the peer is a trusted reverse proxy,
    the last address its X-Forwarded-For adds (the one the proxy saw; earlier entries
    are the client's to forge)."""
    if remote in trusted_proxies and forwarded_for:
        last = forwarded_for.split(",")[-1].strip()
        if last:
            return last
    return remote
