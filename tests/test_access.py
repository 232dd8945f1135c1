"""Access control: sees the channel id; sync, async and failing checks."""

from __future__ import annotations

import logging

import pytest
import trio

from modelence_trio import (
    ChannelContext,
    Hub,
    JoinRefused,
    MemoryAuthenticator,
    ServerChannel,
    User,
)
from modelence_trio.testing import open_memory_server


@pytest.fixture
def auth() -> MemoryAuthenticator:
    auth = MemoryAuthenticator()
    auth.add("t456", User("456", "ann"))
    auth.add("t789", User("789", "bob"), roles=["admin"])
    return auth


def only_owner(ctx: ChannelContext) -> bool:
    return ctx.user is not None and ctx.user.id == ctx.channel_id


async def admins_only(ctx: ChannelContext) -> bool:
    await trio.sleep(0.5)  # e.g. a database lookup
    return "admin" in ctx.roles


def broken(ctx: ChannelContext) -> bool:
    raise RuntimeError("bug in the app's check")


async def test_only_user_456_may_join_notifications_456(auth: MemoryAuthenticator, autojump_clock: object) -> None:
    notifications = ServerChannel("notifications", can_access=only_owner)
    async with open_memory_server(Hub([notifications], authenticator=auth)) as server:
        async with server.client(token="t456") as ann, server.client(token="t789") as bob, server.client() as anon:
            await ann.join("notifications:456")
            for client in (bob, anon):
                with pytest.raises(JoinRefused) as info:
                    await client.join("notifications:456")
                assert info.value.code == "access_denied"
            await bob.join("notifications:789")
            inbox = ann.messages()
            notifications.broadcast("456", "for ann")
            assert (await inbox.receive()).data == "for ann"


async def test_async_check(auth: MemoryAuthenticator, autojump_clock: object) -> None:
    ops = ServerChannel("ops", can_access=admins_only)
    async with open_memory_server(Hub([ops], authenticator=auth)) as server:
        async with server.client(token="t789") as bob, server.client(token="t456") as ann:
            await bob.join("ops:alerts")
            with pytest.raises(JoinRefused):
                await ann.join("ops:alerts")
            assert bob.joined == {"ops:alerts"}
            assert ann.joined == frozenset()


async def test_check_that_raises_denies_and_is_logged(
    auth: MemoryAuthenticator, autojump_clock: object, caplog: pytest.LogCaptureFixture
) -> None:
    chat = ServerChannel("chat", can_access=broken)
    fine = ServerChannel("fine")
    with caplog.at_level(logging.ERROR, logger="modelence_trio"):
        async with open_memory_server(Hub([chat, fine], authenticator=auth)) as server:
            async with server.client() as client:
                with pytest.raises(JoinRefused) as info:
                    await client.join("chat:x")
                assert info.value.code == "access_denied"
                await client.join("fine:x")  # the connection carries on
    assert "bug in the app's check" in caplog.text


async def test_check_that_returns_non_bool_denies(autojump_clock: object) -> None:
    chat = ServerChannel("chat", can_access=lambda ctx: None)  # type: ignore[arg-type, return-value]
    async with open_memory_server(Hub([chat])) as server, server.client() as client:
        with pytest.raises(JoinRefused):
            await client.join("chat:x")


async def test_context_carries_everything(auth: MemoryAuthenticator, autojump_clock: object) -> None:
    seen: list[ChannelContext] = []

    def record(ctx: ChannelContext) -> bool:
        seen.append(ctx)
        return True

    chat = ServerChannel("chat", can_access=record)
    async with open_memory_server(Hub([chat], authenticator=auth)) as server, server.client(token="t789") as bob:
        await bob.join("chat:room:1")
        assert bob.welcome is not None
        connection_id = bob.welcome.connection
    (ctx,) = seen
    assert ctx.channel_id == "room:1"
    assert ctx.category == "chat"
    assert ctx.channel == "chat:room:1"
    assert ctx.user == User("789", "bob")
    assert ctx.roles == ("admin",)
    assert ctx.session == {"token": "t789"}
    assert ctx.connection_id == connection_id
