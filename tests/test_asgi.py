"""The ASGI edge driven directly, as a server other than hypercorn would:
the plain ``websocket.send`` path, and refusals without the denial extension."""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from typing import Any

import trio

from modelence_trio import App, HubConfig, MemoryAuthenticator, Module, ServerChannel, User


class FakeServer:
    """An ASGI server in memory: what the app sends is collected, what the test feeds is received."""

    def __init__(self) -> None:
        self.to_app, self._from_test = trio.open_memory_channel[dict[str, Any]](100)
        self.sent, self.from_app = trio.open_memory_channel[dict[str, Any]](100)

    async def receive(self) -> dict[str, Any]:
        return await self._from_test.receive()

    async def send(self, message: MutableMapping[str, Any]) -> None:
        await self.sent.send(dict(message))

    async def next_frame(self) -> dict[str, Any]:
        with trio.fail_after(5):
            message = await self.from_app.receive()
        assert message["type"] == "websocket.send", message
        frame: dict[str, Any] = json.loads(message["text"])
        return frame


def scope(query: bytes = b"", extensions: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "websocket", "path": "/ws", "query_string": query, "headers": [], "extensions": extensions or {}}


async def test_plain_asgi_send_path(nursery: trio.Nursery) -> None:
    chat = ServerChannel("chat", history=None)  # no offsets: the frames are exactly these
    app = App([Module("m", channels=[chat])], config=HubConfig(heartbeat_interval=None))
    server = FakeServer()
    nursery.start_soon(app, scope(), server.receive, server.send)
    await server.to_app.send({"type": "websocket.connect"})
    assert (await server.from_app.receive())["type"] == "websocket.accept"
    assert (await server.next_frame())["type"] == "welcome"
    await server.to_app.send({"type": "websocket.receive", "text": '{"type":"join","channel":"chat:a","ref":1}'})
    assert await server.next_frame() == {"type": "joined", "channel": "chat:a", "ref": 1}
    for n in range(3):
        chat.broadcast("a", n)
    assert [(await server.next_frame())["data"] for _ in range(3)] == [0, 1, 2]
    await server.to_app.send({"type": "websocket.receive", "bytes": b"\x00"})
    assert (await server.next_frame())["code"] == "binary_frame"
    await server.to_app.send({"type": "websocket.disconnect", "code": 1000})
    with trio.fail_after(5):
        while app.hub.statistics().connections:
            await trio.sleep(0.01)
    assert app.hub.statistics().subscriptions == 0


async def test_refusal_without_the_denial_extension_closes_before_accepting(nursery: trio.Nursery) -> None:
    auth = MemoryAuthenticator()
    auth.add("good", User("1", "ann"))
    app = App([Module("m", channels=[ServerChannel("chat")])], authenticator=auth)
    server = FakeServer()
    nursery.start_soon(app, scope(b"token=bad"), server.receive, server.send)
    await server.to_app.send({"type": "websocket.connect"})
    with trio.fail_after(5):
        message = await server.from_app.receive()
    assert message == {"type": "websocket.close", "code": 1008, "reason": "invalid or expired token"}


async def test_refusal_with_the_denial_extension_is_an_http_response(nursery: trio.Nursery) -> None:
    app = App([Module("m")], authenticator=MemoryAuthenticator())
    server = FakeServer()
    nursery.start_soon(app, scope(b"token=bad", {"websocket.http.response": {}}), server.receive, server.send)
    await server.to_app.send({"type": "websocket.connect"})
    with trio.fail_after(5):
        start = await server.from_app.receive()
        body = await server.from_app.receive()
    assert (start["type"], start["status"]) == ("websocket.http.response.start", 401)
    assert body == {"type": "websocket.http.response.body", "body": b"invalid or expired token"}


async def test_oversized_message_closes_1009_even_if_the_server_allows_it(nursery: trio.Nursery) -> None:
    app = App([Module("m", channels=[ServerChannel("chat")])], config=HubConfig(max_frame_size=100))
    server = FakeServer()
    nursery.start_soon(app, scope(), server.receive, server.send)
    await server.to_app.send({"type": "websocket.connect"})
    await server.from_app.receive()  # accept
    await server.next_frame()  # welcome
    await server.to_app.send({"type": "websocket.receive", "text": "é" * 60})  # 60 characters, 120 bytes
    with trio.fail_after(5):
        message = await server.from_app.receive()
    assert (message["type"], message["code"]) == ("websocket.close", 1009)


async def test_websocket_on_another_path_is_closed(nursery: trio.Nursery) -> None:
    app = App([Module("m")])
    server = FakeServer()
    nursery.start_soon(app, {**scope(), "path": "/other"}, server.receive, server.send)
    with trio.fail_after(5):
        assert (await server.from_app.receive())["type"] == "websocket.close"
