"""Several instances on one MongoDB (nx-27017 here, or MONGODB_URI), over real
sockets to the database: every subscriber gets every broadcast once, in order,
through restarts and outages."""

from __future__ import annotations

import collections
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from modelence_trio import Backoff, Client, Hub, ServerChannel, open_client
from modelence_trio._fanout import FanoutNotStored, FanoutOverflow, MongoFanout
from modelence_trio.testing import MemoryServer, open_memory_server

from .helpers import receive_json, request
from .mongo import connect, free_port, start_nx, stop_nx
from .proxy import Proxy


@asynccontextmanager
async def instance(uri: str, database: str, **options: Any) -> AsyncIterator[tuple[ServerChannel[Any], MemoryServer]]:
    """One server instance: its own channel object, hub, MongoDB client and fan-out.

    The client is closed in a worker thread: closing sends ``endSessions``,
    which through a proxy running in this event loop would block the loop
    (and so the proxy) until the socket timeout."""
    chat: ServerChannel[Any] = ServerChannel("chat")
    options = {"poll_interval": 0.02, "retry_maximum": 0.5, **options}
    client = connect(uri)
    try:
        fanout = MongoFanout(client[database], **options)
        async with open_memory_server(Hub([chat], fanout=fanout)) as server:
            # Ready: open_memory_server returned once the hub's run() had started.
            assert fanout.epoch is not None and fanout.statistics().last_seq >= 0
            yield chat, server
    finally:
        with trio.CancelScope(shield=True):  # closed even when the test is cancelled
            await trio.to_thread.run_sync(client.close)


def fanout_of(server: MemoryServer) -> MongoFanout:
    assert isinstance(server.hub.fanout, MongoFanout)
    return server.hub.fanout


async def collect(client: Client, count: int, into: list[Any]) -> None:
    inbox = client.messages()
    with trio.fail_after(30):
        while len(into) < count:
            into.append((await inbox.receive()).data)


async def broadcast_through(
    chat: ServerChannel[Any], reader: Client, *steps: int | Callable[[], Awaitable[object]]
) -> list[Any]:
    """Broadcast 0, 1, 2, ... to ``chat:shared``, which ``reader`` joins, in
    ``steps``: a number broadcasts that many (the first at once, then waits
    until the reader has them; later ones 20 ms apart), a function is an
    event between them (a cut, a drop, a restart). Returns what the reader
    got once it has one message per broadcast."""
    await reader.join("chat:shared")
    got: list[Any] = []
    sent = 0
    async with trio.open_nursery() as inner:
        inner.start_soon(collect, reader, sum(step for step in steps if isinstance(step, int)), got)
        for index, step in enumerate(steps):
            if not isinstance(step, int):
                await step()
                continue
            for _ in range(step):
                chat.broadcast("shared", sent)
                sent += 1
                if index:
                    await trio.sleep(0.02)
            with trio.fail_after(10):
                while not index and len(got) < sent:
                    await trio.sleep(0.01)
    return got


async def test_three_instances_broadcasting_concurrently(mongodb_uri: str, database_name: str) -> None:
    per_instance = 60
    async with (
        instance(mongodb_uri, database_name) as (chat0, s0),
        instance(mongodb_uri, database_name) as (chat1, s1),
        instance(mongodb_uri, database_name) as (chat2, s2),
    ):
        chats = [chat0, chat1, chat2]
        received: list[list[Any]] = []
        async with trio.open_nursery() as nursery:
            clients = []
            for server in (s0, s0, s1, s1, s2, s2):
                client = await nursery.start(_joined_client, server)
                clients.append(client)

            async def broadcaster(index: int) -> None:
                for n in range(per_instance):
                    chats[index].broadcast("shared", {"from": index, "n": n})
                    if random.random() < 0.3:
                        await trio.sleep(random.random() * 0.01)

            async with trio.open_nursery() as inner:  # done when every client has every message
                for client in clients:
                    received.append([])
                    inner.start_soon(collect, client, 3 * per_instance, received[-1])
                for index in range(3):
                    inner.start_soon(broadcaster, index)
            nursery.cancel_scope.cancel()
        for got in received:
            counts = collections.Counter((m["from"], m["n"]) for m in got)
            assert len(got) == 3 * per_instance
            assert set(counts.values()) == {1}, "a message arrived twice"
            for origin in range(3):
                assert [m["n"] for m in got if m["from"] == origin] == list(range(per_instance))


