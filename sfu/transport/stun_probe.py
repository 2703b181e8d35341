"""STUN binding requests from one UDP socket, for diagnostics (sfu.diagnostics.nat):
each request may ask the server to answer from elsewhere (CHANGE-REQUEST, RFC 5780
§7.2); each answer says what the server saw (XOR-MAPPED-ADDRESS), its other address
(OTHER-ADDRESS) and where it came from. aioice encodes and parses the messages."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

from aioice import stun

Address = tuple[str, int]


@dataclass(frozen=True)
class BindingAnswer:
    mapped: Address | None  # our address as the server saw it
    other: Address | None  # the server's other address (RFC 5780), if it has one
    source: Address  # where the answer came from


def _address(value: Any) -> Address | None:
    return None if value is None else (value[0], value[1])


class BindingProbe(asyncio.DatagramProtocol):
    """One UDP socket; binding requests matched to their answers by transaction ID."""

    def __init__(self) -> None:
        self._waiting: dict[bytes, asyncio.Future[BindingAnswer]] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.local: Address = ("", 0)

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, local_host: str) -> AsyncIterator[BindingProbe]:
        """A fresh socket on ``local_host`` (so a fresh NAT mapping), closed after."""
        transport, probe = await asyncio.get_running_loop().create_datagram_endpoint(
            cls, local_addr=(local_host, 0))
        try:
            probe.local = transport.get_extra_info("sockname")[:2]
            yield probe
        finally:
            transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            message = stun.parse_message(data)
        except ValueError:
            return  # not STUN: ignored
        waiter = self._waiting.get(message.transaction_id)
        if waiter is not None and not waiter.done():
            mapped = message.attributes.get("XOR-MAPPED-ADDRESS") or message.attributes.get(
                "MAPPED-ADDRESS")
            waiter.set_result(BindingAnswer(_address(mapped),
                                            _address(message.attributes.get("OTHER-ADDRESS")),
                                            (addr[0], addr[1])))

    async def request(self, to: Address, change: int, timeout: float, tries: int
                      ) -> BindingAnswer | None:
        """A binding request to ``to`` (``change``: CHANGE-REQUEST's flags, 0 for none),
        sent ``tries`` times over ``timeout`` seconds until answered; None if not."""
        assert self.transport is not None
        message = stun.Message(message_method=stun.Method.BINDING,
                               message_class=stun.Class.REQUEST)
        if change:
            message.attributes["CHANGE-REQUEST"] = change
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[message.transaction_id] = waiter
        try:
            for _ in range(tries):
                self.transport.sendto(bytes(message), to)
                done, _ = await asyncio.wait({waiter}, timeout=timeout / tries)
                if done:
                    answer: BindingAnswer = waiter.result()
                    return answer
            return None
        finally:
            del self._waiting[message.transaction_id]
