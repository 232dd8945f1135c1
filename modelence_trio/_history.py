"""Recent messages per channel, so that a client that reconnects can be sent
what it missed (``join`` with ``since``), or be told that it cannot.

Pure bookkeeping, no I/O: the hub calls it synchronously, so taking a replay
and subscribing happen with no broadcast in between (no gap, no duplicate at
the seam between replay and live delivery).
"""

from __future__ import annotations

import collections
import secrets

import attrs

from ._wire import Outgoing
from .protocol import Since, message_frame

__all__ = ["History", "HistoryBook"]


@attrs.frozen
class History:
    """How much of a channel category's recent traffic a hub keeps for recovery.

    ``size`` messages per channel at most, none older than ``max_age``
    seconds. Give ``history=None`` to a ``ServerChannel`` to keep none (its
    messages then carry no offsets, and every recovery fails).
    """

    size: int = 100
    max_age: float = 120.0

    def __attrs_post_init__(self) -> None:
        if self.size < 1 or self.max_age <= 0:
            raise ValueError("a history needs size >= 1 and max_age > 0")


@attrs.define
class _Channel:
    #: (offset, time, the encoded frame's text, its wire size): atoms only,
    #: which the garbage collector does not track; the wire bytes are rebuilt
    #: for a replay, which is rare. At most the history's ``size`` (the
    #: deque's ``maxlen``: appending to a full one drops the oldest).
    entries: collections.deque[tuple[int, float, str, int]]
    #: Every message up to this offset may be gone (evicted, expired, or from before).
    floor: int
    max_age: float


class HistoryBook:
    """The histories of one hub. Offsets come from one counter for the whole
    hub, so they increase per channel and are never reused, even after a
    channel's history is dropped; ``epoch`` is new with every hub."""

    def __init__(self) -> None:
        self.epoch = secrets.token_hex(6)
        self._last = 0  # the last offset handed out, on any channel
        self._forgotten = 0  # the highest offset of a channel history dropped whole
        self._channels: dict[str, _Channel] = {}
        #: Messages kept, on every channel, and their frames' bytes (UTF-8): kept as they change.
        self.entries = 0
        self.bytes = 0

    def reset(self, epoch: str, start: int) -> None:
        """Take offsets from an outside sequence (the fan-out's) from ``start`` on."""
        self.epoch = epoch
        self._last = self._forgotten = start
        self._channels.clear()
        self.entries = self.bytes = 0

    def record(self, channel: str, body: str, history: History, now: float, offset: int | None = None) -> Outgoing:
        """Frame a broadcast (``body``: its data's JSON) with its offset (the
        next, or the given one) and keep it."""
        number = self._last + 1 if offset is None else offset
        # Encoded (to bytes too) before anything changes: a broadcast that
        # cannot be sent leaves no trace, no offset used, no entry kept.
        text = message_frame(channel, body, number, self.epoch)
        frame = Outgoing.from_text(text)
        self._last = number
        kept = self._channels.get(channel)
        if kept is None:
            kept = self._channels[channel] = _Channel(
                collections.deque(maxlen=history.size), self._forgotten, history.max_age
            )
        entries = kept.entries
        size = len(frame.wire)  # header included: what a replay sends again
        if len(entries) == entries.maxlen:  # full: the append below drops the oldest
            oldest = entries[0]
            kept.floor = oldest[0]
            self.bytes -= oldest[3]
            self.entries -= 1
        entries.append((number, now, text, size))
        self.entries += 1
        self.bytes += size
        cutoff = now - history.max_age
        if entries[0][1] < cutoff:
            self._expire(kept, cutoff)
        return frame

    def replay(self, channel: str, since: Since, history: History | None, now: float) -> tuple[bool, list[Outgoing]]:
        """Whether every message of ``channel`` after ``since`` is still held, and those messages."""
        if history is None or since.epoch != self.epoch or since.offset > self._last:
            return False, []
        kept = self._channels.get(channel)
        if kept is None:
            return since.offset >= self._forgotten, []
        self._expire(kept, now - history.max_age)
        if since.offset < kept.floor:
            return False, []
        return True, [Outgoing.from_text(text) for offset, _, text, _ in kept.entries if offset > since.offset]

    def tail(self, channel: str, count: int, history: History, now: float) -> list[Outgoing]:
        """The last ``count`` messages of ``channel`` still held, oldest first."""
        kept = self._channels.get(channel)
        if kept is None or count <= 0:
            return []
        self._expire(kept, now - history.max_age)
        entries = list(kept.entries)[-count:]
        return [Outgoing.from_text(text) for _, _, text, _ in entries]

    @property
    def last(self) -> int:
        """The last offset handed out: where live delivery starts for a join now."""
        return self._last

    def sweep(self, now: float) -> None:
        """Drop the histories of channels with nothing newer than their ``max_age``."""
        for name, kept in list(self._channels.items()):
            if not kept.entries or kept.entries[-1][1] < now - kept.max_age:
                last = kept.entries[-1][0] if kept.entries else kept.floor
                self._forgotten = max(self._forgotten, last)
                self.entries -= len(kept.entries)
                self.bytes -= sum(size for _, _, _, size in kept.entries)
                del self._channels[name]

    def __len__(self) -> int:
        return self.entries

    def _expire(self, kept: _Channel, cutoff: float) -> None:
        entries = kept.entries
        while entries and entries[0][1] < cutoff:
            kept.floor = self._evict(kept)

    def _evict(self, kept: _Channel) -> int:
        """Forget the oldest message of ``kept``; its offset."""
        offset, _, _, size = kept.entries.popleft()
        self.entries -= 1
        self.bytes -= size
        return offset