async def _joined_client(server: MemoryServer, task_status: trio.TaskStatus[Client] = trio.TASK_STATUS_IGNORED) -> None:
    async with server.client() as client:
        await client.join("chat:shared")
        task_status.started(client)
        await trio.sleep_forever()


async def test_a_late_or_restarted_instance_does_not_replay(mongodb_uri: str, database_name: str) -> None:
    async with instance(mongodb_uri, database_name) as (chat_a, a):
        for n in range(5):
            chat_a.broadcast("shared", {"old": n})
        with trio.fail_after(10):
            while fanout_of(a).statistics().stored < 5:
                await trio.sleep(0.01)
        for _ in range(2):  # a late start, then a restart
            async with instance(mongodb_uri, database_name) as (_, b), b.client() as client:
                inbox = client.messages()
                await client.join("chat:shared")
                await trio.sleep(0.3)  # several polls: nothing old may come
                chat_a.broadcast("shared", {"new": True})
                with trio.fail_after(10):
                    assert (await inbox.receive()).data == {"new": True}
                assert fanout_of(b).statistics().delivered == 1


async def test_database_outage_loses_nothing_within_the_bound(
    mongodb_uri: str, database_name: str, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="modelence_trio.fanout")
    proxy = Proxy(mongodb_uri)
    await nursery.start(proxy.run)
    async with (
        instance(proxy.uri_through(), database_name) as (chat_a, a),
        instance(mongodb_uri, database_name) as (_, b),
        b.client() as reader,
        a.client() as local,
    ):
        await reader.join("chat:shared")
        await local.join("chat:shared")
        local_inbox = local.messages()
        got: list[Any] = []
        async with trio.open_nursery() as inner:
            inner.start_soon(collect, reader, 80, got)
            for n in range(20):
                chat_a.broadcast("shared", n)
            with trio.fail_after(10):
                while len(got) < 20:
                    await trio.sleep(0.01)
            proxy.cut()  # MongoDB unreachable from instance A for about 3 s
            for n in range(20, 80):
                chat_a.broadcast("shared", n)
                await trio.sleep(0.05)
            stats = fanout_of(a).statistics()
            assert stats.pending > 0
            assert stats.write_failures > 0
            assert len(got) == 20  # nothing got through meanwhile
            proxy.restore()
        assert got == list(range(80))  # in order, none lost, none twice
        assert fanout_of(a).statistics().dropped == 0
        assert fanout_of(a).statistics().pending == 0
        assert "MongoDB unreachable" in caplog.text
        assert "reachable again" in caplog.text
        # A's own subscriber had every message at once, outage or not.
        with trio.fail_after(5):
            assert [(await local_inbox.receive()).data for _ in range(80)] == list(range(80))


