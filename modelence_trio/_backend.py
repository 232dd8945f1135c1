"""The seam between the hub and a fan-out backend (several instances as one server).

A backend stores each broadcast of this instance under a number of one
shared sequence and delivers the other instances' broadcasts into the hub
(the :class:`FanoutSink`), in that order; its :class:`~._sequencer.Sequencer`
decides about gaps, copies and its own. :class:`~._fanout.MongoFanout` is
one backend, :class:`~._memory_fanout.MemoryFanout` (several hubs of one
Trio program, for tests) another; docs/architecture.md says how to add one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NoReturn, Protocol

import attrs
import trio

from ._counters import HistogramSnapshot
from .protocol import encode_data

if TYPE_CHECKING:
    from ._sequencer import Stored

__all__ = [
    "FanoutBackend",
    "FanoutNotStored",
    "FanoutOverflow",
    "FanoutSink",
    "FanoutStatistics",
    "Receipt",
    "deliver_stored",
    "peer_ages",
]

logger = logging.getLogger("modelence_trio.fanout")


class FanoutSink(Protocol):
    """What a backend delivers into: the hub's ``Router``."""

    def deliver_batch(self, items: Sequence[tuple[str, str, int]], *, ordered: bool) -> int:
        """Deliver ``(channel, body, seq)`` in order, ``body`` the data's JSON
        text (``protocol.encode_data``); ``ordered``: ``seq`` is the offset.
        One call per batch read, so that a subscriber gets the batch in one
        write. Returns how many were delivered."""
        ...

    def start_sequence(self, epoch: str, seq: int) -> None: ...


def deliver_stored(items: Iterable[Stored], sink: FanoutSink, *, ordered: bool) -> int:
    """Hand the broadcasts of one read to the hub, skipping (and logging)
    those that cannot be encoded. Every backend delivers through this."""
    batch = []
    for item in items:
        try:
            body = item.body if item.body is not None else encode_data(item.channel, item.data)
        except TypeError:
            logger.exception("fan-out: cannot encode the broadcast with sequence %s; skipped", item.seq)
            continue
        batch.append((item.channel, body, item.seq))
    return sink.deliver_batch(batch, ordered=ordered) if batch else 0


def peer_ages(peers: dict[str, float]) -> tuple[tuple[str, float], ...]:
    """Other instances (a ``Sequencer``'s ``peers``) and seconds since each
    was last read from, newest first (``()`` outside Trio, whose clock the
    times are on)."""
    try:
        now = trio.current_time()
    except RuntimeError:
        return ()
    return tuple((peer, now - seen) for peer, seen in reversed(peers.items()))


class FanoutOverflow(RuntimeError):
    """The broadcast reached local subscribers (in the ordered mode: no one),
    but not other instances: the backend has been unreachable for so long
    that the buffer of broadcasts waiting to be stored is full. It is logged
    and counted as well."""


class FanoutNotStored(RuntimeError):
    """``broadcast_stored``: the broadcast reached local subscribers (in the
    ordered mode: no one), but was not stored for other instances: the
    backend cannot hold it (MongoDB: an integer beyond 8 bytes, a NUL in a
    key), or the hub stopped before it was stored."""


class Receipt:
    """Whether one broadcast is stored: what ``broadcast_stored`` waits on,
    and what a backend settles once the broadcast is stored, or is not."""

    __slots__ = ("_done", "error")

    def __init__(self) -> None:
        self._done = trio.Event()
        self.error: FanoutNotStored | None = None

    def stored(self) -> None:
        self._done.set()

    def failed(self, why: str) -> None:
        if not self._done.is_set():
            self.error = FanoutNotStored(why)
            self._done.set()

    async def wait(self) -> None:
        await self._done.wait()
        if self.error is not None:
            raise self.error


@attrs.frozen
class FanoutStatistics:
    pending: int  # broadcasts waiting to be stored (the outage buffer's depth)
    stored: int  # this instance's broadcasts stored (published to the others)
    delivered: int  # broadcasts of other instances delivered here (received)
    skipped: int  # sequence numbers given up on (gaps; see docs/fanout.md)
    dropped: int  # broadcasts refused because the buffer was full
    write_failures: int
    read_failures: int
    last_seq: int
    unstorable: int = 0  # broadcasts the backend cannot store (MongoDB: what BSON cannot hold)
    resets: int = 0  # times the database was found reset (a new sequence, docs/fanout.md)
    duplicates: int = 0  # broadcasts read twice (a batch stored twice) and dropped
    #: Since when (Trio's clock) the backend cannot reach its database; ``None``: it can.
    outage_since: float | None = None
    #: Seconds per poll of the database, and from a broadcast's store on
    #: another instance to its read here (``createdAt``; clocks of instances
    #: differ, so a few milliseconds either way); ``None``: not measured.
    poll_seconds: HistogramSnapshot | None = None
    delay_seconds: HistogramSnapshot | None = None
    #: Other instances read from lately, as (their id, seconds since the last read).
    peers: tuple[tuple[str, float], ...] = ()


class FanoutBackend(Protocol):
    """What the hub needs of a fan-out backend.

    ``ordered``: every broadcast, this instance's own included, is delivered
    from the shared sequence (``deliver_batch(ordered=True)``), whose numbers are the
    messages' offsets, so recovery works across instances; otherwise an
    instance delivers its own at once and the others' with ``deliver_batch``.
    """

    ordered: bool
    #: The shared sequence's name, once ``run`` is ready (offsets carry it).
    epoch: str | None

    def publish(self, channel: str, body: str, receipt: Receipt | None = None) -> None:
        """Queue a broadcast for the other instances (or, ordered, for all);
        ``body`` is its data as JSON text, encoded once by the hub: a snapshot
        the app can no longer change. Raise :class:`FanoutOverflow` when it
        cannot be held. Settle ``receipt`` once it is stored (or cannot be,
        or the backend stops first)."""
        ...

    async def run(self, sink: FanoutSink, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        """Store and read until cancelled; ``task_status.started()`` once the
        sequence is ready (after ``sink.start_sequence``)."""
        ...

    async def close(self) -> None:
        """After ``run`` has ended (the hub is stopping; called shielded):
        store what is still held, within the backend's own time bound, then
        settle every receipt. Nothing published afterwards is stored."""
        ...

    async def history(self, channel: str, after: int, upto: int) -> list[tuple[int, str]] | None:
        """``channel``'s broadcasts with ``after < seq <= upto`` in order, as
        ``(seq, body)``, or ``None`` when some may be gone."""
        ...

    def statistics(self) -> FanoutStatistics: ...
