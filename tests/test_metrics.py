"""/metrics (sfu/metrics.py): Prometheus names and units, the standard process metrics,
the full content type, one registry per server."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from sfu import rtp
from sfu.server import Server
from tests.conftest import make_config, running

UNIT_SUFFIX = re.compile(r"_(us|ms|s|seconds|bytes|bits)$")
DASHBOARD = Path(__file__).parent.parent / "config" / "grafana-dashboard.json"


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with running(make_config(forwarder="python")) as instance:
        yield instance


async def scrape(server: Server) -> tuple[str, str]:
    """(Content-Type, body) of /metrics."""
    url = f"http://127.0.0.1:{server.port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return response.headers["Content-Type"], await response.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text) for sample in family.samples
    }


async def test_content_type_is_prometheus_whole(server: Server) -> None:
    content_type, _ = await scrape(server)
    assert content_type == CONTENT_TYPE_LATEST  # "text/plain; version=…; charset=utf-8"


async def test_process_and_platform_metrics_are_served(server: Server) -> None:
    _, text = await scrape(server)
    names = {name for name, _ in samples(text)}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes",
            "process_open_fds", "python_info"} <= names
    assert "sfu_participants" in names


async def test_two_servers_in_one_process_each_serve_everything(server: Server) -> None:
    before = set(REGISTRY._collector_to_names)
    async with running(make_config()) as second:
        for instance in (server, second):
            _, text = await scrape(instance)
            names = {name for name, _ in samples(text)}
            assert {"process_cpu_seconds_total", "sfu_rooms"} <= names
    # Nothing of a server's lands in the global default registry.
    assert set(REGISTRY._collector_to_names) == before


async def test_forwarder_amounts_are_families_with_units(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    counters = dict.fromkeys(rtp.COUNTER_NAMES, 7)
    counters.update(sent_bytes=123_456, keyframe_waits=2, keyframe_wait_us=1_500_000)
    monkeypatch.setattr(server.forwarder, "counters", lambda: counters)
    _, text = await scrape(server)
    got = samples(text)
    assert got[("sfu_forwarder_sent_bytes_total", ())] == 123_456
    assert got[("sfu_forwarder_keyframe_wait_seconds_count", ())] == 2
    assert got[("sfu_forwarder_keyframe_wait_seconds_sum", ())] == 1.5
    events = {dict(labels)["event"] for name, labels in got
              if name == "sfu_forwarder_events_total"}
    assert events and not events & {"sent_bytes", "keyframe_waits", "keyframe_wait_us"}
    assert got[("sfu_forwarder_events_total", (("event", "sent"),))] == 7


async def test_names_carry_units_and_label_values_do_not(server: Server) -> None:
    _, text = await scrape(server)
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("sfu_"):
            continue
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
        for sample in family.samples:
            for value in sample.labels.values():
                assert not UNIT_SUFFIX.search(value), (sample.name, value)


async def test_the_grafana_dashboard_queries_only_metrics_that_are_served(
    server: Server,
) -> None:
    _, text = await scrape(server)
    served = {name for name, _ in samples(text)}
    # Counters and histograms with no sample yet (no connection has been made, so no
    # NAT type to label one with) are named all the same.
    families = list(text_string_to_metric_families(text))
    served |= {f"{family.name}_total" for family in families if family.type == "counter"}
    served |= {f"{family.name}_bucket" for family in families if family.type == "histogram"}
    panels = json.loads(DASHBOARD.read_text())["panels"]
    queried = {name for panel in panels for target in panel.get("targets", [])
               for name in re.findall(r"\b(?:sfu|process)_\w+", target["expr"])}
    assert {"sfu_forwarder_keyframe_wait_seconds_sum", "process_cpu_seconds_total"} <= queried
    assert queried <= served, queried - served
