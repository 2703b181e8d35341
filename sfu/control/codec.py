"""One control message per WebSocket frame: JSON in text frames, msgpack in binary ones."""

from __future__ import annotations

from typing import Any

import msgpack
import orjson

from sfu.control.schema import ProtocolError


def decode(frame: str | bytes, max_bytes: int) -> Any:
    """The object in a frame: ``str`` is JSON, ``bytes`` is msgpack."""
    # A str's UTF-8 form is at least as long as the str: count its bytes only when it may fit.
    if len(frame) > max_bytes or (
        isinstance(frame, str) and len(frame.encode("utf-8", "surrogatepass")) > max_bytes
    ):
        raise ProtocolError("bad_message", f"message larger than {max_bytes} bytes")
    if isinstance(frame, str):
        try:
            return orjson.loads(frame)
        except orjson.JSONDecodeError as exc:
            raise ProtocolError("bad_message", f"invalid JSON: {exc}") from None
    try:
        # Bounded nesting and no ext types: a hostile frame cannot make deep objects.
        return msgpack.unpackb(frame, raw=False, strict_map_key=True, max_bin_len=0,
                               max_ext_len=0)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise ProtocolError("bad_message", f"invalid msgpack: {exc}") from None


def encode(message: dict[str, Any], binary: bool) -> str | bytes:
    if binary:
        packed: bytes = msgpack.packb(message, use_bin_type=True)
        return packed
    return orjson.dumps(message).decode()
