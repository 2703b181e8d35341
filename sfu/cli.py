"""``sfu serve``, ``sfu token``, ``sfu bench``: the command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import Any

from sfu import __version__, logs
from sfu import config as sfu_config
from sfu.control.auth import mint_token

LOG_LEVELS = ("debug", "info", "warning", "error")
# The `[bench]` extra: what `sfu bench` needs beyond sfu's own dependencies.
BENCH_EXTRA = frozenset({"numpy", "matplotlib"})


class ListenError(Exception):
    """The HTTP server cannot bind its address (say, the port is in use)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sfu", description="WebRTC selective forwarding unit")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="run the server",
        description="Run the server. Settings come from the built-in defaults, then "
        "--config, then SFU_<SECTION>_<KEY> environment variables, then these flags.",
    )
    serve.add_argument("--config", help="TOML config file (default: built-in defaults)")
    serve.add_argument("--host", help="address to bind the HTTP server to (server.host)")
    serve.add_argument("--port", type=int, help="HTTP port (server.port); 0: any free port")
    serve.add_argument("--log-level", choices=LOG_LEVELS, help="server.log_level")
    serve.add_argument("--workers", type=int,
                       help="worker processes, a room on one each (server.workers; "
                       "0: one per core, the default; 1: a single process)")
    serve.add_argument(
        "--dev", action="store_true",
        help="development mode, whatever the config says: auth.mode = development (joins "
        "need no token) on a loopback address (server.host = 127.0.0.1 unless --host "
        "names another loopback address)",
    )

    token = commands.add_parser("token", help="mint a join token (HS256 JWT)")
    token.add_argument("--config", help="TOML config file holding auth.secret")
    token.add_argument("--room")
    token.add_argument("--identity")
    token.add_argument("--ttl", type=int, default=3600, help="seconds (default 3600)")
    token.add_argument("--no-publish", action="store_true")
    token.add_argument("--no-subscribe", action="store_true")
    token.add_argument("--admin", action="store_true",
                       help="an admin-API token instead (--room/--identity ignored)")

    doctor = commands.add_parser(
        "doctor", help="what this network does to WebRTC: NAT type, TURN reachability",
        description="RFC 5780 NAT behaviour discovery against a STUN server with two "
        "addresses (coturn with two listening IPs); TURN over UDP, TCP and TLS with the "
        "credential the SFU gives a joiner, and video through the SFU and back; prints a "
        "report to paste into a support ticket.",
    )
    doctor.add_argument("--stun", metavar="HOST[:PORT]",
                        help="the STUN server's primary address (port 3478 if not given)")
    doctor.add_argument("--server", metavar="URL",
                        help="the SFU (http[s]://host:port): try its TURN servers")
    doctor.add_argument("--token", help="a join token, when the SFU asks for one")
    doctor.add_argument("--token2", help="a second one (another identity, the same room) "
                        "for the video loopback's receiving end")
    doctor.add_argument("--room", default="sfu-doctor", help="the room to join (sfu-doctor)")
    doctor.add_argument("--no-loopback", action="store_true",
                        help="skip the video sent through the SFU and back")
    doctor.add_argument("--insecure-tls", action="store_true",
                        help="accept any TURNS certificate (a development coturn's own)")
    doctor.add_argument("--timeout", type=float, default=2.0,
                        help="seconds to wait for each answer (default 2)")
    doctor.add_argument("--json", action="store_true", help="the report as JSON")

    commands.add_parser(
        "bench", help="forwarding-throughput benchmark (see `sfu bench --help`)", add_help=False
    )

    args, rest = parser.parse_known_args(argv)
    if args.command == "bench":
        try:
            # matplotlib up front too: the bench imports it only for its chart, at the end
            # of a run of minutes.
            import matplotlib  # noqa: F401
            import numpy  # noqa: F401

            from sfu_bench.run import main as bench_main
        except ImportError as exc:
            if (exc.name or "").partition(".")[0] not in BENCH_EXTRA:
                raise
            print("sfu: sfu bench needs the bench extra: pip install 'sfu[bench]' "
                  f"({exc.name} is missing)", file=sys.stderr)
            return 2
        # Typed, though mypy sees the installed name sfu_bench as untyped (pyproject.toml).
        status: int = bench_main(rest)
        return status
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "doctor":
        return _doctor(args)
    try:
        config = sfu_config.load(args.config, overrides=_overrides(args))
    except sfu_config.ConfigError as exc:
        print(f"sfu: config error: {exc}", file=sys.stderr)
        return 2

    if args.command == "token":
        if not config.auth.secret:
            print("sfu: auth.secret is not set (config or SFU_AUTH_SECRET)", file=sys.stderr)
            return 2
        if args.admin:
            from sfu.control.admin import mint_admin_token

            print(mint_admin_token(config.auth.secret, args.ttl))
            return 0
        if not args.room or not args.identity:
            print("sfu: token needs --room and --identity (or --admin)", file=sys.stderr)
            return 2
        print(mint_token(
            config.auth.secret, room=args.room, identity=args.identity, ttl_seconds=args.ttl,
            can_publish=not args.no_publish, can_subscribe=not args.no_subscribe,
        ))
        return 0

    logs.configure(config.server.log_level, config.server.log_format)
    try:
        import uvloop
    except ImportError:
        run = asyncio.run
    else:
        run = uvloop.run
    from sfu.transport.coturn import CoturnError
    from sfu.workers.supervisor import WorkerError

    try:
        run(_serve(config))
    except (CoturnError, ListenError, WorkerError) as exc:
        print(f"sfu: {exc}", file=sys.stderr)
        return 2
    return 0


