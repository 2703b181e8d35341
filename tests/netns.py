"""A client network namespace for browser tests (docs/architecture.md, "Testing WebRTC here").

``client_namespace`` makes a namespace joined to the test's own by a veth pair, with
a default route back through it, and a Chromium wrapper that runs inside it
(Playwright drives Chromium over a pipe, so the page lives behind whatever the test
puts in the namespace: iptables rules for loss, firewalls, a NAT). All of it is
removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import CHROMIUM

# Debian installs iptables in /usr/sbin, which a non-login PATH may lack.
IPTABLES = shutil.which("iptables", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")

requires_root_and_iptables = pytest.mark.skipif(
    os.geteuid() != 0 or IPTABLES is None,
    reason="needs root and iptables (scripts/install.sh --test)",
)


def run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True)


@dataclass(frozen=True)
class ClientNamespace:
    name: str
    host_address: str  # the test's side of the veth pair
    client_address: str
    chromium: str  # an executable that runs Chromium inside the namespace
    host_link: str = ""  # the test's end of the veth pair (what the namespace receives
    # leaves through it: shape its downlink there)

    def iptables(self, *rule: str) -> None:
        """Run an iptables command inside the namespace (e.g. "-A", "OUTPUT", ...)."""
        run("ip", "netns", "exec", self.name, str(IPTABLES), *rule)


@contextlib.contextmanager
def chromium_in(namespace: str) -> Iterator[str]:
    """An executable that runs Chromium inside ``namespace`` (for Playwright's launch)."""
    with tempfile.TemporaryDirectory() as directory:
        wrapper = Path(directory) / "chromium"
        wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {namespace} {CHROMIUM} "$@"\n')
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
        yield str(wrapper)


@contextlib.contextmanager
def client_namespace(tag: str, subnet: str) -> Iterator[ClientNamespace]:
    """``subnet`` like "10.88.0": the host side gets .1, the namespace .2."""
    name, host_link, client_link = f"sfu-{tag}-{os.getpid()}", f"sfu{tag}0", f"sfu{tag}1"
    namespace = ClientNamespace(name, f"{subnet}.1", f"{subnet}.2", "")
    run("ip", "netns", "add", name)
    try:
        run("ip", "link", "add", host_link, "type", "veth", "peer", "name", client_link)
        run("ip", "link", "set", client_link, "netns", name)
        run("ip", "addr", "add", f"{namespace.host_address}/24", "dev", host_link)
        run("ip", "link", "set", host_link, "up")
        inside = ("ip", "netns", "exec", name)
        run(*inside, "ip", "link", "set", "lo", "up")
        run(*inside, "ip", "addr", "add", f"{namespace.client_address}/24", "dev", client_link)
        run(*inside, "ip", "link", "set", client_link, "up")
        run(*inside, "ip", "route", "add", "default", "via", namespace.host_address)
        with chromium_in(name) as wrapper:
            yield ClientNamespace(name, namespace.host_address, namespace.client_address,
                                  wrapper, host_link)
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["ip", "link", "del", host_link], capture_output=True)
