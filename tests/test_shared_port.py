"""One UDP port for every participant (sfu/transport/shared_port.py): binding requests
routed by their USERNAME's ufrag, then datagrams by address; ten participants, aiortc
and Chromium, on the one socket; hostile datagrams at the port dropped and counted while
a call runs. Every other test runs on the shared port too (it is the default)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import time
from collections import Counter
from typing import Any

import pytest
from aioice import stun
from aiortc import AudioStreamTrack, VideoStreamTrack
from av import VideoFrame
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.client import Client
from sfu.transport.shared_port import SharedSocket, request_ufrag
from tests.conftest import (
    CHROMIUM,
    make_config,
    publisher_and_subscriber,
    requires_chromium,
    requires_isolated_network,
    running,
)
from tests.test_browser_room import CHROMIUM_ARGS, open_participant, wait_for

CLIENT_PORTS = range(20000, 30000)  # where sfu.client's aiortc peers bind


def binding_request(username: str) -> bytes:
    message = stun.Message(message_method=stun.Method.BINDING,
                           message_class=stun.Class.REQUEST)
    message.attributes["USERNAME"] = username
    message.attributes["PRIORITY"] = 1
    message.add_message_integrity(b"not the password")
    message.add_fingerprint()
    return bytes(message)


def test_the_ufrag_is_read_from_binding_requests_only() -> None:
    assert request_ufrag(binding_request("ours:theirs")) == "ours"
    assert request_ufrag(binding_request(":theirs")) is None
    assert request_ufrag(binding_request("nocolon")) is None
    response = stun.Message(message_method=stun.Method.BINDING,
                            message_class=stun.Class.RESPONSE)
    assert request_ufrag(bytes(response)) is None
    request = binding_request("ours:theirs")
    assert request_ufrag(request[:-8]) is None  # cut short: the length says more
    assert request_ufrag(b"\x80" + request[1:]) is None  # RTP's first byte


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_any_datagram_is_read_without_an_error(data: bytes) -> None:
    ufrag = request_ufrag(data)
    assert ufrag is None or isinstance(ufrag, str)


def udp_sockets(pid: int) -> list[tuple[str, int]]:
    """(address, port) of the UDP sockets process ``pid`` holds."""
    out = subprocess.run(["ss", "-uapnH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        if f"pid={pid}," in line:
            local = line.split()[3]
            address, _, port = local.rpartition(":")
            found.append((address, int(port)))
    return found


class SmallVideo(VideoStreamTrack):
    """160x120 frames: eight aiortc peers encode and decode in the test's own process."""

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame(width=160, height=120)
        for plane in frame.planes:
            plane.update(bytes([pts % 256]) * plane.buffer_size)
        frame.pts, frame.time_base = pts, time_base
        return frame


