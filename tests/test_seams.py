"""Issue 13: contracts that hold whichever way the core is entered."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import trio
import trio.testing

from modelence_trio import (
    Hub,
    HubConfig,
    Identity,
    MemoryAuthenticator,
    ServerChannel,
    SessionChecker,
)
from modelence_trio.testing import open_memory_server


async def test_broadcast_ids_are_bounded_by_the_hubs_config(autojump_clock: trio.testing.MockClock) -> None:
    chat: ServerChannel[Any] = ServerChannel("chat")
    hub = Hub([chat], config=HubConfig(max_id_length=512, heartbeat_interval=None))
    long_id = "x" * 300  # over the protocol's default of 256, within this hub's 512
    async with open_memory_server(hub) as server, server.client() as client:
        inbox = client.messages()
        await client.join(f"chat:{long_id}")
        chat.broadcast(long_id, "hi")
        assert (await inbox.receive()).data == "hi"
        with pytest.raises(ValueError, match="longer than 512"):
            chat.broadcast("x" * 513, "too long")


async def test_broadcast_from_another_thread_reaches_trio(autojump_clock: trio.testing.MockClock) -> None:
    chat: ServerChannel[Any] = ServerChannel("chat")
    hub = Hub([chat], config=HubConfig(heartbeat_interval=None))
    async with open_memory_server(hub) as server, server.client() as client:
        inbox = client.messages()
        await client.join("chat:a")
        await trio.to_thread.run_sync(chat.broadcast, "a", {"from": "a worker thread"})
        assert (await inbox.receive()).data == {"from": "a worker thread"}
        errors: list[BaseException] = []

        def plain_thread() -> None:
            try:
                chat.broadcast("a", {"from": "a plain thread"})
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        thread = threading.Thread(target=plain_thread)
        await trio.to_thread.run_sync(thread.start)
        assert (await inbox.receive()).data == {"from": "a plain thread"}
        await trio.to_thread.run_sync(thread.join)
        assert errors == []


def test_session_checks_are_a_typed_protocol() -> None:
    class TokensOnly:
        async def authenticate(self, token: str) -> Identity | None:
            return None

    assert isinstance(MemoryAuthenticator(), SessionChecker)
    assert not isinstance(TokensOnly(), SessionChecker)


async def test_fanout_and_config_are_given_before_the_hub_runs(nursery: trio.Nursery) -> None:
    from modelence_trio import HubConfig
    from modelence_trio.testing import MemoryBus, MemoryFanout

    hub = Hub([ServerChannel("chat")])
    hub.config = HubConfig(max_id_length=40)
    with pytest.raises(ValueError):  # the channel follows the new limit
        hub.channels[0].broadcast("x" * 41, 1)
    hub.config = HubConfig(max_id_length=300)
    hub.channels[0].broadcast("x" * 300, 1)  # up, too: nobody is joined, but the id is valid
    hub.config = HubConfig(max_id_length=40)
    with pytest.raises(ValueError):  # down again: an id checked under the old limit is checked anew
        hub.channels[0].broadcast("x" * 300, 1)
    hub.use_fanout(MemoryFanout(MemoryBus()))
    with pytest.raises(RuntimeError, match="already"):
        hub.use_fanout(MemoryFanout(MemoryBus()))
    await nursery.start(hub.run)
    with pytest.raises(RuntimeError, match="before it starts"):
        hub.config = HubConfig()
    with pytest.raises(RuntimeError, match="before it starts"):
        hub.use_fanout(MemoryFanout(MemoryBus()))


async def test_broadcast_stored_without_a_fanout_returns_at_once() -> None:
    from modelence_trio.testing import MemoryBus, MemoryFanout

    chat: ServerChannel[Any] = ServerChannel("chat")
    async with open_memory_server(Hub([chat])) as server, server.client() as client:
        await client.join("chat:a")
        inbox = client.messages()
        await chat.broadcast_stored("a", "x")
        assert (await inbox.receive()).data == "x"
    other: ServerChannel[Any] = ServerChannel("chat")
    bus = MemoryBus()
    async with open_memory_server(Hub([other], fanout=MemoryFanout(bus))):
        await other.broadcast_stored("a", "y")
        assert [item.body for item in bus.stored] == ['"y"']
