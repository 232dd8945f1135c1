"""Errors of protocol v1: one exception type, one table of machine codes."""

from __future__ import annotations

import enum

__all__ = ["CloseCode", "ErrorCode", "ProtocolError"]


class ErrorCode(enum.StrEnum):
    """Machine-readable codes carried by ``error`` and ``join_error`` frames.

    The values are part of the wire protocol (protocol.md lists them); clients
    branch on them, so they never change meaning.
    """

    INVALID_JSON = "invalid_json"
    TOO_DEEP = "too_deep"
    INVALID_FRAME = "invalid_frame"
    BINARY_FRAME = "binary_frame"
    UNKNOWN_TYPE = "unknown_type"
    INVALID_FIELD = "invalid_field"
    INVALID_CHANNEL = "invalid_channel"
    UNKNOWN_CHANNEL = "unknown_channel"
    ACCESS_DENIED = "access_denied"
    NOT_JOINED = "not_joined"
    PUBLISH_NOT_ALLOWED = "publish_not_allowed"
    PUBLISH_REJECTED = "publish_rejected"
    HANDLER_ERROR = "handler_error"
    TOO_MANY_CHANNELS = "too_many_channels"
    RATE_LIMITED = "rate_limited"
    PRESENCE_NOT_ENABLED = "presence_not_enabled"
    INVALID_DATA = "invalid_data"
    UNKNOWN_METHOD = "unknown_method"


class CloseCode(enum.IntEnum):
    """WebSocket close codes the server uses, with the reason each stands for."""

    NORMAL = 1000
    GOING_AWAY = 1001  # the server is shutting down
    POLICY_VIOLATION = 1008  # a flood of bad frames
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SESSION_ENDED = 4001  # the session expired or was revoked while connected
    SLOW_CONSUMER = 4002  # the outbound queue overflowed
    HEARTBEAT_TIMEOUT = 4003  # no pong within the heartbeat timeout


class ProtocolError(Exception):
    """A frame the receiver cannot act on.

    It is the only exception the codec raises for bad input, whatever the
    input, so a transport can catch exactly this and answer with an ``error``
    frame instead of dropping the connection. ``ref`` is the offending frame's
    ``ref`` when it could be read, so the reply still correlates.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        ref: str | int | None = None,
        channel: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref
        self.channel = channel
        #: The ``type`` the frame claimed, once it was known to be a valid type.
        self.frame_type: str | None = None

    def __repr__(self) -> str:
        return f"ProtocolError({self.code.value!r}, {self.message!r}, ref={self.ref!r})"
