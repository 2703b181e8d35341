"""Pick the forwarder: the Cython fast path when built and usable, else the twin.

As msgpack does with ``MSGPACK_PUREPYTHON``, ``SFU_PUREPYTHON=1`` forces the
pure-Python implementation whatever the config says.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

from sfu import _fastpath_fallback

logger = logging.getLogger(__name__)


class Forwarder(Protocol):
    """What both implementations offer (``sfu._fastpath`` and ``sfu._fastpath_fallback``):
    the signatures of sfu/_fastpath.pyi, so mypy checks every call on either."""

    implementation: ClassVar[str]
    keyframe_request_interval_us: int

    def add_endpoint(
        self,
        endpoint: int,
        rx: Any,
        tx: Any,
        sendto: Callable[[bytes, tuple[Any, ...]], None],
        fd: int,
        addr: tuple[Any, ...],
    ) -> None: ...
    def remove_endpoint(self, endpoint: int) -> None: ...
    def add_producer(self, producer: int, endpoint: int, ssrc: int, codec: int,
                     rid: bytes = ..., rid_id: int = ..., mid: bytes = ...,
                     mid_id: int = ..., audio_level_id: int = ...) -> None: ...
    def remove_producer(self, producer: int) -> None: ...
    def add_consumer(
        self,
        consumer: int,
        producer: int,
        endpoint: int,
        ssrc: int,
        is_video: bool,
        payload_types: dict[int, int],
        ext_map: dict[int, int],
        mid: bytes,
        mid_id: int,
        abs_send_time_id: int,
        seq_base: int,
        ts_base: int,
        twcc_id: int = ...,
    ) -> None: ...
    def set_producer_paused(self, producer: int, paused: bool) -> None: ...
    def move_producer(self, producer: int, endpoint: int, ssrc: int) -> None: ...
    def set_consumer_source(self, consumer: int, producer: int) -> None: ...
    def set_consumer_paused(self, consumer: int, paused: bool) -> None: ...
    def remove_consumer(self, consumer: int) -> None: ...
    def counters(self) -> dict[str, int]: ...
    def consumer_stats(self, consumer: int) -> tuple[int, int]: ...
    def consumer_report(self, consumer: int) -> tuple[int, ...] | None: ...
    def consumer_started(self, consumer: int) -> bool: ...
    def consumer_source(self, consumer: int) -> tuple[int, int] | None: ...
    def producer_stats(self, producer: int) -> tuple[int, int, int, int, int] | None: ...
    def producer_levels(self, producer: int) -> tuple[int, int, int, int] | None: ...
    def receive(self, sock: socket.socket, now_us: int
                ) -> list[tuple[bytes, tuple[Any, ...]]]: ...
    def handle_packet(self, endpoint: int, data: bytes, now_us: int) -> int: ...
    def request_keyframe(self, producer: int, now_us: int) -> bool: ...
    def send_rtcp(self, endpoint: int, packet: bytes) -> bool: ...
    def receive_report(self, producer: int, now_us: int) -> tuple[int, ...] | None: ...
    def nack_due(self, producer: int, now_us: int) -> list[int]: ...
    def nack_deadline(self, producer: int) -> int: ...
    def set_loss_listener(self, listener: Callable[[int], None] | None) -> None: ...
    def set_feedback_listener(self, listener: Callable[[int, bytes], None] | None) -> None: ...
    def sent_packets(self, endpoint: int, base_seq: int,
                     count: int) -> list[tuple[int, int, int] | None]: ...
    def probe(self, consumer: int, count: int, now_us: int) -> int: ...


class ForwarderUnavailable(RuntimeError):
    """The config asks for the Cython forwarder and it cannot be used."""


def cython_unavailable_reason() -> str | None:
    """Why the Cython forwarder cannot be used, or None when it can."""
    if os.environ.get("SFU_PUREPYTHON"):
        return "SFU_PUREPYTHON is set"
    return _extension_problem()


@functools.cache
def _extension_problem() -> str | None:
    try:
        from sfu import _fastpath
    except ImportError as exc:
        return f"extension sfu._fastpath is not built or does not load ({exc})"
    problem = _fastpath.self_check()
    if problem is not None:
        return f"sfu._fastpath self-check failed: {problem}"
    return None


def make_forwarder(preference: str, keyframe_request_interval_us: int) -> Forwarder:
    """A forwarder for ``preference`` ("auto", "cython" or "python")."""
    if preference != "python":
        reason = cython_unavailable_reason()
        if reason is None:
            from sfu import _fastpath

            return _fastpath.Forwarder(keyframe_request_interval_us)
        if preference == "cython":
            raise ForwarderUnavailable(f'rtc.forwarder = "cython" but {reason}')
        logger.warning("using the pure-Python forwarder: %s", reason)
    return _fastpath_fallback.Forwarder(keyframe_request_interval_us)
