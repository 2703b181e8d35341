"""Keyframe requests to one publisher, throttled, sans IO: at most one per interval,
however many subscribers wait or send PLI/FIR. sfu/_fastpath.pyx mirrors
``KeyframeThrottle`` as a cdef class of the same name."""

from __future__ import annotations


class KeyframeThrottle:
    """When a producer's publisher was last asked for a keyframe."""

    __slots__ = ("last_us", "requested")

    def __init__(self) -> None:
        self.requested = False  # last_us is set once asked
        self.last_us = 0

    def ready(self, now_us: int, interval_us: int) -> bool:
        """Whether a request may go out at ``now_us``, ``interval_us`` after the last."""
        return not self.requested or now_us - self.last_us >= interval_us

    def on_request(self, now_us: int) -> None:
        """A request went out at ``now_us``."""
        self.requested = True
        self.last_us = now_us
