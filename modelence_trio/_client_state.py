"""A client's protocol engine, sans-IO: server text in, what it means out.

``ClientSession`` numbers requests (``ref``), reads each server frame and
says what it is (a delivery, the reply to a request, a ``left`` the server
decided, an error, a frame to ignore), and holds the ``ChannelBook``: which
channels to re-join after a reconnect and from which position, and what a
re-join's answer means (joined, gap reported, refused). The reconnect delays
come from its ``Backoff``. It also keeps each joined presence channel's
members, from the server's ``presence_state`` and ``presence_diff`` frames.
The Python client (``_client.py``) keeps only the I/O (the socket, the
waiting callers, the timers) and asks this object; the browser client
implements the same rules, and both pass the shared vectors in
tests/vectors/client.json.
"""

from __future__ import annotations

import enum
import itertools
from typing import Generic, TypeVar

import attrs

from ._util import Backoff
from .protocol import (
    Error,
    Join,
    Joined,
    JoinError,
    Left,
    Message,
    PresenceDiff,
    PresenceMember,
    PresenceState,
    ProtocolError,
    Ref,
    ServerFrame,
    Since,
    parse_server_frame,
)

__all__ = [
    "ChannelBook",
    "ClientSession",
    "Delivery",
    "Ignored",
    "Notice",
    "PresenceSnapshot",
    "PresenceUpdate",
    "Rejoined",
    "Reply",
]

W = TypeVar("W")


@attrs.frozen
class Delivery:
    """A message for the app (the book has its position already)."""

    message: Message


@attrs.frozen
class Reply(Generic[W]):
    """The answer to a pending request, and whoever waits for it."""

    frame: ServerFrame
    waiter: W


@attrs.frozen
class Notice:
    """A frame nobody waits for: a ``left`` the server decided (the channel is
    not re-joined), or an ``error`` without a pending request."""

    frame: Left | Error


@attrs.frozen
class PresenceSnapshot:
    """Who is in a presence channel, as this client last heard.

    ``members`` is ``None`` on a counts-only channel; ``truncated``: the
    server lists fewer members than ``count`` (a large channel)."""

    channel: str
    count: int = 0
    members: tuple[PresenceMember, ...] | None = ()
    truncated: bool = False


@attrs.frozen
class PresenceUpdate(Generic[W]):
    """A channel's members changed (``frame`` said so); ``waiter``: who asked
    for them with a ``presence`` request, if anyone."""

    frame: PresenceState | PresenceDiff
    snapshot: PresenceSnapshot
    waiter: W | None = None


@attrs.frozen
class Ignored:
    """A frame to drop: not valid protocol (``malformed``: worth a warning), or
    one that means nothing here (a reply, other than ``left`` or ``error``,
    to a request given up on; those two become a ``Notice``)."""

    why: str
    malformed: bool = False


Incoming = Delivery | Reply[W] | Notice | PresenceUpdate[W] | Ignored


class ClientSession(Generic[W]):
    """One client's protocol state, across all its connections. ``W`` is
    whatever the I/O side keeps for a caller waiting on a reply."""

    def __init__(self, backoff: Backoff = Backoff()) -> None:
        self.book = ChannelBook()
        self.backoff = backoff
        self._refs = itertools.count(1)
        self._waiting: dict[int, W] = {}

    def request(self, waiter: W) -> int:
        """A ``ref`` for a new request (the caller builds the frame with it);
        its reply comes back as ``Reply(frame, waiter)`` until :meth:`forget`."""
        ref = next(self._refs)
        self._waiting[ref] = waiter
        return ref

    def forget(self, ref: int) -> None:
        """The request is answered or abandoned."""
        self._waiting.pop(ref, None)

    def waiting(self) -> list[W]:
        """Whoever waits for a reply: when the connection drops, none will come."""
        return list(self._waiting.values())

    def receive(self, text: str | bytes) -> Incoming[W]:
        """What a frame from the server means."""
        try:
            frame = parse_server_frame(text)
        except ProtocolError as exc:
            return Ignored(str(exc), malformed=True)
        if isinstance(frame, Message):
            self.book.message(frame)
            return Delivery(frame)
        ref: Ref = getattr(frame, "ref", None)
        waiter = self._waiting.get(ref) if isinstance(ref, int) else None
        if isinstance(frame, PresenceState | PresenceDiff):
            snapshot = self.book.presence_frame(frame)
            if snapshot is None:
                return Ignored(f"a presence_diff for {frame.channel} before its presence_state")
            return PresenceUpdate(frame, snapshot, waiter)
        if waiter is not None:
            return Reply(frame, waiter)
        if isinstance(frame, Left):
            self.book.left_by_server(frame)
            return Notice(frame)
        if isinstance(frame, Error):
            return Notice(frame)
        return Ignored(f"an unexpected {type(frame).__name__} frame")

    def reconnect_delay(self, attempt: int) -> float:
        """Seconds to wait before reconnect attempt ``attempt`` (0, 1, ...)."""
        return self.backoff.delay(attempt)