async def test_past_the_bound_broadcast_fails_loudly(
    mongodb_uri: str, database_name: str, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = Proxy(mongodb_uri)
    await nursery.start(proxy.run)
    async with instance(proxy.uri_through(), database_name, max_pending=5) as (chat, a), a.client() as local:
        inbox = local.messages()
        await local.join("chat:x")
        proxy.cut()
        await trio.sleep(0.2)
        for n in range(5):
            chat.broadcast("x", n)
        with pytest.raises(FanoutOverflow):
            chat.broadcast("x", 5)
        assert fanout_of(a).statistics().dropped == 1
        assert "fan-out buffer full" in caplog.text
        # Local subscribers still got all six.
        with trio.fail_after(5):
            assert [(await inbox.receive()).data for _ in range(6)] == list(range(6))
        proxy.restore()


def balanced_client(target: list[MemoryServer], failures: list[str]) -> AbstractAsyncContextManager[Client]:
    """A client behind a load balancer: each (re)connection goes to ``target[0]``."""

    async def dial(nursery: trio.Nursery, headers: list[tuple[bytes, bytes]]) -> Any:
        return await target[0].dial(nursery, headers)

    return open_client(
        dial=dial,
        heartbeat_interval=0.5,
        heartbeat_timeout=0.5,
        backoff=Backoff(0.1, 0.5, jitter=0),
        on_recovery_failed=failures.append,
    )


async def test_ordered_fanout_recovers_on_another_instance(mongodb_uri: str, database_name: str) -> None:
    """With ``ordered=True`` offsets are the shared sequence: a client cut off from
    one instance reconnects to another and gets exactly what it missed."""
    async with (
        instance(mongodb_uri, database_name, ordered=True) as (chat1, one),
        instance(mongodb_uri, database_name, ordered=True) as (chat2, two),
    ):
        target = [one]
        failures: list[str] = []
        async with balanced_client(target, failures) as client:
            inbox = client.messages()
            await client.join("chat:shared")
            for n in range(3):
                chat1.broadcast("shared", n)
            with trio.fail_after(10):
                assert [(await inbox.receive()).data for _ in range(3)] == [0, 1, 2]
            one.accepting = False
            one.partition()  # instance one is gone for this client
            target[0] = two
            for n in range(3, 9):  # broadcast on both while the client is away
                (chat1 if n % 2 else chat2).broadcast("shared", n)
            with trio.fail_after(15):
                missed = [(await inbox.receive()).data for _ in range(6)]
            # All of them, once; in the shared sequence, which keeps each instance's own order.
            assert sorted(missed) == list(range(3, 9))
            assert [n for n in missed if n % 2] == [3, 5, 7]
            assert [n for n in missed if not n % 2] == [4, 6, 8]
            assert client.connections == 2
            assert failures == []
            chat1.broadcast("shared", "live")
            with trio.fail_after(10):
                assert (await inbox.receive()).data == "live"


async def test_ordered_fanout_delivers_own_broadcasts_in_sequence_with_offsets(
    mongodb_uri: str, database_name: str
) -> None:
    async with (
        instance(mongodb_uri, database_name, ordered=True) as (chat, server),
        trio.open_nursery() as nursery,
    ):
        ws = await server.dial(nursery)
        await receive_json(ws)
        joined = await request(ws, {"type": "join", "channel": "chat:a"})
        assert joined["epoch"] == fanout_of(server).epoch
        for n in range(3):
            chat.broadcast("a", n)
        frames = [await receive_json(ws) for _ in range(3)]
        assert [f["data"] for f in frames] == [0, 1, 2]
        offsets = [f["offset"] for f in frames]
        assert offsets == sorted(offsets) and offsets[0] > joined["offset"]
        assert {f["epoch"] for f in frames} == {joined["epoch"]}
        nursery.cancel_scope.cancel()


async def test_ordered_fanout_recovers_from_the_collection_on_a_later_instance(
    mongodb_uri: str, database_name: str
) -> None:
    """The instance the client reconnects to started after the client's last
    message: what it never saw comes from the collection (the history within its TTL)."""
    async with instance(mongodb_uri, database_name, ordered=True) as (chat1, one):
        target = [one]
        failures: list[str] = []
        async with balanced_client(target, failures) as client:
            inbox = client.messages()
            await client.join("chat:shared")
            chat1.broadcast("shared", 0)
            with trio.fail_after(10):
                assert (await inbox.receive()).data == 0
            one.accepting = False
            one.partition()
            for n in range(1, 4):  # before instance two exists
                chat1.broadcast("shared", n)
            with trio.fail_after(10):
                while fanout_of(one).statistics().stored < 4:
                    await trio.sleep(0.01)
            async with instance(mongodb_uri, database_name, ordered=True) as (chat2, two):
                chat2.broadcast("shared", 4)  # and one after it started
                target[0] = two
                with trio.fail_after(15):
                    assert [(await inbox.receive()).data for _ in range(4)] == [1, 2, 3, 4]
                assert failures == []
                assert client.connections == 2


async def test_ordered_fanout_encodes_its_own_broadcasts_once(
    mongodb_uri: str, database_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hub encodes the data once; the instance's own copy read back from the
    # collection is delivered with that text, not encoded again from BSON.
    import modelence_trio._backend as backend
    from modelence_trio.protocol import encode_data as real

    encoded: list[str] = []

    def counting(channel: str, data: Any) -> str:
        encoded.append(channel)
        return real(channel, data)

    monkeypatch.setattr(backend, "encode_data", counting)
    async with (
        instance(mongodb_uri, database_name, ordered=True) as (chat, server),
        trio.open_nursery() as nursery,
    ):
        ws = await server.dial(nursery)
        await receive_json(ws)
        await request(ws, {"type": "join", "channel": "chat:a"})
        for n in range(5):
            chat.broadcast("a", {"n": n})
        assert [(await receive_json(ws))["data"] for _ in range(5)] == [{"n": n} for n in range(5)]
        assert encoded == []
        nursery.cancel_scope.cancel()


async def test_a_broadcast_bson_cannot_hold_is_refused_alone(
    mongodb_uri: str, database_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    # 2**70 is JSON but not BSON: it reaches local subscribers, is logged and
    # counted, and the instance (and the next broadcast) carry on.
    async with (
        instance(mongodb_uri, database_name) as (chat0, s0),
        instance(mongodb_uri, database_name) as (_, s1),
        trio.open_nursery() as nursery,
    ):
        here, there = await s0.dial(nursery), await s1.dial(nursery)
        for ws in (here, there):
            await receive_json(ws)
            await request(ws, {"type": "join", "channel": "chat:a"})
        chat0.broadcast("a", {"n": 2**70})
        chat0.broadcast("a", {"n": 1})
        assert (await receive_json(here))["data"] == {"n": 2**70}
        assert (await receive_json(here))["data"] == {"n": 1}
        with trio.fail_after(10):
            assert (await receive_json(there))["data"] == {"n": 1}
        assert fanout_of(s0).statistics().unstorable == 1
        assert fanout_of(s0).statistics().stored == 1
        assert "cannot be stored in MongoDB" in caplog.text
        nursery.cancel_scope.cancel()


def _drop(uri: str, database_name: str) -> None:
    """What a restarted in-memory server, a restore or a new cluster look like:
    the collection, the counter and the epoch are gone."""
    with connect(uri) as client:
        client.drop_database(database_name)


async def test_a_reset_database_loses_nothing(
    mongodb_uri: str, database_name: str, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    # Broadcasts made before, while and after the database is reset under an
    # instance that is cut off from it: each is delivered exactly once on the
    # other instance; the reset is logged and counted, the indexes made again.
    caplog.set_level(logging.WARNING, logger="modelence_trio.fanout")
    proxy = Proxy(mongodb_uri)
    await nursery.start(proxy.run)
    fast = {"probe_interval": 0.2}
    async with (
        instance(proxy.uri_through(), database_name, **fast) as (chat_a, a),
        instance(mongodb_uri, database_name, **fast) as (_, b),
        b.client() as reader,
    ):

        async def cut() -> None:
            proxy.cut()

        async def drop_and_restore() -> None:
            await trio.to_thread.run_sync(_drop, mongodb_uri, database_name)
            proxy.restore()

        # 20 before, 20 held by A while MongoDB is unreachable, 20 after.
        got = await broadcast_through(chat_a, reader, 20, cut, 20, drop_and_restore, 20)
        assert sorted(got) == list(range(60))  # none lost, none twice
        assert got[:20] == list(range(20))
        for server in (a, b):
            assert fanout_of(server).statistics().resets == 1
        assert fanout_of(a).epoch == fanout_of(b).epoch  # both on the new sequence
        assert caplog.text.count("the database was reset") == 2
    with connect(mongodb_uri) as client:
        indexes = client[database_name]["_modelenceSocketio"].index_information()
    by_key = {info["key"][0][0]: info for info in indexes.values()}  # names differ between servers
    assert by_key["seq"].get("unique") is True
    assert "createdAt" in by_key  # what the purge deletes by


async def test_a_removed_counter_is_repaired_without_loss(
    mongodb_uri: str, database_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The counter document alone is removed: numbers would be handed out again
    # and the inserts refused as taken. The counter is moved past the collection.
    caplog.set_level(logging.WARNING, logger="modelence_trio.fanout")
    async with (
        instance(mongodb_uri, database_name, probe_interval=0.2) as (chat_a, _),
        instance(mongodb_uri, database_name, probe_interval=0.2) as (_, b),
        b.client() as reader,
    ):

        async def remove_counter() -> None:
            with connect(mongodb_uri) as client:
                client[database_name]["_modelenceSocketioCounters"].delete_one({"_id": "_modelenceSocketio"})

        got = await broadcast_through(chat_a, reader, 20, remove_counter, 20)
        assert sorted(got) == list(range(40))
        assert fanout_of(b).statistics().resets == 0  # the sequence went on: not a reset


async def test_a_counter_removed_after_expiry_is_not_reused(
    mongodb_uri: str, database_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The counter is removed after every stored broadcast expired: the next
    # reservation hands out numbers the other instance read long ago. Its probe
    # is too slow to notice (a minute), so only the writer's own check can
    # keep it from skipping them: the numbers are refused, the counter moved
    # past them and the epoch renewed (nobody can tell how far others read).
    caplog.set_level(logging.WARNING, logger="modelence_trio.fanout")
    slow = {"probe_interval": 60.0}
    async with (
        instance(mongodb_uri, database_name, **slow) as (chat_a, a),
        instance(mongodb_uri, database_name, **slow) as (_, b),
        b.client() as reader,
    ):
        old_epoch = fanout_of(a).epoch

        async def expire_all_and_remove_counter() -> None:
            with connect(mongodb_uri) as client:
                client[database_name]["_modelenceSocketio"].delete_many({})
                client[database_name]["_modelenceSocketioCounters"].delete_one({"_id": "_modelenceSocketio"})

        got = await broadcast_through(chat_a, reader, 20, expire_all_and_remove_counter, 20)
        assert got == list(range(40))  # none skipped, in order
        assert fanout_of(b).statistics().skipped == 0
        assert "the sequence counter went back" in caplog.text
        with connect(mongodb_uri) as client:
            epoch = client[database_name]["_modelenceSocketioCounters"].find_one({"_id": "epoch"})
        assert epoch is not None and epoch["value"] != old_epoch


async def test_a_missing_counter_at_start_up_does_not_replay(mongodb_uri: str, database_name: str) -> None:
    # An instance that starts while the counter document is missing starts
    # after the highest stored number, not at 0: the stored broadcasts are old.
    async with instance(mongodb_uri, database_name) as (chat_a, a):
        for n in range(20):
            chat_a.broadcast("shared", n)
        with trio.fail_after(10):
            while fanout_of(a).statistics().stored < 20:
                await trio.sleep(0.01)
    with connect(mongodb_uri) as client:
        client[database_name]["_modelenceSocketioCounters"].delete_one({"_id": "_modelenceSocketio"})
    async with instance(mongodb_uri, database_name) as (_, late):
        assert fanout_of(late).statistics().last_seq == 20
        await trio.sleep(0.3)  # several polls
        assert fanout_of(late).statistics().delivered == 0


async def test_a_restored_older_epoch_is_renewed(mongodb_uri: str, database_name: str) -> None:
    # A backup of an older time is restored: its epoch is another, older one.
    # Adopting it would let offsets of that time pass for offsets of this one;
    # the instances renew it instead, once (both end on the same new epoch).
    fast = {"probe_interval": 0.2}
    async with (
        instance(mongodb_uri, database_name, **fast) as (_, a),
        instance(mongodb_uri, database_name, **fast) as (_, b),
    ):
        current = fanout_of(a).epoch
        with connect(mongodb_uri) as client:
            counters = client[database_name]["_modelenceSocketioCounters"]
            counters.replace_one({"_id": "epoch"}, {"_id": "epoch", "value": "restored", "since": 1.0})
        with trio.fail_after(10):
            while not fanout_of(a).statistics().resets or not fanout_of(b).statistics().resets:
                await trio.sleep(0.05)
        await trio.sleep(0.5)  # more checks: no second reset
        assert fanout_of(a).epoch == fanout_of(b).epoch
        assert fanout_of(a).epoch not in (current, "restored")
        assert fanout_of(a).statistics().resets == fanout_of(b).statistics().resets == 1


async def test_a_stopping_instance_stores_what_it_still_holds(mongodb_uri: str, database_name: str) -> None:
    # A graceful stop right after a burst: what the writer had not stored yet
    # is stored before the hub ends (within drain_timeout), not dropped.
    async with instance(mongodb_uri, database_name) as (_, b), b.client() as reader:
        await reader.join("chat:shared")
        got: list[Any] = []
        async with trio.open_nursery() as inner:
            inner.start_soon(collect, reader, 300, got)
            async with instance(mongodb_uri, database_name) as (chat_a, a):
                for n in range(300):
                    chat_a.broadcast("shared", n)
                held = fanout_of(a).statistics().pending
            assert fanout_of(a).statistics().pending == 0 and fanout_of(a).statistics().stored == 300
        assert got == list(range(300))
        assert held > 0  # the stop did come while broadcasts were held


async def test_a_restarted_wire_server_loses_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The README's recipe, as the outside run did it: an in-memory wire server
    # of its own, stopped and started again under two instances.
    caplog.set_level(logging.WARNING, logger="modelence_trio.fanout")
    port = free_port()
    uri = f"mongodb://127.0.0.1:{port}/?directConnection=true"
    servers = [start_nx(port, tmp_path)]
    try:
        fast = {"probe_interval": 0.2}
        async with (
            instance(uri, "modelence", **fast) as (chat_a, a),
            instance(uri, "modelence", **fast) as (_, b),
            b.client() as reader,
        ):

            async def stop() -> None:
                await trio.to_thread.run_sync(stop_nx, servers[0])

            async def start() -> None:
                servers[0] = await trio.to_thread.run_sync(start_nx, port, tmp_path)

            got = await broadcast_through(chat_a, reader, 20, stop, 20, start, 20)  # 20 held: the server is down
            assert sorted(got) == list(range(60))
            assert fanout_of(a).statistics().resets == fanout_of(b).statistics().resets == 1
    finally:
        stop_nx(servers[0])


async def test_after_a_reset_old_offsets_are_not_recovered(mongodb_uri: str, database_name: str) -> None:
    # Ordered: the offsets name positions in the old sequence, which is gone; a
    # client re-joining with one is told so (recovered: false), and the new
    # sequence's messages carry the new epoch.
    async with (
        instance(mongodb_uri, database_name, ordered=True, probe_interval=0.2) as (chat, server),
        trio.open_nursery() as nursery,
    ):
        ws = await server.dial(nursery)
        await receive_json(ws)
        await request(ws, {"type": "join", "channel": "chat:a"})
        chat.broadcast("a", "before")
        before = await receive_json(ws)
        old = {"offset": before["offset"], "epoch": before["epoch"]}
        await trio.to_thread.run_sync(_drop, mongodb_uri, database_name)
        with trio.fail_after(10):
            while fanout_of(server).statistics().resets == 0:
                await trio.sleep(0.05)
        chat.broadcast("a", "after")
        after = await receive_json(ws)
        assert after["data"] == "after"
        assert after["epoch"] == fanout_of(server).epoch != old["epoch"]
        other = await server.dial(nursery)
        await receive_json(other)
        joined = await request(other, {"type": "join", "channel": "chat:a", "since": old})
        assert joined["recovered"] is False and joined["epoch"] == after["epoch"]
        nursery.cancel_scope.cancel()


async def test_broadcast_stored_returns_once_the_broadcast_is_stored(
    mongodb_uri: str, database_name: str, nursery: trio.Nursery
) -> None:
    proxy = Proxy(mongodb_uri)
    await nursery.start(proxy.run)
    async with instance(proxy.uri_through(), database_name) as (chat, a), a.client() as local:
        await local.join("chat:a")
        inbox = local.messages()
        await chat.broadcast_stored("a", 1)  # reachable: stored at once
        proxy.cut()
        done = trio.Event()

        async def durable() -> None:
            await chat.broadcast_stored("a", 2)
            done.set()

        nursery.start_soon(durable)
        with trio.fail_after(5):
            assert [(await inbox.receive()).data for _ in range(2)] == [1, 2]  # local subscribers: at once
        await trio.sleep(0.5)
        assert not done.is_set() and fanout_of(a).statistics().pending == 1  # held, so not acknowledged
        proxy.restore()
        with trio.fail_after(10):
            await done.wait()
        with connect(mongodb_uri) as client:
            stored = [doc["data"] for doc in client[database_name]["_modelenceSocketio"].find().sort("seq", 1)]
        assert stored == [1, 2]
        with pytest.raises(FanoutNotStored, match="BSON"):
            await chat.broadcast_stored("a", 2**70)


@pytest.mark.parametrize("ttl_index", [False, True])
async def test_stored_broadcasts_expire_after_the_ttl(mongodb_uri: str, database_name: str, ttl_index: bool) -> None:
    # By the instances' own purge (default) or by MongoDB's TTL index.
    async with instance(mongodb_uri, database_name, ttl=1, ttl_index=ttl_index) as (chat, _):
        await chat.broadcast_stored("a", "old")
        with connect(mongodb_uri) as client:
            collection = client[database_name]["_modelenceSocketio"]
            assert collection.count_documents({}) == 1
            by_key = {info["key"][0][0]: info for info in collection.index_information().values()}
            assert ("expireAfterSeconds" in by_key["createdAt"]) is ttl_index
            with trio.fail_after(70):  # MongoDB's TTL monitor runs once a minute
                while collection.find_one({}) is not None:  # a read (nx-27017 purges TTL collections on reads)
                    await trio.sleep(0.2)


async def test_a_slow_database_loses_nothing_and_duplicates_nothing(
    mongodb_uri: str, database_name: str, nursery: trio.Nursery
) -> None:
    # Every round trip to MongoDB takes 100 ms more, for both instances; then,
    # for a moment, longer than the client's socket timeout allows (timed-out
    # writes that did succeed are stored twice: the copies are dropped).
    proxy_a, proxy_b = Proxy(mongodb_uri, delay=0.05), Proxy(mongodb_uri, delay=0.05)
    for proxy in (proxy_a, proxy_b):
        await nursery.start(proxy.run)
    async with (
        instance(proxy_a.uri_through(), database_name) as (chat_a, a),
        instance(proxy_b.uri_through(), database_name) as (_, b),
        b.client() as reader,
    ):
        await reader.join("chat:shared")
        got: list[Any] = []
        async with trio.open_nursery() as inner:
            inner.start_soon(collect, reader, 150, got)
            for n in range(100):
                chat_a.broadcast("shared", n)
                await trio.sleep(0.005)
            proxy_a.delay = proxy_b.delay = 4.0  # round trips longer than socketTimeoutMS (3 s here)
            for n in range(100, 150):
                chat_a.broadcast("shared", n)
                await trio.sleep(0.01)
            await trio.sleep(5)
            proxy_a.delay = proxy_b.delay = 0.05
        assert got == list(range(150))  # in order, none lost, none twice
        stats_a, stats_b = fanout_of(a).statistics(), fanout_of(b).statistics()
        assert stats_a.pending == 0
        assert stats_a.write_failures + stats_b.read_failures > 0  # the timeouts did happen


async def test_checks_under_traffic_see_no_reset(
    mongodb_uri: str, database_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The database checks run while the writer reserves and stores: a healthy
    # database is never taken for a reset or a counter left behind.
    caplog.set_level(logging.WARNING, logger="modelence_trio.fanout")
    async with (
        instance(mongodb_uri, database_name, probe_interval=0.005) as (chat_a, a),
        instance(mongodb_uri, database_name, probe_interval=0.005) as (_, b),
        b.client() as reader,
    ):
        await reader.join("chat:shared")
        got: list[Any] = []
        async with trio.open_nursery() as inner:
            inner.start_soon(collect, reader, 400, got)
            for n in range(400):
                chat_a.broadcast("shared", n)
                if n % 4 == 0:
                    await trio.sleep(0.002)
        assert got == list(range(400))
        assert fanout_of(a).statistics().resets == fanout_of(b).statistics().resets == 0
        assert "behind" not in caplog.text and "reset" not in caplog.text


async def test_a_dropped_collection_gets_its_indexes_again(
    mongodb_uri: str, database_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The collection alone is dropped (the counter and epoch stay): the
    # sequence goes on, nothing is lost, and the indexes are made again.
    caplog.set_level(logging.WARNING, logger="modelence_trio.fanout")
    async with (
        instance(mongodb_uri, database_name, probe_interval=0.2) as (chat_a, _),
        instance(mongodb_uri, database_name, probe_interval=0.2) as (_, b),
        b.client() as reader,
    ):

        async def drop_collection() -> None:
            with connect(mongodb_uri) as client:
                client[database_name].drop_collection("_modelenceSocketio")

        async def indexes_made_again() -> None:
            with trio.fail_after(10):
                while "indexes" not in caplog.text:
                    await trio.sleep(0.05)

        got = await broadcast_through(chat_a, reader, 20, drop_collection, 20, indexes_made_again)
        assert got == list(range(40))
        assert fanout_of(b).statistics().resets == 0
        with connect(mongodb_uri) as client:
            indexes = client[database_name]["_modelenceSocketio"].index_information()
        by_key = {info["key"][0][0]: info for info in indexes.values()}
        assert by_key["seq"].get("unique") is True and "createdAt" in by_key


async def test_a_broadcast_larger_than_a_document_is_refused_alone(mongodb_uri: str, database_name: str) -> None:
    # BSON documents hold at most 16 MiB: the hub carries on, and says so to broadcast_stored.
    async with instance(mongodb_uri, database_name) as (chat, a):
        with pytest.raises(FanoutNotStored, match="16 MiB"):
            await chat.broadcast_stored("a", "x" * (17 * 1024 * 1024))
        await chat.broadcast_stored("a", "small")
        assert fanout_of(a).statistics().unstorable == 1