@requires_isolated_network
@requires_chromium
@pytest.mark.browser
async def test_ten_participants_on_one_udp_port() -> None:
    """Eight aiortc participants and two Chromium pages, each publishing video and audio
    and receiving the next one's (a ring, so that the test's two cores can decode it
    all): twenty peer connections, every track flowing, one server socket."""
    from playwright.async_api import async_playwright

    async with running(make_config()) as server:
        port, http_port = server.ctx.udp_port, server.port
        assert port and http_port
        server.create_room("ten", auto_subscribe=False)
        url = f"ws://127.0.0.1:{server.port}/ws"
        clients = [Client(url, room="ten", name=f"aiortc{n}") for n in range(8)]
        try:
            for client in clients:
                await client.join()
                await client.publish([SmallVideo(), AudioStreamTrack()])
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=CHROMIUM,
                                                           args=CHROMIUM_ARGS)
                try:
                    pages = [await open_participant(browser, http_port, "ten", f"chromium{n}",
                                                    "&simulcast=0") for n in range(2)]
                    ids = [c.participant_id for c in clients] + [
                        await page.evaluate("() => window.sfu.self.id") for page in pages]
                    assert len(server.participants) == 10
                    tracks = {pid: [t.id for t in server.tracks.values() if t.participant == pid]
                              for pid in ids}
                    assert all(len(own) == 2 for own in tracks.values()), tracks
                    ring = {pid: ids[(n + 1) % len(ids)] for n, pid in enumerate(ids)}
                    # All at once: each waits for its own renegotiation, not the others'.
                    await asyncio.gather(
                        *(c.subscribe(tracks[ring[c.participant_id]]) for c in clients),
                        *(page.evaluate(f"() => window.sfu.subscribe({tracks[ring[pid]]!r})")
                          for page, pid in zip(pages, ids[8:], strict=True)))
                    await asyncio.gather(*(receive_from(c, {ring[c.participant_id]})
                                           for c in clients))
                    for page, pid in zip(pages, ids[8:], strict=True):

                        async def decoding(page: Any = page, pid: str = pid) -> tuple[bool, Any]:
                            stats = await page.evaluate("() => window.sfu.inboundStats()")
                            heard = {p for p, s in stats.items()
                                     if s["video"]["framesDecoded"] > 0
                                     and s["audio"]["totalSamplesReceived"] > 0}
                            return heard == {ring[pid]}, stats

                        await wait_for(decoding, 30, "Chromium decoding the next one")

                    transports = [t for link in server.participants.values()
                                  for t in (link.publish, link.subscribe) if t is not None]
                    assert len(transports) == 20
                    assert all(t.connected.is_set() for t in transports)
                    ours = [s for s in udp_sockets(os.getpid()) if s[1] not in CLIENT_PORTS]
                    assert ours == [("127.0.0.1", port)], ours
                finally:
                    await browser.close()
        finally:
            for client in clients:
                await client.close()


async def receive_from(client: Client, publishers: set[str | None]) -> None:
    """Until ``client`` has decoded a frame of video and of audio from each publisher."""
    pending = {(p, kind) for p in publishers for kind in ("video", "audio")}
    async with asyncio.timeout(30):
        while pending:
            info, track = await client.next_track(timeout=30)
            await asyncio.wait_for(track.recv(), 10)
            pending.discard((info.participant, info.kind))


@requires_isolated_network
async def test_hostile_datagrams_at_the_port_are_dropped_and_the_call_goes_on() -> None:
    async with (running(make_config()) as server,
                publisher_and_subscriber(server, "h") as (_, _, track)):
        port = server.ctx.udp_port
        attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            drops = server.stats.transport_drops
            forwarded = server.forwarder.counters()
            rng = os.urandom

            # Binding requests naming no connection of ours; RTP and junk from an address
            # no connection knows; a flood of both while the call runs.
            frames, sent = 0, 0
            started = time.monotonic()
            while time.monotonic() - started < 3:
                for n in range(200):
                    if n % 3 == 0:
                        datagram = binding_request(f"{rng(4).hex()}:{rng(4).hex()}")
                    elif n % 3 == 1:
                        datagram = struct.pack("!BBHII", 0x80, 96, n, n, 0x1234) + rng(100)
                    else:
                        datagram = rng(int.from_bytes(rng(1), "big") + 1)
                    attacker.sendto(datagram, ("127.0.0.1", port))
                    sent += 1
                await asyncio.wait_for(track.recv(), 2)  # bob's video goes on
                frames += 1
            elapsed = time.monotonic() - started
            await asyncio.sleep(0.2)
            print(f"{sent} hostile datagrams in {elapsed:.1f} s; bob decoded {frames} frames;"
                  f" drops {dict(drops)}")
            assert frames >= 30 * elapsed / 2  # aiortc sends 30 fps: at least half came
            junk = sent * 2 // 3
            assert drops["unknown_ufrag"] >= sent // 3 * 0.9  # loopback may drop a few
            assert drops["unknown_source"] >= junk * 0.9
            assert drops["unknown_ufrag"] + drops["unknown_source"] <= sent
            # None reached the forwarder or aioice as anyone's.
            after = server.forwarder.counters()
            assert after["drop_unknown_endpoint"] == forwarded["drop_unknown_endpoint"]
            assert after["drop_srtp_fail"] == forwarded["drop_srtp_fail"]
        finally:
            attacker.close()


