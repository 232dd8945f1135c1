"""Who is joined to what. Synchronous and I/O-free, so it can be model-checked."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import attrs

__all__ = ["Registry", "RegistryStatistics", "Subscriber"]


class Subscriber(Protocol):
    """Anything that can take encoded frames without blocking."""

    def send(self, frame: Any) -> None: ...

    def send_many(self, frames: list[Any]) -> None:
        """Several frames, in order, in one write where possible."""
        ...


@attrs.frozen
class RegistryStatistics:
    channels: int
    subscriptions: int


@attrs.define(eq=False)
class Registry:
    """Channel name -> subscribers, and subscriber -> channel names.

    Both directions are kept so that a disconnect removes every subscription
    in time proportional to that connection's own channels.
    """

    _by_channel: dict[str, set[Subscriber]] = attrs.field(factory=dict, init=False)
    _by_subscriber: dict[Subscriber, set[str]] = attrs.field(factory=dict, init=False)

    def subscribe(self, subscriber: Subscriber, channel: str) -> bool:
        """Add a subscription; ``False`` if it already existed."""
        names = self._by_subscriber.setdefault(subscriber, set())
        if channel in names:
            return False
        names.add(channel)
        self._by_channel.setdefault(channel, set()).add(subscriber)
        return True

    def unsubscribe(self, subscriber: Subscriber, channel: str) -> bool:
        """Remove a subscription; ``False`` if there was none."""
        names = self._by_subscriber.get(subscriber)
        if names is None or channel not in names:
            return False
        names.discard(channel)
        if not names:
            del self._by_subscriber[subscriber]
        self._discard(channel, subscriber)
        return True

    def drop(self, subscriber: Subscriber) -> None:
        """Remove every subscription of ``subscriber``."""
        for channel in self._by_subscriber.pop(subscriber, ()):
            self._discard(channel, subscriber)

    def is_subscribed(self, subscriber: Subscriber, channel: str) -> bool:
        return channel in self._by_subscriber.get(subscriber, ())

    def count_of(self, subscriber: Subscriber) -> int:
        """How many channels ``subscriber`` has joined (no copy, unlike ``channels_of``)."""
        return len(self._by_subscriber.get(subscriber, ()))

    def channels_of(self, subscriber: Subscriber) -> frozenset[str]:
        return frozenset(self._by_subscriber.get(subscriber, ()))

    def deliver(self, channel: str, frame: Any) -> int:
        """Hand ``frame`` to every subscriber of ``channel``; returns how many."""
        subscribers = self._by_channel.get(channel)
        if not subscribers:
            return 0
        # A subscriber may unsubscribe itself while we iterate (a slow consumer
        # being cut off), so iterate over a snapshot.
        for subscriber in tuple(subscribers):
            subscriber.send(frame)
        return len(subscribers)

    def deliver_many(self, frames: Sequence[tuple[str, Any]]) -> None:
        """Deliver ``(channel, frame)`` pairs in order; each subscriber gets its
        share in one ``send_many`` (one write for a batch from the fan-out)."""
        if len(frames) == 1:
            self.deliver(*frames[0])
            return
        shares: dict[Subscriber, list[Any]] = {}
        for channel, frame in frames:
            for subscriber in self._by_channel.get(channel, ()):
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
            subscriptions=sum(len(s) for s in self._by_channel.values()),
        )

    def _discard(self, channel: str, subscriber: Subscriber) -> None:
        subscribers = self._by_channel[channel]
        subscribers.discard(subscriber)
        if not subscribers:
            del self._by_channel[channel]
