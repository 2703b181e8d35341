"""The twin's receive path: ``Forwarder.receive`` in Python (sfu/_fastpath.pyx has it
in C, with recvmmsg(2))."""

from __future__ import annotations

import socket
from typing import Any

from sfu import rtp
from sfu._fastpath_state import Address, _Endpoint


class _ReceivePath:
    _endpoints: dict[int, _Endpoint]

    def handle_packet(self, endpoint: int, data: bytes, now_us: int) -> int:
        raise NotImplementedError  # the Forwarder's

    def receive(self, sock: socket.socket, now_us: int) -> list[tuple[bytes, Address]]:
        """Read the datagrams waiting on ``sock``, a shared socket: SRTP and SRTCP from
        an endpoint's own peer on it (the address ``add_endpoint`` gave, on this socket)
        go to ``handle_packet``; the rest — STUN, DTLS, media from an address no
        endpoint has — come back as (datagram, address), for the caller's ICE to judge.
        At most RECEIVE_MAX_BATCHES batches of RECEIVE_BATCH, then the event loop's turn;
        the C forwarder reads a batch per recvmmsg(2) and stops after one not full."""
        fd = sock.fileno()
        sources = {(ep.fd, tuple(ep.addr[:2])): ep.id for ep in self._endpoints.values()
                   if ep.fd >= 0}
        leftovers: list[tuple[bytes, Address]] = []
        for _ in range(rtp.RECEIVE_MAX_BATCHES):
            read = 0
            for _ in range(rtp.RECEIVE_BATCH):
                try:
                    data, addr = sock.recvfrom(rtp.RECEIVE_BUFFER)
                except (BlockingIOError, InterruptedError):
                    break
                read += 1
                source: Any = sources.get((fd, addr[:2])) if (
                    12 <= len(data) <= rtp.MAX_PACKET_SIZE and 127 < data[0] < 192) else None
                if source is None:
                    leftovers.append((data, addr[:2]))
                else:
                    self.handle_packet(source, data, now_us)
            if read < rtp.RECEIVE_BATCH:
                break
        return leftovers
