"""Missed-message recovery (offsets, epoch, ``join`` with ``since``), in virtual time."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import trio
import trio.testing

from modelence_trio import Backoff, Client, History, Hub, HubConfig, ServerChannel
from modelence_trio.testing import MemoryServer, open_memory_server

from .helpers import receive_json, request, send_json

BACKOFF = Backoff(initial=1, factor=2, maximum=4, jitter=0)


def chat_hub(history: History | None = History()) -> tuple[ServerChannel[Any], Hub]:
    chat: ServerChannel[Any] = ServerChannel("chat", history=history)
    return chat, Hub([chat], config=HubConfig(heartbeat_interval=None))


def recovering_client(server: MemoryServer, failures: list[str]) -> AbstractAsyncContextManager[Client]:
    """A client that notices a dead link within 8 s and reconnects 1, 2, 4 s later."""
    return server.client(heartbeat_interval=5, heartbeat_timeout=3, backoff=BACKOFF, on_recovery_failed=failures.append)


async def drop_connection(server: MemoryServer, client: Client) -> None:
    """Cut the client off; it notices by its heartbeat and reconnects (server accepting)."""
    before = client.connections
    server.partition()
    with trio.fail_after(60):
        while client.connections == before or not client.connected:
            await trio.sleep(0.1)


async def test_reconnecting_client_receives_exactly_what_it_missed(autojump_clock: trio.testing.MockClock) -> None:
    chat, hub = chat_hub()
    failures: list[str] = []
    async with (
        open_memory_server(hub) as server,
        recovering_client(server, failures) as client,
    ):
        inbox = client.messages()
        await client.join("chat:a")
        for n in range(3):
            chat.broadcast("a", n)
        assert [(await inbox.receive()).data for _ in range(3)] == [0, 1, 2]
        server.partition()
        for n in range(3, 8):  # broadcast while the client is cut off: lost on the wire
            chat.broadcast("a", n)
            await trio.sleep(1)
        with trio.fail_after(60):
            while client.connections < 2 or not client.connected:
                await trio.sleep(0.1)
        for n in range(8, 10):
            chat.broadcast("a", n)
        with trio.fail_after(10):
            assert [(await inbox.receive()).data for _ in range(7)] == list(range(3, 10))
        assert failures == []
        await trio.sleep(5)
        assert inbox.statistics().current_buffer_used == 0  # nothing twice


async def test_no_gap_and_no_duplicate_at_the_seam(autojump_clock: trio.testing.MockClock) -> None:
    chat, hub = chat_hub()
    async with (
        open_memory_server(hub) as server,
        server.client(heartbeat_interval=2, heartbeat_timeout=1, backoff=BACKOFF) as client,
        trio.open_nursery() as nursery,
    ):
        inbox = client.messages()
        await client.join("chat:a")

        async def broadcast_forever() -> None:
            n = 0
            while True:
                chat.broadcast("a", n)
                n += 1
                await trio.sleep(0.05)  # keeps flowing through the drop and the re-join

        nursery.start_soon(broadcast_forever)
        for _ in range(3):
            await trio.sleep(3)
            await drop_connection(server, client)
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
        got = []
        while True:
            try:
                got.append(inbox.receive_nowait().data)
            except trio.WouldBlock:
                break
        assert client.connections == 4
        assert got == list(range(len(got)))  # every one, in order, once
        assert len(got) > 200


@pytest.mark.parametrize("why", ["trimmed", "expired"])
async def test_recovery_fails_when_the_history_no_longer_reaches_back(
    autojump_clock: trio.testing.MockClock, why: str
) -> None:
    # Either the history holds too few messages, or it holds them too briefly.
    chat, hub = chat_hub(History(size=3, max_age=1000) if why == "trimmed" else History(size=100, max_age=10))
    failures: list[str] = []
    async with (
        open_memory_server(hub) as server,
        recovering_client(server, failures) as client,
    ):
        inbox = client.messages()
        await client.join("chat:a")
        chat.broadcast("a", "seen")
        assert (await inbox.receive()).data == "seen"
        server.accepting = False  # down for a while
        server.partition()
        if why == "trimmed":
            for n in range(5):  # more than the history holds
                chat.broadcast("a", n)
        else:
            chat.broadcast("a", "soon too old")
        await trio.sleep(12)  # past max_age
        server.accepting = True
        with trio.fail_after(60):
            while client.connections < 2 or not client.connected:
                await trio.sleep(0.1)
        await trio.sleep(1)
        assert failures == ["chat:a"]
        chat.broadcast("a", "live")
        assert (await inbox.receive()).data == "live"  # no replay before it


async def test_raw_frames_of_a_recovery(autojump_clock: trio.testing.MockClock) -> None:
    chat, hub = chat_hub()
    async with open_memory_server(hub) as server, trio.open_nursery() as nursery:
        first = await server.dial(nursery)
        await receive_json(first)
        joined = await request(first, {"type": "join", "channel": "chat:a"})
        epoch = joined["epoch"]
        chat.broadcast("a", "m1")
        last = (await receive_json(first))["offset"]
        await first.aclose()  # gone; three more are broadcast meanwhile
        for text in ("m2", "m3", "m4"):
            chat.broadcast("a", text)
        second = await server.dial(nursery)
        await receive_json(second)
        await send_json(
            second, {"type": "join", "channel": "chat:a", "since": {"offset": last, "epoch": epoch}, "ref": 1}
        )
        reply = await receive_json(second)
        assert (reply["type"], reply["recovered"], reply["ref"]) == ("joined", True, 1)
        chat.broadcast("a", "live")
        frames = [await receive_json(second) for _ in range(4)]
        assert [f["data"] for f in frames] == ["m2", "m3", "m4", "live"]
        assert [f["offset"] for f in frames] == [last + 1, last + 2, last + 3, last + 4]
        # Another epoch (another server, or one restarted): nothing replayed, and it says so.
        third = await server.dial(nursery)
        await receive_json(third)
        since = {"offset": last, "epoch": "not-" + epoch}
        reply = await request(third, {"type": "join", "channel": "chat:a", "since": since})
        assert reply["recovered"] is False
        chat.broadcast("a", "next")
        assert (await receive_json(third))["data"] == "next"
        nursery.cancel_scope.cancel()


async def test_channel_without_history_has_no_offsets(autojump_clock: trio.testing.MockClock) -> None:
    chat, hub = chat_hub(history=None)
    async with open_memory_server(hub) as server, trio.open_nursery() as nursery:
        ws = await server.dial(nursery)
        await receive_json(ws)
        reply = await request(ws, {"type": "join", "channel": "chat:a", "since": {"offset": 0, "epoch": "x"}})
        assert reply == {"type": "joined", "channel": "chat:a", "recovered": False}
        chat.broadcast("a", 1)
        assert await receive_json(ws) == {"type": "message", "channel": "chat:a", "data": 1}
        nursery.cancel_scope.cancel()


async def test_histories_of_quiet_channels_are_forgotten(autojump_clock: trio.testing.MockClock) -> None:
    chat, hub = chat_hub(History(size=10, max_age=30))
    async with open_memory_server(hub):
        for n in range(100):
            chat.broadcast(f"room{n}", n)
        assert len(hub._router.histories) == 100
        await trio.sleep(61)
        assert len(hub._router.histories) == 0


async def test_a_join_may_ask_for_the_last_messages(autojump_clock: trio.testing.MockClock) -> None:
    chat, hub = chat_hub(History(size=4))
    async with open_memory_server(hub) as server, trio.open_nursery() as nursery:
        for n in range(6):
            chat.broadcast("room", n)
        ws = await server.dial(nursery)
        await receive_json(ws)
        joined = await request(ws, {"type": "join", "channel": "chat:room", "last": 3, "ref": 1})
        assert joined["type"] == "joined"
        replay = [await receive_json(ws) for _ in range(3)]
        assert [m["data"] for m in replay] == [3, 4, 5]  # the last three, oldest first, then live
        assert replay[-1]["offset"] == joined["offset"]
        chat.broadcast("room", 6)
        assert (await receive_json(ws))["data"] == 6
        # As many as the history holds (4 here), and none with 0 or on a channel that has none.
        other = await server.dial(nursery)
        await receive_json(other)
        await request(other, {"type": "join", "channel": "chat:room", "last": 100})
        assert [(await receive_json(other))["data"] for _ in range(4)] == [3, 4, 5, 6]
        await request(other, {"type": "join", "channel": "chat:empty", "last": 5})
        chat.broadcast("room", 7)
        assert (await receive_json(other))["data"] == 7  # nothing came from chat:empty
        # `since` wins over `last`.
        third = await server.dial(nursery)
        await receive_json(third)
        since = {"offset": replay[1]["offset"], "epoch": joined["epoch"]}
        joined = await request(third, {"type": "join", "channel": "chat:room", "since": since, "last": 1})
        assert joined["recovered"] is True
        assert [(await receive_json(third))["data"] for _ in range(3)] == [5, 6, 7]
        bad = await request(third, {"type": "join", "channel": "chat:x", "last": -1, "ref": 2})
        assert (bad["type"], bad["code"]) == ("join_error", "invalid_field")
        nursery.cancel_scope.cancel()


def test_kept_messages_are_nothing_the_garbage_collector_walks() -> None:
    """A hub keeps thousands of messages; had each been a tracked object
    (a tuple per entry, as before), every collection would walk them all,
    which cost W3 about a quarter of its throughput."""
    import gc

    from modelence_trio._history import HistoryBook

    book, history = HistoryBook(), History(size=1_000, max_age=60)
    book.record("chat:warm", '"x"', history, 0.0)  # the channel's own record exists from now on
    gc.collect()
    before = len(gc.get_objects())
    for n in range(2_000):
        book.record("chat:warm", f'{{"n":{n}}}', history, float(n) / 100)
    assert len(book) == 1_000
    assert len(gc.get_objects()) - before < 50
