"""Typed configuration: built-in defaults, a TOML file, then ``SFU_<SECTION>_<KEY>`` env vars.

The built-in defaults are what ``config/sfu.toml`` spells out; a test keeps them equal.
Every error names the offending key and value (``ConfigError``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

# The shortest auth.secret: HS256 keys of fewer bytes than SHA-256's output are weak.
MIN_SECRET_BYTES = 32


class ConfigError(ValueError):
    """A config file or environment variable has a bad key or value."""


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    log_level: str = "info"
    log_format: str = "plain"  # or "json": one JSON object per line
    # Largest control message accepted, in bytes.
    max_message_bytes: int = 262_144
    # HTTPS (the page, the WebSocket as wss://, /metrics, the admin API): PEM files of
    # the certificate (with its chain) and key; SIGHUP reloads them. Or, for
    # development, a self-signed certificate made at start for host and listen_ips.
    tls_cert: str = ""
    tls_key: str = ""
    tls_self_signed: bool = False
    # Reverse proxies (addresses) whose X-Forwarded-For names the client: connection
    # limits per address then count the client, not the proxy.
    trusted_proxies: list[str] = field(default_factory=list)
    # `sfu serve` runs this many worker processes, a room on one of them, behind a front
    # that serves this port (sfu.workers); 0: one per core; 1: one process, no front.
    # Worker i has media on rtc.udp_port + i and rtc.tcp_port + i.
    workers: int = 0


@dataclass
class AuthConfig:
    # "development": no token needed (only allowed when bound to loopback);
    # "jwt": every join carries an HS256 token signed with `secret`.
    mode: str = "development"
    secret: str = ""
    # Origins allowed to open the WebSocket (browsers send one); empty: any.
    allowed_origins: list[str] = field(default_factory=list)


@dataclass
class RtcConfig:
    # Addresses the SFU gathers ICE host candidates on (mediasoup's listenIps).
    listen_ips: list[str] = field(default_factory=lambda: ["127.0.0.1"])
    # Address announced in candidates instead of the listen address (NAT, 1:1), or "".
    announced_ip: str = ""
    # The one UDP port every participant's ICE and media use (sfu.transport.shared_port),
    # on each listen address; 0: one the system picks.
    udp_port: int = 7882
    # ICE over TCP (RFC 6544 passive candidates) on this port of each listen address,
    # for clients whose UDP is blocked; 0: one the system picks.
    ice_tcp: bool = True
    tcp_port: int = 7881
    # Instead, a UDP port per peer connection from port_min–port_max (inclusive).
    port_per_connection: bool = False
    port_min: int = 40000
    port_max: int = 49999
    # "auto": the Cython forwarder when it is built and passes its self-check;
    # "cython" / "python" force one.
    forwarder: str = "auto"
    # Minimum time between two keyframe requests sent to a publisher for one track.
    keyframe_request_interval_ms: int = 500
    # REMB (goog-remb) to publishers, so browsers ramp up to these bitrates per track.
    remb: bool = True
    # Ask publishers for lost video packets (RFC 4585 NACK).
    nack: bool = True
    max_video_bitrate_bps: int = 2_500_000
    max_audio_bitrate_bps: int = 64_000
    feedback_interval_ms: int = 1000
    # Take publishers' simulcast (three layers of camera video) and forward each
    # subscriber the layer its bandwidth and its tile size call for.
    simulcast: bool = True
    # Offer subscribers transport-wide congestion control and estimate each one's
    # bandwidth from its feedback (layer choice, REMB to publishers).
    bandwidth_estimation: bool = True


@dataclass
class RoomsConfig:
    auto_subscribe: bool = True
    max_participants: int = 25


@dataclass
class LimitsConfig:
    # Control messages per connection: a token bucket refilled at this rate.
    messages_per_second: int = 20
    message_burst: int = 60
    max_rooms: int = 100
    max_tracks_per_participant: int = 8
    max_sdp_bytes: int = 65_536
    max_sdp_mlines: int = 32
    # Open WebSockets in all, and from one remote address: past either, a new one gets
    # `error` and is closed at once. 0 for max_connections: what the process's file
    # descriptor limit leaves room for (sfu.connlimits.connection_budget).
    max_connections: int = 0
    max_connections_per_address: int = 64
    # A WebSocket that has not joined this long after it opened (or after `leave`) is
    # closed: unauthenticated sockets do not pile up.
    join_timeout_s: float = 10.0
    # A participant's metadata (`set_metadata`, the token's, the backend's), as JSON.
    max_metadata_bytes: int = 4096
    # Data channel messages (their JSON envelope) and how many each participant may
    # send: a token bucket; past it messages are dropped and the sender told.
    max_data_message_bytes: int = 15_000
    data_messages_per_second: int = 50
    data_message_burst: int = 100


@dataclass
class LivenessConfig:
    # The server pings each WebSocket this often; a connection silent for timeout_s
    # (no message, no pong) is dropped.
    ping_interval_s: int = 30
    timeout_s: int = 90
    # After its WebSocket drops, a participant keeps its publications and peer
    # connections this long for the same identity to resume; then it is removed.
    reconnect_grace_s: int = 20
    # After one of its peer connections fails (ICE, DTLS, consent expiry), a
    # participant has this long to send `restart` (say, to come back through TURN);
    # then it is removed. 0: removed at once.
    restart_grace_s: int = 15


@dataclass
class WebhooksConfig:
    # Backend URLs that receive every event as a signed POST; empty: no webhooks.
    urls: list[str] = field(default_factory=list)
    # HMAC-SHA256 key for X-Sfu-Signature; "" uses auth.secret.
    secret: str = ""
    timeout_s: int = 5
    retries: int = 3
    retry_delay_s: float = 0.5
    queue_size: int = 1000


@dataclass
class TurnConfig:
    # The TURN server handed to participants in `joined.ice_servers` (TURN/UDP, TURN/TCP
    # and TURNS URLs) with ephemeral credentials by the TURN REST API scheme, which
    # coturn checks with `use-auth-secret`. An empty host: no TURN.
    host: str = ""  # the address clients reach it at
    port: int = 3478  # TURN over UDP and TCP
    tls_port: int = 5349  # TURN over TLS; 0: none
    secret: str = ""  # coturn's static-auth-secret; never sent to clients
    realm: str = "sfu"
    credential_ttl_s: int = 600
    # `sfu serve` starts a coturn for development with this section (sfu.transport.coturn);
    # it relays on host, on these ports.
    start_local: bool = False
    local_count: int = 1  # start_local: this many coturns, on port, port + 2, ... (a pool)
    relay_port_min: int = 50000
    relay_port_max: int = 50999
    # More TURN servers beside `host` (a fleet sharing `secret` and `realm`):
    # "host", "host:port" or "host:port:tls_port". Each is checked with a real
    # allocation every health_interval_s (0: never; all count as healthy); a joiner gets
    # the healthy ones, least loaded first (sfu.transport.turn_pool).
    servers: list[str] = field(default_factory=list)
    health_interval_s: float = 10.0


@dataclass
class DiagnosticsConfig:
    # A STUN server with two addresses (RFC 5780: coturn with two listening IPs), as
    # "host:port" for its primary address and its other address (OTHER-ADDRESS: the
    # second IP, on the alternate port). The demo and diagnostics pages run the
    # browser's NAT mapping test against it (GET /nat-test.json); [] : no test.
    stun: list[str] = field(default_factory=list)


@dataclass
class ClusterConfig:
    # Several nodes (`sfu serve` on several machines) sharing rooms through Redis
    # (sfu/cluster/): each registers itself with a heartbeat and its load; a room is
    # placed on the least-loaded live node when first joined, and a participant whose
    # WebSocket reaches another node is relayed there. "": one node, no Redis.
    redis_url: str = ""
    node_id: str = ""  # "": the host name and the HTTP port
    # How the other nodes reach this one's HTTP port (relayed WebSockets, the admin
    # API), e.g. "http://10.0.0.5:8080"; "": from server.host and the port.
    advertise_url: str = ""
    heartbeat_s: float = 1.0
    node_ttl_s: float = 3.0  # no heartbeat for this long: the node is gone


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    rtc: RtcConfig = field(default_factory=RtcConfig)
    rooms: RoomsConfig = field(default_factory=RoomsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    liveness: LivenessConfig = field(default_factory=LivenessConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    turn: TurnConfig = field(default_factory=TurnConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def validate(self) -> None:
        _check(self.server.port, 0 <= self.server.port <= 65535, "server.port", "0..65535")
        _check(
            self.server.log_level,
            self.server.log_level in {"debug", "info", "warning", "error"},
            "server.log_level",
            "debug, info, warning or error",
        )
        _check(self.server.log_format, self.server.log_format in {"plain", "json"},
               "server.log_format", "plain or json")
        _check(
            self.server.max_message_bytes,
            self.server.max_message_bytes >= 1024,
            "server.max_message_bytes",
            ">= 1024",
        )
        _check("<tls>", bool(self.server.tls_cert) == bool(self.server.tls_key),
               "server.tls_cert", "set together with server.tls_key")
        _check(self.server.tls_self_signed, not (self.server.tls_self_signed
                                                 and self.server.tls_cert),
               "server.tls_self_signed", "false when server.tls_cert is set")
        for proxy in self.server.trusted_proxies:
            _check(proxy, _is_ip(proxy), "server.trusted_proxies", "IP addresses")
        _check(
            self.auth.mode, self.auth.mode in {"development", "jwt"}, "auth.mode",
            "development or jwt",
        )
        if self.auth.mode == "jwt" or self.auth.secret:
            # What PyJWT asks of an HS256 key (RFC 7518 §3.2: at least the hash's size),
            # lest every token minted or checked warn InsecureKeyLengthWarning.
            _check("<hidden>", len(self.auth.secret.encode()) >= MIN_SECRET_BYTES,
                   "auth.secret", f"at least {MIN_SECRET_BYTES} bytes (UTF-8), "
                   "e.g. `openssl rand -hex 32`")
        if self.auth.mode == "development":
            _check(
                self.server.host,
                _is_loopback(self.server.host),
                "server.host",
                "a loopback address in development auth mode (set auth.mode = \"jwt\")",
            )
        _check(self.rtc.listen_ips, len(self.rtc.listen_ips) > 0, "rtc.listen_ips", "non-empty")
        for ip in self.rtc.listen_ips:
            _check(ip, _is_ip(ip), "rtc.listen_ips", "IP addresses")
        if self.rtc.announced_ip:
            _check(
                self.rtc.announced_ip, _is_ip(self.rtc.announced_ip), "rtc.announced_ip",
                "an IP address or \"\"",
            )
        _check(
            (self.rtc.port_min, self.rtc.port_max),
            1024 <= self.rtc.port_min <= self.rtc.port_max <= 65535,
            "rtc.port_min/rtc.port_max",
            "1024 <= port_min <= port_max <= 65535",
        )
        for name in ("udp_port", "tcp_port"):
            port = getattr(self.rtc, name)
            _check(port, 0 <= port <= 65535, f"rtc.{name}", "a port, or 0 for one the system picks")
        _check(
            self.rtc.forwarder, self.rtc.forwarder in {"auto", "cython", "python"},
            "rtc.forwarder", "auto, cython or python",
        )
        _check(
            self.rtc.keyframe_request_interval_ms,
            self.rtc.keyframe_request_interval_ms >= 0,
            "rtc.keyframe_request_interval_ms",
            ">= 0",
        )
        for key, value, low, high in (
            ("rtc.max_video_bitrate_bps", self.rtc.max_video_bitrate_bps, 10_000, 100_000_000),
            ("rtc.max_audio_bitrate_bps", self.rtc.max_audio_bitrate_bps, 6_000, 1_000_000),
            ("rtc.feedback_interval_ms", self.rtc.feedback_interval_ms, 50, 60_000),
            ("limits.messages_per_second", self.limits.messages_per_second, 1, 10_000),
            ("limits.message_burst", self.limits.message_burst, 1, 100_000),
            ("limits.max_rooms", self.limits.max_rooms, 1, 100_000),
            ("limits.max_tracks_per_participant", self.limits.max_tracks_per_participant, 1, 64),
            ("limits.max_sdp_bytes", self.limits.max_sdp_bytes, 1024, 1_048_576),
            ("limits.max_sdp_mlines", self.limits.max_sdp_mlines, 1, 512),
            ("limits.max_connections", self.limits.max_connections, 0, 10_000_000),
            ("limits.max_connections_per_address", self.limits.max_connections_per_address,
             1, 10_000_000),
            ("limits.join_timeout_s", self.limits.join_timeout_s, 0.1, 3600),
            ("limits.max_metadata_bytes", self.limits.max_metadata_bytes, 2, 1_048_576),
            # aiortc's SCTP takes messages up to 65536 bytes (a=max-message-size).
            ("limits.max_data_message_bytes", self.limits.max_data_message_bytes, 64, 65_536),
            ("limits.data_messages_per_second", self.limits.data_messages_per_second, 1,
             100_000),
            ("limits.data_message_burst", self.limits.data_message_burst, 1, 1_000_000),
            ("liveness.ping_interval_s", self.liveness.ping_interval_s, 1, 3600),
            ("liveness.timeout_s", self.liveness.timeout_s, 2, 36_000),
            ("liveness.reconnect_grace_s", self.liveness.reconnect_grace_s, 0, 3600),
            ("liveness.restart_grace_s", self.liveness.restart_grace_s, 0, 3600),
            ("webhooks.timeout_s", self.webhooks.timeout_s, 1, 300),
            ("webhooks.retries", self.webhooks.retries, 0, 20),
            ("webhooks.queue_size", self.webhooks.queue_size, 1, 1_000_000),
        ):
            _check(value, low <= value <= high, key, f"{low}..{high}")
        for url in self.webhooks.urls:
            _check(url, url.startswith(("http://", "https://")), "webhooks.urls",
                   "http:// or https:// URLs")
        if self.webhooks.urls:
            _check("<hidden>", bool(self.webhooks.secret or self.auth.secret),
                   "webhooks.secret", "a secret (or auth.secret) to sign webhooks with")
        _check(self.webhooks.retry_delay_s, 0 <= self.webhooks.retry_delay_s <= 60,
               "webhooks.retry_delay_s", "0..60")
        _check(
            self.liveness.timeout_s,
            self.liveness.timeout_s > self.liveness.ping_interval_s,
            "liveness.timeout_s",
            "more than liveness.ping_interval_s",
        )
        _check(
            self.rooms.max_participants,
            1 <= self.rooms.max_participants <= 1000,
            "rooms.max_participants",
            "1..1000",
        )
        _check(self.server.workers, 0 <= self.server.workers <= 64, "server.workers",
               "0 (one per core) .. 64")
        cluster = self.cluster
        _check(cluster.redis_url, not cluster.redis_url or cluster.redis_url.startswith(
            ("redis://", "rediss://", "unix://")), "cluster.redis_url",
            '"" or a redis://, rediss:// or unix:// URL')
        _check(cluster.heartbeat_s, 0.1 <= cluster.heartbeat_s <= 60, "cluster.heartbeat_s",
               "0.1..60")
        _check((cluster.heartbeat_s, cluster.node_ttl_s),
               cluster.node_ttl_s >= 2 * cluster.heartbeat_s,
               "cluster.heartbeat_s/cluster.node_ttl_s", "node_ttl_s >= 2 * heartbeat_s")
        self._validate_turn()
        stun = self.diagnostics.stun
        _check(stun, not stun or (len(stun) == 2 and all(
            _host_port(entry) for entry in stun)), "diagnostics.stun",
            '[] or ["primary host:port", "other host:port"]')

    def _validate_turn(self) -> None:
        turn = self.turn
        if not turn.host:
            _check(turn.start_local, not turn.start_local, "turn.start_local",
                   "false unless turn.host is set")
            return
        _check("<hidden>", len(turn.secret) >= 16, "turn.secret",
               "at least 16 chars when turn.host is set")
        _check(turn.realm, bool(turn.realm), "turn.realm", "non-empty")
        _check(turn.port, 1 <= turn.port <= 65535, "turn.port", "1..65535")
        _check(turn.tls_port, 0 <= turn.tls_port <= 65535 and turn.tls_port != turn.port,
               "turn.tls_port", "0..65535, not turn.port")
        for entry in turn.servers:
            host, *ports = entry.split(":")
            _check(entry, bool(host) and len(ports) <= 2 and all(
                p.isdigit() and 1 <= int(p) <= 65535 for p in ports), "turn.servers",
                '"host", "host:port" or "host:port:tls_port" entries')
        _check(turn.health_interval_s, turn.health_interval_s >= 0, "turn.health_interval_s",
               "0 (no checks) or more seconds")
        _check(turn.credential_ttl_s, 10 <= turn.credential_ttl_s <= 86_400,
               "turn.credential_ttl_s", "10..86400")
        _check(
            (turn.relay_port_min, turn.relay_port_max),
            1024 <= turn.relay_port_min <= turn.relay_port_max <= 65535,
            "turn.relay_port_min/turn.relay_port_max",
            "1024 <= relay_port_min <= relay_port_max <= 65535",
        )
        _check(turn.local_count, 1 <= turn.local_count <= 8 and (
            turn.relay_port_max - turn.relay_port_min + 1) // turn.local_count >= 10,
            "turn.local_count", "1..8, with 10 relay ports each at least")
        if turn.start_local:
            _check(turn.host, _is_ip(turn.host), "turn.host",
                   "an IP address when turn.start_local is true (coturn listens on it)")


def _check(value: object, ok: bool, key: str, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r}: expected {expected}")


def _host_port(entry: str) -> bool:
    host, _, port = entry.rpartition(":")
    return bool(host) and port.isdigit() and 1 <= int(port) <= 65535


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Defaults, overlaid by the TOML file at ``path`` (if any), then by env vars, then
    by ``overrides`` (``{section: {key: value}}``, from command-line flags)."""
    config = Config()
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        _apply_mapping(config, data, str(path))
    _apply_env(config, os.environ if env is None else env)
    # Before validating: `--dev` makes valid a config that asks for jwt on 0.0.0.0.
    _apply_mapping(config, overrides or {}, "command line")
    config.validate()
    return config


