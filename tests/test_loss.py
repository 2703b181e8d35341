"""Loss between a publisher and the SFU is repaired: the SFU asks with NACK, the
publisher (aiortc's sender, answering from its history) retransmits, and the
subscriber gets every packet."""

from __future__ import annotations

import asyncio
from typing import Any

from aiortc import VideoStreamTrack

from sfu.client import Client
from sfu.server import Server
from tests.conftest import make_config, requires_isolated_network
from tests.test_wire import record_headers

pytestmark = requires_isolated_network


async def test_upstream_loss_is_repaired_by_nack() -> None:
    server = Server(make_config())
    await server.start()
    url = f"ws://127.0.0.1:{server.port}/ws"
    alice = Client(url, room="loss", name="alice")
    bob = Client(url, room="loss", name="bob")
    try:
        await alice.join()
        await bob.join()
        await alice.publish([VideoStreamTrack()])
        _, track = await bob.next_track()
        await asyncio.wait_for(track.recv(), 10)
        peer = server.peers[alice.participant_id or ""]
        # The divert calls the transport's bound method: swap it on the protocol.
        assert peer.publish is not None
        connection = peer.publish.pc.getTransceivers()[0].receiver.transport.transport._connection
        dropped: list[int] = []
        for protocol in connection._protocols:
            original = protocol.datagram_received

            def lossy(data: bytes, addr: Any, original: Any = original) -> None:
                if 127 < data[0] < 192 and not 192 <= data[1] <= 223:
                    lossy.count += 1  # type: ignore[attr-defined]
                    if lossy.count % 20 == 0:  # type: ignore[attr-defined]
                        dropped.append((data[2] << 8) | data[3])
                        return
                original(data, addr)

            lossy.count = 0  # type: ignore[attr-defined]
            setattr(protocol, "datagram_received", lossy)  # noqa: B010
        headers = record_headers(bob)
        await asyncio.sleep(4.0)
        counters = server.forwarder.counters()
        print(f"dropped {len(dropped)} publisher packets; forwarder: "
              f"{ {k: counters[k] for k in ('nack_requested', 'nack_recovered', 'nack_gave_up')} }"
              f"; NACK packets sent {server.rtcp_sent['nack']}")
        assert len(dropped) >= 5
        assert counters["nack_requested"] >= len(dropped) - 2
        assert counters["nack_recovered"] >= len(dropped) - 2
        # The subscriber ends up with every sequence number in the window it saw.
        (log,) = [entries for entries in headers.values() if entries]
        seqs = sorted({seq for _, _, seq in log})
        assert seqs[-1] - seqs[0] + 1 - len(seqs) <= 2, "the subscriber is missing packets"
    finally:
        await alice.close()
        await bob.close()
        await server.stop()
