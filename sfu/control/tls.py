"""HTTPS for the page, the WebSocket, /metrics and the admin API: the TLS context made
from ``[server] tls_cert`` / ``tls_key``, or from a self-signed certificate made for the
configured addresses (``tls_self_signed``, for development), reloadable in place.

Browsers give the camera and microphone only to secure contexts (HTTPS, or localhost):
a page served over plain HTTP from another machine cannot publish.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import ssl
from pathlib import Path

from sfu.config import Config

logger = logging.getLogger(__name__)

SELF_SIGNED_DIRECTORY = Path.home() / ".cache" / "sfu" / "tls"


def write_self_signed(directory: Path, names: list[str], prefix: str) -> tuple[Path, Path]:
    """A self-signed ECDSA certificate for ``names`` (IP addresses or host names), valid
    a year: ``<prefix>-cert.pem`` and ``<prefix>-key.pem`` in ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    alternatives: list[x509.GeneralName] = []
    for entry in dict.fromkeys(names):
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            alternatives.append(x509.DNSName(entry))
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{prefix}-cert.pem", directory / f"{prefix}-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


class Tls:
    """The server's TLS context and where its certificate comes from."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert, self.key = cert, key
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.reload()

    def reload(self) -> None:
        """Load the certificate and key again (after a renewal: Let's Encrypt writes new
        files, then SIGHUP). Connections opened from now on get the new certificate; a
        pair that does not load leaves the old one in place and raises."""
        self.context.load_cert_chain(self.cert, self.key)
        logger.info("TLS certificate loaded from %s", self.cert)

    def reload_or_keep(self) -> None:
        """``reload`` for SIGHUP: a pair that does not load is logged, the old one kept."""
        try:
            self.reload()
        except (OSError, ssl.SSLError) as exc:
            logger.error("TLS certificate not reloaded, keeping the old one: %s", exc)


def self_signed_names(host: str, listen_ips: list[str]) -> list[str]:
    """What a development certificate names: the bound host (unless a wildcard), the
    ICE addresses, and localhost."""
    names = [h for h in (host, *listen_ips) if h not in ("", "0.0.0.0", "::")]
    return list(dict.fromkeys([*names, "localhost", "127.0.0.1"]))


def make_tls(config: Config) -> Tls | None:
    """The TLS the config asks for, or None (plain HTTP). A self-signed certificate is
    made once, for the configured addresses, and kept (so a browser told to trust it
    keeps trusting it): in ``SELF_SIGNED_DIRECTORY``."""
    server = config.server
    if server.tls_cert:
        return Tls(Path(server.tls_cert), Path(server.tls_key))
    if not server.tls_self_signed:
        return None
    names = self_signed_names(server.host, config.rtc.listen_ips)
    directory = SELF_SIGNED_DIRECTORY / "-".join(n.replace(":", "_") for n in names)
    cert, key = directory / "https-cert.pem", directory / "https-key.pem"
    if not (cert.exists() and key.exists()):
        cert, key = write_self_signed(directory, names, "https")
    logger.warning(
        "serving HTTPS with a self-signed certificate for %s (%s): browsers warn until "
        "it is trusted — import it into the browser's certificate store, or accept the "
        "warning once; for development only", ", ".join(names), cert)
    return Tls(cert, key)
