"""Loss between a publisher and the SFU is repaired: the SFU asks with NACK, the
publisher (aiortc's sender, answering from its history) retransmits, and the
subscriber gets every packet."""

from __future__ import annotations

import asyncio
from typing import Any

from sfu.server import Server
from tests.conftest import make_config, publisher_and_subscriber, requires_isolated_network
from tests.test_wire import record_headers

pytestmark = requires_isolated_network


def drop_every_20th_rtp(server: Server, participant: str) -> list[int]:
    """Make the SFU lose every 20th RTP datagram from a publisher, on arrival."""
    peer = server.participants[participant]
    assert peer.publish is not None
    connection = peer.publish.pc.getTransceivers()[0].receiver.transport.transport._connection
    dropped: list[int] = []
    for protocol in connection._protocols:
        original = protocol.datagram_received
        count = [0]

        def lossy(data: bytes, addr: Any, original: Any = original,
                  count: list[int] = count) -> None:
            if 127 < data[0] < 192 and not 192 <= data[1] <= 223:
                count[0] += 1
                if count[0] % 20 == 0:
                    dropped.append((data[2] << 8) | data[3])
                    return
            original(data, addr)

        setattr(protocol, "datagram_received", lossy)  # noqa: B010
    return dropped


async def test_upstream_loss_is_repaired_by_nack() -> None:
    server = Server(make_config())
    await server.start()
    try:
        async with publisher_and_subscriber(server, "loss") as (alice, bob, _):
            dropped = drop_every_20th_rtp(server, alice.participant_id)
            headers = record_headers(bob)
            await asyncio.sleep(4.0)
        counters = server.forwarder.counters()
        print(f"dropped {len(dropped)} publisher packets; forwarder: "
              f"{ {k: counters[k] for k in ('nack_requested', 'nack_recovered', 'nack_gave_up')} }"
              f"; NACK packets sent {server.stats.rtcp_sent['nack']}")
        assert len(dropped) >= 5
        assert counters["nack_requested"] >= len(dropped) - 2
        assert counters["nack_recovered"] >= len(dropped) - 2
        # The subscriber ends up with every sequence number in the window it saw.
        (log,) = [entries for entries in headers.values() if entries]
        seqs = sorted({seq for _, _, seq in log})
        assert seqs[-1] - seqs[0] + 1 - len(seqs) <= 2, "the subscriber is missing packets"
    finally:
        await server.stop()
