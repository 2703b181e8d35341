"""`sfu doctor`: RFC 5780 NAT behaviour discovery (sfu/diagnostics/nat.py), run from
behind NATs the test builds with network namespaces and iptables, against a real coturn
answering on two addresses.

Topology: the client's namespace → a router namespace (the NAT) → the test's own
namespace, where coturn listens on 10.93.1.1 and 10.93.1.2 (its primary and other
address, on the loopback link; the SFU listens there too). The NATs, as Linux's
netfilter makes them:
- none: the router only routes → open internet;
- MASQUERADE: the source port is kept whatever the destination (endpoint-independent
  mapping), and conntrack lets in only answers from where a packet went
  (address-and-port-dependent filtering) → port-restricted cone;
- MASQUERADE --random-fully: a random port for every new destination
  (address-and-port-dependent mapping) → symmetric;
- MASQUERADE and a DNAT of everything arriving to the client: anyone may send to a
  mapping → full cone;
- the same, but only hosts the client has sent to may (iptables' ``recent`` match
  remembers them; address-dependent filtering) → restricted cone. ``recent`` keeps
  hosts, not a filter per mapping as a real NAT would: the list is cleared between
  the two runs, and `sfu doctor` runs its filtering tests before its mapping tests;
- for tests/test_nat_page.py also: MASQUERADE to one port range for PRIMARY and
  another for the rest (address-dependent mapping: the port is kept within a range) →
  symmetric; and MASQUERADE with no UDP forwarded at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aioice import stun
from aiortc import VideoStreamTrack

from sfu.client import Client
from sfu.config import TurnConfig
from sfu.control.auth import mint_token
from sfu.diagnostics.nat import (
    ADDRESS_AND_PORT_DEPENDENT,
    ADDRESS_DEPENDENT,
    ENDPOINT_INDEPENDENT,
    filtering_behaviour,
    mapping_behaviour,
    rfc3489_name,
)
from sfu.transport.coturn import Coturn
from tests.conftest import jwt_config, requires_isolated_network, running
from tests.netns import IPTABLES, requires_root_and_iptables, run

TURNSERVER = shutil.which("turnserver", path="/usr/bin:/usr/sbin:/bin")
PRIMARY, OTHER = "10.93.1.1", "10.93.1.2"
SFU = [sys.executable, "-m", "sfu"]


def test_mapping_verdicts() -> None:
    a, b, c = ("192.0.2.1", 1000), ("192.0.2.1", 2000), ("192.0.2.1", 3000)
    assert mapping_behaviour(a, a, None) == ENDPOINT_INDEPENDENT
    assert mapping_behaviour(a, b, b) == ADDRESS_DEPENDENT
    assert mapping_behaviour(a, b, c) == ADDRESS_AND_PORT_DEPENDENT
    with pytest.raises(ValueError):
        mapping_behaviour(a, b, None)


def test_filtering_verdicts_and_rfc3489_names() -> None:
    assert filtering_behaviour(True, False) == ENDPOINT_INDEPENDENT
    assert filtering_behaviour(False, True) == ADDRESS_DEPENDENT
    assert filtering_behaviour(False, False) == ADDRESS_AND_PORT_DEPENDENT
    eim, adm = ENDPOINT_INDEPENDENT, ADDRESS_DEPENDENT
    assert rfc3489_name(False, eim, ENDPOINT_INDEPENDENT) == "open internet"
    assert rfc3489_name(False, eim, ADDRESS_DEPENDENT) == "symmetric UDP firewall"
    assert rfc3489_name(True, eim, ENDPOINT_INDEPENDENT) == "full cone"
    assert rfc3489_name(True, eim, ADDRESS_DEPENDENT) == "restricted cone"
    assert rfc3489_name(True, eim, ADDRESS_AND_PORT_DEPENDENT) == "port-restricted cone"
    assert rfc3489_name(True, adm, ENDPOINT_INDEPENDENT) == "symmetric"


def answers(address: tuple[str, int]) -> bool:
    """Whether a STUN binding request to ``address`` is answered within 0.2 s."""
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.settimeout(0.2)
        probe.sendto(bytes(request), address)
        try:
            return stun.parse_message(probe.recv(2048)).transaction_id == request.transaction_id
        except (OSError, ValueError):
            return False


@contextlib.contextmanager
def coturn_stun(*addresses: str) -> Iterator[None]:
    """coturn as a STUN server on ``addresses`` (port 3478; with two, RFC 5780's other
    address is the second on port 3479)."""
    assert TURNSERVER is not None
    process = subprocess.Popen(
        [TURNSERVER, "-n", "--stun-only", *(f"--listening-ip={a}" for a in addresses),
         "--listening-port=3478", "--no-tls", "--no-dtls", "--no-cli", "--log-file=stdout"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        last = (addresses[-1], 3479 if len(addresses) > 1 else 3478)
        deadline = time.monotonic() + 10
        while not answers(last):
            assert process.poll() is None and time.monotonic() < deadline, "coturn not up"
        yield
    finally:
        process.terminate()
        process.wait(10)


@contextlib.contextmanager
def stun_server() -> Iterator[None]:
    """PRIMARY and OTHER on the test namespace's loopback link (local addresses, reached
    through any link: this kernel has no dummy links), coturn on both."""
    try:
        for address in (PRIMARY, OTHER):
            run("ip", "addr", "add", f"{address}/32", "dev", "lo")
        with coturn_stun(PRIMARY, OTHER):
            yield
    finally:
        for address in (PRIMARY, OTHER):
            subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"],
                           capture_output=True)


@dataclass(frozen=True)
class Nat:
    kind: str
    client: str  # the client's namespace
    router: str  # the NAT's namespace
    client_address: str
    public_address: str  # the router's outside address: what the NAT maps to


@contextlib.contextmanager
def behind_nat(kind: str, index: int = 0) -> Iterator[Nat]:
    """A client namespace behind a router namespace doing ``kind``, reached from the
    test's namespace over 10.93.(10+index).0/24; the client's side is
    10.93.(30+index).0/24. Several may stand side by side (``index``)."""
    tag = f"{os.getpid()}-{index}"
    router, client = f"sfu-natr-{tag}", f"sfu-natc-{tag}"
    outside = f"sfunat{index}"  # the test's end of the router's outside link
    host, public = f"10.93.{10 + index}.1", f"10.93.{10 + index}.254"
    inside, client_address = f"10.93.{30 + index}.1", f"10.93.{30 + index}.2"
    try:
        run("ip", "netns", "add", router)
        run("ip", "netns", "add", client)
        in_router = ("ip", "netns", "exec", router)
        in_client = ("ip", "netns", "exec", client)
        run("ip", "link", "add", outside, "type", "veth", "peer", "name", "out0")
        run("ip", "link", "set", "out0", "netns", router)
        run("ip", "addr", "add", f"{host}/24", "dev", outside)
        run("ip", "link", "set", outside, "up")
        if kind == "none":  # a routed private network; behind a NAT, one nobody reaches
            run("ip", "route", "add", f"10.93.{30 + index}.0/24", "via", public)
        run(*in_router, "ip", "link", "add", "in0", "type", "veth", "peer", "name", "eth0")
        run(*in_router, "ip", "link", "set", "eth0", "netns", client)
        for command in (("ip", "link", "set", "lo", "up"),
                        ("ip", "addr", "add", f"{public}/24", "dev", "out0"),
                        ("ip", "addr", "add", f"{inside}/24", "dev", "in0"),
                        ("ip", "link", "set", "out0", "up"), ("ip", "link", "set", "in0", "up"),
                        ("ip", "route", "add", "default", "via", host),
                        ("sysctl", "-qw", "net.ipv4.ip_forward=1")):
            run(*in_router, *command)
        for command in (("ip", "link", "set", "lo", "up"),
                        ("ip", "addr", "add", f"{client_address}/24", "dev", "eth0"),
                        ("ip", "link", "set", "eth0", "up"),
                        ("ip", "route", "add", "default", "via", inside)):
            run(*in_client, *command)
        nat = (*in_router, str(IPTABLES), "-t", "nat")
        if kind in ("masquerade", "full-cone", "restricted", "udp-blocked"):
            run(*nat, "-A", "POSTROUTING", "-o", "out0", "-j", "MASQUERADE")
        if kind == "address-dependent":  # a port range per destination address
            run(*nat, "-A", "POSTROUTING", "-o", "out0", "-p", "udp", "-d", PRIMARY, "-j",
                "MASQUERADE", "--to-ports", "20000-29999")
            run(*nat, "-A", "POSTROUTING", "-o", "out0", "-p", "udp", "-j", "MASQUERADE",
                "--to-ports", "30000-39999")
            run(*nat, "-A", "POSTROUTING", "-o", "out0", "-j", "MASQUERADE")
        if kind == "udp-blocked":  # a firewall that lets only TCP out
            run(*in_router, str(IPTABLES), "-A", "FORWARD", "-p", "udp", "-j", "DROP")
        elif kind == "random":
            run(*nat, "-A", "POSTROUTING", "-o", "out0", "-j", "MASQUERADE", "--random-fully")
        if kind in ("full-cone", "restricted"):
            run(*nat, "-A", "PREROUTING", "-i", "out0", "-p", "udp", "-j", "DNAT",
                "--to-destination", client_address)
        if kind == "restricted":
            forward = (*in_router, str(IPTABLES), "-A", "FORWARD")
            run(*forward, "-i", "in0", "-m", "recent", "--name", "sent", "--rdest", "--set",
                "-j", "ACCEPT")
            run(*forward, "-i", "out0", "-m", "conntrack", "--ctstate", "ESTABLISHED",
                "-j", "ACCEPT")
            run(*forward, "-i", "out0", "-m", "recent", "--name", "sent", "--rsource",
                "--rcheck", "-j", "ACCEPT")
            run(*forward, "-i", "out0", "-j", "DROP")
        yield Nat(kind, client, router, client_address, public)
    finally:
        for name in (client, router):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["ip", "link", "del", outside], capture_output=True)


@requires_isolated_network
@requires_root_and_iptables
@pytest.mark.skipif(TURNSERVER is None, reason="needs coturn (scripts/install.sh --test)")
@pytest.mark.parametrize(("kind", "mapping", "filtering", "name"), [
    ("none", ENDPOINT_INDEPENDENT, ENDPOINT_INDEPENDENT, "open internet"),
    ("masquerade", ENDPOINT_INDEPENDENT, ADDRESS_AND_PORT_DEPENDENT, "port-restricted cone"),
    ("random", ADDRESS_AND_PORT_DEPENDENT, ADDRESS_AND_PORT_DEPENDENT, "symmetric"),
    ("full-cone", ENDPOINT_INDEPENDENT, ENDPOINT_INDEPENDENT, "full cone"),
    ("restricted", ENDPOINT_INDEPENDENT, ADDRESS_DEPENDENT, "restricted cone"),
])
def test_doctor_classifies_the_nat(kind: str, mapping: str, filtering: str, name: str) -> None:
    with stun_server(), behind_nat(kind) as nat:
        client = nat.client
        done = subprocess.run(
            ["ip", "netns", "exec", client, *SFU, "doctor", "--stun", f"{PRIMARY}:3478",
             "--timeout", "0.6", "--json"],
            capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["other_address"] == f"{OTHER}:3479", report
        assert report["behind_nat"] == (kind != "none"), report
        assert report["mapped"].split(":")[0] == (
            nat.client_address if kind == "none" else nat.public_address)
        assert (report["mapping"], report["filtering"], report["rfc3489"]) == (
            mapping, filtering, name), report
        if kind != "restricted":
            return  # the text report once: it says the same
        run("ip", "netns", "exec", nat.router, "sh", "-c",  # forget where the first run went
            "echo / > /proc/net/xt_recent/sent")
        text = subprocess.run(
            ["ip", "netns", "exec", client, *SFU, "doctor", "--stun", PRIMARY, "--timeout",
             "0.6"], capture_output=True, text=True, timeout=60,
            cwd=Path(__file__).parent.parent)
        assert f"NAT type           {name} (RFC 3489)" in text.stdout, text


@requires_isolated_network
@pytest.mark.skipif(TURNSERVER is None, reason="needs coturn (scripts/install.sh --test)")
def test_doctor_says_when_the_server_cannot_tell() -> None:
    """No STUN server at all, and one with a single address: a clear error each."""
    done = subprocess.run([*SFU, "doctor", "--stun", "127.0.0.1:9", "--timeout", "0.3"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "no answer from 127.0.0.1:9 over UDP" in done.stderr
    with coturn_stun("127.0.0.1"):
        done = subprocess.run([*SFU, "doctor", "--stun", "127.0.0.1", "--timeout", "0.3"],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "does not do RFC 5780 (no OTHER-ADDRESS)" in done.stderr


# Each NAT above, and the NAT type its participant finds and reports at join.
ROOM = {"none": "open", "masquerade": "port_restricted_cone", "random": "symmetric",
        "full-cone": "full_cone", "restricted": "restricted_cone"}
PARTICIPANT = Path(__file__).parent / "clients" / "nat_participant.py"
SECRET = "n" * 32


async def line(process: asyncio.subprocess.Process, seconds: float) -> dict[str, Any]:
    assert process.stdout is not None
    raw = await asyncio.wait_for(process.stdout.readline(), seconds)
    assert raw, "the participant exited"
    parsed: dict[str, Any] = json.loads(raw)
    return parsed


@requires_isolated_network
@requires_root_and_iptables
@pytest.mark.skipif(TURNSERVER is None, reason="needs coturn (scripts/install.sh --test)")
async def test_a_room_with_a_participant_behind_each_nat() -> None:
    """Five participants, each behind its own kind of NAT, run the NAT test, join one
    room with what they found and receive video; the server's traversal table counts
    each one's two peer connections under its type: all direct (the SFU has a public
    address, which every NAT lets through once the client has sent to it), with their
    connect times."""
    with stun_server(), contextlib.ExitStack() as stack:
        nats = [stack.enter_context(behind_nat(kind, i)) for i, kind in enumerate(ROOM)]
        config = jwt_config(SECRET)
        config.server.host, config.rtc.listen_ips, config.rtc.ice_tcp = "0.0.0.0", [PRIMARY], False
        async with running(config) as server:
            url = f"ws://{PRIMARY}:{server.port}/ws"
            host = Client(url, room="nat", name="host", nat_type="open",
                          token=mint_token(SECRET, room="nat", identity="host"),
                          host_addresses=(PRIMARY,))
            processes = []
            try:
                await host.join()
                await host.publish([VideoStreamTrack()])
                for nat in nats:
                    processes.append(await asyncio.create_subprocess_exec(
                        "ip", "netns", "exec", nat.client, sys.executable, str(PARTICIPANT),
                        url, PRIMARY, nat.client_address, nat.kind,
                        mint_token(SECRET, room="nat", identity=nat.kind),
                        stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).parent.parent))
                for nat, process in zip(nats, processes, strict=True):
                    assert await line(process, 30) == {"nat_type": ROOM[nat.kind]}, nat
                for process in processes:
                    assert await line(process, 60) == {"received": True}
                deadline = time.monotonic() + 20
                while any(server.traversal().get(t, {}).get("direct", 0) < 2
                          for t in ROOM.values()):
                    assert time.monotonic() < deadline, server.traversal()
                    await asyncio.sleep(0.1)
                table = server.traversal()
                print("\ntraversal:", json.dumps(table, indent=1))
                for nat_type in ROOM.values():
                    row = table[nat_type]
                    attempted = 2 + (2 if nat_type == "open" else 0)  # the host is "open" too
                    assert (row["attempted"], row["direct"], row["relayed"], row["failed"]) == (
                        attempted, attempted, 0, 0), (nat_type, table)
                    assert 0 < row["connect_ms"]["p50"] <= row["connect_ms"]["p99"] < 20_000
                reported = {p["name"]: p["nat_type"]
                            for p in server.room_info("nat")["participants"]}
                assert reported == {"host": "open", **ROOM}
            finally:
                for process in processes:
                    process.kill()
                    await process.wait()
                await host.close()


async def doctor(*args: str) -> tuple[int, str, str]:
    """`sfu doctor` as a child process (the server under test runs in this loop)."""
    process = await asyncio.create_subprocess_exec(
        *SFU, "doctor", *args, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=Path(__file__).parent.parent)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@requires_isolated_network
@pytest.mark.skipif(TURNSERVER is None, reason="needs coturn (scripts/install.sh --test)")
async def test_doctor_tries_the_sfus_turn_and_a_loopback() -> None:
    """With --server, the TURN URLs and credential a joiner gets, each allocated: all
    three transports with a working coturn (its own certificate accepted only when
    told), none once it is gone, and a clear error for a refused join; and video sent
    through the SFU and back, with its rate, loss and round-trip time."""
    turn = TurnConfig(host="127.0.0.1", secret="d" * 24, relay_port_min=52000,
                      relay_port_max=52099)
    config = jwt_config(SECRET)
    config.turn = turn
    token = mint_token(SECRET, room="sfu-doctor", identity="doctor")
    token2 = mint_token(SECRET, room="sfu-doctor", identity="doctor-2")
    with Coturn(turn) as coturn:
        async with running(config) as server:
            url = f"http://127.0.0.1:{server.port}"
            status, out, err = await doctor("--server", url, "--token", token, "--token2",
                                            token2, "--json", "--insecure-tls")
            assert status == 0, err
            looped = json.loads(out)["loopback"]  # aiortc's test video: 30 fps
            assert looped["fps"] >= 10 and looped["packets"] > 0, looped
            assert looped["loss"] < 0.05 and 0 < looped["rtt_ms"] < 500, looped
            reach = {r["url"]: r for r in json.loads(out)["turn"]}
            assert set(reach) == {"turn:127.0.0.1:3478?transport=udp",
                                  "turn:127.0.0.1:3478?transport=tcp",
                                  "turns:127.0.0.1:5349?transport=tcp"}
            assert all(r["ok"] and r["ms"] > 0 for r in reach.values()), reach
            _, out, _ = await doctor("--server", url, "--token", token, "--json",
                                     "--no-loopback")
            tls = next(r for r in json.loads(out)["turn"] if r["url"].startswith("turns:"))
            assert not tls["ok"] and "CERTIFICATE_VERIFY_FAILED" in tls["error"], tls
            coturn.stop()
            status, out, _ = await doctor("--server", url, "--token", token,
                                          "--timeout", "0.5", "--no-loopback")
            assert status == 0 and out.count("FAILED") == 3, out
            status, _, err = await doctor("--server", url, "--token", "not a token")
            assert status == 1 and "unauthorized" in err, err
