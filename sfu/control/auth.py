"""Join tokens: HS256 JWTs carrying LiveKit-style grants."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt

ALGORITHM = "HS256"


class AuthError(ValueError):
    """A token that does not admit its bearer; ``code`` is the protocol's error code."""

    def __init__(self, message: str, code: str = "unauthorized") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Grants:
    identity: str
    room: str
    can_publish: bool = True
    can_subscribe: bool = True
    can_publish_data: bool = True  # send data channel messages to the room
    can_update_metadata: bool = False  # set its own metadata (`set_metadata`)
    metadata: dict[str, Any] | None = None  # what it joins with; None: {}


def mint_token(
    secret: str,
    *,
    room: str,
    identity: str,
    ttl_seconds: int = 3600,
    can_publish: bool = True,
    can_subscribe: bool = True,
    can_publish_data: bool = True,
    can_update_metadata: bool = False,
    metadata: dict[str, Any] | None = None,
    now: float | None = None,
) -> str:
    """An HS256 join token; ValueError for an empty identity (it would admit anyone)."""
    check_identity(identity)
    issued = int(time.time() if now is None else now)
    claims = {
        "sub": identity,
        "room": room,
        "can_publish": can_publish,
        "can_subscribe": can_subscribe,
        "can_publish_data": can_publish_data,
        "can_update_metadata": can_update_metadata,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_seconds,
    }
    if metadata is not None:
        claims["metadata"] = metadata
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def check_identity(identity: object) -> str:
    """The identity, if it can name a participant: a string with a visible character.

    An empty subject would leave the server without an identity to hold a participant
    to, so it is refused wherever a token is minted or verified."""
    if not isinstance(identity, str) or not identity.strip():
        raise ValueError("identity must be a non-empty string")
    return identity


def verify_token(secret: str, token: str, room: str) -> Grants:
    """The grants of a valid token for ``room``; AuthError otherwise."""
    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "sub", "room"]}
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.ImmatureSignatureError:
        raise AuthError("token not yet valid") from None
    except jwt.PyJWTError as exc:
        raise AuthError(f"invalid token: {exc}") from None
    identity, token_room = claims["sub"], claims["room"]
    if not isinstance(token_room, str):
        raise AuthError("invalid token: room must be a string")
    try:
        check_identity(identity)
    except ValueError:
        raise AuthError("invalid token: sub must be a non-empty string") from None
    metadata = claims.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise AuthError("invalid token: metadata must be an object")
    if token_room != room:
        raise AuthError(f"token is for room {token_room!r}, not {room!r}", "forbidden")
    return Grants(
        identity=identity,
        room=token_room,
        can_publish=claims.get("can_publish", True) is True,
        can_subscribe=claims.get("can_subscribe", True) is True,
        can_publish_data=claims.get("can_publish_data", True) is True,
        can_update_metadata=claims.get("can_update_metadata", False) is True,
        metadata=metadata,
    )
