"""NAT behaviour discovery (RFC 5780 §4.3 and §4.4) against a STUN server that has two
addresses (coturn started with two listening IPs answers with OTHER-ADDRESS and honours
CHANGE-REQUEST).

The verdicts are pure functions of what the tests saw (``mapping_behaviour``,
``filtering_behaviour``, ``rfc3489_name``); ``discover`` runs the tests over UDP.

Mapping (§4.3): test I asks the primary address A1:P1 for our mapped address M1 and
learns the other address A2:P2; test II asks A2:P1: the same M1 means the NAT maps
endpoint-independently; else test III asks A2:P2: the same as test II means
address-dependent, a new one address-and-port-dependent.

Filtering (§4.4), from a fresh socket that has only ever sent to A1:P1 (the mapping
tests open the NAT's filter to A2 for theirs): test II asks for the answer from A2:P2
(CHANGE-REQUEST: change IP and port); it arrives through an endpoint-independent filter.
Else test III asks for it from A1:P2 (change port): it arrives through an
address-dependent filter; else the filter is address-and-port-dependent.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import asdict, dataclass
from typing import Any

from sfu.diagnostics.traversal import nat_type_of
from sfu.transport.stun_probe import Address, BindingAnswer, BindingProbe

ENDPOINT_INDEPENDENT = "endpoint-independent"
ADDRESS_DEPENDENT = "address-dependent"
ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"
CHANGE_IP, CHANGE_PORT = 0x4, 0x2  # CHANGE-REQUEST flags (RFC 5780 §7.2)
RETRIES = 3  # a request is sent this many times before the test counts it unanswered


class DiscoveryError(RuntimeError):
    """The test could not be run: no answer at all, or a server without RFC 5780."""


def mapping_behaviour(m1: Address, m2: Address, m3: Address | None) -> str:
    """RFC 5780 §4.3 from the mapped addresses seen by tests I, II and (if run) III."""
    if m2 == m1:
        return ENDPOINT_INDEPENDENT
    if m3 is None:
        raise ValueError("test III is needed when tests I and II disagree")
    return ADDRESS_DEPENDENT if m3 == m2 else ADDRESS_AND_PORT_DEPENDENT


def filtering_behaviour(answered_from_other_address: bool, answered_from_other_port: bool) -> str:
    """RFC 5780 §4.4 from whether tests II and III were answered."""
    if answered_from_other_address:
        return ENDPOINT_INDEPENDENT
    return ADDRESS_DEPENDENT if answered_from_other_port else ADDRESS_AND_PORT_DEPENDENT


def rfc3489_name(behind_nat: bool, mapping: str, filtering: str) -> str:
    """The older vocabulary (RFC 3489 §5), which support tickets still use."""
    if not behind_nat:
        return "open internet" if filtering == ENDPOINT_INDEPENDENT else "symmetric UDP firewall"
    if mapping != ENDPOINT_INDEPENDENT:
        return "symmetric"
    return {ENDPOINT_INDEPENDENT: "full cone", ADDRESS_DEPENDENT: "restricted cone",
            ADDRESS_AND_PORT_DEPENDENT: "port-restricted cone"}[filtering]


@dataclass(frozen=True)
class NatReport:
    server: str
    other_address: str
    local: str
    mapped: str
    behind_nat: bool
    mapping: str
    filtering: str
    rfc3489: str
    nat_type: str  # the identifier a client reports at join (sfu.diagnostics.traversal)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        return "\n".join([
            f"STUN server        {self.server} (other address {self.other_address})",
            f"local address      {self.local}",
            f"mapped address     {self.mapped}" + ("" if self.behind_nat else " (no NAT)"),
            f"mapping            {self.mapping} (RFC 5780)",
            f"filtering          {self.filtering} (RFC 5780)",
            f"NAT type           {self.rfc3489} (RFC 3489)",
        ])


def _text(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


def _source_address(server: Address) -> str:
    """The local address the kernel would send to ``server`` from."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(server)
        host: str = probe.getsockname()[0]
        return host


async def _first_test(sock: BindingProbe, server: Address, timeout: float
                      ) -> tuple[Address, Address]:
    """Test I: our mapped address, and the server's other address."""
    first = await sock.request(server, 0, timeout, RETRIES)
    if first is None:
        raise DiscoveryError(f"no answer from {_text(server)} over UDP (blocked?)")
    if first.other is None:
        raise DiscoveryError(f"{_text(server)} does not do RFC 5780 (no OTHER-ADDRESS): "
                             "coturn needs two listening IPs")
    return _mapped(first), first.other


def _mapped(answer: BindingAnswer) -> Address:
    if answer.mapped is None:
        raise DiscoveryError("the STUN server's response has no mapped address")
    return answer.mapped


async def _filtering(sock: BindingProbe, server: Address, timeout: float) -> str:
    _, other = await _first_test(sock, server, timeout)
    both = await sock.request(server, CHANGE_IP | CHANGE_PORT, timeout, RETRIES)
    if both is not None and both.source == other:
        return filtering_behaviour(True, False)
    port_only = await sock.request(server, CHANGE_PORT, timeout, RETRIES)
    return filtering_behaviour(False, port_only is not None
                               and port_only.source == (server[0], other[1]))


async def _mapping(sock: BindingProbe, server: Address, timeout: float
                   ) -> tuple[Address, Address, str]:
    """Our mapped address, the server's other address, the mapping behaviour."""
    m1, other = await _first_test(sock, server, timeout)
    second = await sock.request((other[0], server[1]), 0, timeout, RETRIES)
    if second is None:
        raise DiscoveryError(f"no answer from the other address {other[0]}")
    m2, m3 = _mapped(second), None
    if m2 != m1:
        third = await sock.request(other, 0, timeout, RETRIES)
        if third is None:
            raise DiscoveryError(f"no answer from the other address {_text(other)}")
        m3 = _mapped(third)
    return m1, other, mapping_behaviour(m1, m2, m3)


async def discover(server: Address, timeout: float = 2.0) -> NatReport:
    """Run the filtering and mapping tests against ``server`` (its primary address),
    each from a socket of its own (a mapping of its own): the filtering tests first,
    while the NAT has seen nothing of ours go to the other address. (A real NAT keeps a
    filter per mapping, so the order would not matter; one emulated with iptables'
    ``recent`` match, as tests/test_doctor.py does, keeps one per host.)"""
    infos = await asyncio.get_running_loop().getaddrinfo(
        server[0], server[1], family=socket.AF_INET, type=socket.SOCK_DGRAM)
    server = (str(infos[0][4][0]), server[1])  # an IP: answers are matched by their source
    local_host = _source_address(server)
    async with BindingProbe.open(local_host) as sock:
        filtering = await _filtering(sock, server, timeout)
    async with BindingProbe.open(local_host) as sock:
        mapped, other, mapping = await _mapping(sock, server, timeout)
        local = sock.local
    behind_nat = mapped != local
    name = rfc3489_name(behind_nat, mapping, filtering)
    return NatReport(server=_text(server), other_address=_text(other),
                     local=_text(local), mapped=_text(mapped), behind_nat=behind_nat,
                     mapping=mapping, filtering=filtering,
                     rfc3489=name, nat_type=nat_type_of(name))
