"""The control messages' schema (docs/protocol.md) and their validation.

``validate`` returns the message when it is well formed and raises ``ProtocolError``
naming the offending field otherwise; it never touches session state.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from sfu.diagnostics.traversal import NAT_TYPES
from sfu.media import SOURCES


class ProtocolError(ValueError):
    """A control message the server refuses; becomes an ``error`` message."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.field = field


MAX_SDP_BYTES = 64 * 1024
MAX_TRACKS_PER_MESSAGE = 64
ROOM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_ID = 2**53

Check = Callable[[Any], str | None]
"""Returns None when the value is fine, else what was expected."""


def _string(max_len: int, pattern: re.Pattern[str] | None = None) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, str) or not 1 <= len(value) <= max_len:
            return f"a string of 1 to {max_len} characters"
        if pattern is not None and not pattern.fullmatch(value):
            return f"a string matching {pattern.pattern}"
        return None

    return check


def _track_list(value: Any) -> str | None:
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= MAX_TRACKS_PER_MESSAGE
        or not all(isinstance(t, str) and 1 <= len(t) <= 64 for t in value)
    ):
        return f"a list of 1 to {MAX_TRACKS_PER_MESSAGE} track ids"
    return None


def _pc_name(value: Any) -> str | None:
    return None if value in ("publish", "subscribe") else '"publish" or "subscribe"'


def _size(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 16384:
        return None
    return "an integer 0..16384"


def _quality(value: Any) -> str | None:
    return None if value in ("low", "medium", "high") else '"low", "medium" or "high"'


def _nat_type(value: Any) -> str | None:
    return None if value in NAT_TYPES else f"one of {', '.join(NAT_TYPES)}"


def _track_sources(value: Any) -> str | None:
    expected = (f"a list of 1 to {MAX_TRACKS_PER_MESSAGE} {{mid, source, name?}} with "
                f"source one of {', '.join(SOURCES)}")
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_TRACKS_PER_MESSAGE:
        return expected
    for item in value:
        if (not isinstance(item, dict) or _string(64)(item.get("mid")) is not None
                or item.get("source") not in SOURCES
                or (item.get("name") is not None and _string(64)(item["name"]) is not None)
                or not set(item) <= {"mid", "source", "name"}):
            return expected
    return None


def _object(value: Any) -> str | None:
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return None
    return "an object"


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _candidate(value: Any) -> str | None:
    if value is None:
        return None
    if (
        isinstance(value, dict)
        and isinstance(value.get("candidate"), str)
        and len(value["candidate"]) <= 1024
        and (value.get("sdpMid") is None or isinstance(value.get("sdpMid"), str))
        and (
            value.get("sdpMLineIndex") is None
            or (
                isinstance(value.get("sdpMLineIndex"), int)
                and not isinstance(value["sdpMLineIndex"], bool)
                and value["sdpMLineIndex"] >= 0
            )
        )
    ):
        return None
    return "null or {candidate: string, sdpMid?: string, sdpMLineIndex?: int}"


# type → (required fields, optional fields)
SCHEMA: dict[str, tuple[dict[str, Check], dict[str, Check]]] = {
    "join": (
        {"room": _string(64, ROOM_NAME), "name": _string(64)},
        {"token": _string(4096), "resume": _string(64), "nat_type": _nat_type},
    ),
    "publish": ({"sdp": _string(MAX_SDP_BYTES)}, {"tracks": _track_sources}),
    "unpublish": ({"track": _string(64)}, {}),
    "set_metadata": ({"metadata": _object}, {}),
    "answer": ({"sdp": _string(MAX_SDP_BYTES)}, {}),
    "candidate": ({"pc": _pc_name, "candidate": _candidate}, {}),
    "subscribe": ({"tracks": _track_list}, {}),
    "unsubscribe": ({"tracks": _track_list}, {}),
    "mute": ({"track": _string(64), "muted": _boolean}, {}),
    "set_subscription": ({"track": _string(64)}, {"max_width": _size, "max_height": _size,
                                                  "quality": _quality, "paused": _boolean}),
    "restart": ({}, {"relay_only": _boolean}),
    "ping": ({}, {}),
    "leave": ({}, {}),
}


def validate(message: Any) -> dict[str, Any]:
    """The message, checked against its type's schema."""
    if not isinstance(message, dict):
        raise ProtocolError("bad_message", "a message must be an object")
    msg_type = message.get("type")
    if not isinstance(msg_type, str):
        raise ProtocolError("bad_field", "type must be a string", "type")
    if "id" in message:
        msg_id = message["id"]
        if isinstance(msg_id, bool) or not (
            (isinstance(msg_id, int) and 0 <= msg_id < MAX_ID)
            or (isinstance(msg_id, str) and len(msg_id) <= 64)
        ):
            raise ProtocolError("bad_field", "id must be a string or an integer", "id")
    spec = SCHEMA.get(msg_type)
    if spec is None:
        raise ProtocolError("unknown_type", f"unknown message type {msg_type[:64]!r}", "type")
    required, optional = spec
    for name, check in required.items():
        if name not in message:
            raise ProtocolError("bad_field", f"{msg_type}.{name} is missing", name)
        _run(check, message[name], msg_type, name)
    for name, check in optional.items():
        if name in message and message[name] is not None:
            _run(check, message[name], msg_type, name)
    return message


def _run(check: Check, value: Any, msg_type: str, name: str) -> None:
    expected = check(value)
    if expected is not None:
        raise ProtocolError("bad_field", f"{msg_type}.{name} must be {expected}", name)
