"""One worker process of ``sfu serve --workers N`` (started by sfu.workers.supervisor).

It reads its whole config as one JSON line on standard input, serves it (an ordinary
``Server`` on a loopback HTTP port of its own, media on its own UDP/TCP ports), prints
``{"port", "pid"}`` once it listens, and stops when standard input closes — its front
has gone, however it went — or on SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading

from sfu import config as sfu_config
from sfu import logs


async def serve(config: sfu_config.Config) -> None:
    from sfu.server import Server

    server = Server(config)
    await server.start()
    print(json.dumps({"port": server.port, "pid": os.getpid()}), flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the front stops us

    def front_gone() -> None:  # standard input's end (a daemon thread: never joined)
        sys.stdin.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=front_gone, daemon=True).start()
    await stop.wait()
    await server.stop()


def main() -> int:
    from sfu.control.admission import raise_fd_limit

    config = sfu_config.load(None, env={}, overrides=json.loads(sys.stdin.readline()))
    logs.configure(config.server.log_level, config.server.log_format)
    raise_fd_limit()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
