"""From what was sent and what arrived to loss and added latency (no I/O).

An SFU rewrites SSRC, sequence numbers and timestamps but not payloads, and keeps
sequence numbers continuous with a constant offset. So one decrypted sample whose
payload is found in the recording pins which sent packet it was; every other packet
on that stream then maps by its sequence-number distance from the sample, and its
latency is arrival time minus that packet's send time (one machine, one monotonic
clock). Further samples check the mapping. A system that re-encodes (aiortc's
MediaRelay) sends payloads that are not in the recording, so it has no latency figure,
and sequence gaps alone would hide frames it never got to (it numbers what it does
emit without gaps). Its audio is re-encoded one packet per 20 ms packet sent, so audio
loss is counted against what the publisher sent; its video (re-encoded at its own
bitrate) can only count gaps.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from sfu import rtp


@dataclass
class StreamResult:
    publisher: str
    subscriber: str
    kind: str
    received: int
    expected: int
    mapped: bool  # packets were matched to sent packets (latency known)
    verified_samples: int
    mismatched_samples: int
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def loss(self) -> float:
        return max(0.0, 1 - self.received / self.expected) if self.expected else 1.0


def extended(seqs: Any) -> list[int]:
    out = []
    highest = 0x10000 + seqs[0] if len(seqs) else 0
    for seq in seqs:
        ext = rtp.extend_seq(highest, seq)
        highest = max(highest, ext)
        out.append(ext)
    return out


def analyse_stream(
    publisher: str,
    subscriber: str,
    kind: str,
    received: Any,  # sfu_bench.peer.ReceivedStream
    sent: Any,  # sfu_bench.peer.SentStream
    position_of_payload: dict[bytes, int],
) -> StreamResult:
    ext = extended(received.seqs)
    result = StreamResult(publisher, subscriber, kind, 0, 0, False, 0, 0)
    if not ext:
        result.expected = len(sent.times)
        return result
    by_position: dict[int, list[int]] = {}
    for k, position in enumerate(sent.positions):
        by_position.setdefault(position, []).append(k)

    anchor: tuple[int, int] | None = None  # (received index, sent index)
    for index, payload in received.samples:
        position = position_of_payload.get(payload)
        if position is None:
            continue
        candidates = by_position.get(position, [])
        arrival = received.times[index]
        before = [k for k in candidates if k < len(sent.times) and sent.times[k] <= arrival]
        if before:
            anchor = (index, max(before, key=lambda k: sent.times[k]))
            break
    if anchor is None:
        # Not our payloads (re-encoded): see the module docstring.
        distinct = len(set(ext))
        result.received = distinct
        result.expected = max(ext) - min(ext) + 1
        if kind == "audio":
            result.expected = max(result.expected, len(sent.times))
        return result

    result.mapped = True
    anchor_index, anchor_k = anchor
    for index, payload in received.samples:
        k = anchor_k + ext[index] - ext[anchor_index]
        if 0 <= k < len(sent.positions) and sent.positions[k] == position_of_payload.get(payload):
            result.verified_samples += 1
        else:
            result.mismatched_samples += 1
    seen = set()
    for index, value in enumerate(ext):
        k = anchor_k + value - ext[anchor_index]
        if 0 <= k < len(sent.times) and k not in seen:
            seen.add(k)
            result.latencies_ms.append((received.times[index] - sent.times[k]) * 1000)
    result.received = len(seen)
    # Publishers only send once every connection is up, so everything sent in the
    # media phase was due at every subscriber.
    result.expected = len(sent.times)
    return result


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summarise(streams: list[StreamResult]) -> dict[str, Any]:
    received = sum(s.received for s in streams)
    expected = sum(s.expected for s in streams)
    latencies = [x for s in streams for x in s.latencies_ms]
    return {
        "streams": len(streams),
        "mapped_streams": sum(s.mapped for s in streams),
        "received_packets": received,
        "expected_packets": expected,
        "loss": round(max(0.0, 1 - received / expected), 5) if expected else None,
        "latency_ms_p50": _round(percentile(latencies, 0.5)),
        "latency_ms_p99": _round(percentile(latencies, 0.99)),
        "latency_ms_mean": _round(statistics.fmean(latencies) if latencies else None),
        "verified_samples": sum(s.verified_samples for s in streams),
        "mismatched_samples": sum(s.mismatched_samples for s in streams),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)

