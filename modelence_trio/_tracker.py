"""Presence on the hub: the I/O around the sans-IO :class:`~._presence.PresenceBook`.

The ``Tracker`` turns joins and leaves of connections into the book's
members (with the metadata of the channel's ``Presence.meta`` hook), sends
each joining connection its ``presence_state``, and runs one task per hub
that, once per coalescing window in which something changed, delivers the
book's diffs to the channels' subscribers (one frame per channel, encoded
once) and publishes this instance's changes through the fan-out. With a
fan-out it also beats every ``presence_interval`` and drops the members of
instances that stopped beating (docs/presence.md).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from typing import TYPE_CHECKING, NoReturn

import trio

from ._backend import FanoutOverflow
from ._presence import PRESENCE_CHANNEL, Diff, Member, Presence, PresenceBook
from ._wire import Outgoing
from .protocol import encode_data, presence_diff_frame, presence_state_frame

if TYPE_CHECKING:
    from ._channel import ChannelContext
    from ._connection import Connection
    from ._router import Router

__all__ = ["Tracker"]

logger = logging.getLogger("modelence_trio.presence")


def _encoded(members: tuple[Member, ...] | list[Member]) -> list[tuple[str, int, str]]:
    return [(m.key, m.connections, m.meta) for m in members]


class Tracker:
    """The presence of one hub (see the module's docstring)."""

    def __init__(self, router: Router, instance: str) -> None:
        self.router = router
        self.book = PresenceBook(instance)
        self._joined: dict[Connection, dict[str, str]] = {}  # connection -> channel -> member key
        self._changed = trio.Event()
        self._stopped = False
        #: Whether any channel category of the hub has presence (they are fixed at construction).
        self.enabled = any(channel.presence is not None for channel in router.channels.values())

    def options(self, channel: str) -> Presence | None:
        server_channel = self.router.channels.get(channel.partition(":")[0])
        return server_channel.presence if server_channel is not None else None

    # --- connections ----------------------------------------------------------------------

    async def meta_of(self, presence: Presence, ctx: ChannelContext) -> str:
        """The member's metadata as JSON text: the hook's answer, or ``null``
        (logged) when it fails, is not JSON or is too large: the app's error,
        which must not cost the client its join."""
        if presence.meta is None:
            return "null"
        try:
            meta = presence.meta(ctx)
            if inspect.isawaitable(meta):
                meta = await meta
            text = encode_data(ctx.channel, meta)
            size = len(text.encode())
        except Exception:
            logger.exception("presence meta hook for %s failed; its member has no metadata", ctx.channel)
            return "null"
        if size > presence.max_meta_bytes:
            logger.error(
                "presence meta for %s is %d bytes (at most %d); its member has no metadata",
                ctx.channel,
                size,
                presence.max_meta_bytes,
            )
            return "null"
        return text

    def key_of(self, presence: Presence, conn: Connection) -> str | None:
        """The member a connection is: its user, or itself where anonymous
        members are allowed; ``None``: it sees presence but is no member."""
        user = conn.identity.user
        if user is not None:
            return user.id
        return conn.id if presence.anonymous else None

    def join(self, conn: Connection, channel: str, key: str, meta: str) -> None:
        self._joined.setdefault(conn, {})[channel] = key
        self.book.join(channel, conn.id, key, meta)
        self._changed.set()

    def leave(self, conn: Connection, channel: str) -> None:
        channels = self._joined.get(conn)
        key = channels.pop(channel, None) if channels is not None else None
        if key is None:
            return
        if not channels:
            del self._joined[conn]
        self.book.leave(channel, conn.id, key)
        self._changed.set()

    def drop(self, conn: Connection) -> None:
        """The connection closed: it leaves every channel."""
        for channel, key in self._joined.pop(conn, {}).items():
            self.book.leave(channel, conn.id, key)
            self._changed.set()

    def state(self, channel: str, presence: Presence, ref: str | int | None = None) -> Outgoing:
        """The ``presence_state`` of ``channel`` as it is now."""
        book = self.book
        count = book.count(channel)
        if presence.counts_only:
            return Outgoing.from_text(presence_state_frame(channel, count, None, ref=ref))
        members = book.members(channel, presence.max_members)
        frame = presence_state_frame(channel, count, _encoded(members), count > len(members), ref)
        return Outgoing.from_text(frame)

    # --- the other instances ---------------------------------------------------------------

    def receive(self, body: str) -> None:
        """A presence message of another instance, read from the fan-out
        (ignored by a hub without presence, which would only accumulate it)."""
        if not self.enabled:
            return
        try:
            self.book.receive(json.loads(body), trio.current_time())
        except (ValueError, TypeError) as exc:
            logger.warning("presence: skipped a malformed message from the fan-out: %s", exc)
            return
        if self.book.dirty:
            self._changed.set()

    def stop(self) -> None:
        """The hub is stopping: tell the other instances (they drop this
        instance's members at once) and publish nothing after that."""
        if self._stopped or self.router.fanout is None or not self.enabled:
            return
        self.book.bye()
        self._publish()
        self._stopped = True

    async def run(self, window: float, interval: float) -> NoReturn:
        """Deliver diffs once per ``window`` in which something changed; with
        a fan-out, beat and expire every ``interval``."""
        book, fanout = self.book, self.router.fanout
        book.expiry = 3 * interval
        self._stopped = False  # a hub may run again after a stop
        next_beat = math.inf
        if fanout is not None:
            book.start()
            self._publish()
            next_beat = trio.current_time() + interval
        while True:
            with trio.move_on_at(next_beat):
                await self._changed.wait()
                await trio.sleep(window)
            self._changed = trio.Event()
            now = trio.current_time()
            if now >= next_beat:
                book.beat()
                for instance in book.expire(now):
                    logger.warning(
                        "presence: instance %s sent nothing for %.0f s; its members left", instance, book.expiry
                    )
                next_beat = now + interval
            self._flush()

    def _flush(self) -> None:
        registry, counters = self.router.registry, self.router.counters
        for diff in self.book.flush():
            presence = self.options(diff.channel)
            if presence is None:
                continue
            try:
                frame = Outgoing.from_text(self._diff_frame(diff, presence))
            except (TypeError, ValueError):  # never: keys and metadata are checked when they come
                logger.exception("presence: cannot encode the diff of %s; skipped", diff.channel)
                continue
            size = len(frame.wire)
            delivered = registry.deliver(diff.channel, frame, size)
            counters.sent_frames += delivered
            counters.sent_bytes += delivered * size
        self._publish()

    @staticmethod
    def _diff_frame(diff: Diff, presence: Presence) -> str:
        if presence.counts_only:
            return presence_diff_frame(diff.channel, diff.count, None, None)
        room = presence.max_members
        joins, leaves = diff.joins[:room], diff.leaves[: max(0, room - len(diff.joins))]
        truncated = len(joins) + len(leaves) < len(diff.joins) + len(diff.leaves)
        return presence_diff_frame(diff.channel, diff.count, _encoded(joins), _encoded(leaves), truncated)

    def _publish(self) -> None:
        outgoing, self.book.outgoing = self.book.outgoing, []
        fanout = self.router.fanout
        if fanout is None or self._stopped:
            return
        for message in outgoing:
            try:
                fanout.publish(PRESENCE_CHANNEL, encode_data(PRESENCE_CHANNEL, message))
            except FanoutOverflow:
                # Lost for the others; the next beat tells them a version is missing.
                logger.warning("presence: the fan-out buffer is full; a %s message is lost", message.get("kind"))
