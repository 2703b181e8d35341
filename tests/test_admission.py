"""The connection caps (sfu/control/admission.py), without sockets."""

from __future__ import annotations

import resource
import subprocess
import sys

from sfu.control.admission import (
    HTTP_HEADROOM,
    RESERVED_FDS,
    ConnectionLimiter,
    connection_budget,
    fds_per_connection,
    http_limiter,
)


def test_caps_in_all_and_per_address_and_release() -> None:
    limiter = ConnectionLimiter(max_total=3, max_per_address=2)
    assert limiter.admit("a") is None and limiter.admit("a") is None
    assert limiter.admit("a") == "too_many_connections_from_address"
    assert limiter.admit("b") is None
    assert limiter.admit("c") == "too_many_connections"
    limiter.release("a")
    assert limiter.admit("c") is None
    assert limiter.open == 3 and limiter.by_address == {"a": 1, "b": 1, "c": 1}
    assert limiter.refused == {"too_many_connections_from_address": 1, "too_many_connections": 1}
    for address in ("a", "b", "c"):
        limiter.release(address)
    assert limiter.open == 0 and not limiter.by_address


def test_the_budget_leaves_the_reserve_and_http_headroom_free() -> None:
    assert connection_budget(10, listen_ips=1, fd_limit=512) == 10  # configured wins
    budget = connection_budget(0, listen_ips=1, fd_limit=512)
    assert budget == (512 - RESERVED_FDS) // fds_per_connection(1)
    # Every admitted WebSocket a full participant, plus the HTTP headroom: still short
    # of the limit.
    http = http_limiter(ConnectionLimiter(budget, 64))
    assert budget * fds_per_connection(1) + HTTP_HEADROOM < 512
    assert http.max_total == budget + HTTP_HEADROOM
    assert connection_budget(0, listen_ips=1, fd_limit=10) == 1


def test_serve_raises_the_soft_descriptor_limit_to_the_hard_one() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    low = min(256, hard)
    code = (
        "import resource\n"
        "from sfu.control.admission import raise_fd_limit\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({low}, {hard}))\n"
        "print(raise_fd_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    raised = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.split()
    assert raised == [str(hard), str(hard)]
