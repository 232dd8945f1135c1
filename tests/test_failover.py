"""A MongoDB failover under the fan-out, as the client sees one: a primary that
answers ``NotWritablePrimary``, retryable errors, a write applied but reported
failed, a connection reset mid-query. There is no replica set here, so the
symptoms come from a wire-aware proxy (tests/wire_faults.py) in front of one
instance's database connection.

Each test: instance A broadcasts 0, 1, 2, ... before, during and after a burst
of faults; a client on instance B must get every number once and in order (one
publishing instance: its order is kept), and the proxy's counters must show
that the faults really happened.

What pymongo does by itself (``test_what_pymongo_retries_by_itself``, pymongo
4.20 against nx-27017, a standalone; a standalone MongoDB is the same, as
retryable writes need a replica set or mongos):

- writes (``insert``, ``findAndModify``): never retried, whatever the error:
  ``NotWritablePrimary`` (10107), a labelled ``RetryableWriteError``
  (189, 11602, 91), a write applied but reported failed, a reset before or
  after the server ran it. One command reaches the proxy; the error reaches
  the fan-out's writer (``NotPrimaryError`` or ``AutoReconnect``, both
  ``PyMongoError``), which retries with new numbers and the same message ids.
- reads (``find``): retried once, at once, on a "not primary" error or a reset
  (retryable reads need only wire version 6): two commands reach the proxy
  and the fan-out sees nothing; a second fault in a row reaches the poller.
- after a "not primary" error or a reset, pymongo marks the server Unknown and
  the next command waits for the monitor's next check (about 0.5 s here).

On a replica set (untested here) pymongo would retry a write once more, with
the same transaction number, when the error carries ``RetryableWriteError``
or is a network error, so the server applies it once: our own retry only adds
to that when pymongo's one retry fails too, or for reads.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio

from modelence_trio import Client, ServerChannel
from modelence_trio.testing import MemoryServer

from .mongo import connect
from .test_fanout import broadcast_through, fanout_of, instance
from .wire_faults import Fault, FaultKind, FaultProxy

COLLECTION = "_modelenceSocketio"
COUNTERS = "_modelenceSocketioCounters"
LABELLED = ("RetryableWriteError",)
# A reserved number not stored is given up on after gap_timeout: short, so the
# tests are quick, but long enough that a number reserved and being stored on
# a busy machine is not given up on (that would be a loss, by design).
OPTIONS = {"gap_timeout": 0.5}


@attrs.frozen
class Pair:
    """Instance A broadcasting, instance B with a client reading ``chat:shared``;
    one of them reaches the database through ``proxy``."""

    proxy: FaultProxy
    chat_a: ServerChannel[Any]
    a: MemoryServer
    b: MemoryServer
    reader: Client


@asynccontextmanager
async def pair(
    mongodb_uri: str, database_name: str, nursery: trio.Nursery, *, proxied: str = "a", **options: Any
) -> AsyncIterator[Pair]:
    proxy = FaultProxy(mongodb_uri)
    await nursery.start(proxy.run)
    through = {"a": mongodb_uri, "b": mongodb_uri, proxied: proxy.uri_through()}
    options = {**OPTIONS, **options}
    async with (
        instance(through["a"], database_name, **options) as (chat_a, a),
        instance(through["b"], database_name, **options) as (_, b),
        b.client() as reader,
    ):
        yield Pair(proxy, chat_a, a, b, reader)


async def through_faults(pair: Pair, *faults: Fault) -> list[Any]:
    """Broadcast 20 before the faults, 20 while they are armed, then wait
    until every one has fired, and 20 after; what B's client got."""

    async def arm() -> None:
        pair.proxy.add(*faults)

    async def fired() -> None:
        with trio.fail_after(20):
            for fault in faults:
                await fault.done.wait()

    return await broadcast_through(pair.chat_a, pair.reader, 20, arm, 20, fired, 20)


