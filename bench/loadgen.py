"""The load generator process: real WebRTC participants against one system under test.

    python -m sfu_bench.loadgen '<json job>'

The job names the system's signalling, the room, who publishes and who only
listens, the run length and the replay rate. With ``rooms`` (a list of signallings,
one per room: ``{"signalling": ..., "signalling_args": ...}``) it makes the same room
once in each, driven at the same rate and measured together; its participants are
named ``r<i>-<name>`` there. Progress goes to stdout as JSON lines:
``{"event": "ready"}`` when every connection is up, ``{"event": "start"}`` and
``{"event": "stop"}`` around the media phase (the controller samples the server's
CPU between them), then ``{"event": "result", ...}``.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from sfu.transport import internals

from . import recording as recordings
from .analysis import StreamResult, analyse_stream, summarise
from .peer import MediaConnection, Publisher, c_receive_available, set_remote
from .signalling import Signalling, SubscribeOffer

DRAIN_SECONDS = 1.0


@dataclass
class Participant:
    name: str
    publishes: bool
    signalling: Signalling
    publisher: Publisher | None = None
    subscriptions: dict[str, MediaConnection] = field(default_factory=dict)
    # subscribe connection → mid → publisher name
    mids: dict[str, dict[str, str]] = field(default_factory=dict)


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def make_signalling(job: dict[str, Any]) -> Signalling:
    """``job["signalling"]`` names a class ("module:Class"); ``signalling_args`` are its
    keyword arguments (each system's ``job()`` provides both)."""
    module_name, class_name = job["signalling"].split(":")
    signalling_class = getattr(importlib.import_module(module_name), class_name)
    signalling: Signalling = signalling_class(**job["signalling_args"])
    return signalling


def room_signallings(job: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name prefix, signalling) per room: the job's own room, or each of ``rooms``."""
    rooms = job.get("rooms")
    if not rooms:
        return [("", job)]
    return [(f"r{i}-" if len(rooms) > 1 else "", room) for i, room in enumerate(rooms)]


async def answer_offers(participant: Participant, gathering: internals.HostGathering) -> None:
    while True:
        offer: SubscribeOffer = await participant.signalling.next_offer()
        connection = participant.subscriptions.get(offer.connection)
        if connection is None:
            connection = participant.subscriptions[offer.connection] = MediaConnection(gathering)
        participant.mids.setdefault(offer.connection, {}).update(offer.publishers)
        await set_remote(connection.pc, offer.sdp, "offer")
        connection.prepare()
        await connection.pc.setLocalDescription(await connection.pc.createAnswer())
        await participant.signalling.answer(offer, connection.pc.localDescription.sdp)


def expected_streams(participant: Participant, publishers: int, per_publisher: int) -> int:
    return per_publisher * (publishers - (1 if participant.publishes else 0))


async def run(job: dict[str, Any]) -> dict[str, Any]:
    recording = recordings.load()
    gathering = internals.HostGathering(tuple(job["addresses"]), "", 30000, 39999)
    participants = [
        Participant(prefix + name, name in job["publishers"], make_signalling(room))
        for prefix, room in room_signallings(job)
        for name in job["publishers"] + job["listeners"]
    ]
    offer_tasks = []
    for participant in participants:
        await participant.signalling.join(participant.name)
        offer_tasks.append(asyncio.create_task(answer_offers(participant, gathering)))
    for participant in participants:
        if participant.publishes:
            connection = MediaConnection(gathering)
            participant.publisher = Publisher(connection, 3 if job.get("simulcast") else 1,
                                              job.get("audio_only", False))
            participant.publisher.add_transceivers()
            connection.prepare()
            await connection.pc.setLocalDescription(await connection.pc.createOffer())
            answer = await participant.signalling.publish(
                participant.publisher.offer(connection.pc.localDescription.sdp))
            await set_remote(connection.pc, answer, "answer")
    publishers = len(job["publishers"])
    async with asyncio.timeout(job.get("setup_timeout", 60)):
        for participant in participants:
            if participant.publisher is not None:
                await participant.publisher.connection.wait_connected()
            while sum(len(m) for m in participant.mids.values()) < expected_streams(
                    participant, publishers, 1 if job.get("audio_only") else 2):
                await asyncio.sleep(0.05)
            for connection in list(participant.subscriptions.values()):
                await connection.wait_connected()
    if job.get("simulcast"):  # listeners ask for the low, medium and high layer in turn
        listeners = [p for p in participants if not p.publishes]
        for index, participant in enumerate(listeners):
            await participant.signalling.set_quality(("low", "medium", "high")[index % 3])
    poll = job["rate"] > 1  # the sweep: read every socket each millisecond (bench/peer.py)
    paths = {connection.receive_in_c(poll) for participant in participants
             for connection in participant.subscriptions.values()}
    receive_path = paths.pop() if len(paths) == 1 else "python"
    emit("ready")

    for participant in participants:
        if participant.publisher is not None:
            participant.publisher.plan(recording, job["seconds"], job["rate"])
    await asyncio.sleep(0.5)  # let keyframe requests and the first answers settle
    usage_start = resource.getrusage(resource.RUSAGE_SELF)
    started = time.monotonic()
    emit("start")
    await asyncio.gather(*(p.publisher.run() for p in participants if p.publisher))
    await asyncio.sleep(DRAIN_SECONDS)
    media_seconds = time.monotonic() - started
    usage_end = resource.getrusage(resource.RUSAGE_SELF)
    emit("stop")
    for participant in participants:
        for connection in participant.subscriptions.values():
            connection.collect()

    position_of_payload = {p.payload: i for i, p in enumerate(recording.packets)}
    by_name = {p.name: p for p in participants}
    streams: list[StreamResult] = []
    for participant in participants:
        for key, connection in participant.subscriptions.items():
            ssrcs = internals.remote_media_ssrcs(connection.pc.remoteDescription.sdp)
            kinds = {t.mid: t.kind for t in connection.pc.getTransceivers()}
            for mid, publisher_name in participant.mids.get(key, {}).items():
                publisher = by_name[publisher_name].publisher
                stream = connection.received.get(ssrcs.get(mid, -1))
                if publisher is None or stream is None:
                    streams.append(StreamResult(publisher_name, participant.name,
                                                kinds.get(mid, "?"), 0, 1, False, 0, 0))
                    continue
                kind = kinds[mid]
                # A simulcast video stream is several layers' packets in turn: counted
                # by its sequence numbers (continuous across switches), not mapped.
                layered = kind == "video" and publisher.layers > 1
                streams.append(analyse_stream(publisher_name, participant.name, kind,
                                              stream, publisher.sent[kind],
                                              {} if layered else position_of_payload))
    for task in offer_tasks:
        task.cancel()
    for participant in participants:
        for connection in participant.subscriptions.values():
            await connection.close()
        if participant.publisher is not None:
            await participant.publisher.connection.close()
        await participant.signalling.close()

    sent = sum(len(s.times) for p in participants if p.publisher
               for s in p.publisher.sent.values())
    received = sum(s.received for s in streams)
    cpu = (usage_end.ru_utime - usage_start.ru_utime) + (usage_end.ru_stime
                                                         - usage_start.ru_stime)
    return {
        "rooms": len(room_signallings(job)),
        "media_seconds": round(media_seconds, 3),
        "sent_packets": sent,
        "generator_cpu_seconds": round(cpu, 3),
        "generator_cpu_us_per_packet": round(cpu * 1e6 / max(sent + received, 1), 3),
        "generator_receive_path": receive_path,
        **summarise(streams),
        "per_stream": [
            {"publisher": s.publisher, "subscriber": s.subscriber, "kind": s.kind,
             "received": s.received, "expected": s.expected, "loss": round(s.loss, 5)}
            for s in streams
        ],
    }


def main() -> None:
    job = json.loads(sys.argv[1])
    if c_receive_available():
        # asyncio's own loop: its datagram transports can hand their socket over to
        # the C receive path (uvloop's cannot stop reading).
        result = asyncio.run(run(job))
    else:
        try:
            import uvloop

            result = uvloop.run(run(job))
        except ImportError:
            result = asyncio.run(run(job))
    emit("result", **result)


if __name__ == "__main__":
    main()
