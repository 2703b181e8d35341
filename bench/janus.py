"""Janus VideoRoom as a system under test (Debian's `janus`, 1.1.x).

The bench writes a private configuration (only the VideoRoom plugin and the plain
HTTP transport, ICE on the one interface that holds the bench's address, an ECDSA
P-256 DTLS certificate, since aiortc offers only ECDHE-ECDSA suites) and starts
`janus` with it. Load participants talk to it through the Janus REST API: one
session each, a publisher handle (also for listeners, which never publish, so that
they hear about publishers) and one multistream subscriber handle that subscribes
to every other publisher, renegotiating as new ones appear.

Janus (libnice) gathers no ICE candidates on loopback, so the bench's address must
be on another interface: `sfu bench` run as root makes a veth pair in a private
network namespace for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .signalling import SubscribeOffer
from .systems import ProcessSystem, free_port

JANUS = "/usr/bin/janus"
HTTP_HOST = "127.0.0.1"  # the REST API; media uses the bench's address
RTP_PORTS = "20000-29999"  # the load generator's own candidates use 30000-39999
ROOM_EXISTS = 427  # JANUS_VIDEOROOM_ERROR_ROOM_EXISTS
KEEPALIVE_SECONDS = 25.0  # Janus's session timeout is 60 s
REQUEST_TIMEOUT = 30.0


def interface_of(address: str) -> str | None:
    """The network interface that holds ``address`` (from `ip -o addr`), if any."""
    try:
        out = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    for line in out.splitlines():
        fields = line.split()
        # "3: v0    inet 10.77.0.1/24 brd ... scope global v0\ ..."
        if (len(fields) >= 4 and fields[2] in ("inet", "inet6")
                and fields[3].split("/")[0] == address):
            return fields[1].split("@")[0]
    return None


def _libdir() -> Path | None:
    """Where Debian puts Janus's plugins/, transports/, events/, loggers/."""
    for candidate in sorted(Path("/usr/lib").glob("*/janus")):
        if (candidate / "plugins").is_dir():
            return candidate
    return None


def _others(folder: Path, keep: str) -> str:
    """Every module in ``folder`` but ``keep``, for a `disable` directive."""
    if not folder.is_dir():
        return ""
    return ",".join(sorted(p.name for p in folder.glob("*.so") if p.name != keep))


def write_certificate(certificate: Path, key: Path) -> None:
    """A self-signed ECDSA P-256 certificate for Janus's DTLS: aiortc offers only
    ECDHE-ECDSA cipher suites. (cryptography comes with aiortc.)"""
    private_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "janus-bench")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(private_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(private_key, hashes.SHA256()))
    certificate.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))


def janus_config(directory: Path, interface: str, http_port: int) -> None:
    """Write janus.jcfg and the configs of the one plugin and one transport we load."""
    certificate, key = directory / "cert.pem", directory / "key.pem"
    write_certificate(certificate, key)
    libdir = _libdir()
    folders = ""
    disabled = {"plugins": "", "transports": "", "loggers": "", "events": ""}
    if libdir is not None:
        folders = "".join(
            f'\t{kind}_folder = "{libdir / kind}"\n'
            for kind in ("plugins", "transports", "events", "loggers"))
        disabled = {
            "plugins": _others(libdir / "plugins", "libjanus_videoroom.so"),
            "transports": _others(libdir / "transports", "libjanus_http.so"),
            "loggers": _others(libdir / "loggers", ""),
            "events": _others(libdir / "events", ""),
        }
    sections = "".join(
        f'{kind}: {{\n\tdisable = "{names}"\n}}\n' if names else f"{kind}: {{\n}}\n"
        for kind, names in disabled.items())
    (directory / "janus.jcfg").write_text(
        "general: {\n"
        f'\tconfigs_folder = "{directory}"\n'
        f"{folders}"
        "\tdebug_level = 4\n"
        '\tserver_name = "sfu-bench"\n'
        "\tsession_timeout = 60\n"
        "}\n"
        "certificates: {\n"
        f'\tcert_pem = "{certificate}"\n'
        f'\tcert_key = "{key}"\n'
        "}\n"
        "media: {\n"
        f'\trtp_port_range = "{RTP_PORTS}"\n'
        "}\n"
        "nat: {\n"
        "\tnice_debug = false\n"
        "\tfull_trickle = false\n"
        f'\tice_enforce_list = "{interface}"\n'
        "}\n"
        f"{sections}"
    )
    (directory / "janus.transport.http.jcfg").write_text(
        "general: {\n"
        '\tjson = "compact"\n'
        '\tbase_path = "/janus"\n'
        "\thttp = true\n"
        f"\tport = {http_port}\n"
        f'\tip = "{HTTP_HOST}"\n'
        "\thttps = false\n"
        "}\n"
        "admin: {\n"
        "\tadmin_http = false\n"
        "\tadmin_https = false\n"
        "}\n"
        "cors: {\n"
        "}\n"
    )
    # Rooms are made by the first participant through the API (string names).
    (directory / "janus.plugin.videoroom.jcfg").write_text(
        "general: {\n\tstring_ids = true\n}\n")


