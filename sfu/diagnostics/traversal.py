"""Traversal statistics by the NAT type a client reported at join (no I/O).

A client that ran the NAT test (``sfu doctor``, or the diagnostics page) says what it
found in ``join.nat_type``; every peer connection it then makes counts, under that
type, as an attempt that went direct (the selected pair has no relay candidate: host,
server- or peer-reflexive), was relayed (TURN on either side), or failed (ICE or DTLS
failed, or it never connected), with the time it took to connect. An operator reads
from it how often each kind of network needs TURN, and what it costs in connect time.
"""

from __future__ import annotations

import statistics
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

# RFC 3489's names, as identifiers; "cone", what a browser can tell (it maps
# endpoint-independently, but a browser cannot test filtering: a cone NAT of any kind,
# or none); and what a client may say it does not know.
NAT_TYPES = ("open", "full_cone", "restricted_cone", "port_restricted_cone", "symmetric",
             "udp_firewall", "udp_blocked", "cone", "unknown")
UNKNOWN = "unknown"
OUTCOMES = ("attempted", "direct", "relayed", "failed")
RECENT_CONNECT_TIMES = 1000  # per NAT type, for the percentiles


def nat_type_of(rfc3489_name: str) -> str:
    """The identifier of a name from sfu.diagnostics.nat.rfc3489_name."""
    return {"open internet": "open", "symmetric UDP firewall": "udp_firewall"}.get(
        rfc3489_name, rfc3489_name.replace("-", "_").replace(" ", "_"))


@dataclass
class _PerType:
    outcomes: Counter[str] = field(default_factory=Counter)
    connect_s: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_CONNECT_TIMES))
    connect_s_sum: float = 0.0
    bucket_counts: list[int] = field(default_factory=list)


class TraversalStats:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets  # upper bounds of the connect-time histogram, seconds
        self._by_type: dict[str, _PerType] = {}

    def _of(self, nat_type: str) -> _PerType:
        per_type = self._by_type.get(nat_type)
        if per_type is None:
            per_type = self._by_type[nat_type] = _PerType(bucket_counts=[0] * len(self.buckets))
        return per_type

    def attempted(self, nat_type: str) -> None:
        self._of(nat_type).outcomes["attempted"] += 1

    def connected(self, nat_type: str, local: str, remote: str, seconds: float) -> None:
        per_type = self._of(nat_type)
        per_type.outcomes["relayed" if "relay" in (local, remote) else "direct"] += 1
        per_type.connect_s.append(seconds)
        per_type.connect_s_sum += seconds
        for i, bound in enumerate(self.buckets):
            if seconds <= bound:
                per_type.bucket_counts[i] += 1

    def failed(self, nat_type: str) -> None:
        self._of(nat_type).outcomes["failed"] += 1

    def histograms(self) -> dict[str, tuple[list[int], int, float]]:
        """Per NAT type: counts per bucket (cumulative), connections, seconds in all."""
        return {nat: (list(p.bucket_counts), p.outcomes["direct"] + p.outcomes["relayed"],
                      p.connect_s_sum) for nat, p in sorted(self._by_type.items())}

    def counts(self) -> dict[tuple[str, str], int]:
        """(NAT type, outcome) → count."""
        return {(nat, outcome): p.outcomes[outcome]
                for nat, p in sorted(self._by_type.items()) for outcome in OUTCOMES}

    def table(self) -> dict[str, dict[str, Any]]:
        """Per NAT type: the outcomes, the share relayed, and connect-time percentiles
        (ms) over the last RECENT_CONNECT_TIMES connections."""
        out: dict[str, dict[str, Any]] = {}
        for nat, p in sorted(self._by_type.items()):
            connected = p.outcomes["direct"] + p.outcomes["relayed"]
            row: dict[str, Any] = {outcome: p.outcomes[outcome] for outcome in OUTCOMES}
            row["relayed_share"] = round(p.outcomes["relayed"] / connected, 3) if connected \
                else None
            times = sorted(p.connect_s)
            if len(times) >= 2:
                cuts = statistics.quantiles(times, n=100, method="inclusive")
                row["connect_ms"] = {"p50": round(cuts[49] * 1000, 1),
                                     "p90": round(cuts[89] * 1000, 1),
                                     "p99": round(cuts[98] * 1000, 1)}
            elif times:
                only = round(times[0] * 1000, 1)
                row["connect_ms"] = {"p50": only, "p90": only, "p99": only}
            else:
                row["connect_ms"] = None
            out[nat] = row
        return out