def _sections(config: Config) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def _apply_mapping(config: Config, data: Mapping[str, Any], origin: str) -> None:
    sections = _sections(config)
    for section_name, values in data.items():
        if section_name not in sections:
            raise ConfigError(f"{origin}: unknown section [{section_name}]")
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: [{section_name}] must be a table")
        section = sections[section_name]
        hints = get_type_hints(type(section))
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(f"{origin}: unknown key {section_name}.{key}")
            setattr(section, key, _coerce(value, hints[key], f"{section_name}.{key}"))


# SFU_* variables that are not config keys: SFU_PUREPYTHON (build without, or do not
# load, the Cython extension: setup.py, sfu/fastpath.py) and SFU_BENCH_NETNS (the
# bench's re-run of itself inside its namespace, whose environment `sfu serve` inherits).
OTHER_ENV = frozenset({"SFU_PUREPYTHON", "SFU_BENCH_NETNS"})


def _apply_env(config: Config, env: Mapping[str, str]) -> None:
    known = set(OTHER_ENV)
    for section_name, section in _sections(config).items():
        hints = get_type_hints(type(section))
        for key, hint in hints.items():
            name = f"SFU_{section_name}_{key}".upper()
            known.add(name)
            if name in env:
                setattr(section, key, _coerce_text(env[name], hint, name))
    # A misspelt variable (SFU_SERVER_PROT) is refused, as an unknown key in the file is,
    # rather than silently leaving the default in place.
    unknown = sorted(name for name in env if name.startswith("SFU_") and name not in known)
    if unknown:
        raise ConfigError(f"unknown environment variable {', '.join(unknown)}: "
                          "expected SFU_<SECTION>_<KEY> naming a config key")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is str:
        ok = isinstance(value, str)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:  # list[str]
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    if ok:
        return value
    raise ConfigError(f"{key} = {value!r}: expected {_type_name(hint)}")


def _coerce_text(text: str, hint: Any, key: str) -> Any:
    """Env vars are text: parse them by the field's type."""
    if hint is bool:
        lowered = text.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
    elif hint is int:
        try:
            return int(text)
        except ValueError:
            pass
    elif hint is str:
        return text
    elif hint is float:
        try:
            return float(text)
        except ValueError:
            pass
    elif hint == list[str]:
        return [part.strip() for part in text.split(",") if part.strip()]
    raise ConfigError(f"{key} = {text!r}: expected {_type_name(hint)}")


def _type_name(hint: Any) -> str:
    return {bool: "a boolean", int: "an integer", str: "a string", float: "a number"}.get(
        hint, "a list of strings"
    )