class JanusSystem(ProcessSystem):
    """Janus with the VideoRoom plugin, as its own process."""

    name = "janus"

    def __init__(self) -> None:
        super().__init__()
        self._directory: Path | None = None
        self._url = ""

    def skip_reason(self, address: str) -> str | None:
        if not os.access(JANUS, os.X_OK):
            return "install Debian's janus (scripts/install.sh --test)"
        try:
            loopback = ipaddress.ip_address(address).is_loopback
        except ValueError:
            return f"{address} is not an IP address"
        if loopback:
            return ("Janus (libnice) gathers no candidates on loopback: run the bench as root "
                    "so it can use a veth address in a private network namespace")
        if interface_of(address) is None:
            return f"no network interface holds {address} (`ip -o addr`)"
        return None

    async def start(self, address: str) -> None:
        interface = interface_of(address)
        if interface is None:
            raise RuntimeError(f"no network interface holds {address}")
        self._directory = Path(tempfile.mkdtemp(prefix="sfu-bench-janus-"))
        port = free_port(HTTP_HOST)
        janus_config(self._directory, interface, port)
        log = self._directory / "janus.log"
        self._process = await asyncio.create_subprocess_exec(
            JANUS, "--configs-folder", str(self._directory),
            "--config", str(self._directory / "janus.jcfg"),
            "--log-file", str(log), "--disable-stdout",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        url = f"http://{HTTP_HOST}:{port}/janus"
        try:
            await self._wait_info(url)
        except BaseException:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            await self.stop()
            raise RuntimeError(f"janus did not answer on {url}; its log ends:\n{tail}") from None
        self._url = url

    async def _wait_info(self, url: str, timeout: float = 20.0) -> None:
        """Until the REST API answers an ``info`` request (or Janus exits)."""
        async with asyncio.timeout(timeout), aiohttp.ClientSession() as session:
            while True:
                assert self._process is not None
                if self._process.returncode is not None:
                    raise RuntimeError(f"janus exited {self._process.returncode}")
                with contextlib.suppress(aiohttp.ClientError, ValueError):
                    async with session.get(f"{url}/info") as response:
                        if (await response.json(content_type=None)).get("janus") == "server_info":
                            return
                await asyncio.sleep(0.1)

    def job(self, room: str) -> dict[str, Any]:
        return {"signalling": "sfu_bench.janus:JanusSignalling",
                "signalling_args": {"url": self._url, "room": room}}

    async def stop(self) -> None:
        await super().stop()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None


class JanusError(RuntimeError):
    pass


class JanusSignalling:
    """A load participant's Janus REST session: publisher handle + one subscriber handle."""

    def __init__(self, url: str, room: str) -> None:
        self.url = url
        self.room = room
        self._http: aiohttp.ClientSession | None = None
        self._session_url = ""
        self._transactions = (f"t{i}" for i in itertools.count(1))
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._offers: asyncio.Queue[SubscribeOffer] = asyncio.Queue()
        self._publisher = 0  # handle ids
        self._subscriber = 0
        self._own_feed: Any = None
        self._private_id: Any = None
        self._displays: dict[Any, str] = {}  # feed id → display name
        self._requested: set[Any] = set()  # feeds asked for in a join/subscribe
        self._negotiating = False  # a subscriber offer/answer is under way
        self._subscribing: asyncio.Task[None] | None = None

    # -- the Signalling protocol -------------------------------------------------------

    async def join(self, name: str) -> None:
        self._http = aiohttp.ClientSession()
        created = await self._post(self.url, {"janus": "create"})
        self._session_url = f"{self.url}/{created['data']['id']}"
        self._tasks.append(asyncio.create_task(self._poll()))
        self._tasks.append(asyncio.create_task(self._keepalive()))
        self._publisher = await self._attach()
        await self._create_room()
        joined = await self._message(self._publisher, {
            "request": "join", "ptype": "publisher", "room": self.room, "display": name})
        data = joined["plugindata"]["data"]
        self._own_feed = data["id"]
        self._private_id = data.get("private_id")
        self._add_publishers(data.get("publishers", []))

    async def publish(self, offer_sdp: str) -> str:
        reply = await self._message(
            self._publisher, {"request": "configure", "audio": True, "video": True},
            {"type": "offer", "sdp": offer_sdp, "trickle": False})
        jsep = reply.get("jsep")
        if not jsep or jsep.get("type") != "answer":
            raise JanusError(f"janus answered configure without an SDP answer: {reply}")
        sdp: str = jsep["sdp"]
        return sdp

    async def set_quality(self, quality: str) -> None:
        """The simulcast scenario is sfu's alone: nothing to ask for here."""

    async def next_offer(self) -> SubscribeOffer:
        return await self._offers.get()

    async def answer(self, offer: SubscribeOffer, answer_sdp: str) -> None:
        await self._message(self._subscriber, {"request": "start"},
                            {"type": "answer", "sdp": answer_sdp, "trickle": False})
        self._negotiating = False
        self._subscribe_more()

    async def close(self) -> None:
        for task in [*self._tasks, self._subscribing]:
            if task is not None:
                task.cancel()
        if self._http is not None:
            if self._session_url:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(2):
                        await self._post(self._session_url, {"janus": "destroy"})
            await self._http.close()

    # -- the VideoRoom -------------------------------------------------------------------

    async def _create_room(self) -> None:
        """Make the room, unless another participant got there first."""
        reply = await self._message(self._publisher, {
            "request": "create", "room": self.room, "permanent": False,
            "publishers": 100, "audiocodec": "opus", "videocodec": "vp8",
            "bitrate": 4_000_000, "notify_joining": True,
        })
        data = reply["plugindata"]["data"]
        if data.get("videoroom") != "created" and data.get("error_code") != ROOM_EXISTS:
            raise JanusError(f"janus did not create room {self.room}: {data}")

    def _add_publishers(self, publishers: list[dict[str, Any]]) -> None:
        for publisher in publishers:
            if publisher["id"] != self._own_feed:
                self._displays[publisher["id"]] = publisher.get("display", str(publisher["id"]))
        self._subscribe_more()

    def _subscribe_more(self) -> None:
        """Ask for every known feed not yet asked for, one negotiation at a time."""
        new = [feed for feed in self._displays if feed not in self._requested]
        if self._negotiating or not new:
            return
        self._negotiating = True
        self._requested.update(new)
        self._subscribing = asyncio.create_task(self._subscribe(new))

    async def _subscribe(self, feeds: list[Any]) -> None:
        streams = [{"feed": feed} for feed in feeds]
        try:
            if not self._subscriber:
                self._subscriber = await self._attach()
                body: dict[str, Any] = {"request": "join", "ptype": "subscriber",
                                        "room": self.room, "streams": streams}
                if self._private_id is not None:
                    body["private_id"] = self._private_id
                await self._message(self._subscriber, body)
            else:
                await self._message(self._subscriber, {"request": "subscribe",
                                                       "streams": streams})
        except JanusError:
            # e.g. a feed that left meanwhile: forget these, try the rest later.
            self._requested.difference_update(feeds)
            self._negotiating = False
        # The offer itself arrives as an "attached"/"updated" event (_event).

    def _offer(self, data: dict[str, Any], jsep: dict[str, Any]) -> None:
        publishers = {}
        for stream in data.get("streams", []):
            if stream.get("type") not in ("audio", "video") or "feed_id" not in stream:
                continue
            display = stream.get("feed_display") or self._displays.get(stream["feed_id"])
            if display is not None:
                publishers[stream["mid"]] = display
        self._offers.put_nowait(SubscribeOffer("subscribe", jsep["sdp"], publishers))

    def _event(self, event: dict[str, Any]) -> None:
        """An asynchronous event that answers no request of ours (or also does)."""
        if event.get("janus") != "event":
            return
        data = event.get("plugindata", {}).get("data", {})
        sender = event.get("sender")
        jsep = event.get("jsep")
        if sender == self._subscriber and self._subscriber:
            if jsep is not None and jsep.get("type") == "offer":
                self._offer(data, jsep)
        elif sender == self._publisher and "publishers" in data:
            self._add_publishers(data["publishers"])

    # -- the Janus REST API --------------------------------------------------------------

    async def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self._http is not None
        transaction = next(self._transactions)
        async with self._http.post(url, json={**body, "transaction": transaction}) as response:
            reply: dict[str, Any] = await response.json(content_type=None)
        if reply.get("janus") == "error":
            raise JanusError(f"janus refused {body.get('janus')}: {reply.get('error')}")
        return reply

    async def _attach(self) -> int:
        reply = await self._post(self._session_url,
                                 {"janus": "attach", "plugin": "janus.plugin.videoroom"})
        handle: int = reply["data"]["id"]
        return handle

    async def _message(self, handle: int, body: dict[str, Any],
                       jsep: dict[str, Any] | None = None) -> dict[str, Any]:
        """A plugin request; its reply, whether synchronous or a later event."""
        assert self._http is not None
        transaction = next(self._transactions)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[transaction] = future
        message: dict[str, Any] = {"janus": "message", "body": body, "transaction": transaction}
        if jsep is not None:
            message["jsep"] = jsep
        try:
            async with self._http.post(f"{self._session_url}/{handle}", json=message) as response:
                reply: dict[str, Any] = await response.json(content_type=None)
            if reply.get("janus") == "ack":
                reply = await asyncio.wait_for(future, REQUEST_TIMEOUT)
        finally:
            self._pending.pop(transaction, None)
        if reply.get("janus") == "error":
            raise JanusError(f"janus refused {body['request']}: {reply.get('error')}")
        data = reply.get("plugindata", {}).get("data", {})
        if "error" in data and data.get("error_code") != ROOM_EXISTS:
            raise JanusError(f"videoroom refused {body['request']}: {data}")
        return reply

    async def _poll(self) -> None:
        """Janus's long poll: every event of the session, in order."""
        assert self._http is not None
        while True:
            try:
                async with self._http.get(f"{self._session_url}?maxev=10",
                                          timeout=aiohttp.ClientTimeout(total=75)) as response:
                    events = await response.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                await asyncio.sleep(0.2)
                continue
            for event in events if isinstance(events, list) else [events]:
                future = self._pending.get(event.get("transaction", ""))
                if future is not None and not future.done():
                    future.set_result(event)
                self._event(event)

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE_SECONDS)
            with contextlib.suppress(aiohttp.ClientError, JanusError):
                await self._post(self._session_url, {"janus": "keepalive"})
