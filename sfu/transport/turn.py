"""TURN credentials by the TURN REST API scheme (draft-uberti-behave-turn-rest-00),
which coturn checks with ``use-auth-secret``: the username is
``"<expiry unix time>:<identity>"`` and the password ``base64(HMAC-SHA1(secret,
username))``, so the TURN server verifies it with the shared secret alone and the
credential stops working at the expiry. The static secret never leaves the server.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time


def credential(secret: str, username: str) -> str:
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def ephemeral_credentials(secret: str, identity: str, ttl_s: int,
                          now: float | None = None) -> tuple[str, str]:
    """(username, credential) valid for ``ttl_s`` seconds from ``now``."""
    # coturn splits the username at the first ":" only if what precedes it is a
    # number, so an identity may hold colons; it may not be empty.
    expiry = int(now if now is not None else time.time()) + ttl_s
    username = f"{expiry}:{identity or 'participant'}"
    return username, credential(secret, username)
