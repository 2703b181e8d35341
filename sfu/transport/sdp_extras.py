"""What the SFU adds to, or reads from, SDP that aiortc's SDP layer does not know: RID
simulcast (RFC 8853 ``a=simulcast``, RFC 8851 ``a=rid``) and transport-wide congestion
control (``a=extmap`` of the transport-wide sequence number, ``a=rtcp-fb … transport-cc``).

Pure functions on SDP strings, through ``sdp-transform`` (the parser mediasoup-client
uses), never string edits: aiortc keeps its own view of each description, and these edit
the text that goes to, or read the text that comes from, the client.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import sdp_transform  # type: ignore[import-untyped]

from sfu import rtp


@dataclass(frozen=True)
class SimulcastOffer:
    """One m-line's simulcast, as a publisher offers it."""

    rids: tuple[str, ...]  # RID-based: the layers, in the offer's order (low to high)
    ssrcs: tuple[int, ...]  # SSRC-based (an ``a=ssrc-group:SIM``): the layers' SSRCs
    rid_ext_id: int  # the offer's id of the rtp-stream-id extension, 0 if none


def _mid(media: dict[str, Any]) -> str | None:
    # sdp-transform reads a numeric mid ("0") as an int.
    return None if media.get("mid") is None else str(media["mid"])


def _send_rids(media: dict[str, Any]) -> tuple[str, ...]:
    """The RIDs an m-line sends in its ``a=simulcast:send`` list: the first alternative of
    each stream, without the paused marker (RFC 8853 §5.1: ``~``)."""
    simulcast = media.get("simulcast") or {}
    for direction, streams in ((simulcast.get("dir1"), simulcast.get("list1")),
                               (simulcast.get("dir2"), simulcast.get("list2"))):
        if direction == "send" and streams:
            return tuple(stream.split(",")[0].lstrip("~") for stream in streams.split(";"))
    return ()


def _write(parsed: dict[str, Any], original: str) -> str:
    """The edited description as text. sdp-transform holds one ``a=fingerprint`` per
    section; aiortc writes three (sha-256, -384, -512): keep the sha-256 one, which every
    DTLS stack checks, rather than whichever came last."""
    sha256 = re.findall(r"^a=fingerprint:sha-256 (\S+)", original, re.MULTILINE)
    if sha256:
        for holder in [parsed, *parsed.get("media", [])]:
            if "fingerprint" in holder:
                holder["fingerprint"] = {"type": "sha-256", "hash": sha256[0]}
    _keep_strings(parsed, original)
    written: str = sdp_transform.write(parsed)
    return written


def _keep_strings(parsed: dict[str, Any], original: str) -> None:
    """Put back the text of values sdp-transform turned into numbers: it reads an ICE
    ufrag "5e12" as 5e12 and writes "5000000000000.0", which a browser refuses, and
    "0123" as 123, which no ICE check then matches (seen in CI: a random ufrag)."""
    sections = re.split(r"^(?=m=)", original, flags=re.MULTILINE)
    for holder, text in zip([parsed, *parsed.get("media", [])], sections, strict=False):
        for key, attribute in (("iceUfrag", "ice-ufrag"), ("icePwd", "ice-pwd")):
            found = re.search(rf"^a={attribute}:(\S+)", text, re.MULTILINE)
            if found and key in holder:
                holder[key] = found[1]
        values = re.findall(r"^a=ssrc:\d+ [^:\s]+(?::(\S.*?))?\r?$", text, re.MULTILINE)
        for ssrc, value in zip(holder.get("ssrcs", []), values, strict=False):
            if "value" in ssrc and value:
                ssrc["value"] = value


def offered_simulcast(offer_sdp: str) -> dict[str, SimulcastOffer]:
    """mid → the simulcast an offer's video m-lines send (m-lines without it left out)."""
    result = {}
    for media in sdp_transform.parse(offer_sdp).get("media", []):
        mid = _mid(media)
        if mid is None or media.get("type") != "video":
            continue
        declared = {r["id"] for r in media.get("rids", []) if r.get("direction") == "send"}
        rids = tuple(r for r in _send_rids(media) if r in declared)
        groups = [g for g in media.get("ssrcGroups", []) if g.get("semantics") == "SIM"]
        ssrcs = tuple(int(s) for s in groups[0]["ssrcs"].split()) if groups else ()
        ext_id = next((int(e["value"]) for e in media.get("ext", [])
                       if e.get("uri") == rtp.URI_RID), 0)
        if len(rids) > 1 and ext_id:
            result[mid] = SimulcastOffer(rids, (), ext_id)
        elif len(ssrcs) > 1:
            result[mid] = SimulcastOffer((), ssrcs, 0)
    return result


def accept_simulcast(offer_sdp: str, answer_sdp: str) -> str:
    """The answer, receiving the RID layers the offer sends on each accepted m-line:
    ``a=rid:<id> recv`` for each, ``a=simulcast:recv <ids>`` and the rtp-stream-id
    extension under the offer's id. Without them a browser sends only its first layer."""
    offered = offered_simulcast(offer_sdp)
    answer = sdp_transform.parse(answer_sdp)
    for media in answer.get("media", []):
        layers = offered.get(_mid(media) or "")
        if layers is None or not layers.rids or media.get("port") == 0:
            continue
        media["rids"] = [{"id": rid, "direction": "recv"} for rid in layers.rids]
        media["simulcast"] = {"dir1": "recv", "list1": ";".join(layers.rids)}
        extensions = media.setdefault("ext", [])
        if not any(e.get("uri") == rtp.URI_RID for e in extensions):
            extensions.append({"value": layers.rid_ext_id, "uri": rtp.URI_RID})
    return _write(answer, answer_sdp)


def offer_transport_cc(offer_sdp: str, ext_id: int) -> str:
    """An offer that also offers transport-wide congestion control on every audio and
    video m-line: the sequence-number extension under ``ext_id`` and the transport-cc
    feedback for each payload type."""
    offer = sdp_transform.parse(offer_sdp)
    for media in offer.get("media", []):
        if media.get("type") not in ("audio", "video") or media.get("port") == 0:
            continue
        extensions = media.setdefault("ext", [])
        if not any(e.get("uri") == rtp.URI_TWCC for e in extensions):
            extensions.append({"value": ext_id, "uri": rtp.URI_TWCC})
        feedback = media.setdefault("rtcpFb", [])
        for codec in media.get("rtp", []):
            if codec.get("codec", "").lower() == "rtx":
                continue
            if not any(f.get("payload") == codec["payload"] and f.get("type") == "transport-cc"
                       for f in feedback):
                feedback.append({"payload": codec["payload"], "type": "transport-cc"})
    return _write(offer, offer_sdp)


def answered_extension(answer_sdp: str, mid: str, uri: str) -> int:
    """The id an answer gives a header extension on an m-line; 0 when it declines it."""
    for media in sdp_transform.parse(answer_sdp).get("media", []):
        if _mid(media) == mid:
            return next((int(e["value"]) for e in media.get("ext", []) if e.get("uri") == uri), 0)
    return 0
