"""A fan-out backend in memory: several hubs of one Trio program as one server.

For tests (``modelence_trio.testing``): three hubs sharing one
:class:`MemoryBus` behave as three instances on one database, with the
same sequence, gaps, copies and recovery rules as ``MongoFanout`` (the
:class:`~._sequencer.Sequencer` is shared), under ``MockClock`` and in
milliseconds. A broadcast is stored at once, unless the test cut the
backend off (:meth:`MemoryFanout.cut`: an instance that lost its database,
or, never healed, one that crashed).
"""

from __future__ import annotations

import bisect
import itertools
import secrets
from typing import NoReturn

import trio

from ._backend import FanoutSink, FanoutStatistics, Receipt, deliver_stored, peer_ages
from ._sequencer import Sequencer, Stored

__all__ = ["MemoryBus", "MemoryFanout"]


class MemoryBus:
    """The shared sequence of several :class:`MemoryFanout` backends (what a
    database is to ``MongoFanout``). ``history`` bounds what it keeps."""

    def __init__(self, *, history: int = 10_000) -> None:
        self.epoch = secrets.token_hex(6)
        self.stored: list[Stored] = []
        self.last_seq = 0
        self._keep = history
        self._changed = trio.Event()

    def append(self, channel: str, body: str, origin: str, mid: str) -> int:
        self.last_seq += 1
        self.stored.append(Stored(self.last_seq, channel, None, origin, mid, body))
        if len(self.stored) > 2 * self._keep:
            del self.stored[: len(self.stored) - self._keep]
        self._changed.set()
        self._changed = trio.Event()
        return self.last_seq

    def after(self, seq: int, limit: int) -> list[Stored]:
        start = bisect.bisect_right(self.stored, seq, key=lambda item: item.seq)
        return self.stored[start : start + limit]

    async def wait_after(self, seq: int) -> None:
        """Return once something after ``seq`` is stored."""
        while self.last_seq <= seq:
            await self._changed.wait()


class MemoryFanout:
    """One hub's backend on a :class:`MemoryBus`; give each hub its own.

    Example (three instances in one test)::

        bus = MemoryBus()
        hubs = [Hub([chat], fanout=MemoryFanout(bus)) for _ in range(3)]
    """

    def __init__(self, bus: MemoryBus, *, ordered: bool = False, batch_size: int = 500) -> None:
        self.bus = bus
        self.ordered = ordered
        self.epoch: str | None = None
        self.origin = secrets.token_hex(8)
        self.batch_size = batch_size
        self._sequence = Sequencer(self.origin, ordered=ordered, gap_timeout=0.0)
        self._ids = itertools.count()
        self._stored = self._delivered = self._skipped = self._duplicates = 0
        self._cut_since: float | None = None
        self._held: list[tuple[str, str, Receipt | None]] = []
        self._connected = trio.Event()
        self._connected.set()

    def publish(self, channel: str, body: str, receipt: Receipt | None = None) -> None:
        if not self._connected.is_set():
            self._held.append((channel, body, receipt))
            return
        self.bus.append(channel, body, self.origin, f"{self.origin}-{next(self._ids)}")
        if receipt is not None:
            receipt.stored()
        self._stored += 1

    def cut(self) -> None:
        """Cut this instance off the bus, as from its database: what it
        publishes is held and it reads nothing, until :meth:`heal`. A cut
        never healed is a crash, as the other instances see it."""
        if self._connected.is_set():
            self._connected = trio.Event()
            self._cut_since = trio.current_time()

    def heal(self) -> None:
        """Back on the bus: what was held is stored, in order, and reading resumes."""
        self._connected.set()
        self._cut_since = None
        held, self._held = self._held, []
        for channel, body, receipt in held:
            self.publish(channel, body, receipt)

    async def run(self, sink: FanoutSink, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        self.epoch = self.bus.epoch
        self._sequence.start(self.bus.last_seq)
        sink.start_sequence(self.bus.epoch, self.bus.last_seq)
        task_status.started()
        sequence = self._sequence
        while True:
            await self._connected.wait()
            await self.bus.wait_after(sequence.last_seq)
            if not self._connected.is_set():
                continue
            step = sequence.feed(self.bus.after(sequence.last_seq, self.batch_size), trio.current_time())
            self._skipped += step.skipped
            self._duplicates += step.duplicates
            self._delivered += deliver_stored(step.deliver, sink, ordered=self.ordered)
            await trio.lowlevel.checkpoint()

    async def close(self) -> None:
        """What is held (cut off) is lost, as a stopped instance's would be."""
        for _, _, receipt in self._held:
            if receipt is not None:
                receipt.failed("the hub stopped before the broadcast was stored")
        self._held.clear()

    async def history(self, channel: str, after: int, upto: int) -> list[tuple[int, str]] | None:
        stored = self.bus.stored
        if not stored or stored[0].seq > after + 1:
            return None  # what followed ``after`` is no longer kept
        return [
            (item.seq, item.body)
            for item in self.bus.after(after, len(stored))
            if item.seq <= upto and item.channel == channel and item.body is not None
        ]

    def statistics(self) -> FanoutStatistics:
        return FanoutStatistics(
            len(self._held),
            self._stored,
            self._delivered,
            self._skipped,
            0,
            0,
            0,
            self._sequence.last_seq,
            duplicates=self._duplicates,
            outage_since=self._cut_since,
            peers=peer_ages(self._sequence.peers),
        )