@requires_isolated_network
async def test_a_port_per_connection_is_still_an_option() -> None:
    config = make_config(port_per_connection=True, port_min=41000, port_max=41999)
    async with running(config) as server, publisher_and_subscriber(server, "r"):
        assert server.ctx.udp_port is None
        ours = [p for _, p in udp_sockets(os.getpid()) if p in range(41000, 42000)]
        assert len(ours) == 2  # alice's publish and bob's subscribe connection


class Recorder:
    def __init__(self) -> None:
        self.received: list[tuple[bytes, tuple[Any, ...]]] = []
        self.lost = False

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.received.append((data, addr))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


class NoMedia:
    """A forwarder that keeps nothing: every datagram comes back to the socket."""

    def receive(self, sock: socket.socket, now_us: int) -> list[tuple[bytes, tuple[Any, ...]]]:
        out: list[tuple[bytes, tuple[Any, ...]]] = []
        while True:
            try:
                data, addr = sock.recvfrom(2048)
            except BlockingIOError:
                return out
            out.append((data, addr[:2]))


async def test_a_port_reused_by_a_new_client_reaches_the_new_connection() -> None:
    """The churn test's case: a client vanishes, its connection still holds its address,
    and a new client gets the same port: its binding requests go by their ufrag."""
    drops: Counter[str] = Counter()
    shared = SharedSocket.open("127.0.0.1", 0, NoMedia(), drops)
    old, new = Recorder(), Recorder()
    old_endpoint = shared.endpoint("oldufrag", old)
    shared.endpoint("newufrag", new)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    try:
        old_endpoint.learn(client.getsockname())  # the vanished client's address
        client.sendto(binding_request("newufrag:x"), shared.address)
        client.sendto(b"\x16\xfe\xfd" + bytes(20), shared.address)  # then its DTLS
        async with asyncio.timeout(5):
            while len(new.received) < 2:
                await asyncio.sleep(0.01)
        assert old.received == []
        # A request naming nobody, from nowhere known: dropped and counted.
        stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        stranger.sendto(binding_request("nobody:x"), shared.address)
        stranger.sendto(b"junk", shared.address)
        async with asyncio.timeout(5):
            while drops["unknown_ufrag"] + drops["unknown_source"] < 2:
                await asyncio.sleep(0.01)
        assert (drops["unknown_ufrag"], drops["unknown_source"]) == (1, 1)
        stranger.close()
        old_endpoint.close()
        await asyncio.sleep(0)
        assert old.lost
    finally:
        client.close()
        shared.close()


BURST = 600  # datagrams of 1,200 bytes: a few keyframes' worth, read in one batch


def udp_drops(port: int) -> int:
    """The kernel's count of datagrams dropped at the UDP socket bound to ``port``
    (full receive buffer), from /proc/net/udp's last column."""
    with open("/proc/net/udp") as table:
        for line in list(table)[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port:
                return int(fields[-1])
    raise AssertionError(f"no UDP socket on port {port}")


def burst_at(port: int) -> None:
    """BURST datagrams at ``port``, sent without yielding: the event loop, which would
    read them, is as busy as a loop decoding video."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for _ in range(BURST):
            sender.sendto(b"\x80" + bytes(1199), ("127.0.0.1", port))


@requires_isolated_network
async def test_a_burst_waits_in_the_buffers_not_dropped() -> None:
    """The server's port and a client's ICE socket hold a burst the loop has not read
    yet. (The mixed-room test's aiortc client, decoding three videos in the server's
    loop, lost ~1,000 datagrams in 30 s with aioice's 256 KiB.)"""
    from aioice import Connection

    from sfu.transport.internals import _bind_host

    async with running(make_config()) as server:
        assert server.ctx.udp_port
        burst_at(server.ctx.udp_port)
        assert udp_drops(server.ctx.udp_port) == 0
    client = Client("ws://127.0.0.1:1/ws", room="r", name="n")
    connection = Connection(ice_controlling=True)
    protocol = await _bind_host(connection, "127.0.0.1", client._gathering)
    try:
        port = protocol.transport.get_extra_info("sockname")[1]
        burst_at(port)
        assert udp_drops(port) == 0
    finally:
        protocol.transport.close()
