"""The channel registry against a simple model, under random operations:
subscriptions, deliveries in order, and what each subscriber was delivered
(frames and bytes, counted per broadcast, never per delivery)."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from modelence_trio._registry import Registry

CHANNELS = st.sampled_from(["chat:a", "chat:b", "user:1", "user:2", "news:x"])


class Peer:
    def __init__(self, name: int) -> None:
        self.name = name
        self.received: list[tuple[str, int]] = []
        self.delivered_frames = self.delivered_bytes = 0

    def send(self, frame: tuple[str, int]) -> None:
        self.received.append(frame)

    def send_many(self, frames: list[tuple[str, int]]) -> None:
        assert len(frames) > 1  # one frame goes through send
        self.received.extend(frames)


class RegistryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.registry = Registry()
        self.peers = [Peer(i) for i in range(4)]
        self.model: dict[int, set[str]] = {i: set() for i in range(4)}
        self.expected: dict[int, list[tuple[str, int]]] = {i: [] for i in range(4)}
        self.bytes: dict[int, int] = {i: 0 for i in range(4)}  # what each peer was delivered, in bytes
        self.dropped: dict[str, int] = {}  # category -> subscriptions ended by a disconnect
        self.counter = 0

    @rule(peer=st.integers(0, 3), channel=CHANNELS)
    def join(self, peer: int, channel: str) -> None:
        added = self.registry.subscribe(self.peers[peer], channel)
        assert added == (channel not in self.model[peer])
        self.model[peer].add(channel)

    @rule(peer=st.integers(0, 3), channel=CHANNELS)
    def leave(self, peer: int, channel: str) -> None:
        removed = self.registry.unsubscribe(self.peers[peer], channel)
        assert removed == (channel in self.model[peer])
        self.model[peer].discard(channel)

    @rule(peer=st.integers(0, 3))
    def disconnect(self, peer: int) -> None:
        self.registry.drop(self.peers[peer])
        for channel in self.model[peer]:
            category = channel.partition(":")[0]
            self.dropped[category] = self.dropped.get(category, 0) + 1
        self.model[peer].clear()

    @rule(channel=CHANNELS, size=st.integers(0, 500))
    def broadcast(self, channel: str, size: int) -> None:
        self.counter += 1
        frame = (channel, self.counter)
        count = self.registry.deliver(channel, frame, size)
        receivers = [p for p, channels in self.model.items() if channel in channels]
        assert count == len(receivers)
        for p in receivers:
            self.expected[p].append(frame)
            self.bytes[p] += size

    @rule(channels=st.lists(st.tuples(CHANNELS, st.integers(0, 500)), min_size=1, max_size=6))
    def batch_from_the_fanout(self, channels: list[tuple[str, int]]) -> None:
        # A poll's batch: each peer gets exactly its channels' frames, in order.
        frames = []
        for channel, size in channels:
            self.counter += 1
            frames.append((channel, (channel, self.counter), size))
        self.registry.deliver_many(frames)
        for p, joined in self.model.items():
            self.expected[p].extend(frame for channel, frame, _ in frames if channel in joined)
            self.bytes[p] += sum(size for channel, _, size in frames if channel in joined)

    @invariant()
    def matches_the_model(self) -> None:
        for i, peer in enumerate(self.peers):
            assert self.registry.channels_of(peer) == frozenset(self.model[i])
            assert peer.received == self.expected[i]
            # Counted per broadcast, yet exactly what this peer was handed.
            assert self.registry.delivered(peer) == (len(self.expected[i]), self.bytes[i])
        stats = self.registry.statistics()
        assert stats.subscriptions == sum(len(c) for c in self.model.values())
        assert stats.channels == len(set().union(*self.model.values()))
        held = [channel for channels in self.model.values() for channel in channels]
        for category in ("chat", "user", "news"):
            assert self.registry.subscriptions_by_category[category] == sum(c.startswith(category) for c in held)
            assert self.registry.channels_by_category[category] == len({c for c in held if c.startswith(category)})
            assert self.registry.dropped_by_category[category] == self.dropped.get(category, 0)

    def teardown(self) -> None:
        for peer in self.peers:
            self.registry.drop(peer)
        assert self.registry.statistics().channels == 0  # nothing left behind
        assert self.registry.statistics().subscriptions == 0


TestRegistry = RegistryMachine.TestCase
TestRegistry.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
