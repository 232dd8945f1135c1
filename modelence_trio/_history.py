"""Recent messages per channel, so that a client that reconnects can be sent
what it missed (``join`` with ``since``), or be told that it cannot.

Pure bookkeeping, no I/O: the hub calls it synchronously, so taking a replay
and subscribing happen with no broadcast in between (no gap, no duplicate at
the seam between replay and live delivery).
"""

from __future__ import annotations

import collections
import math
import secrets
from collections.abc import Iterator
from typing import Any

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


class _Channel:
    """One channel's kept messages, oldest first, as four atoms each
    (offset, time, the encoded frame's text, its wire size) laid out in one
    deque rather than a tuple per message: a broadcast then creates no
    object the garbage collector tracks, so a hub that keeps thousands of
    messages does not make every collection walk them (a tuple per entry
    made W3 about a quarter slower), and a channel costs one deque, not one
    per field. The wire bytes are rebuilt for a replay, which is rare. The
    deque's ``maxlen`` is four times the history's ``size``: appending to a
    full one drops the oldest message."""

    __slots__ = ("atoms", "floor", "max_age")

    def __init__(self, size: int, floor: int, max_age: float) -> None:
        self.atoms: collections.deque[Any] = collections.deque(maxlen=4 * size)
        #: Every message up to this offset may be gone (evicted, expired, or from before).
        self.floor = floor
        self.max_age = max_age

    def __len__(self) -> int:
        return len(self.atoms) // 4

    @property
    def oldest_time(self) -> float:
        time: float = self.atoms[1]
        return time

    def newest(self) -> tuple[int, float]:
        """The offset and time of the newest message (there is one)."""
        atoms = self.atoms
        return atoms[-4], atoms[-3]

    def messages(self) -> Iterator[tuple[int, float, str, int]]:
        """``(offset, time, text, size)`` of each message, oldest first."""
        atoms = iter(self.atoms)
        return zip(atoms, atoms, atoms, atoms, strict=True)

    def popleft(self) -> tuple[int, int]:
        """Forget the oldest message: its offset and size."""
        atoms = self.atoms
        offset, _, _, size = atoms.popleft(), atoms.popleft(), atoms.popleft(), atoms.popleft()
        return offset, size


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
            kept = self._channels[channel] = _Channel(history.size, self._forgotten, history.max_age)
        size = len(frame.wire)  # header included: what a replay sends again
        atoms = kept.atoms  # _Channel's layout, spelled out here: once per broadcast
        if len(atoms) == atoms.maxlen:  # full: the extend below drops the oldest
            kept.floor = atoms[0]
            self.bytes -= atoms[3]
        else:
            self.entries += 1
        atoms.extend((number, now, text, size))
        self.bytes += size
        if atoms[1] < now - history.max_age:
            self._expire(kept, now - history.max_age)
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
        return True, [Outgoing.from_text(text) for offset, _, text, _ in kept.messages() if offset > since.offset]

    def tail(self, channel: str, count: int, history: History, now: float) -> list[Outgoing]:
        """The last ``count`` messages of ``channel`` still held, oldest first."""
        kept = self._channels.get(channel)
        if kept is None or count <= 0:
            return []
        self._expire(kept, now - history.max_age)
        return [Outgoing.from_text(text) for _, _, text, _ in list(kept.messages())[-count:]]

    @property
    def last(self) -> int:
        """The last offset handed out: where live delivery starts for a join now."""
        return self._last

    def sweep(self, now: float) -> None:
        """Drop the histories of channels with nothing newer than their ``max_age``."""
        for name, kept in list(self._channels.items()):
            last, time = kept.newest() if kept else (kept.floor, -math.inf)
            if time < now - kept.max_age:
                self._forgotten = max(self._forgotten, last)
                self.entries -= len(kept)
                self.bytes -= sum(size for _, _, _, size in kept.messages())
                del self._channels[name]

    def __len__(self) -> int:
        return self.entries

    def _expire(self, kept: _Channel, cutoff: float) -> None:
        while kept and kept.oldest_time < cutoff:
            kept.floor, size = kept.popleft()
            self.entries -= 1
            self.bytes -= size
