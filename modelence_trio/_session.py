"""One connection's protocol policy, sans-IO: client messages in, decisions out.

What a connection may do, on its own, whatever the transport: the size of a
message, whether it parses, how many malformed ones it may send, how fast it
may join and publish, how many channels it may hold. No I/O, no Trio: the
caller passes the time, and the session says what to do. The hub feeds it
(``Hub._act``) and does what needs I/O or shared state: access checks,
recovery, the registry, publish handlers. Tested on its own
(tests/test_session.py), as h11's ``Connection`` is.
"""

from __future__ import annotations

import math

import attrs

from ._wire import message_size
from .protocol import (
    ClientFrame,
    CloseCode,
    Error,
    ErrorCode,
    JoinError,
    Limits,
    ProtocolError,
    Ref,
    error_reply,
    parse_client_frame,
)

__all__ = ["Answer", "Close", "Session", "SessionLimits", "TokenBucket"]


@attrs.define
class TokenBucket:
    """A rate limit: ``rate`` per second sustained, bursts of ``2 * rate``."""

    tokens: float = math.inf
    stamp: float = 0.0

    def take(self, rate: float, now: float) -> bool:
        self.tokens = min(2 * rate, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@attrs.frozen
class SessionLimits:
    """The per-connection limits of ``HubConfig``, in one place (see its docs)."""

    max_frame_size: int = 64 * 1024
    parse: Limits = attrs.field(factory=Limits)
    bad_frame_limit: int = 20
    bad_frame_window: float = 10.0
    joins_per_second: float | None = 20.0
    publishes_per_second: float | None = 50.0
    max_channels_per_connection: int = 256


@attrs.frozen
class Close:
    """End the connection with this close code."""

    code: int
    reason: str


@attrs.frozen
class Answer:
    """Reply with ``frame`` and do nothing else; ``then_close`` when that was
    one malformed frame too many."""

    frame: Error | JoinError
    then_close: Close | None = None


class Session:
    """The policy state of one connection (see the module's docstring)."""

    __slots__ = (
        "_bad_frames",
        "_bad_since",
        "_join_budget",
        "_publish_budget",
        "limits",
        "received_bytes",
        "received_frames",
    )

    def __init__(self, limits: SessionLimits) -> None:
        self.limits = limits
        self._join_budget = TokenBucket()
        self._publish_budget = TokenBucket()
        self._bad_frames = 0
        self._bad_since = -math.inf
        #: Client messages received, and their bytes (UTF-8, as every limit counts them).
        self.received_frames = 0
        self.received_bytes = 0

    def receive(self, message: str | bytes, now: float) -> ClientFrame | Answer | Close:
        """What one client message asks for: the parsed frame, an error to
        answer with, or the end of the connection."""
        limits = self.limits
        size = message_size(message)
        self.received_frames += 1
        self.received_bytes += size
        if size > limits.max_frame_size:
            return Close(CloseCode.MESSAGE_TOO_BIG, f"message over {limits.max_frame_size} bytes")
        try:
            return parse_client_frame(message, limits=limits.parse)
        except ProtocolError as exc:
            return Answer(error_reply(exc), self._count_bad_frame(now))

    def _count_bad_frame(self, now: float) -> Close | None:
        if now - self._bad_since > self.limits.bad_frame_window:
            self._bad_since, self._bad_frames = now, 0
        self._bad_frames += 1
        if self._bad_frames > self.limits.bad_frame_limit:
            return Close(CloseCode.POLICY_VIOLATION, "too many malformed frames")
        return None

    def admit_join(self, channel: str, ref: Ref, joined: int, now: float) -> JoinError | None:
        """``None`` if a new join may go on (to its access check), given how
        many channels the connection holds; else the refusal to send."""
        limit = self.limits.max_channels_per_connection
        if joined >= limit:
            why = f"a connection may join at most {limit} channels"
            return JoinError(channel, ErrorCode.TOO_MANY_CHANNELS, why, ref)
        rate = self.limits.joins_per_second
        if rate is not None and not self._join_budget.take(rate, now):
            return JoinError(channel, ErrorCode.RATE_LIMITED, f"at most {rate:g} joins per second", ref)
        return None

    def admit_presence(self, ref: Ref, now: float) -> Error | None:
        """``None`` if a ``presence`` request may be answered: it counts
        against the join rate (an answer may list many members)."""
        rate = self.limits.joins_per_second
        if rate is not None and not self._join_budget.take(rate, now):
            return Error(ErrorCode.RATE_LIMITED, f"at most {rate:g} joins and presence requests per second", ref)
        return None

    def admit_publish(self, ref: Ref, now: float) -> Error | None:
        """``None`` if a publish (into a joined channel) may go on; else the error to send."""
        rate = self.limits.publishes_per_second
        if rate is not None and not self._publish_budget.take(rate, now):
            return Error(ErrorCode.RATE_LIMITED, f"at most {rate:g} publishes per second", ref)
        return None
