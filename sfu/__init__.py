"""sfu: a WebRTC selective forwarding unit with a Cython fast path."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Config", "Server", "__version__"]

if TYPE_CHECKING:
    from sfu.config import Config
    from sfu.server import Server


def __getattr__(name: str) -> Any:
    # Lazy, so that `import sfu.rtp` does not pull in aiortc.
    if name == "Server":
        from sfu.server import Server

        return Server
    if name == "Config":
        from sfu.config import Config

        return Config
    raise AttributeError(name)
