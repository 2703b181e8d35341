"""How aioice selects a connection's ICE pair, mended: three patches to an aioice
``Connection`` (its private ``_nominated``, ``_check_list`` and methods, as in
sfu.transport.internals, whose ``check_internals`` names them).

- ``keep_best_nomination``: as controlling agent, the highest-priority pair whose
  check succeeded, not the last;
- ``follow``: the pair the peer moved its media to, consent checks included;
- ``guard_consent``: no consent loop left running on a closed connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aioice import ice as aioice_ice
from aiortc import sdp


def guard_consent(connection: aioice_ice.Connection) -> None:
    """Work around an aioice 0.13 race that leaks a task per closed connection.

    connect() starts the consent-freshness loop (RFC 7675) once ICE completes. If
    close() runs after ICE completed but before connect() resumes, close() finds no
    loop to cancel and connect() then starts one on a closed connection, where it
    runs forever. The churn test (participants leaving while ICE completes) saw it.
    """
    query_consent = connection.query_consent

    async def guarded() -> None:
        if connection._closing:
            return
        await query_consent()

    setattr(connection, "query_consent", guarded)  # noqa: B010


def keep_best_nomination(connection: aioice_ice.Connection,
                         remote_sdp: Callable[[], str | None]) -> None:
    """As controlling agent, select the highest-priority nominated pair, not the last.

    aioice, controlling, puts USE-CANDIDATE on every check (aggressive nomination,
    RFC 5245 §8.1.1.2) and makes each pair whose check succeeds the selected one, so
    checks in flight together select whichever answers last: a relay pair after the
    host pair, say, while the browser (controlled) keeps the host pair, as that section
    asks of both ends. In an open network the SFU then sent through the TURN server
    until the browser's RTCP moved it back, and counted the connection as relayed.

    Priorities are those the peer signalled (``remote_sdp``): aioice learns many of a
    browser's candidates as peer-reflexive (sfu.transport.internals._signalled_type
    says why), and the PRIORITY of a check (RFC 8445 §7.2.2) ranks one sent through a
    relay with direct ones.
    """
    check_complete = connection.check_complete

    def priority(pair: aioice_ice.CandidatePair, signalled: dict[Any, Any]) -> int:
        remote: int = signalled.get(address(pair.remote_candidate),
                                    pair.remote_candidate).priority
        local = pair.local_candidate.priority  # controlling: ours is G (RFC 8445 §6.1.2.3)
        return (1 << 32) * min(local, remote) + 2 * max(local, remote) + (local > remote)

    def complete(pair: aioice_ice.CandidatePair) -> None:
        before = connection._nominated.get(pair.component)
        check_complete(pair)
        if (connection.ice_controlling and before is not None and before is not pair
                and connection._nominated.get(pair.component) is pair
                and before.state == aioice_ice.CandidatePair.State.SUCCEEDED):
            text = remote_sdp()
            signalled = {} if text is None else signalled_candidates(text)
            if priority(before, signalled) > priority(pair, signalled):
                connection._nominated[pair.component] = before

    setattr(connection, "check_complete", complete)  # noqa: B010


def follow(connection: aioice_ice.Connection,
           addr: tuple[Any, ...]) -> aioice_ice.CandidatePair | None:
    """The validated pair whose remote end is ``addr``, now the selected one (consent
    checks and DTLS go there), or None (sfu.transport.internals.follow_pair)."""
    for pair in connection._check_list:
        if (pair.state == aioice_ice.CandidatePair.State.SUCCEEDED
                and pair.component == 1 and pair.remote_addr == tuple(addr[:2])):
            connection._nominated[1] = pair
            return pair
    return None


def signalled_candidates(description_sdp: str) -> dict[tuple[str, int, int], Any]:
    """The candidates of every m-line of ``description_sdp`` (aiortc RTCIceCandidates),
    by ``address``; of two at one address, the first."""
    found: dict[tuple[str, int, int], Any] = {}
    for media in sdp.SessionDescription.parse(description_sdp).media:
        for c in media.ice_candidates:
            found.setdefault((c.ip, c.port, c.component), c)
    return found


def address(candidate: Any) -> tuple[str, int, int]:
    """An aioice candidate's key in ``signalled_candidates``."""
    return (candidate.host, candidate.port, candidate.component)
