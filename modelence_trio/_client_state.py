"""What a client remembers about its channels, sans-IO: frames in, decisions out.

Which channels to re-join after a reconnect, and from which position; what a
re-join's answer means (joined, gap reported, refused); what a message or a
server-sent ``left`` changes. The Python client (``_client.py``) keeps its
I/O (the socket, the waiting callers, the reconnect loop) and asks this
object; the browser client implements the same rules, and both pass the
shared vectors in tests/vectors/client.json.
"""

from __future__ import annotations

import enum

from .protocol import Join, Joined, JoinError, Left, Message, ServerFrame, Since

__all__ = ["ChannelBook", "Rejoined"]


class Rejoined(enum.Enum):
    """What the answer to a re-join after a reconnect means for the app."""

    OK = "ok"  # joined; nothing was missed (or nothing could be)
    GAP = "gap"  # joined, but what was missed meanwhile is gone: tell the app (on_recovery_failed)
    REFUSED = "refused"  # the server refused it now: the channel is no longer joined (on_join_error)


class ChannelBook:
    """The channels a client has joined and the last position seen on each."""

    __slots__ = ("_joined", "_positions")

    def __init__(self) -> None:
        self._joined: set[str] = set()
        self._positions: dict[str, Since] = {}

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
            return Rejoined.GAP
        return Rejoined.OK

    def _remember(self, channel: str, offset: int | None, epoch: str | None) -> None:
        if offset is not None and epoch is not None:
            self._positions[channel] = Since(offset, epoch)
