"""Prometheus metrics, read from the server's state at scrape time (nothing per packet).

Names follow Prometheus' conventions: a unit in the name (``_seconds``, ``_bytes``),
``_total`` on counters, label values that are names, never units.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector, CollectorRegistry

from sfu.control.admission import ConnectionLimiter
from sfu.diagnostics.traversal import TraversalStats
from sfu.events import EventBus
from sfu.fastpath import Forwarder
from sfu.transport.turn_pool import TurnPool

# Upper bounds of the time-to-connect histogram buckets, in seconds.
CONNECT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
ESTIMATE_BUCKETS = (150_000, 300_000, 600_000, 1_000_000, 2_000_000, 5_000_000)
# Forwarder counters that are amounts, not event counts: each has a family of its own
# with its unit in the name (ServerCollector.collect).
NOT_EVENTS = frozenset({"sent_bytes", "keyframe_waits", "keyframe_wait_us", "probe_bytes"})


class ConnectionStats:
    """ICE outcomes by selected candidate types, and time to connect (no I/O)."""

    def __init__(self) -> None:
        # (local candidate type, remote candidate type, outcome) → count
        self.outcomes: Counter[tuple[str, str, str]] = Counter()
        self.bucket_counts = [0] * len(CONNECT_BUCKETS)
        self.connect_seconds_sum = 0.0
        self.connect_count = 0

    def connected(self, local: str, remote: str, seconds: float) -> None:
        self.outcomes[(local, remote, "connected")] += 1
        self.connect_count += 1
        self.connect_seconds_sum += seconds
        for i, bound in enumerate(CONNECT_BUCKETS):
            if seconds <= bound:
                self.bucket_counts[i] += 1

    def not_connected(self, outcome: str) -> None:
        """``outcome`` is "failed" or "timeout"; no pair was selected."""
        self.outcomes[("none", "none", outcome)] += 1


@dataclass
class Statistics:
    """Counters the routers add to and a scrape reads."""

    connections: ConnectionStats = field(default_factory=ConnectionStats)
    traversal: TraversalStats = field(default_factory=lambda: TraversalStats(CONNECT_BUCKETS))
    rtcp_sent: Counter[str] = field(default_factory=Counter)  # RTCP originated, by type
    restarts: Counter[bool] = field(default_factory=Counter)  # by relay_only
    # Media dropped by the transports before the forwarder, by reason.
    transport_drops: Counter[str] = field(default_factory=Counter)
    # What removed consumers had forwarded: (kind, "packets" | "bytes") → total.
    forwarded_retired: Counter[tuple[str, str]] = field(default_factory=Counter)
    # Data channel messages, by outcome (sfu.router.data.DataRelay).
    data_messages: Counter[str] = field(default_factory=Counter)

    def connected(self, nat_type: str, local: str, remote: str, seconds: float) -> None:
        """A peer connection of a client reporting ``nat_type`` connected."""
        self.connections.connected(local, remote, seconds)
        self.traversal.connected(nat_type, local, remote, seconds)

    def not_connected(self, nat_type: str, outcome: str) -> None:
        """One failed ("failed") or never connected ("timeout")."""
        self.connections.not_connected(outcome)
        self.traversal.failed(nat_type)


DATA_OUTCOMES = ("relayed", "forbidden", "data_rate_limited", "data_too_large", "bad_data",
                 "undeliverable")


class MetricsSource(Protocol):
    """What a scrape reads of the server."""

    @property
    def forwarder(self) -> Forwarder: ...
    @property
    def stats(self) -> Statistics: ...
    @property
    def events(self) -> EventBus: ...
    @property
    def control_connections(self) -> ConnectionLimiter: ...
    @property
    def http_connections(self) -> ConnectionLimiter: ...
    @property
    def loop_lag(self) -> float: ...
    @property
    def webhook_outcomes(self) -> Counter[str]: ...
    @property
    def turn_pool(self) -> TurnPool: ...
    def counts(self) -> tuple[int, int, int]: ...
    def forwarded_by_kind(self) -> dict[str, tuple[int, int]]: ...
    def downlinks(self) -> tuple[list[int], dict[str, int]]: ...


class ServerCollector(Collector):
    def __init__(self, server: MetricsSource) -> None:
        self.server = server

    def collect(
        self,
    ) -> Iterator[
        GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily | SummaryMetricFamily
    ]:
        server = self.server
        rooms, participants, tracks = server.counts()
        yield GaugeMetricFamily("sfu_rooms", "Rooms with at least one participant",
                                value=rooms)
        yield GaugeMetricFamily("sfu_participants", "Joined participants",
                                value=participants)
        yield GaugeMetricFamily("sfu_tracks", "Published tracks", value=tracks)
        info = GaugeMetricFamily("sfu_forwarder_info", "The active forwarder",
                                 labels=["implementation"])
        info.add_metric([server.forwarder.implementation], 1)
        yield info
        counters = server.forwarder.counters()
        packets = CounterMetricFamily(
            "sfu_forwarder_events", "Forwarder counters by event (drops by reason)",
            labels=["event"],
        )
        for name, value in counters.items():
            if name not in NOT_EVENTS:
                packets.add_metric([name], value)
        yield packets
        yield CounterMetricFamily("sfu_forwarder_sent_bytes",
                                  "Bytes (SRTP) the forwarder sent to subscribers",
                                  value=counters["sent_bytes"])
        yield CounterMetricFamily("sfu_forwarder_probe_bytes",
                                  "Bytes (SRTP) of padding sent to probe subscribers' bandwidth",
                                  value=counters["probe_bytes"])
        yield SummaryMetricFamily(
            "sfu_forwarder_keyframe_wait_seconds",
            "Time video subscriptions waited for a keyframe to (re)start",
            count_value=counters["keyframe_waits"],
            sum_value=counters["keyframe_wait_us"] / 1e6,
        )
        drops = CounterMetricFamily(
            "sfu_transport_drops", "Media dropped before the forwarder, by reason",
            labels=["reason"],
        )
        for reason in ("unvalidated_source", "data_channel_refused", "unknown_source",
                       "unknown_ufrag", "too_many_addresses", "tcp_unknown_ufrag",
                       "tcp_not_stun", "tcp_silent", "tcp_backlog", "send_failed"):
            drops.add_metric([reason], server.stats.transport_drops[reason])
        yield drops
        data = CounterMetricFamily(
            "sfu_data_messages", "Data channel messages participants sent, by outcome; "
            "undeliverable counts copies a recipient could not take", labels=["outcome"])
        for outcome in DATA_OUTCOMES:
            data.add_metric([outcome], server.stats.data_messages[outcome])
        yield data
        packets_by_kind = CounterMetricFamily(
            "sfu_forwarded_packets", "Packets forwarded to subscribers", labels=["kind"])
        bytes_by_kind = CounterMetricFamily(
            "sfu_forwarded_bytes", "Bytes (SRTP) forwarded to subscribers", labels=["kind"])
        for kind, (count, octets) in server.forwarded_by_kind().items():
            packets_by_kind.add_metric([kind], count)
            bytes_by_kind.add_metric([kind], octets)
        yield packets_by_kind
        yield bytes_by_kind
        estimates, layers = server.downlinks()
        yield HistogramMetricFamily(
            "sfu_subscriber_bandwidth_estimate_bits_per_second",
            "Subscribers' downlink bandwidth estimates now (transport-wide feedback)",
            buckets=[*((str(bound), sum(e <= bound for e in estimates))
                       for bound in ESTIMATE_BUCKETS), ("+Inf", len(estimates))],
            sum_value=sum(estimates),
        )
        by_layer = GaugeMetricFamily(
            "sfu_simulcast_subscriptions", "Simulcast subscriptions by the layer forwarded",
            labels=["rid"])
        for rid, count in sorted(layers.items()):
            by_layer.add_metric([rid], count)
        yield by_layer
        stats = server.stats.connections
        outcomes = CounterMetricFamily(
            "sfu_ice_connections", "Peer connections by selected candidate types and outcome",
            labels=["local_candidate", "remote_candidate", "outcome"],
        )
        for (local, remote, outcome), count in sorted(stats.outcomes.items()):
            outcomes.add_metric([local, remote, outcome], count)
        yield outcomes
        buckets = [(str(bound), count) for bound, count in zip(
            CONNECT_BUCKETS, stats.bucket_counts, strict=True)]
        yield HistogramMetricFamily(
            "sfu_ice_connect_seconds", "Time from creating a peer connection to connected",
            buckets=[*buckets, ("+Inf", stats.connect_count)],
            sum_value=stats.connect_seconds_sum,
        )
        yield from traversal_metrics(server.stats.traversal)
        yield from turn_pool_metrics(server.turn_pool)
        yield GaugeMetricFamily("sfu_control_connections", "Open control WebSockets",
                                value=server.control_connections.open)
        yield GaugeMetricFamily("sfu_http_connections", "Open HTTP connections",
                                value=server.http_connections.open)
        refused = CounterMetricFamily(
            "sfu_connections_refused",
            "Connections refused or closed early, by reason: shed at accept over the HTTP "
            "caps (http_*), refused WebSockets, refused joins, no join in time",
            labels=["reason"])
        for prefix, limiter in (("http_", server.http_connections),
                                ("", server.control_connections)):
            for reason, count in sorted(limiter.refused.items()):
                refused.add_metric([prefix + reason], count)
        yield refused
        yield GaugeMetricFamily("sfu_event_loop_lag_seconds",
                                "Largest event-loop delay over the last few seconds",
                                value=server.loop_lag)
        yield CounterMetricFamily("sfu_events_dropped",
                                  "Events dropped because a listener fell behind",
                                  value=server.events.dropped)
        rtcp = CounterMetricFamily("sfu_rtcp_sent", "RTCP the server originates, by type",
                                   labels=["type"])
        for kind in ("rr", "remb", "nack"):
            rtcp.add_metric([kind], server.stats.rtcp_sent[kind])
        yield rtcp
        webhooks = CounterMetricFamily("sfu_webhook_deliveries",
                                       "Webhook deliveries by outcome", labels=["outcome"])
        for outcome in ("delivered", "failed", "dropped"):
            webhooks.add_metric([outcome], server.webhook_outcomes[outcome])
        yield webhooks


def registry(server: MetricsSource) -> CollectorRegistry:
    """A registry per server, not the global default one, where a second Server in the
    process (tests, embedding) would register its collector twice; it carries the
    standard collectors the default registry has (process_*, python_info, python_gc_*)."""
    collectors = CollectorRegistry()
    collectors.register(ServerCollector(server))
    ProcessCollector(registry=collectors)
    PlatformCollector(registry=collectors)
    GCCollector(registry=collectors)
    return collectors


def traversal_metrics(traversal: TraversalStats
                      ) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
    """Peer connections by the NAT type the client reported, and their connect times."""
    outcomes = CounterMetricFamily(
        "sfu_traversal_connections",
        "Peer connections by the client's reported NAT type: attempted, direct, relayed, failed",
        labels=["nat_type", "outcome"])
    for (nat_type, outcome), count in traversal.counts().items():
        outcomes.add_metric([nat_type, outcome], count)
    yield outcomes
    times = HistogramMetricFamily(
        "sfu_traversal_connect_seconds", "Time to connect, by the client's reported NAT type",
        labels=["nat_type"])
    for nat_type, (counts, total, seconds) in traversal.histograms().items():
        buckets = [(str(bound), n) for bound, n in zip(traversal.buckets, counts, strict=True)]
        times.add_metric([nat_type], [*buckets, ("+Inf", total)], seconds)
    yield times


def turn_pool_metrics(pool: TurnPool) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
    """Each TURN server of the pool: in it or not, its load, its health checks."""
    up = GaugeMetricFamily("sfu_turn_server_up",
                           "1 while the TURN server passes its allocation check",
                           labels=["server"])
    relayed = GaugeMetricFamily("sfu_turn_relayed_connections",
                                "Peer connections relayed through the TURN server now",
                                labels=["server"])
    first = CounterMetricFamily("sfu_turn_handed_first",
                                "Joiners given the TURN server first (least loaded)",
                                labels=["server"])
    checks = CounterMetricFamily("sfu_turn_health_checks",
                                 "TURN allocation checks by outcome (ok, failed)",
                                 labels=["server", "outcome"])
    for server in pool.servers:
        up.add_metric([server.name], int(server.healthy))
        relayed.add_metric([server.name], server.relayed)
        first.add_metric([server.name], server.handed_first)
        for outcome in ("ok", "failed"):
            checks.add_metric([server.name, outcome], server.checks[outcome])
    yield from (up, relayed, first, checks)