def stored_mids(database_name: str, mongodb_uri: str) -> collections.Counter[str]:
    """How often each message id is in the collection (more than once: a batch stored twice)."""
    with connect(mongodb_uri) as client:
        return collections.Counter(str(doc["mid"]) for doc in client[database_name][COLLECTION].find({}, {"mid": 1}))


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == []


async def assert_recovered(pair: Pair, got: list[Any]) -> None:
    assert got == list(range(60)), (fanout_of(pair.a).statistics(), fanout_of(pair.b).statistics())
    # B may read the last batch before A's writer task has taken the reply
    # (it comes through the proxy), so wait for A to count it.
    with trio.fail_after(10):
        while fanout_of(pair.a).statistics().pending:
            await trio.sleep(0.01)
    stats = fanout_of(pair.a).statistics()
    assert (stats.stored, stats.dropped) == (60, 0), stats


async def test_not_writable_primary_on_reserve_and_insert(
    mongodb_uri: str, database_name: str, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    # The primary stepped down: the counter's $inc is refused twice (nothing
    # reserved), then the insert twice (numbers reserved, never stored: a gap
    # B gives up on).
    async with pair(mongodb_uri, database_name, nursery) as p:
        got = await through_faults(
            p,
            Fault("findAndModify", collection=COUNTERS, times=2),
            Fault("insert", collection=COLLECTION, times=2),
        )
        await assert_recovered(p, got)
        assert p.proxy.injected == {"error": 4}
        assert fanout_of(p.a).statistics().write_failures >= 4
        assert fanout_of(p.b).statistics().skipped >= 2  # the numbers of the two refused inserts
    assert max(stored_mids(database_name, mongodb_uri).values()) == 1  # nothing was stored twice
    no_errors_logged(caplog)


@pytest.mark.parametrize("code", [189, 11602, 91])  # PrimarySteppedDown, InterruptedDueToReplStateChange, Shutdown...
async def test_retryable_write_errors(
    mongodb_uri: str, database_name: str, nursery: trio.Nursery, code: int, caplog: pytest.LogCaptureFixture
) -> None:
    # Labelled RetryableWriteError, as MongoDB 4.4+ labels them: pymongo does
    # not retry on a standalone (see the module's docstring); our writer does.
    async with pair(mongodb_uri, database_name, nursery) as p:
        got = await through_faults(
            p,
            Fault("findAndModify", collection=COUNTERS, code=code, labels=LABELLED),
            Fault("insert", collection=COLLECTION, code=code, labels=LABELLED),
        )
        await assert_recovered(p, got)
        assert p.proxy.injected == {"error": 2}
        assert p.proxy.seen_in["insert", COLLECTION] >= 2  # the refused insert, then ours again
        assert fanout_of(p.a).statistics().write_failures >= 2
    no_errors_logged(caplog)


@pytest.mark.parametrize("ordered", [False, True])
async def test_an_insert_applied_but_reported_failed_is_delivered_once(
    mongodb_uri: str, database_name: str, nursery: trio.Nursery, ordered: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # The batch is stored, the writer is told it was not: it stores it again
    # with new numbers and the same message ids; every reader drops the copies
    # by id. Ordered: A's own subscribers read them from the sequence too.
    async with pair(mongodb_uri, database_name, nursery, ordered=ordered) as p, p.a.client() as local:
        await local.join("chat:shared")
        local_inbox = local.messages()
        fault = Fault("insert", "apply_then_error", collection=COLLECTION, times=2, labels=LABELLED)
        got = await through_faults(p, fault)
        await assert_recovered(p, got)
        assert p.proxy.injected == {"apply_then_error": 2}
        assert [reply.get("ok") for reply in fault.replaced] == [1, 1]  # the server did store them
        assert fanout_of(p.a).statistics().write_failures >= 2
        assert fanout_of(p.b).statistics().skipped == 0, fanout_of(p.b).statistics()  # copies, not gaps
        with trio.fail_after(10):
            assert [(await local_inbox.receive()).data for _ in range(60)] == list(range(60))
    copies = stored_mids(database_name, mongodb_uri)
    assert len(copies) == 60
    assert sum(copies.values()) == 60 + sum(reply["n"] for reply in fault.replaced)  # each stored batch, twice
    no_errors_logged(caplog)


async def test_numbers_reserved_but_reported_failed_are_given_up(
    mongodb_uri: str, database_name: str, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    # The counter's $inc is applied, the writer is told it was not: those
    # numbers are never stored, and every poller gives up on them after
    # gap_timeout, losing nothing.
    async with pair(mongodb_uri, database_name, nursery) as p:
        fault = Fault("findAndModify", "apply_then_error", collection=COUNTERS, times=2)
        got = await through_faults(p, fault)
        await assert_recovered(p, got)
        assert p.proxy.injected == {"apply_then_error": 2}
        reserved_in_vain = [reply["value"]["seq"] for reply in fault.replaced]
        assert len(reserved_in_vain) == 2
        assert fanout_of(p.a).statistics().write_failures >= 2
        assert fanout_of(p.b).statistics().skipped >= 2
    assert max(stored_mids(database_name, mongodb_uri).values()) == 1
    with connect(mongodb_uri) as client:
        stored = {doc["seq"] for doc in client[database_name][COLLECTION].find({}, {"seq": 1})}
    assert not stored & set(reserved_in_vain)  # the gap
    no_errors_logged(caplog)


@pytest.mark.parametrize("kind", ["reset_before", "reset_after"])
async def test_a_connection_reset_mid_insert(
    mongodb_uri: str, database_name: str, nursery: trio.Nursery, kind: FaultKind, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: the insert never reached the server (a gap). After: it was
    # stored and the reply lost (copies, dropped by id).
    async with pair(mongodb_uri, database_name, nursery) as p:
        got = await through_faults(p, Fault("insert", kind, collection=COLLECTION, times=2))
        await assert_recovered(p, got)
        assert p.proxy.injected == {kind: 2}
        assert fanout_of(p.a).statistics().write_failures >= 2
    copies = stored_mids(database_name, mongodb_uri)
    assert len(copies) == 60
    assert (max(copies.values()) > 1) is (kind == "reset_after")
    no_errors_logged(caplog)


@pytest.mark.parametrize("kind", ["reset_before", "reset_after"])
async def test_a_connection_reset_mid_read(
    mongodb_uri: str, database_name: str, nursery: trio.Nursery, kind: FaultKind, caplog: pytest.LogCaptureFixture
) -> None:
    # B polls through the proxy. pymongo retries a read once by itself, so
    # two resets in a row reach B's poller: it reads again after what it
    # delivered, neither skipping nor repeating.
    async with pair(mongodb_uri, database_name, nursery, proxied="b") as p:
        got = await through_faults(p, Fault("find", kind, collection=COLLECTION, times=2))
        await assert_recovered(p, got)
        assert p.proxy.injected == {kind: 2}
        stats_b = fanout_of(p.b).statistics()
        assert stats_b.read_failures >= 1 and stats_b.skipped == 0, stats_b
    no_errors_logged(caplog)


@pytest.mark.parametrize("ordered", [False, True])
async def test_a_failover_with_every_fault_at_once(
    mongodb_uri: str, database_name: str, nursery: trio.Nursery, ordered: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # What a real failover mixes, on A's writes and reads at once.
    async with pair(mongodb_uri, database_name, nursery, ordered=ordered) as p:
        faults = [
            Fault("findAndModify", collection=COUNTERS),
            Fault("findAndModify", "apply_then_error", collection=COUNTERS, code=189, labels=LABELLED),
            Fault("insert", collection=COLLECTION, code=11602, labels=LABELLED),
            Fault("insert", "apply_then_error", collection=COLLECTION, code=91, labels=LABELLED),
            Fault("insert", "reset_after", collection=COLLECTION),
            Fault("find", "reset_before", collection=COLLECTION, times=2),
        ]
        got = await through_faults(p, *faults)
        await assert_recovered(p, got)
        assert p.proxy.injected == {"error": 2, "apply_then_error": 2, "reset_after": 1, "reset_before": 2}
        stats = fanout_of(p.a).statistics()
        assert stats.write_failures >= 5
        assert stats.read_failures >= 1
    no_errors_logged(caplog)


async def test_a_document_the_server_refuses_is_refused_alone(
    mongodb_uri: str, database_name: str, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    # An insert whose reply refuses one document (writeErrors: a collection
    # validator, real MongoDB's nesting limit): that broadcast is refused,
    # logged and counted once; the rest of the batch is stored and the writer
    # goes on (before: it retried the same batch for ever). The proxy applies
    # the insert, so the "refused" document is in fact there and B gets it.
    refusal = {"index": 0, "code": 121, "errmsg": "Document failed validation"}
    document = {"ok": 1.0, "n": 0, "writeErrors": [refusal]}
    async with pair(mongodb_uri, database_name, nursery) as p:
        fault = Fault("insert", "apply_then_error", collection=COLLECTION, document=document)
        got = await through_faults(p, fault)
        assert got == list(range(60))
        with trio.fail_after(10):
            while fanout_of(p.a).statistics().pending:
                await trio.sleep(0.01)
        stats = fanout_of(p.a).statistics()
        assert (stats.unstorable, stats.stored, stats.write_failures) == (1, 59, 0), stats
        assert p.proxy.seen_in["insert", COLLECTION] <= 60  # not the same batch again and again
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1 and "Document failed validation" in errors[0]


@attrs.frozen
class Case:
    fault: Fault
    write: bool


async def test_what_pymongo_retries_by_itself(mongodb_uri: str, database_name: str, nursery: trio.Nursery) -> None:
    # One fault per operation, a plain client through the proxy: how many
    # commands reached the proxy (2: pymongo retried once) and whether the
    # error reached the caller. Observed on nx-27017: see the module's docstring.
    proxy = FaultProxy(mongodb_uri)
    await nursery.start(proxy.run)
    cases = [
        Case(Fault("insert", collection="probe"), write=True),
        Case(Fault("insert", collection="probe", code=189, labels=LABELLED), write=True),
        Case(Fault("insert", "apply_then_error", collection="probe", code=11602, labels=LABELLED), write=True),
        Case(Fault("insert", "reset_before", collection="probe"), write=True),
        Case(Fault("insert", "reset_after", collection="probe"), write=True),
        Case(Fault("findAndModify", collection="probe", code=91, labels=LABELLED), write=True),
        Case(Fault("find", collection="probe"), write=False),
        Case(Fault("find", "reset_before", collection="probe"), write=False),
        Case(Fault("find", "reset_after", collection="probe"), write=False),
    ]
    client = connect(proxy.uri_through())
    try:
        probe = client[database_name]["probe"]
        await trio.to_thread.run_sync(probe.insert_one, {"warm": True})
        (server,) = client.topology_description.server_descriptions().values()

        def run(fault: Fault) -> bool:
            """Whether the operation raised."""
            operations: dict[str, Callable[[], object]] = {
                "insert": lambda: probe.insert_one({"n": 1}),
                "findAndModify": lambda: probe.find_one_and_update({"_id": "c"}, {"$inc": {"n": 1}}, upsert=True),
                "find": lambda: probe.find_one({}),
            }
            try:
                operations[fault.command]()
            except Exception:
                return True
            return False

        for case in cases:
            before = proxy.seen_in[case.fault.command, "probe"]
            proxy.add(case.fault)
            with trio.fail_after(10):
                raised = await trio.to_thread.run_sync(run, case.fault)
            attempts = proxy.seen_in[case.fault.command, "probe"] - before
            assert case.fault.fired == 1
            if case.write:
                # The retryable writes spec: once more when the error is labelled or a network error,
                # only where retryable writes are supported (not a standalone).
                retried = server.retryable_writes_supported and (
                    bool(case.fault.labels) or case.fault.kind.startswith("reset")
                )
            else:
                retried = server.retryable_reads_supported
            assert (attempts, raised) == ((2, False) if retried else (1, True)), case
    finally:
        await trio.to_thread.run_sync(client.close)  # not in this loop: endSessions goes through the proxy
