"""Typed payloads and method arguments: attrs classes checked on the way in,
JSON on the way out; errors that name the failing fields."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import trio

from modelence_trio import (
    App,
    ChannelContext,
    Hub,
    MemoryAuthenticator,
    MethodContext,
    MethodFailed,
    Module,
    ServerChannel,
    User,
    open_client,
)
from modelence_trio._typed import InvalidData, structure
from modelence_trio.testing import open_memory_server

from .helpers import receive_json, request
from .test_app import http


@attrs.frozen
class Author:
    handle: str


@attrs.frozen
class ChatMessage:
    text: str
    author: Author
    tags: list[str] = attrs.Factory(list)
    mood: str | None = None
    score: float = 0.0


@attrs.frozen
class SendArgs:
    room: str
    text: str
    urgent: bool = False


def test_what_comes_in_is_checked_not_coerced() -> None:
    good = structure({"text": "hi", "author": {"handle": "ann"}, "score": 3}, ChatMessage)
    assert good == ChatMessage("hi", Author("ann"), score=3.0)
    cases: list[tuple[Any, list[str]]] = [
        ({"text": 5, "author": {"handle": "ann"}}, ["text: expected str"]),
        ({"author": {}}, ["text: required field missing", "author.handle: required field missing"]),
        ({"text": "x", "author": {"handle": "a"}, "tags": ["a", 1]}, ["tags[1]: expected str"]),
        ({"text": "x", "author": {"handle": "a"}, "tags": "abc"}, ["tags: expected list"]),  # not ['a', 'b', 'c']
        ({"text": "x", "author": {"handle": "a"}, "tags": {"x": 1}}, ["tags: expected list"]),  # not its keys
        ({"text": "x", "author": {"handle": "a"}, "mood": 4}, ["mood: expected str | None"]),
        ({"text": "x", "author": {"handle": "a"}, "score": True}, ["score: expected float"]),
        ([1, 2], ["expected an object (ChatMessage), not an array"]),
        (None, ["expected an object (ChatMessage), not null"]),
    ]
    for data, problems in cases:
        with pytest.raises(InvalidData) as caught:
            structure(data, ChatMessage)
        assert caught.value.problems == problems, data


async def test_a_typed_channel_broadcasts_instances_and_checks_publishes(autojump_clock: trio.abc.Clock) -> None:
    got: list[tuple[str, ChatMessage]] = []

    async def on_message(ctx: ChannelContext, channel_id: str, message: ChatMessage) -> None:
        got.append((channel_id, message))
        chat.broadcast(channel_id, message)

    chat = ServerChannel("chat", on_message=on_message, payload=ChatMessage)
    async with open_memory_server(Hub([chat])) as server, trio.open_nursery() as nursery:
        ws = await server.dial(nursery)
        await receive_json(ws)
        await request(ws, {"type": "join", "channel": "chat:lobby"})
        chat.broadcast("lobby", ChatMessage("hi", Author("ann"), ["x"]))
        delivered = await receive_json(ws)
        assert delivered["data"] == {
            "text": "hi",
            "author": {"handle": "ann"},
            "tags": ["x"],
            "mood": None,
            "score": 0.0,
        }
        with pytest.raises(TypeError, match="broadcasts ChatMessage instances, not dict"):
            chat.broadcast("lobby", {"text": "hi"})  # type: ignore[arg-type]  # mypy refuses it too
        bad = {"type": "message", "channel": "chat:lobby", "data": {"text": 1, "author": {}}, "ref": 1}
        refused = await request(ws, bad)
        assert refused == {
            "type": "error",
            "code": "invalid_data",
            "error": "text: expected str; author.handle: required field missing",
            "ref": 1,
        }
        assert got == []
        good = {"type": "message", "channel": "chat:lobby", "data": {"text": "yo", "author": {"handle": "bob"}}}
        assert (await request(ws, {**good, "ref": 2}))["data"]["text"] == "yo"  # the handler's broadcast
        assert got == [("lobby", ChatMessage("yo", Author("bob")))]
        nursery.cancel_scope.cancel()


def send(args: SendArgs, ctx: MethodContext) -> ChatMessage:
    author = Author(ctx.user.handle if ctx.user else "guest")
    return ChatMessage(args.text, author, ["urgent"] if args.urgent else [])


async def rooms(args: dict[str, Any], ctx: MethodContext) -> list[str]:
    return sorted(args)


@pytest.fixture
async def base(nursery: trio.Nursery) -> AsyncIterator[str]:
    auth = MemoryAuthenticator()
    auth.add("t1", User("u1", "ann"))
    app = App([Module("chat", mutations={"send": send}, queries={"rooms": rooms})], authenticator=auth)
    urls = await nursery.start(app.serve, "127.0.0.1", 0)
    yield f"{urls[0]}/api/_internal/method"


async def test_typed_method_arguments_are_checked(base: str) -> None:
    ok = await http(f"{base}/chat.send", {"args": {"room": "lobby", "text": "hi", "urgent": True}, "authToken": "t1"})
    assert (ok.status, ok.json()) == (
        200,
        {"data": {"text": "hi", "author": {"handle": "ann"}, "tags": ["urgent"], "mood": None, "score": 0.0}},
    )
    missing = await http(f"{base}/chat.send", {"args": {"text": 5}})
    assert (missing.status, missing.headers["x-modelence-error-code"]) == (400, "invalid_arguments")
    assert missing.body.decode() == "invalid arguments: room: required field missing; text: expected str"
    # An untyped method still takes any object.
    assert (await http(f"{base}/chat.rooms", {"args": {"b": 1, "a": 2}})).json() == {"data": ["a", "b"]}


async def test_a_flat_body_is_refused_with_a_hint(base: str) -> None:
    flat = await http(f"{base}/chat.send", {"room": "lobby", "text": "hi"})
    assert (flat.status, flat.headers["x-modelence-error-code"]) == (400, "invalid_request")
    assert "unknown keys: 'room', 'text' (arguments go inside 'args')" in flat.body.decode()


async def test_the_python_client_calls_methods_over_the_socket(nursery: trio.Nursery) -> None:
    auth = MemoryAuthenticator()
    auth.add("t1", User("u1", "ann"))

    def broken(args: dict[str, Any], ctx: MethodContext) -> None:
        raise RuntimeError("a bug with a secret in it")

    modules = [Module("chat", mutations={"send": send, "broken": broken}, queries={"rooms": rooms})]
    app = App(modules, authenticator=auth, methods_per_second=2)
    urls = await nursery.start(app.serve, "127.0.0.1", 0)
    async with open_client(urls[0].replace("http", "ws") + "/ws", token="t1") as client:
        sent = await client.call("chat.send", SendArgs("lobby", "hi"))  # an attrs instance is sent as an object
        assert sent["author"] == {"handle": "ann"}  # the caller is the connection's user
        with pytest.raises(MethodFailed) as failed:
            await client.call("chat.send", {"room": 1})
        assert (failed.value.code, failed.value.status) == ("invalid_arguments", 400)
        assert failed.value.error == "invalid arguments: room: expected str; text: required field missing"
        with pytest.raises(MethodFailed) as failed:
            await client.call("chat.broken")
        assert (failed.value.code, failed.value.status, failed.value.error) == ("internal_error", 500, "internal error")
        with pytest.raises(MethodFailed) as failed:
            await client.call("chat.nothing")
        assert (failed.value.code, failed.value.status) == ("unknown_method", 404)
        # Two calls a second, bursts of four: the same limit as over HTTP.
        with pytest.raises(MethodFailed) as failed:
            for _ in range(5):
                await client.call("chat.rooms", {"a": 1})
        assert (failed.value.code, failed.value.status) == ("rate_limited", 429)


async def test_a_bare_hub_has_no_methods(autojump_clock: trio.abc.Clock) -> None:
    async with open_memory_server(Hub([ServerChannel("chat")])) as server, trio.open_nursery() as nursery:
        ws = await server.dial(nursery)
        await receive_json(ws)
        reply = await request(ws, {"type": "call", "method": "chat.send", "args": {}, "ref": 9})
        assert reply == {
            "type": "error",
            "error": "no method named 'chat.send'",
            "code": "unknown_method",
            "ref": 9,
            "status": 404,
        }
        bad = await request(ws, {"type": "call", "method": "not a name", "ref": 10})
        assert (bad["code"], bad["ref"]) == ("invalid_field", 10)
        nursery.cancel_scope.cancel()


async def test_anonymous_calls_over_the_socket_share_the_address_budget(nursery: trio.Nursery) -> None:
    app = App([Module("chat", queries={"rooms": rooms})], methods_per_second=1)  # bursts of two
    urls = await nursery.start(app.serve, "127.0.0.1", 0)
    ws_url = urls[0].replace("http", "ws") + "/ws"
    async with open_client(ws_url) as first, open_client(ws_url) as second:
        await first.call("chat.rooms")
        await second.call("chat.rooms")  # another connection, the same address: the same caller
        with pytest.raises(MethodFailed) as failed:
            await first.call("chat.rooms")
        assert (failed.value.code, failed.value.status) == ("rate_limited", 429)
        over_http = await http(f"{urls[0]}/api/_internal/method/chat.rooms", {"args": {}})
        assert over_http.status == 429  # and the same as over HTTP
