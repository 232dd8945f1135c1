"""The frames of protocol v1 as immutable values.

One class per frame type. They hold already-validated values: the codec builds
them from untrusted text, and code that builds them by hand is trusted (the same
split as h11's events, and attrs' own advice to keep wire parsing out of
domain classes).
"""

from __future__ import annotations

from typing import Any, TypeAlias

import attrs

__all__ = [
    "PROTOCOL_VERSION",
    "Call",
    "ClientFrame",
    "Error",
    "Join",
    "JoinError",
    "Joined",
    "JsonValue",
    "Leave",
    "Left",
    "Message",
    "Ping",
    "Pong",
    "PresenceDiff",
    "PresenceMember",
    "PresenceQuery",
    "PresenceState",
    "Publish",
    "Published",
    "Ref",
    "Result",
    "ServerFrame",
    "Welcome",
]

PROTOCOL_VERSION = 1

#: Any value ``json`` can encode. Kept as ``Any`` so that apps can pass their own
#: TypedDicts and dataclass-shaped dicts without casts.
JsonValue: TypeAlias = Any
#: A client-chosen correlation id, echoed verbatim on the reply.
Ref: TypeAlias = "str | int | None"


# --- client to server ---------------------------------------------------------


@attrs.frozen
class Since:
    """Where a re-joining client left off: the last ``message`` it got on the channel."""

    offset: int
    epoch: str


@attrs.frozen
class Join:
    channel: str
    ref: Ref = None
    #: Ask for the messages after this one (recovery after a reconnect).
    since: Since | None = None
    #: Ask for the channel's last messages (at most this many) before live
    #: ones: a room's recent history on entering it. ``since`` wins over it.
    last: int | None = None


@attrs.frozen
class Leave:
    channel: str
    ref: Ref = None


@attrs.frozen
class Publish:
    """A client publishing ``data`` into a channel it has joined."""

    channel: str
    data: JsonValue
    ref: Ref = None


@attrs.frozen
class Ping:
    ref: Ref = None


@attrs.frozen
class PresenceQuery:
    """Ask for the current members of a joined channel (``presence_state`` answers)."""

    channel: str
    ref: Ref = None


@attrs.frozen
class Call:
    """Call a method (``module.method``) over the socket, as the HTTP endpoint does."""

    method: str
    args: JsonValue
    ref: Ref = None


ClientFrame: TypeAlias = "Join | Leave | Publish | Ping | PresenceQuery | Call"


# --- server to client ---------------------------------------------------------


@attrs.frozen
class Welcome:
    """The first frame on every accepted connection: who the server thinks you are."""

    connection: str
    user: dict[str, JsonValue] | None
    roles: tuple[str, ...] = ()
    protocol: int = PROTOCOL_VERSION


@attrs.frozen
class Joined:
    channel: str
    ref: Ref = None
    #: Answers a join with ``since``: true when every message after it follows.
    recovered: bool | None = None
    #: Where live delivery starts (the channel keeps a history): the position to
    #: ask ``since`` from if the connection drops before any message arrives.
    offset: int | None = None
    epoch: str | None = None


@attrs.frozen
class Left:
    channel: str
    ref: Ref = None
    #: Set when the server removed the subscription itself (no ``ref`` then).
    reason: str | None = None


@attrs.frozen
class JoinError:
    channel: str
    code: str
    error: str
    ref: Ref = None


@attrs.frozen
class Message:
    """A delivery. ``offset`` increases per channel; ``epoch`` names the history
    the offsets belong to (a new one when that history is reset). Servers
    without a history for the channel send neither."""

    channel: str
    data: JsonValue
    offset: int | None = None
    epoch: str | None = None


@attrs.frozen
class Published:
    """Acknowledges a client publish; sent only when the publish carried a ``ref``."""

    channel: str
    ref: Ref = None


@attrs.frozen
class Pong:
    ref: Ref = None


@attrs.frozen
class Error:
    code: str
    error: str
    ref: Ref = None
    #: The HTTP status the same failure has over HTTP, on the answer to a ``call``.
    status: int | None = None


@attrs.frozen
class Result:
    """A method's answer to a ``call``: what the HTTP endpoint sends as ``{"data": ...}``."""

    data: JsonValue
    ref: Ref = None


@attrs.frozen
class PresenceMember:
    """One member of a presence channel: a user (``key`` its id) or an
    anonymous connection, with its open connections and the server's metadata."""

    key: str
    connections: int
    meta: JsonValue = None


@attrs.frozen
class PresenceState:
    """Who is in a channel: sent after ``joined`` and in answer to ``presence``.
    ``members`` is ``None`` on a counts-only channel; ``truncated``: there are
    more than listed (``count`` says how many)."""

    channel: str
    count: int
    members: tuple[PresenceMember, ...] | None = ()
    truncated: bool = False
    ref: Ref = None


@attrs.frozen
class PresenceDiff:
    """What changed since the last state or diff: members that joined or
    changed (their new state), members that left (their last state).
    ``joins``/``leaves`` are ``None`` on a counts-only channel; ``truncated``:
    some changes are not listed."""

    channel: str
    count: int
    joins: tuple[PresenceMember, ...] | None = ()
    leaves: tuple[PresenceMember, ...] | None = ()
    truncated: bool = False


ServerFrame: TypeAlias = (
    "Welcome | Joined | Left | JoinError | Message | Published | Pong | Error | PresenceState | PresenceDiff | Result"
)
