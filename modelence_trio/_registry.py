"""Who is joined to what. Synchronous and I/O-free, so it can be model-checked.

It also keeps what a connection's log line and the metrics need, without
work per delivery: each channel counts the frames (and bytes) delivered to
it, once per broadcast, and each subscription remembers those counts from
when it began; when it ends, the difference is what that subscriber got
from the channel, added to the subscriber's ``delivered_*`` tallies.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any, Protocol

import attrs

__all__ = ["Registry", "RegistryStatistics", "Subscriber"]


class Subscriber(Protocol):
    """Anything that can take encoded frames without blocking."""

    #: Frames and bytes of broadcasts delivered over subscriptions that have
    #: ended (the registry adds to them; :meth:`Registry.delivered` adds the live ones).
    delivered_frames: int
    delivered_bytes: int

    def send(self, frame: Any) -> None: ...

    def send_many(self, frames: list[Any]) -> None:
        """Several frames, in order, in one write where possible."""
        ...


@attrs.frozen
class RegistryStatistics:
    channels: int
    subscriptions: int


@attrs.define(eq=False)
class _Channel:
    """One channel's subscribers, and what it was sent so far (counted per
    broadcast: every subscriber of the moment got it)."""

    subscribers: set[Subscriber] = attrs.field(factory=set)
    frames: int = 0
    bytes: int = 0


def _category(channel: str) -> str:
    return channel.partition(":")[0]


@attrs.define(eq=False)
class Registry:
    """Channel name -> subscribers, and subscriber -> channel names.

    Both directions are kept so that a disconnect removes every subscription
    in time proportional to that connection's own channels.
    """

    _by_channel: dict[str, _Channel] = attrs.field(factory=dict, init=False)
    #: subscriber -> channel -> the channel's (frames, bytes) when the subscription began.
    _by_subscriber: dict[Subscriber, dict[str, tuple[int, int]]] = attrs.field(factory=dict, init=False)
    #: category -> channels with subscribers, and subscriptions, now.
    channels_by_category: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    subscriptions_by_category: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    #: category -> subscriptions ended because their subscriber was dropped (its connection ended).
    dropped_by_category: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)

    def subscribe(self, subscriber: Subscriber, channel: str) -> bool:
        """Add a subscription; ``False`` if it already existed."""
        names = self._by_subscriber.setdefault(subscriber, {})
        if channel in names:
            return False
        entry = self._by_channel.get(channel)
        category = _category(channel)
        if entry is None:
            entry = self._by_channel[channel] = _Channel()
            self.channels_by_category[category] += 1
        entry.subscribers.add(subscriber)
        names[channel] = (entry.frames, entry.bytes)
        self.subscriptions_by_category[category] += 1
        return True

    def unsubscribe(self, subscriber: Subscriber, channel: str) -> bool:
        """Remove a subscription; ``False`` if there was none."""
        names = self._by_subscriber.get(subscriber)
        if names is None or channel not in names:
            return False
        start = names.pop(channel)
        if not names:
            del self._by_subscriber[subscriber]
        self._end(subscriber, channel, start)
        return True

    def drop(self, subscriber: Subscriber) -> None:
        """Remove every subscription of ``subscriber``."""
        for channel, start in self._by_subscriber.pop(subscriber, {}).items():
            self._end(subscriber, channel, start)
            self.dropped_by_category[_category(channel)] += 1

    def is_subscribed(self, subscriber: Subscriber, channel: str) -> bool:
        return channel in self._by_subscriber.get(subscriber, ())

    def count_of(self, subscriber: Subscriber) -> int:
        """How many channels ``subscriber`` has joined (no copy, unlike ``channels_of``)."""
        return len(self._by_subscriber.get(subscriber, ()))

    def channels_of(self, subscriber: Subscriber) -> frozenset[str]:
        return frozenset(self._by_subscriber.get(subscriber, ()))

    def subscribers_of(self, channel: str) -> int:
        """How many subscribers ``channel`` has."""
        entry = self._by_channel.get(channel)
        return len(entry.subscribers) if entry is not None else 0

    def delivered(self, subscriber: Subscriber) -> tuple[int, int]:
        """Frames and bytes of broadcasts delivered to ``subscriber`` so far,
        over its ended subscriptions and its current ones."""
        frames, size = subscriber.delivered_frames, subscriber.delivered_bytes
        for channel, (frames_then, bytes_then) in self._by_subscriber.get(subscriber, {}).items():
            entry = self._by_channel[channel]
            frames += entry.frames - frames_then
            size += entry.bytes - bytes_then
        return frames, size

    def deliver(self, channel: str, frame: Any, size: int = 0) -> int:
        """Hand ``frame`` (``size`` bytes) to every subscriber of ``channel``; returns how many."""
        entry = self._by_channel.get(channel)
        if entry is None:
            return 0
        entry.frames += 1
        entry.bytes += size
        subscribers = entry.subscribers
        # A subscriber may unsubscribe itself while we iterate (a slow consumer
        # being cut off), so iterate over a snapshot.
        for subscriber in tuple(subscribers):
            subscriber.send(frame)
        return len(subscribers)

    def deliver_many(self, frames: Sequence[tuple[str, Any, int]]) -> None:
        """Deliver ``(channel, frame, size)`` triples in order; each subscriber
        gets its share in one ``send_many`` (one write for a batch from the fan-out)."""
        if len(frames) == 1:
            self.deliver(*frames[0])
            return
        shares: dict[Subscriber, list[Any]] = {}
        for channel, frame, size in frames:
            entry = self._by_channel.get(channel)
            if entry is None:
                continue
            entry.frames += 1
            entry.bytes += size
            for subscriber in entry.subscribers:
                share = shares.get(subscriber)
                if share is None:
                    shares[subscriber] = [frame]
                else:
                    share.append(frame)
        for subscriber, share in shares.items():
            if len(share) == 1:
                subscriber.send(share[0])
            else:
                subscriber.send_many(share)

    def statistics(self) -> RegistryStatistics:
        return RegistryStatistics(
            channels=len(self._by_channel),
            subscriptions=sum(len(entry.subscribers) for entry in self._by_channel.values()),
        )

    def _end(self, subscriber: Subscriber, channel: str, start: tuple[int, int]) -> None:
        """A subscription ended: credit the subscriber with what it got from the channel."""
        entry = self._by_channel[channel]
        subscriber.delivered_frames += entry.frames - start[0]
        subscriber.delivered_bytes += entry.bytes - start[1]
        entry.subscribers.discard(subscriber)
        category = _category(channel)
        self.subscriptions_by_category[category] -= 1
        if not entry.subscribers:
            del self._by_channel[channel]
            self.channels_by_category[category] -= 1
