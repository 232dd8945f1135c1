"""Where a broadcast goes: local subscribers, the channel's history, the fan-out.

One :class:`Router` per hub holds the channel catalogue, the registry of
subscriptions, the histories and the fan-out backend, and is the
``FanoutSink`` the backend delivers into. A broadcast takes one of three
routes, chosen once per call:

- no fan-out: encode, record (with an offset, if the channel keeps a
  history), deliver to local subscribers;
- a fan-out that is not ordered: the same without offsets, and the data's
  JSON goes to the backend for the other instances;
- an ordered fan-out: the data's JSON goes to the backend only; every
  instance, this one included, delivers it when it reads it back in the
  shared sequence, whose number is its offset.

Encoding comes first in each route, before any state changes: a broadcast
that cannot be sent leaves no trace (no offset, no history entry, nothing
queued for another instance).

What reaches local subscribers is counted per broadcast, in the category's
:class:`~._counters.Traffic`: one broadcast, its subscriber count as
deliveries, and that many times its size in bytes, in one step each.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import trio

from ._backend import FanoutBackend, Receipt
from ._channel import ServerChannel
from ._counters import HubCounters, Traffic
from ._history import History, HistoryBook
from ._presence import PRESENCE_CHANNEL
from ._registry import Registry
from ._wire import Outgoing, check_sendable
from .protocol import Since, encode_data, encode_message, message_frame

__all__ = ["Router"]

logger = logging.getLogger("modelence_trio.fanout")


class Router:
    def __init__(
        self,
        channels: Iterable[ServerChannel[Any]],
        fanout: FanoutBackend | None,
        counters: HubCounters | None = None,
    ) -> None:
        self.channels: dict[str, ServerChannel[Any]] = {}
        for channel in channels:
            if channel.category in self.channels:
                raise ValueError(f"two channels share the category {channel.category!r}")
            self.channels[channel.category] = channel
        self.fanout = fanout
        self.registry = Registry()
        self.histories = HistoryBook()
        #: What recovery histories are stamped with: trio's clock (see ``use_clock``).
        self.clock: Callable[[], float] = _now
        self.counters = counters if counters is not None else HubCounters()
        #: Each declared category's traffic (the counters' objects, looked up once per broadcast).
        self.traffic: dict[str, Traffic] = {category: self.counters.traffic_of(category) for category in self.channels}
        #: Where presence messages of other instances go (the hub's ``Tracker``).
        self.on_presence: Callable[[str], None] | None = None

    def broadcast(self, channel: ServerChannel[Any], name: str, data: Any, receipt: Receipt | None = None) -> None:
        """Route one broadcast; ``receipt`` (``broadcast_stored``) is settled
        once the fan-out has stored it, at once without a fan-out."""
        fanout = self.fanout
        if fanout is None:  # the single-instance hot path, spelled out (_deliver inlined)
            history = channel.history
            if history is None:
                frame = Outgoing.from_text(encode_message(name, data))
            else:
                frame = self.histories.record(name, encode_data(name, data), history, self.clock())
            size = len(frame.wire)
            delivered = self.registry.deliver(name, frame, size)
            traffic = self.traffic[channel.category]
            traffic.broadcasts += 1
            traffic.deliveries += delivered
            traffic.bytes += delivered * size
            if receipt is not None:
                receipt.stored()  # nothing to store
        elif fanout.ordered:
            # Every subscriber, here too, gets it from the shared sequence (deliver_batch).
            fanout.publish(name, check_sendable(encode_data(name, data)), receipt)
        else:
            body = encode_data(name, data)
            self._deliver(channel.category, name, Outgoing.from_text(message_frame(name, body)))  # no offsets
            fanout.publish(name, body, receipt)

    def use_clock(self, clock: trio.abc.Clock | None) -> None:
        """Stamp histories with ``clock`` (the running hub's, looked up once
        rather than on every broadcast), or with ``None`` as before the hub runs."""
        self.clock = clock.current_time if clock is not None else _now

    def _deliver(self, category: str, name: str, frame: Outgoing) -> None:
        """Hand one broadcast to local subscribers and count it, once."""
        size = len(frame.wire)
        delivered = self.registry.deliver(name, frame, size)
        traffic = self.traffic[category]
        traffic.broadcasts += 1
        traffic.deliveries += delivered
        traffic.bytes += delivered * size

    def deliver_local(self, name: str, data: Any) -> None:
        """Send ``data`` to this instance's subscribers of ``name`` only, and
        count it nowhere: the dashboard's snapshots, which must not move the
        numbers they show, nor reach other instances."""
        frame = Outgoing.from_text(encode_message(name, data))
        self.registry.deliver(name, frame, len(frame.wire))

    def history_of(self, channel: ServerChannel[Any] | None) -> History | None:
        """The history a channel's messages are recorded in here, if any.

        A fan-out that delivers an instance's own broadcasts at once gives
        them no place in the shared sequence: no offsets, no recovery (joined says so).
        """
        if channel is None or (self.fanout is not None and not self.fanout.ordered):
            return None
        return channel.history

    # --- what the fan-out delivers (FanoutSink) ------------------------------------------

    def start_sequence(self, epoch: str, seq: int) -> None:
        """The shared sequence is ready: offsets are its numbers from now on."""
        if self.fanout is not None and self.fanout.ordered:
            self.histories.reset(epoch, seq)

    def deliver_batch(self, items: Sequence[tuple[str, str, int]], *, ordered: bool) -> int:
        """Broadcasts read from the fan-out, in order: other instances' (and,
        ordered, ours too, with their sequence numbers as offsets). Each
        subscriber gets its share of the batch in one write."""
        frames: list[tuple[str, Outgoing, int]] = []
        histories, channels, registry = self.histories, self.channels, self.registry
        for name, body, seq in items:
            if name == PRESENCE_CHANNEL:  # not a channel: the instances' presence exchange
                if self.on_presence is not None:
                    self.on_presence(body)
                continue
            try:
                history = self.history_of(channels.get(name.partition(":")[0])) if ordered else None
                if history is None:
                    frame = Outgoing.from_text(message_frame(name, body))
                else:
                    frame = histories.record(name, body, history, self.clock(), seq)
            except ValueError:
                logger.exception("fan-out: cannot send the broadcast with sequence %s; skipped", seq)
                continue
            size = len(frame.wire)
            traffic = self.traffic.get(name.partition(":")[0])
            if traffic is not None:  # a category served here (else no one here joined it)
                subscribers = registry.subscribers_of(name)
                traffic.broadcasts += 1
                traffic.deliveries += subscribers
                traffic.bytes += subscribers * size
            frames.append((name, frame, size))
        registry.deliver_many(frames)
        return len(frames)

    # --- recovery -------------------------------------------------------------------------

    async def recover(self, channel: str, since: Since, history: History | None) -> tuple[bool, list[Outgoing]]:
        """Whether every message after ``since`` can be replayed, and the replay.

        The caller subscribes right after this returns, with no await in
        between, so no broadcast falls between the replay and live delivery.
        With the ordered fan-out, what this instance did not see (it started
        later) is read from the backend, up to where its own history takes over.
        """
        histories = self.histories
        recovered, replay = histories.replay(channel, since, history, trio.current_time())
        fanout = self.fanout
        if recovered or history is None or fanout is None or not fanout.ordered:
            return recovered, replay
        if since.epoch != histories.epoch or since.offset > histories.last:
            return False, []
        upto = histories.last
        stored = await fanout.history(channel, since.offset, upto)
        if stored is None:
            return False, []
        # Whatever the backend delivered meanwhile is in this instance's history.
        recovered, newer = histories.replay(channel, Since(upto, since.epoch), history, trio.current_time())
        if not recovered:
            return False, []
        epoch = histories.epoch
        older = [Outgoing.from_text(message_frame(channel, body, seq, epoch)) for seq, body in stored]
        return True, older + newer

    async def sweep_histories(self) -> None:
        """Forget channels whose history has aged out, so that a hub that saw
        many channels does not keep an empty record of each (runs forever)."""
        ages = [c.history.max_age for c in self.channels.values() if c.history is not None]
        if not ages:
            return
        while True:
            await trio.sleep(min(ages))
            self.histories.sweep(trio.current_time())


def _now() -> float:
    """Trio's clock (virtual under MockClock); a broadcast made outside Trio is
    stamped as already old, so it only ever makes recovery fail, never lie."""
    try:
        return trio.current_time()
    except RuntimeError:
        return -math.inf