class Rejoined(enum.Enum):
    """What the answer to a re-join after a reconnect means for the app."""

    OK = "ok"  # joined; nothing was missed (or nothing could be)
    GAP = "gap"  # joined, but what was missed meanwhile is gone: tell the app (on_recovery_failed)
    REFUSED = "refused"  # the server refused it now: the channel is no longer joined (on_join_error)


class ChannelBook:
    """The channels a client has joined and the last position seen on each."""

    __slots__ = ("_joined", "_positions", "_presence", "closed_cleanly")

    def __init__(self) -> None:
        self._joined: set[str] = set()
        self._positions: dict[str, Since] = {}
        self._presence: dict[str, _Members] = {}
        #: The last connection ended with 1001: the server stopped gracefully, after sending everything.
        self.closed_cleanly = False

    @property
    def joined(self) -> frozenset[str]:
        return frozenset(self._joined)

    def joined_now(self, channel: str, reply: ServerFrame | None) -> None:
        """The app's own join was answered with ``reply`` (a ``Joined``)."""
        if isinstance(reply, Joined) and channel not in self._joined:
            self._remember(channel, reply.offset, reply.epoch)
        self._joined.add(channel)

    def leave(self, channel: str) -> None:
        """The app left ``channel`` (online or not): it is not re-joined."""
        self._joined.discard(channel)
        self._positions.pop(channel, None)
        self._presence.pop(channel, None)

    def presence(self, channel: str) -> PresenceSnapshot:
        """The members of ``channel`` as last heard (none before its first state)."""
        members = self._presence.get(channel)
        return members.snapshot(channel) if members is not None else PresenceSnapshot(channel)

    def presence_frame(self, frame: PresenceState | PresenceDiff) -> PresenceSnapshot | None:
        """Apply a presence frame; the channel's members after it, or ``None``
        for a diff that has no state to apply to (ignore it)."""
        if isinstance(frame, PresenceState):
            members = self._presence[frame.channel] = _Members()
            members.count, members.truncated = frame.count, frame.truncated
            members.keyed = None if frame.members is None else {m.key: m for m in frame.members}
            return members.snapshot(frame.channel)
        found = self._presence.get(frame.channel)
        if found is None:
            return None
        found.count = frame.count
        found.truncated = found.truncated or frame.truncated
        if found.keyed is not None:
            for member in frame.joins or ():
                found.keyed[member.key] = member
            for member in frame.leaves or ():
                found.keyed.pop(member.key, None)
        return found.snapshot(frame.channel)

    def message(self, frame: Message) -> None:
        if frame.channel in self._joined:
            self._remember(frame.channel, frame.offset, frame.epoch)

    def left_by_server(self, frame: Left) -> None:
        """The server removed the subscription (no ``ref``): do not re-join it."""
        self.leave(frame.channel)

    def rejoin_plan(self) -> list[Join]:
        """After a reconnect: a join for every joined channel, with ``since``
        where a position is known (``ref`` left for the caller)."""
        return [Join(channel, since=self._positions.get(channel)) for channel in sorted(self._joined)]

    def rejoined(self, join: Join, reply: ServerFrame | None) -> Rejoined:
        """What the server's answer to a re-join (from ``rejoin_plan``) means."""
        channel = join.channel
        if isinstance(reply, JoinError):
            self.leave(channel)
            return Rejoined.REFUSED
        if not isinstance(reply, Joined):
            return Rejoined.OK
        if join.since is None:
            # A position right away, for a channel that gets no message before the next drop.
            self._remember(channel, reply.offset, reply.epoch)
            return Rejoined.OK
        if reply.recovered is not True:
            self._remember(channel, reply.offset, reply.epoch)
            return Rejoined.OK if self._nothing_missed(join.since, reply) else Rejoined.GAP
        return Rejoined.OK

    def _nothing_missed(self, since: Since, reply: Joined) -> bool:
        """The old offsets cannot be recovered, but nothing was missed: the
        server that closed us with 1001 had sent everything first, and the one
        we came back to is a new one (another epoch) that has sent nothing yet."""
        return self.closed_cleanly and reply.epoch not in (None, since.epoch) and reply.offset == 0

    def _remember(self, channel: str, offset: int | None, epoch: str | None) -> None:
        if offset is not None and epoch is not None:
            self._positions[channel] = Since(offset, epoch)


@attrs.define
class _Members:
    """One channel's members, by key, in the order they came (``None``: counts only)."""

    count: int = 0
    truncated: bool = False
    keyed: dict[str, PresenceMember] | None = attrs.field(factory=dict)

    def snapshot(self, channel: str) -> PresenceSnapshot:
        members = None if self.keyed is None else tuple(self.keyed.values())
        return PresenceSnapshot(channel, self.count, members, self.truncated)