def _doctor(args: argparse.Namespace) -> int:
    import json

    import aiohttp

    from sfu.diagnostics.loopback import loopback
    from sfu.diagnostics.nat import DiscoveryError, discover
    from sfu.diagnostics.turn_reach import check_turn_urls, sfu_ice_servers

    if not args.stun and not args.server:
        print("sfu doctor: give --stun, --server or both", file=sys.stderr)
        return 2

    async def run() -> tuple[dict[str, Any], list[str]]:
        report: dict[str, Any] = {}
        lines: list[str] = []
        if args.stun:
            host, _, port = args.stun.partition(":")  # IPv4 or a name
            nat = await discover((host, int(port or 3478)), args.timeout)
            report.update(nat.to_json())
            lines.append(nat.to_text())
        if args.server:
            servers = await sfu_ice_servers(args.server, args.room, args.token)
            reach = await check_turn_urls(servers, args.timeout, not args.insecure_tls)
            report["turn"] = [r.to_json() for r in reach]
            lines += [r.to_text() for r in reach] or ["TURN               none offered"]
            ws_url = args.server.replace("http", "ws", 1).rstrip("/") + "/ws"
            if args.no_loopback:
                return report, lines
            try:
                looped = await loopback(ws_url, args.room,
                                        (args.token, args.token2 or args.token))
            except (OSError, RuntimeError) as exc:  # no video came back: part of the report
                report["loopback"] = {"error": str(exc) or type(exc).__name__}
                lines.append(f"loopback           FAILED: {report['loopback']['error']}")
            else:
                report["loopback"] = looped.to_json()
                lines.append(looped.to_text())
        return report, lines

    try:
        report, lines = asyncio.run(run())
    except (DiscoveryError, OSError, ValueError, RuntimeError, aiohttp.ClientError) as exc:
        print(f"sfu doctor: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else "\n".join(lines))
    return 0  # a report, failed TURN transports included (they are what it is for)


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The config keys ``sfu serve``'s flags set (``sfu token`` has none of them)."""
    server: dict[str, Any] = {}
    auth: dict[str, Any] = {}
    if getattr(args, "dev", False):
        server["host"] = "127.0.0.1"
        auth["mode"] = "development"
    for key in ("host", "port", "log_level", "workers"):
        if getattr(args, key, None) is not None:
            server[key] = getattr(args, key)
    return {"server": server, "auth": auth}


async def _serve(config: sfu_config.Config) -> None:
    from sfu.control.admission import raise_fd_limit

    # Every WebSocket and peer connection costs a descriptor: take all the process may
    # have (the connection caps are derived from it, leaving headroom).
    raise_fd_limit()
    coturns: list[Any] = []
    try:
        if config.turn.start_local:
            from sfu.transport.coturn import Coturn, local_fleet

            fleet = local_fleet(config.turn)
            # The others join the pool beside turn.host:port (sfu.transport.turn_pool).
            config.turn.servers = [*config.turn.servers,
                                   *(f"{t.host}:{t.port}:{t.tls_port}" for t in fleet[1:])]
            for turn in fleet:
                coturns.append(Coturn(turn))
                await asyncio.to_thread(coturns[-1].start)
                print(f"sfu: coturn on {turn.host}:{turn.port} (TLS {turn.tls_port})",
                      flush=True)
        workers = config.server.workers or os.cpu_count() or 1
        server: Any
        if workers == 1 and not config.cluster.redis_url:
            from sfu.server import Server

            server = Server(config)
        else:  # the front imports no media stack: its workers have it (a cluster node
            # is a front, even with one worker: it relays to the other nodes)
            from sfu.workers.front import Front

            server = Front(config, workers)
        try:
            await server.start()
        except OSError as exc:
            await server.stop()
            host, port = config.server.host, config.server.port
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            # uvloop's and asyncio's messages differ (and repeat the address): the errno's
            # own text is the same in both.
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ListenError(f"cannot listen on {address}: {reason}") from None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, server.reload_tls)  # a renewed certificate
        scheme = "https" if server.tls else "http"
        print(f"sfu: serving {scheme}://{config.server.host}:{server.port}/"
              + (f" with {workers} workers" if workers > 1 else ""), flush=True)
        await stop.wait()
        await server.stop()
    finally:
        for coturn in coturns:
            coturn.stop()
