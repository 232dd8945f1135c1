"""Metrics of several instances: the fan-out's (published, received, gaps,
duplicates, outage buffer, poll time, cross-instance delay, resets, peers)
and presence members by category; in memory under virtual time, and on
MongoDB (nx-27017, or MONGODB_URI) over real sockets."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from prometheus_client import generate_latest

from modelence_trio import Hub, Presence, ServerChannel
from modelence_trio._counters import Histogram
from modelence_trio._sequencer import Sequencer, Stored
from modelence_trio.testing import MemoryBus, MemoryFanout, open_memory_server

from .metricsparse import Scrape
from .test_fanout import fanout_of, instance


def metrics_of(hub: Hub) -> Scrape:
    return Scrape.parse(generate_latest(hub.metrics).decode())


def test_the_sequencer_counts_duplicates_and_remembers_its_peers() -> None:
    sequence = Sequencer("me", ordered=False, gap_timeout=1.0)
    sequence.start(0)
    step = sequence.feed(
        [
            Stored(1, "chat:a", 1, "other", "other-1"),
            Stored(2, "chat:a", 1, "other", "other-1"),  # the same broadcast stored twice
            Stored(3, "chat:a", 2, "me", "me-1"),  # our own: skipped, not a duplicate
            Stored(4, "chat:a", 3, "third", None),  # no message id: dropped as a copy
        ],
        now=5.0,
    )
    assert [item.seq for item in step.deliver] == [1]
    assert (step.duplicates, step.skipped) == (2, 0)
    assert sequence.peers == {"other": 5.0, "third": 5.0}


def test_histograms_count_into_buckets_as_prometheus_does() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 2.0):  # le is inclusive: 0.1 goes into the 0.1 bucket
        histogram.observe(value)
    snapshot = histogram.snapshot()
    assert snapshot.cumulative() == [(0.1, 2), (1.0, 3), (float("inf"), 4)]
    assert (snapshot.count, snapshot.sum) == (4, 2.65)
    assert (snapshot.quantile(0.5), snapshot.quantile(0.99)) == (0.1, float("inf"))
    assert Histogram((1.0,)).snapshot().quantile(0.5) is None


async def test_memory_fanout_metrics_and_presence_members(autojump_clock: trio.testing.MockClock) -> None:
    bus = MemoryBus()
    chat_a, chat_b = ServerChannel("chat"), ServerChannel("chat")
    room_a, room_b = (ServerChannel("room", presence=Presence(anonymous=True)) for _ in range(2))
    fanout_a = MemoryFanout(bus)
    hub_a = Hub([chat_a, room_a], fanout=fanout_a)
    hub_b = Hub([chat_b, room_b], fanout=MemoryFanout(bus))
    async with open_memory_server(hub_a) as a, open_memory_server(hub_b) as b:
        async with a.client() as ann, b.client() as bob:
            inbox = bob.messages()
            await bob.join("chat:lobby")
            await ann.join("room:1")
            await bob.join("room:1")
            chat_a.broadcast("lobby", "hi")
            assert (await inbox.receive()).data == "hi"
            await trio.sleep(1.0)  # presence windows and beats go round
            ma, mb = metrics_of(hub_a), metrics_of(hub_b)
            assert ma("modelence_presence_members", category="room") == 2  # both, on either instance
            assert mb("modelence_presence_members", category="room") == 2
            assert mb("modelence_fanout_received_total") >= 1  # the broadcast, and presence messages
            assert mb("modelence_broadcasts_total", category="chat") == 1
            assert mb("modelence_deliveries_total", category="chat") == 1
            assert ma("modelence_broadcasts_total", category="chat") == 1  # delivered here too: no subscriber
            assert ma("modelence_deliveries_total", category="chat") == 0
            assert ma("modelence_fanout_pending") == 0
            assert ma("modelence_fanout_reachable") == 1
            assert ma("modelence_fanout_duplicates_dropped_total") == 0
            assert mb("modelence_fanout_peers") == 1  # a, read from
            published = ma("modelence_fanout_published_total")

            fanout_a.cut()  # a loses its database: held, not reachable
            chat_a.broadcast("lobby", "held")
            ma = metrics_of(hub_a)
            assert ma("modelence_fanout_reachable") == 0
            assert ma("modelence_fanout_pending") == 1
            assert ma("modelence_ready") == 1  # within fanout_outage_limit
            await trio.sleep(31.0)
            assert metrics_of(hub_a)("modelence_ready") == 0  # past it
            fanout_a.heal()
            assert (await inbox.receive()).data == "held"
            ma = metrics_of(hub_a)
            assert (ma("modelence_fanout_pending"), ma("modelence_fanout_reachable"), ma("modelence_ready")) == (
                0,
                1,
                1,
            )
            assert ma("modelence_fanout_published_total") > published


async def test_mongo_fanout_metrics(mongodb_uri: str, database_name: str) -> None:
    async with instance(mongodb_uri, database_name) as (chat_a, a), instance(mongodb_uri, database_name) as (_, b):
        async with b.client() as reader:
            inbox = reader.messages()
            await reader.join("chat:x")
            for n in range(3):
                chat_a.broadcast("x", n)
            with trio.fail_after(10):
                assert [(await inbox.receive()).data for _ in range(3)] == [0, 1, 2]
            ma, mb = metrics_of(a.hub), metrics_of(b.hub)
            assert ma("modelence_fanout_published_total") == 3
            assert ma("modelence_fanout_pending") == 0
            assert mb("modelence_fanout_received_total") == 3
            assert mb("modelence_fanout_delay_seconds_count") == 3  # one per broadcast of another instance
            assert mb("modelence_fanout_delay_seconds_bucket", le="+Inf") == 3
            assert 0 <= mb("modelence_fanout_delay_seconds_sum") < 30
            assert ma("modelence_fanout_delay_seconds_count") == 0  # it read only its own
            assert mb("modelence_fanout_poll_duration_seconds_count") >= 1
            assert mb("modelence_fanout_poll_duration_seconds_sum") > 0
            for m in (ma, mb):
                assert (m("modelence_fanout_reachable"), m("modelence_fanout_resets_total")) == (1, 0)
                assert m("modelence_fanout_gaps_skipped_total") == m("modelence_fanout_duplicates_dropped_total") == 0
                assert m("modelence_fanout_dropped_total") == m("modelence_fanout_unstorable_total") == 0
            assert mb("modelence_fanout_peers") == 1
            [(peer, age)] = fanout_of(b).statistics().peers
            assert peer == fanout_of(a).origin and 0 <= age < 30
            stats: Any = fanout_of(b).statistics()
            assert stats.delivered == 3 and stats.outage_since is None
