"""A coturn (Debian's ``coturn``) run from the SFU's ``[turn]`` config.

``sfu serve`` starts one when ``turn.start_local`` is set, for development; tests start
their own. The config it writes is what a deployment needs too: ``use-auth-secret``
with the SFU's secret (credentials from ``sfu.transport.turn``), a realm, the listening and relay
address, a relay port range, and TURN over UDP, TCP and TLS with a certificate made for
local use. Loopback peers are allowed only when coturn itself listens on loopback
(coturn 4.6 refuses to relay to 127.0.0.1 otherwise; docs/architecture.md, "TURN fallback").
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from sfu.config import TurnConfig
from sfu.control.tls import write_self_signed

logger = logging.getLogger(__name__)

TURNSERVER = "turnserver"


class CoturnError(RuntimeError):
    """coturn is missing, or did not start."""


def config_text(turn: TurnConfig, directory: Path, cert: Path, key: Path) -> str:
    """turnserver.conf for ``turn`` (see turnserver(1))."""
    loopback = ipaddress.ip_address(turn.host).is_loopback
    lines = [
        f"listening-ip={turn.host}",
        f"relay-ip={turn.host}",
        f"listening-port={turn.port}",
        f"min-port={turn.relay_port_min}",
        f"max-port={turn.relay_port_max}",
        "use-auth-secret",
        f"static-auth-secret={turn.secret}",
        f"realm={turn.realm}",
        "fingerprint",
        "no-cli",
        "no-multicast-peers",
        "no-dtls",  # TURN over DTLS: no browser uses it
        f"userdb={directory / 'turndb'}",
        f"pidfile={directory / 'turnserver.pid'}",
        f"log-file={directory / 'turnserver.log'}",
        "simple-log",
        "no-stdout-log",
    ]
    if turn.tls_port:
        lines += [f"tls-listening-port={turn.tls_port}", f"cert={cert}", f"pkey={key}"]
    else:
        lines.append("no-tls")
    if loopback:
        lines.append("allow-loopback-peers")  # development on 127.0.0.1 only
    return "\n".join(lines) + "\n"


def local_fleet(turn: TurnConfig) -> list[TurnConfig]:
    """The coturns ``start_local`` runs: ``local_count`` of them on ``host``, the i-th on
    ``port + 2i`` (TLS ``tls_port + 2i``), each with its share of the relay ports."""
    span = (turn.relay_port_max - turn.relay_port_min + 1) // turn.local_count
    return [dataclasses.replace(
        turn, port=turn.port + 2 * i, tls_port=turn.tls_port + 2 * i if turn.tls_port else 0,
        relay_port_min=turn.relay_port_min + i * span,
        relay_port_max=turn.relay_port_min + (i + 1) * span - 1)
        for i in range(turn.local_count)]


class Coturn:
    """One turnserver process: ``start()``, ``stop()``; or a context manager."""

    def __init__(self, turn: TurnConfig) -> None:
        self.turn = turn
        self.directory = Path(tempfile.mkdtemp(prefix="sfu-coturn-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / "turnserver.log"

    def start(self, timeout_s: float = 10.0) -> None:
        executable = shutil.which(TURNSERVER, path="/usr/bin:/usr/sbin:/bin")
        if executable is None:
            raise CoturnError("turnserver is missing: scripts/install.sh installs coturn")
        self.directory.mkdir(exist_ok=True)
        cert, key = write_self_signed(self.directory, [self.turn.host], "turn")
        conf = self.directory / "turnserver.conf"
        conf.write_text(config_text(self.turn, self.directory, cert, key))
        conf.chmod(0o600)  # it holds the secret
        self.process = subprocess.Popen([executable, "-c", str(conf)], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while not self._listening():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.log_path.read_text() if self.log_path.exists() else ""
                self.stop()
                raise CoturnError(f"coturn did not start on {self.turn.host}:{self.turn.port}:"
                                  f"\n{log[-2000:]}")
            time.sleep(0.05)
        logger.info("coturn listening on %s:%d (TLS %d)", self.turn.host, self.turn.port,
                    self.turn.tls_port)

    def _listening(self) -> bool:
        try:
            with socket.create_connection((self.turn.host, self.turn.port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Coturn:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
