"""Pick the forwarder: the Cython fast path when built and usable, else the twin.

As msgpack does with ``MSGPACK_PUREPYTHON``, ``SFU_PUREPYTHON=1`` forces the
pure-Python implementation whatever the config says.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

from sfu import forwarder as python_forwarder

logger = logging.getLogger(__name__)


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


def make_forwarder(preference: str, keyframe_request_interval_us: int) -> Any:
    """A forwarder for ``preference`` ("auto", "cython" or "python")."""
    if preference != "python":
        reason = cython_unavailable_reason()
        if reason is None:
            from sfu import _fastpath

            return _fastpath.Forwarder(keyframe_request_interval_us)
        if preference == "cython":
            raise ForwarderUnavailable(f'rtc.forwarder = "cython" but {reason}')
        logger.warning("using the pure-Python forwarder: %s", reason)
    return python_forwarder.Forwarder(keyframe_request_interval_us)
