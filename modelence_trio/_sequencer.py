"""The shared sequence of a fan-out, sans-IO: stored broadcasts in, deliveries out.

Every backend stores each broadcast under a number of one shared sequence
and reads them back in order. What it reads is not always simple: a number
may be reserved but not visible yet (a gap, which is usually filled in
milliseconds), a batch may be stored twice (a lost insert reply), and an
instance's own broadcasts come back too. The :class:`Sequencer` decides,
for every backend alike: deliver, wait for a gap, give up on it after
``gap_timeout``, drop a copy, skip one's own. The time is passed in; no I/O.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from typing import Any

import attrs

__all__ = ["PEERS", "Sequencer", "Step", "Stored"]

#: Other instances a sequencer remembers having read from (the most recent ones).
PEERS = 64


@attrs.frozen
class Stored:
    """One broadcast as a backend stored it: its data as read back (``data``)
    or, where the backend has it, already as JSON text (``body``)."""

    seq: int
    channel: str
    data: Any
    origin: str  # the instance that published it
    mid: str | None  # the message id, stable across retried stores
    body: str | None = None


@attrs.frozen
class Step:
    """What to do with one batch read from the backend."""

    deliver: tuple[Stored, ...]  # in order
    waiting: bool  # stopped at a gap that may still fill: read again from ``last_seq`` soon
    skipped: int = 0  # sequence numbers given up on in this batch (a log line, a counter)
    duplicates: int = 0  # broadcasts stored twice (or without a message id) and dropped


class Sequencer:
    """Orders one instance's reading of the shared sequence (see the module's docstring).

    Args:
        origin: this instance's id: its own broadcasts are skipped unless ``ordered``.
        ordered: every broadcast, one's own included, is delivered from the sequence.
        gap_timeout: seconds to wait for a missing number before giving up on it.
        memory: message ids remembered to drop copies (at least the largest batch).
    """

    def __init__(self, origin: str, *, ordered: bool, gap_timeout: float, memory: int = 10_000) -> None:
        self.origin = origin
        self.ordered = ordered
        self.gap_timeout = gap_timeout
        self.last_seq = -1  # not started
        self._memory = memory
        self._seen: dict[str, None] = {}  # recent message ids, oldest first
        self._gap_since = math.inf
        #: Other instances read from, with when (``now`` of ``feed``), the latest last; at most ``PEERS``.
        self.peers: dict[str, float] = {}

    def start(self, last_seq: int) -> None:
        """Read on after ``last_seq`` (what was there before this instance is not replayed)."""
        self.last_seq = last_seq
        self._gap_since = math.inf

    def feed(self, batch: Iterable[Stored], now: float) -> Step:
        """Take a batch read after ``last_seq``, in sequence order."""
        deliver: list[Stored] = []
        skipped = duplicates = 0
        for item in batch:
            if item.seq <= self.last_seq:
                continue  # read twice
            if item.seq > self.last_seq + 1:
                self._gap_since = min(self._gap_since, now)
                if now - self._gap_since < self.gap_timeout:
                    return Step(tuple(deliver), waiting=True, skipped=skipped, duplicates=duplicates)
                skipped += item.seq - self.last_seq - 1
            self._gap_since = math.inf
            self.last_seq = item.seq
            if item.origin != self.origin:
                self._saw(item.origin, now)
            if item.mid is None or item.mid in self._seen:
                duplicates += 1  # stored twice (or not by us)
            elif self._admit(item, item.mid):
                deliver.append(item)
        return Step(tuple(deliver), waiting=False, skipped=skipped, duplicates=duplicates)

    def _saw(self, origin: str, now: float) -> None:
        peers = self.peers
        peers.pop(origin, None)
        peers[origin] = now
        if len(peers) > PEERS:
            del peers[next(iter(peers))]

    def _admit(self, item: Stored, mid: str) -> bool:
        if item.origin == self.origin and not self.ordered:
            return False  # our own: local subscribers had it at once
        self._seen[mid] = None
        if len(self._seen) > 4 * self._memory:
            for old in list(itertools.islice(self._seen, self._memory)):
                del self._seen[old]
        return True
