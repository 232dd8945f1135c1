"""Presence, sans-IO: who is in each presence channel, here and on every other instance.

A channel category opts in with ``ServerChannel(..., presence=Presence())``.
A *member* is a signed-in user (keyed by user id; several connections are one
member with a connection count) or, where the category allows anonymous
members, one anonymous connection. Its metadata is what the server's
``Presence.meta`` hook returned, never what a client claims.

:class:`PresenceBook` holds the state and the rules, with the time passed
in and no I/O, so that it can be tested on its own and against a model:

- *local* members: this instance's connections, changed by :meth:`join`
  and :meth:`leave`;
- *replicas*: what every other instance said it holds, kept up to date by
  the messages they exchange through the fan-out (:meth:`receive`), and
  dropped when an instance stops sending (:meth:`expire`): a crashed
  instance's members leave everywhere within ``expiry``;
- the *diffs*: every change is noted with the member as it was before, and
  :meth:`flush` (called once per coalescing window) turns the changes since
  the last flush into one diff per channel: a member that joined and left
  within one window is in none, and a join storm is a few large diffs
  instead of one frame per join per watcher.

The messages between instances (docs/presence.md): ``delta`` (this
instance's count and metadata of the members that changed, each message
numbered by a ``version``), ``state`` (all of them, in parts), ``beat``
(alive, at this version), ``sync`` (a request for states) and ``bye``
(leaving). A replica that misses a version, or hears of an instance it does
not know, asks that instance for its state: the exchange heals itself after
a lost message, a reset database or a partition.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import attrs

from .protocol import loads_utf8

if TYPE_CHECKING:
    from ._channel import ChannelContext

__all__ = ["PRESENCE_CHANNEL", "Diff", "Member", "Presence", "PresenceBook"]

#: The fan-out "channel" presence messages travel on: not a valid channel name,
#: so no client can join it and no broadcast can reach it.
PRESENCE_CHANNEL = "$presence"

_KINDS = frozenset({"delta", "state", "beat", "sync", "bye"})

#: Entries per message between instances (a join storm is split, not one huge document).
ENTRIES_PER_MESSAGE = 1000

MetaHook = Callable[["ChannelContext"], "Any | Awaitable[Any]"]


@attrs.frozen
class Presence:
    """Presence for one channel category: ``ServerChannel("room", presence=Presence(...))``.

    Attributes:
        meta: ``meta(ctx)`` (sync or async) returns the JSON metadata of the
            connection's member (a handle, an avatar, a status), decided by the
            server. ``None``: no metadata (``null``). Called once per join.
        anonymous: connections without a user are members too, one each
            (keyed by connection id); otherwise they see presence but are not
            listed or counted.
        max_members: members listed in a ``presence_state`` (and changes in a
            ``presence_diff``); past it the frame says ``truncated`` and
            carries the total ``count``.
        counts_only: send only the number of members, never the list (large
            audiences where the list is of no use).
        max_meta_bytes: the largest metadata, in bytes of JSON (at most 8 KiB,
            so that a part of a state between instances, 1,000 members, fits
            in one MongoDB document); larger is logged as the app's error and
            sent as ``null``.
    """

    meta: MetaHook | None = None
    anonymous: bool = False
    max_members: int = attrs.field(default=100, validator=attrs.validators.ge(0))
    counts_only: bool = False
    max_meta_bytes: int = attrs.field(default=1024, validator=[attrs.validators.ge(4), attrs.validators.le(8192)])


@attrs.frozen
class Member:
    """A member as clients see it: ``meta`` is JSON text."""

    key: str
    connections: int
    meta: str = "null"


@attrs.frozen
class Diff:
    """What changed in one channel since the last flush: members that joined
    or changed (their new state) and members that left (their last state)."""

    channel: str
    joins: tuple[Member, ...]
    leaves: tuple[Member, ...]
    count: int


@attrs.define
class _Replica:
    """What one other instance holds, as far as its messages told."""

    version: int
    seen: float  # when its last message came
    members: dict[str, dict[str, tuple[int, str]]] = attrs.field(factory=dict)  # channel -> key -> (count, meta)
    next_part: int = 0  # the part of a state transfer expected next (0: none under way)


class PresenceBook:
    """The presence state of one hub (see the module's docstring).

    Args:
        instance: this hub's id, unique per process start; messages carry it.
        expiry: seconds without a message from an instance after which its
            members are dropped (three heartbeat intervals).
        ask_interval: seconds between two requests for one instance's state.
    """

    def __init__(self, instance: str, *, expiry: float = 15.0, ask_interval: float = 1.0) -> None:
        self.instance = instance
        self.expiry = expiry
        self.ask_interval = ask_interval
        self.version = 0  # of this instance's deltas
        #: Messages for the other instances, in order; the owner publishes and clears them.
        self.outgoing: list[dict[str, Any]] = []
        # channel -> key -> connection id -> meta; the first connection's meta is the member's.
        self._local: dict[str, dict[str, dict[str, str]]] = {}
        self._replicas: dict[str, _Replica] = {}
        self._order: list[_Replica] = []  # replicas by instance id: whose meta wins is the same everywhere
        # channel -> key -> connections, here and everywhere: counts and listings without a walk.
        self._counts: dict[str, dict[str, int]] = {}
        self._before: dict[str, dict[str, Member | None]] = {}  # changed since the last flush
        self._changed_local: dict[tuple[str, str], None] = {}  # to tell the others, in order
        self._asked: dict[str, float] = {}  # instance -> when its state was last asked for
        self._state_due = False

    # --- this instance's connections ------------------------------------------------------

    def join(self, channel: str, connection: str, key: str, meta: str = "null") -> None:
        """A connection of member ``key`` joined ``channel`` here."""
        self._note(channel, key)
        conns = self._local.setdefault(channel, {}).setdefault(key, {})
        if connection not in conns:
            conns[connection] = meta
            self._add(channel, key, 1)
            self._changed_local[channel, key] = None

    def leave(self, channel: str, connection: str, key: str) -> None:
        """That connection left ``channel`` (or closed)."""
        members = self._local.get(channel)
        conns = members.get(key) if members is not None else None
        if conns is None or connection not in conns:
            return
        self._note(channel, key)
        del conns[connection]
        if not conns:
            del members[key]  # type: ignore[union-attr]
            if not members:
                del self._local[channel]
        self._add(channel, key, -1)
        self._changed_local[channel, key] = None

    # --- what clients see -----------------------------------------------------------------

    def count(self, channel: str) -> int:
        """How many members ``channel`` has, on every instance."""
        return len(self._counts.get(channel, ()))

    def members_by_category(self) -> dict[str, int]:
        """Members per channel category, on every instance (one member per
        channel it is in): what the metrics show, never who."""
        counts: dict[str, int] = {}
        for channel, members in self._counts.items():
            category = channel.partition(":")[0]
            counts[category] = counts.get(category, 0) + len(members)
        return counts

    def member(self, channel: str, key: str) -> Member | None:
        connections = self._counts.get(channel, {}).get(key, 0)
        if not connections:
            return None
        local = self._local.get(channel, {}).get(key)
        if local:
            return Member(key, connections, next(iter(local.values())))
        for replica in self._order:
            entry = replica.members.get(channel, {}).get(key)
            if entry is not None:
                return Member(key, connections, entry[1])
        raise AssertionError("a count without a member")  # pragma: no cover

    def members(self, channel: str, limit: int) -> list[Member]:
        """At most ``limit`` members of ``channel``, in the order they came."""
        found: list[Member] = []
        for key in self._counts.get(channel, ()):
            if len(found) >= limit:
                break
            member = self.member(channel, key)
            assert member is not None
            found.append(member)
        return found

    def flush(self) -> list[Diff]:
        """The changes since the last flush, one :class:`Diff` per channel
        where something changed, and the delta for the other instances
        (appended to :attr:`outgoing`)."""
        diffs = []
        for channel, before in self._before.items():
            joins: list[Member] = []
            leaves: list[Member] = []
            for key, was in before.items():
                now = self.member(channel, key)
                if now == was:
                    continue
                if now is None:
                    assert was is not None
                    leaves.append(Member(key, 0, was.meta))
                else:
                    joins.append(now)
            if joins or leaves:
                diffs.append(Diff(channel, tuple(joins), tuple(leaves), self.count(channel)))
        self._before = {}
        self._tell_changes()
        return diffs

    @property
    def dirty(self) -> bool:
        """Whether a flush has something to do."""
        return bool(self._before or self._changed_local or self._state_due)

    # --- the other instances --------------------------------------------------------------

    def start(self) -> None:
        """This instance joins the others: it tells them what it holds (so far,
        nothing) and asks for theirs."""
        self._state_due = True
        self.outgoing.append({"kind": "sync", "instance": self.instance})

    def beat(self) -> None:
        """Tell the others this instance is alive, and at which version (every
        heartbeat interval): a replica behind it asks for the state."""
        self.outgoing.append({"kind": "beat", "instance": self.instance, "version": self.version})

    def bye(self) -> None:
        """This instance is stopping: the others drop its members at once."""
        self.outgoing.append({"kind": "bye", "instance": self.instance})

    def expire(self, now: float) -> list[str]:
        """Drop the members of instances not heard from within ``expiry``;
        returns those instances."""
        gone = [instance for instance, replica in self._replicas.items() if now - replica.seen > self.expiry]
        for instance in gone:
            self._drop(instance)
        # Instances asked long ago: gone, or known again; either way no need to remember.
        self._asked = {name: when for name, when in self._asked.items() if now - when <= self.expiry}
        return gone

    def receive(self, message: Any, now: float) -> None:
        """Take one message from another instance (as read back from the
        fan-out, in order). Malformed ones raise ``ValueError``: the caller
        logs and skips them."""
        if not isinstance(message, dict):
            raise ValueError("a presence message must be an object")
        instance, kind = message.get("instance"), message.get("kind")
        if not isinstance(kind, str) or kind not in _KINDS:
            raise ValueError(f"unknown presence message {kind!r}")
        if not isinstance(instance, str) or instance == self.instance:
            return  # one's own, read back
        if kind == "sync":
            target = message.get("target")
            if target is None or target == self.instance:
                self._state_due = True
            return
        if kind == "bye":
            self._drop(instance)
            return
        version = message.get("version")
        if not isinstance(version, int):
            raise ValueError("a presence message needs an integer version")
        entries = _entries(message) if kind in ("state", "delta") else []  # all checked before any is applied
        replica = self._replicas.get(instance)
        if kind == "state":
            part = message.get("part")
            if part == 0:
                self._drop(instance)
                replica = self._adopt(instance, version, now)
            if replica is None or part != replica.next_part:
                self._ask(instance, now)  # a part of a transfer not seen from its start
                return
            replica.seen = now
            self._apply(replica, entries)
            replica.next_part = 0 if message.get("last") else replica.next_part + 1
            return
        if replica is None or replica.next_part:
            self._ask(instance, now)  # an instance not known yet, or a transfer cut off
            return
        replica.seen = now
        if kind == "beat":
            if version != replica.version:
                self._ask(instance, now)  # a delta was lost
        elif version != replica.version + 1:  # a delta, after one that was lost
            self._ask(instance, now)
        else:
            replica.version = version
            self._apply(replica, entries)

    # --- inside ---------------------------------------------------------------------------

    def _note(self, channel: str, key: str) -> None:
        """Remember the member as it was before its first change since the last flush."""
        before = self._before.setdefault(channel, {})
        if key not in before:
            before[key] = self.member(channel, key)

    def _add(self, channel: str, key: str, connections: int) -> None:
        counts = self._counts.setdefault(channel, {})
        total = counts.get(key, 0) + connections
        if total > 0:
            counts[key] = total
        else:
            counts.pop(key, None)
            if not counts:
                del self._counts[channel]

    def _local_entry(self, channel: str, key: str) -> list[Any]:
        conns = self._local.get(channel, {}).get(key)
        if not conns:
            return [channel, key, 0, None]
        return [channel, key, len(conns), next(iter(conns.values()))]

    def _tell_changes(self) -> None:
        if self._state_due:
            self._state_due = False
            self._changed_local = {}
            # A new version: a replica that misses this state (and the changes
            # it carries instead of a delta) sees the next beat ahead of it.
            self.version += 1
            entries = [
                [channel, key, len(conns), next(iter(conns.values()))]
                for channel, members in self._local.items()
                for key, conns in members.items()
            ]
            parts = list(_chunks(entries)) or [[]]
            for index, part in enumerate(parts):
                self.outgoing.append(
                    {
                        "kind": "state",
                        "instance": self.instance,
                        "version": self.version,
                        "part": index,
                        "last": index == len(parts) - 1,
                        "entries": part,
                    }
                )
            return
        if not self._changed_local:
            return
        entries = [self._local_entry(channel, key) for channel, key in self._changed_local]
        self._changed_local = {}
        for part in _chunks(entries):
            self.version += 1
            self.outgoing.append({"kind": "delta", "instance": self.instance, "version": self.version, "entries": part})

    def _adopt(self, instance: str, version: int, now: float) -> _Replica:
        replica = self._replicas[instance] = _Replica(version, now)
        self._order = [self._replicas[name] for name in sorted(self._replicas)]
        return replica

    def _drop(self, instance: str) -> None:
        replica = self._replicas.get(instance)
        if replica is None:
            return
        for channel, members in replica.members.items():
            for key in members:
                self._note(channel, key)
        del self._replicas[instance]
        self._order = [self._replicas[name] for name in sorted(self._replicas)]
        for channel, members in replica.members.items():
            for key, (connections, _) in members.items():
                self._add(channel, key, -connections)

    def _apply(self, replica: _Replica, entries: list[tuple[str, str, int, str]]) -> None:
        for channel, key, connections, meta in entries:
            members = replica.members.get(channel)
            old = members.get(key) if members is not None else None
            if old == (connections, meta) or (old is None and not connections):
                continue  # nothing changes: nothing kept either (a join and leave within one window)
            self._note(channel, key)
            if connections:
                if members is None:
                    members = replica.members[channel] = {}
                members[key] = (connections, meta)
            else:
                assert members is not None
                del members[key]
                if not members:
                    del replica.members[channel]
            self._add(channel, key, connections - (old[0] if old else 0))

    def _ask(self, instance: str, now: float) -> None:
        if now - self._asked.get(instance, -math.inf) >= self.ask_interval:
            self._asked[instance] = now
            self.outgoing.append({"kind": "sync", "instance": self.instance, "target": instance})


def _chunks(entries: list[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(entries), ENTRIES_PER_MESSAGE):
        yield entries[start : start + ENTRIES_PER_MESSAGE]


def _entries(message: dict[str, Any]) -> list[tuple[str, str, int, str]]:
    """The entries of a message, checked: they come from a database."""
    entries = message.get("entries")
    if not isinstance(entries, list):
        raise ValueError("presence entries must be a list")
    checked = []
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 4):
            raise ValueError("a presence entry must be [channel, key, connections, meta]")
        channel, key, connections, meta = entry
        if not (isinstance(channel, str) and isinstance(key, str) and isinstance(connections, int)):
            raise ValueError("a presence entry must be [channel, key, connections, meta]")
        key.encode()  # sent to clients as UTF-8 (UnicodeEncodeError is a ValueError)
        if connections < 0 or (connections and not isinstance(meta, str)):
            raise ValueError("a presence entry's connections must be >= 0, with meta as JSON text")
        if connections:
            loads_utf8(meta)  # ValueError unless JSON: it is sent to clients as it is
            meta.encode()  # and as UTF-8 (UnicodeEncodeError is a ValueError)
        checked.append((channel, key, connections, meta if isinstance(meta, str) else "null"))
    return checked
