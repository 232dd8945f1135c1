"""Issue 13: the fan-out seam: a sans-IO sequencer, and three hubs on one in-memory backend."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from modelence_trio import Hub, HubConfig, ServerChannel
from modelence_trio._sequencer import Sequencer, Stored
from modelence_trio.testing import MemoryBus, MemoryFanout, open_memory_server

from .helpers import receive_json, request


def _item(seq: int, origin: str = "other", mid: str | None = None) -> Stored:
    return Stored(seq, "chat:a", {"n": seq}, origin, mid or f"{origin}-{seq}")


def test_the_sequencer_delivers_in_order_and_drops_copies_and_its_own() -> None:
    sequencer = Sequencer("me", ordered=False, gap_timeout=2.0)
    sequencer.start(10)
    step = sequencer.feed([_item(11), _item(12, origin="me"), _item(13, mid="other-11"), _item(14)], now=0.0)
    assert [item.seq for item in step.deliver] == [11, 14]  # 12 is ours, 13 a copy of 11
    assert not step.waiting and sequencer.last_seq == 14


def test_the_sequencer_waits_for_a_gap_then_gives_up() -> None:
    sequencer = Sequencer("me", ordered=True, gap_timeout=2.0)
    sequencer.start(0)
    step = sequencer.feed([_item(1), _item(3)], now=0.0)
    assert [item.seq for item in step.deliver] == [1] and step.waiting  # 2 is reserved, not visible yet
    step = sequencer.feed([_item(3)], now=1.0)
    assert step.deliver == () and step.waiting
    step = sequencer.feed([_item(2), _item(3)], now=1.5)  # it came
    assert [item.seq for item in step.deliver] == [2, 3] and step.skipped == 0
    step = sequencer.feed([_item(6, origin="me")], now=2.0)  # ordered: our own too
    assert step.waiting
    step = sequencer.feed([_item(6, origin="me")], now=4.5)
    assert [item.seq for item in step.deliver] == [6] and step.skipped == 2


async def test_three_hubs_on_one_memory_backend_act_as_one_server(autojump_clock: trio.testing.MockClock) -> None:
    bus = MemoryBus()
    chats: list[ServerChannel[Any]] = [ServerChannel("chat") for _ in range(3)]
    hubs = [Hub([chat], config=HubConfig(heartbeat_interval=None), fanout=MemoryFanout(bus)) for chat in chats]
    async with open_memory_server(hubs[0]) as a, open_memory_server(hubs[1]) as b, open_memory_server(hubs[2]) as c:
        async with a.client() as on_a, b.client() as on_b, c.client() as on_c:
            inboxes = [client.messages() for client in (on_a, on_b, on_c)]
            for client in (on_a, on_b, on_c):
                await client.join("chat:room")
            for n, chat in enumerate(chats):
                chat.broadcast("room", {"from": n})
            for inbox in inboxes:
                got = sorted([(await inbox.receive()).data["from"] for _ in range(3)])
                assert got == [0, 1, 2]  # each broadcast once, on every instance
            await trio.sleep(1)
            for inbox in inboxes:
                with pytest.raises(trio.WouldBlock):
                    inbox.receive_nowait()  # and nothing twice


async def test_ordered_memory_backend_recovers_across_instances(autojump_clock: trio.testing.MockClock) -> None:
    bus = MemoryBus()
    chat_a: ServerChannel[Any] = ServerChannel("chat")
    chat_b: ServerChannel[Any] = ServerChannel("chat")
    config = HubConfig(heartbeat_interval=None)
    hub_a = Hub([chat_a], config=config, fanout=MemoryFanout(bus, ordered=True))
    hub_b = Hub([chat_b], config=config, fanout=MemoryFanout(bus, ordered=True))
    async with open_memory_server(hub_a) as a, open_memory_server(hub_b) as b, trio.open_nursery() as nursery:
        first = await a.dial(nursery)
        await receive_json(first)  # welcome
        joined = await request(first, {"type": "join", "channel": "chat:room"})
        assert joined["epoch"] == bus.epoch
        chat_a.broadcast("room", "one")
        one = await receive_json(first)
        assert one["data"] == "one"
        await first.aclose()
        # Gone; meanwhile two more, from the other instance.
        chat_b.broadcast("room", "two")
        chat_b.broadcast("room", "three")
        await trio.sleep(0.1)
        # Back, on the other instance, asking for what followed "one".
        again = await b.dial(nursery)
        await receive_json(again)
        since = {"offset": one["offset"], "epoch": one["epoch"]}
        rejoined = await request(again, {"type": "join", "channel": "chat:room", "since": since})
        assert rejoined["type"] == "joined" and rejoined["recovered"] is True
        replay = [await receive_json(again) for _ in range(2)]
        assert [m["data"] for m in replay] == ["two", "three"]
        assert [m["offset"] for m in replay] == [one["offset"] + 1, one["offset"] + 2]
        nursery.cancel_scope.cancel()
