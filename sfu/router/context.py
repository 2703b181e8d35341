"""What every router of a server shares: the config, the forwarder, where ICE gathers,
the event bus, id counters and the server-wide statistics."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from sfu.config import Config
from sfu.events import EventBus
from sfu.fastpath import Forwarder
from sfu.metrics import Statistics
from sfu.transport.internals import HostGathering
from sfu.transport.shared_port import SharedSocket
from sfu.transport.tcp_port import TcpPort
from sfu.transport.turn_pool import TurnPool

logger = logging.getLogger(__name__)


class RouterContext:
    def __init__(self, config: Config, forwarder: Forwarder, events: EventBus) -> None:
        rtc = config.rtc
        self.config = config
        self.forwarder = forwarder
        self.events = events
        self.gathering = HostGathering(
            tuple(rtc.listen_ips), rtc.announced_ip, rtc.port_min, rtc.port_max)
        self.stats = Statistics()
        self.turn_pool = TurnPool(config.turn)  # what joiners get in `ice_servers`
        # Forwarder endpoint, producer and consumer ids: unique across the server.
        self.ids = itertools.count(1)
        # Producer → what to wake when the forwarder finds a gap in its packets.
        self.loss_listeners: dict[int, Callable[[], None]] = {}
        # Subscribe endpoint → who hears its transport-wide feedback.
        self.feedback_listeners: dict[int, Callable[[bytes], None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def open_ports(self) -> None:
        """Open the one UDP socket of each listen address (``rtc.udp_port``; with
        ``rtc.port_per_connection`` each connection binds its own instead) and its
        ICE-TCP port (``rtc.tcp_port``, with ``rtc.ice_tcp``)."""
        rtc, drops = self.config.rtc, self.stats.transport_drops
        shared: dict[str, SharedSocket] = {}
        tcp: dict[str, TcpPort] = {}
        udp_port, tcp_port = rtc.udp_port, rtc.tcp_port
        try:
            for address in rtc.listen_ips:
                if not rtc.port_per_connection:
                    shared[address] = SharedSocket.open(address, udp_port, self.forwarder,
                                                        drops)
                    udp_port = udp_port or shared[address].address[1]  # 0: the same everywhere
                if rtc.ice_tcp:
                    tcp[address] = await TcpPort.open(address, tcp_port, drops)
                    tcp_port = tcp_port or tcp[address].address[1]
        except OSError:
            for socket in shared.values():
                socket.close()
            for listener in tcp.values():
                listener.close()
            raise
        self.gathering = dataclasses.replace(self.gathering, shared=shared, tcp=tcp)

    def close_ports(self) -> None:
        for socket in self.gathering.shared.values():
            socket.close()
        for listener in self.gathering.tcp.values():
            listener.close()

    @property
    def tcp_port(self) -> int | None:
        """The ICE-TCP port; None without ICE-TCP."""
        return next((t.address[1] for t in self.gathering.tcp.values()), None)

    @property
    def udp_port(self) -> int | None:
        """The shared UDP port; None with a port per connection."""
        return next((s.address[1] for s in self.gathering.shared.values()), None)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run in the background; a failure is logged, never lost."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def on_loss(self, producer: int) -> None:
        """The forwarder's loss listener: a NACK may now be due sooner."""
        wake = self.loss_listeners.get(producer)
        if wake is not None:
            wake()

    def on_feedback(self, endpoint: int, packet: bytes) -> None:
        """The forwarder's feedback listener: to the endpoint's downlink."""
        listener = self.feedback_listeners.get(endpoint)
        if listener is not None:
            listener(packet)

    def cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background task failed", exc_info=task.exception())
