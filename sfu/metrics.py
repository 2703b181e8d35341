"""Prometheus metrics, read from the server's state at scrape time (nothing per packet)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

if TYPE_CHECKING:
    from sfu.server import Server


class ServerCollector(Collector):
    def __init__(self, server: Server) -> None:
        self.server = server

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        server = self.server
        yield GaugeMetricFamily("sfu_rooms", "Rooms with at least one participant",
                                value=len(server.rooms))
        yield GaugeMetricFamily("sfu_participants", "Joined participants",
                                value=len(server.peers))
        yield GaugeMetricFamily("sfu_tracks", "Published tracks",
                                value=len(server.publications))
        info = GaugeMetricFamily("sfu_forwarder_info", "The active forwarder",
                                 labels=["implementation"])
        info.add_metric([server.forwarder.implementation], 1)
        yield info
        packets = CounterMetricFamily(
            "sfu_forwarder_events", "Forwarder counters by event (drops by reason)",
            labels=["event"],
        )
        for name, value in server.forwarder.counters().items():
            packets.add_metric([name], value)
        yield packets
        drops = CounterMetricFamily(
            "sfu_transport_drops", "Media dropped before the forwarder, by reason",
            labels=["reason"],
        )
        for reason in ("unvalidated_source",):
            drops.add_metric([reason], server.transport_drops[reason])
        yield drops


def metrics_handler(server: Server) -> Callable[[web.Request], Awaitable[web.Response]]:
    registry = CollectorRegistry()
    registry.register(ServerCollector(server))

    async def handler(request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(registry))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    return handler
