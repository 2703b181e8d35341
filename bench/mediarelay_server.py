"""The relay a Python developer builds from aiortc's examples, as a system under test.

    python -m sfu_bench.mediarelay_server --host H --port P --address A

In the style of aiortc's ``examples/server`` and its MediaRelay example: every
published track is received by aiortc (RTCRtpReceiver: depacketise, decode) and
handed to one ``MediaRelay``; every subscriber gets its own RTCPeerConnection whose
RTCRtpSenders are fed by ``relay.subscribe(track)`` (encode, packetise), once per
subscriber. Plain and idiomatic on purpose: nothing here is optimised.

HTTP, JSON bodies:

- ``POST /publish {name, sdp}`` → ``{sdp}``: the answer to a publisher's offer.
- ``GET /publishers`` → ``{publishers: [name, ...]}``: publishers whose tracks are ready.
- ``POST /subscribe {name, publisher}`` → ``{id, sdp}``: an offer carrying that
  publisher's tracks, on a new connection.
- ``POST /answer {id, sdp}`` → ``{}``: the subscriber's answer to that offer.

The only departure from the examples: ICE host candidates are gathered on
``--address`` (loopback included, which aioice alone skips) with the helper the SFU
uses, and each connection bundles its media on one transport (max-bundle), so that
helper covers all of it. No STUN servers.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import uuid

from aiohttp import web
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay
from aiortc.rtcconfiguration import RTCBundlePolicy

from sfu.transport.internals import HostGathering, prepare_gathering

logger = logging.getLogger("mediarelay")

PORT_MIN, PORT_MAX = 40000, 49999

GATHERING = web.AppKey("gathering", HostGathering)
RELAY = web.AppKey("relay", MediaRelay)
PCS = web.AppKey("pcs", set[RTCPeerConnection])
# publisher name → kind → the track aiortc received (what relay.subscribe() takes)
TRACKS = web.AppKey("tracks", dict[str, dict[str, MediaStreamTrack]])
SUBSCRIBERS = web.AppKey("subscribers", dict[str, RTCPeerConnection])


def new_pc(app: web.Application) -> RTCPeerConnection:
    pc = RTCPeerConnection(
        RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
    )
    app[PCS].add(pc)

    @pc.on("connectionstatechange")
    async def on_connectionstatechange() -> None:
        logger.info("connection state %s", pc.connectionState)
        if pc.connectionState == "failed":
            await pc.close()
            app[PCS].discard(pc)

    return pc


async def publish(request: web.Request) -> web.Response:
    app = request.app
    params = await request.json()
    name: str = params["name"]
    pc = new_pc(app)
    tracks: dict[str, MediaStreamTrack] = {}

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        logger.info("%s publishes %s", name, track.kind)
        tracks[track.kind] = track

    await pc.setRemoteDescription(RTCSessionDescription(sdp=params["sdp"], type="offer"))
    prepare_gathering(pc, app[GATHERING], None)
    await pc.setLocalDescription(await pc.createAnswer())
    app[TRACKS][name] = tracks
    return web.json_response({"sdp": pc.localDescription.sdp})


async def publishers(request: web.Request) -> web.Response:
    return web.json_response({"publishers": [n for n, t in request.app[TRACKS].items() if t]})


async def subscribe(request: web.Request) -> web.Response:
    app = request.app
    params = await request.json()
    tracks = app[TRACKS].get(params["publisher"])
    if not tracks:
        raise web.HTTPNotFound(text=f"no publisher {params['publisher']!r}")
    pc = new_pc(app)
    for kind in ("audio", "video"):
        if kind in tracks:
            pc.addTrack(app[RELAY].subscribe(tracks[kind]))
    prepare_gathering(pc, app[GATHERING], None)
    await pc.setLocalDescription(await pc.createOffer())
    subscriber_id = f"{params['name']}-{uuid.uuid4().hex[:8]}"
    app[SUBSCRIBERS][subscriber_id] = pc
    return web.json_response({"id": subscriber_id, "sdp": pc.localDescription.sdp})


async def answer(request: web.Request) -> web.Response:
    params = await request.json()
    pc = request.app[SUBSCRIBERS].get(params["id"])
    if pc is None:
        raise web.HTTPNotFound(text=f"no subscription {params['id']!r}")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=params["sdp"], type="answer"))
    return web.json_response({})


async def on_shutdown(app: web.Application) -> None:
    await asyncio.gather(*(pc.close() for pc in app[PCS]))
    app[PCS].clear()


def make_app(address: str) -> web.Application:
    app = web.Application()
    app[GATHERING] = HostGathering((address,), "", PORT_MIN, PORT_MAX)
    app[RELAY] = MediaRelay()
    app[PCS] = set()
    app[TRACKS] = {}
    app[SUBSCRIBERS] = {}
    app.on_shutdown.append(on_shutdown)
    app.router.add_post("/publish", publish)
    app.router.add_get("/publishers", publishers)
    app.router.add_post("/subscribe", subscribe)
    app.router.add_post("/answer", answer)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="aiortc MediaRelay server (bench system)")
    parser.add_argument("--host", default="127.0.0.1", help="HTTP signalling address")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--address", default="127.0.0.1", help="where ICE candidates are")
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    # run_app turns SIGINT and SIGTERM into a graceful exit, which runs on_shutdown.
    web.run_app(make_app(args.address), host=args.host, port=args.port, print=None,
                access_log=None)


if __name__ == "__main__":
    main()
