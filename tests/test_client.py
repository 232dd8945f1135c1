"""The Python client: requests, errors, channels, and the real-socket dialer."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from modelence_trio import (
    AuthenticationFailed,
    ChannelContext,
    ClientChannel,
    ClientClosed,
    ClientMessage,
    Hub,
    JoinRefused,
    MemoryAuthenticator,
    PublishRejected,
    RequestFailed,
    ServerChannel,
    User,
    open_client,
    serve_websocket,
)
from modelence_trio.testing import open_memory_server


def make_hub() -> tuple[Hub, ServerChannel, list[tuple[str, object]]]:
    published: list[tuple[str, object]] = []

    def on_message(ctx: ChannelContext, channel_id: str, data: object) -> None:
        if data == "spam":
            raise PublishRejected("no spam", code="spam")
        if data == "bug":
            raise ZeroDivisionError("internal detail")
        published.append((channel_id, data))
        chat.broadcast(channel_id, {"echo": data})

    chat: ServerChannel = ServerChannel("chat", on_message=on_message)
    auth = MemoryAuthenticator()
    auth.add("good", User("u1", "ann"), roles=["member"])
    return Hub([chat, ServerChannel("news")], authenticator=auth), chat, published


async def test_publish_round_trip_and_errors(autojump_clock: trio.testing.MockClock) -> None:
    hub, _chat, published = make_hub()
    async with open_memory_server(hub) as server, server.client(token="good") as client:
        assert client.welcome is not None
        assert client.welcome.user == {"id": "u1", "handle": "ann"}
        assert client.welcome.roles == ("member",)
        inbox = client.messages()
        with pytest.raises(RequestFailed) as info:
            await client.publish("chat:r", "early")
        assert info.value.code == "not_joined"
        await client.join("chat:r")
        await client.publish("chat:r", "hello")
        assert published == [("r", "hello")]
        assert await inbox.receive() == ClientMessage("chat:r", {"echo": "hello"})
        with pytest.raises(RequestFailed) as info:
            await client.publish("chat:r", "spam")
        assert (info.value.code, info.value.error) == ("spam", "no spam")
        with pytest.raises(RequestFailed) as info:
            await client.publish("chat:r", "bug")
        assert info.value.code == "handler_error"
        assert "internal detail" not in info.value.error
        assert published == [("r", "hello")]
        await client.join("news:today")
        with pytest.raises(RequestFailed) as info:
            await client.publish("news:today", 1)
        assert info.value.code == "publish_not_allowed"
        with pytest.raises(JoinRefused) as refused:
            await client.join("sports:x")
        assert (refused.value.code, refused.value.channel) == ("unknown_channel", "sports:x")
        with pytest.raises(ValueError):
            await client.join("no-colon")
        assert await client.ping() >= 0


async def test_client_channel_handlers_and_leave(autojump_clock: trio.testing.MockClock) -> None:
    hub, chat, _ = make_hub()
    seen: list[ClientMessage[dict[str, int]]] = []
    rooms: ClientChannel[dict[str, int]] = ClientChannel("chat", seen.append)
    async with open_memory_server(hub) as server, server.client(channels=[rooms]) as client:
        await rooms.join("a")
        await rooms.join("b")
        chat.broadcast("a", {"n": 1})
        chat.broadcast("b", {"n": 2})
        await rooms.leave("a")
        chat.broadcast("a", {"n": 3})
        chat.broadcast("b", {"n": 4})
        await client.ping()  # everything sent before the pong has been handled
        assert [(m.channel_id, m.data["n"]) for m in seen] == [("a", 1), ("b", 2), ("b", 4)]
        assert client.joined == {"chat:b"}
        assert hub.statistics().subscriptions == 1


async def test_unbound_client_channel_says_so() -> None:
    with pytest.raises(RuntimeError, match="not part of a client"):
        await ClientChannel("chat").join("x")


async def test_bad_token_raises_authentication_failed(autojump_clock: trio.testing.MockClock) -> None:
    hub, _, _ = make_hub()
    async with open_memory_server(hub) as server:
        with pytest.raises(AuthenticationFailed, match="invalid or expired token"):
            async with server.client(token="bad"):
                pass  # pragma: no cover


async def test_unreachable_server_raises_client_closed() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ClientClosed, match="could not connect"):
        async with open_client(f"ws://127.0.0.1:{port}/ws"):
            pass  # pragma: no cover


async def test_operations_after_close_raise(autojump_clock: trio.testing.MockClock) -> None:
    hub, _, _ = make_hub()
    async with open_memory_server(hub) as server:
        async with server.client() as client:
            pass
        with pytest.raises(ClientClosed):
            await client.join("chat:x")


async def test_exceptions_from_the_body_are_not_wrapped(autojump_clock: trio.testing.MockClock) -> None:
    hub, _, _ = make_hub()
    async with open_memory_server(hub) as server:
        with pytest.raises(KeyError):
            async with server.client():
                raise KeyError("mine")


async def test_real_socket_client(nursery: trio.Nursery) -> None:
    hub, chat, _ = make_hub()
    port = await nursery.start(serve_websocket, hub, "127.0.0.1", 0)
    async with open_client(f"ws://127.0.0.1:{port}/ws", token="good") as client:
        inbox = client.messages()
        await client.join("chat:lobby")
        for i in range(100):
            chat.broadcast("lobby", i)
        with trio.fail_after(5):
            got = [(await inbox.receive()).data for _ in range(100)]
        assert got == list(range(100))
    with pytest.raises(AuthenticationFailed):
        async with open_client(f"ws://127.0.0.1:{port}/ws", token="bad"):
            pass  # pragma: no cover
