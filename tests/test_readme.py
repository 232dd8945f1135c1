"""The README's examples, kept true by running them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from modelence_trio import (
    App,
    Hub,
    JoinRefused,
    MemoryAuthenticator,
    MongoFanout,
    RequestFailed,
    ServerChannel,
    User,
    open_client,
)
from modelence_trio.testing import open_memory_server

from .test_app import http


async def test_members_only(autojump_clock: trio.testing.MockClock) -> None:
    room: ServerChannel = ServerChannel("room", can_access=lambda ctx: "member" in ctx.roles)
    auth = MemoryAuthenticator()
    auth.add("t1", User("u1", "ann"), roles=["member"])
    async with open_memory_server(Hub([room], authenticator=auth)) as server:
        async with server.client(token="t1") as ann:
            inbox = ann.messages()
            await ann.join("room:1")
            room.broadcast("1", {"text": "hi"})
            assert (await inbox.receive()).data == {"text": "hi"}


def readme_block(marker: str) -> str:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for block in text.split("```python\n")[1:]:
        code = block.split("```", 1)[0]
        if code.startswith(marker):
            return code
    raise AssertionError(f"no README block starts with {marker!r}")


async def test_app_quickstart(nursery: trio.Nursery) -> None:
    namespace: dict[str, Any] = {}
    exec(compile(readme_block("# myapp.py"), "README.md", "exec"), namespace)
    app: App = namespace["app"]
    assert app.methods == ("chat.sendMessage",)
    urls = await nursery.start(app.serve, "127.0.0.1", 0)
    async with open_client(urls[0].replace("http", "ws") + "/ws", token="secret-token") as client:
        inbox = client.messages()
        await client.join("chat:lobby")
        with pytest.raises(JoinRefused):
            await client.join("notifications:999")  # not ann's
        await client.join("notifications:456")
        reply = await http(
            f"{urls[0]}/api/_internal/method/chat.sendMessage", {"args": {"room": "lobby", "text": "hi"}}
        )
        assert reply.json() == {"data": {"ok": True}}
        assert (await inbox.receive()).data == {"text": "hi", "from": None}
        bad = await http(f"{urls[0]}/api/_internal/method/chat.sendMessage", {"args": {"room": "lobby", "text": ""}})
        assert (bad.status, bad.headers["x-modelence-error-code"]) == (400, "invalid_arguments")
        # The curl lines of the Methods section: a missing room is a 400 naming it, not a 500.
        bad = await http(f"{urls[0]}/api/_internal/method/chat.sendMessage", {"args": {"text": 5}})
        assert (bad.status, bad.body.decode()) == (
            400,
            "invalid arguments: room: required field missing; text: expected str",
        )
        assert await client.call("chat.sendMessage", {"room": "lobby", "text": "over the socket"}) == {"ok": True}
        assert (await inbox.receive()).data == {"text": "over the socket", "from": "ann"}


async def test_the_multi_instance_testing_snippet(autojump_clock: trio.testing.MockClock) -> None:
    namespace: dict[str, Any] = {}
    exec(compile(readme_block("# several instances in one test"), "README.md", "exec"), namespace)
    await namespace["test_every_instance_gets_it"](autojump_clock)


async def test_the_shared_mongodb_client_snippet(mongodb_uri: str, database_name: str, nursery: trio.Nursery) -> None:
    code = readme_block("# one MongoDB client for everything")
    code = code.replace("mongodb://127.0.0.1:27017/?directConnection=true", mongodb_uri)
    code = code.replace('get_database("myapp")', f'get_database("{database_name}")')
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    app: App = namespace["app"]
    fanout = app.hub.fanout
    assert isinstance(fanout, MongoFanout) and fanout.database is namespace["database"]  # one client, not three
    await nursery.start(app.serve, "127.0.0.1", 0)
    assert fanout.epoch is not None  # the fan-out prepared its collections through that client
    await namespace["chat"].broadcast_stored("lobby", "stored through the shared client")
    stored = namespace["database"]["_modelenceSocketio"].find_one()
    assert stored is not None and stored["data"] == "stored through the shared client"


async def test_the_presence_snippet(autojump_clock: trio.testing.MockClock) -> None:
    namespace: dict[str, Any] = {}
    exec(compile(readme_block("# presence"), "README.md", "exec"), namespace)
    auth = MemoryAuthenticator()
    auth.add("t1", User("u1", "ann"))
    async with open_memory_server(Hub([namespace["room"]], authenticator=auth)) as server:
        async with server.client(token="t1") as ann, server.client() as guest:
            await ann.join("room:lobby")
            await guest.join("room:lobby")  # sees, is not a member
            with trio.fail_after(1):
                while guest.presence("room:lobby").count < 1:
                    await trio.sleep(0.01)
            members = guest.presence("room:lobby").members
            assert members is not None and [(m.key, m.meta) for m in members] == [("u1", {"handle": "ann"})]


async def test_the_typed_channel_snippet(autojump_clock: trio.testing.MockClock) -> None:
    namespace: dict[str, Any] = {}
    exec(compile(readme_block("# typed channel"), "README.md", "exec"), namespace)
    rooms, message_class = namespace["rooms"], namespace["ChatMessage"]
    async with open_memory_server(Hub([rooms])) as server, server.client() as guest:
        inbox = guest.messages()
        await guest.join("rooms:lobby")
        await guest.publish("rooms:lobby", {"author": "anyone", "text": "hi"})
        assert (await inbox.receive()).data == {"author": "guest", "text": "hi"}
        with pytest.raises(RequestFailed, match="invalid_data: text: expected str"):
            await guest.publish("rooms:lobby", {"author": "x", "text": 5})
        rooms.broadcast("lobby", message_class(author="server", text="typed"))
        assert (await inbox.receive()).data == {"author": "server", "text": "typed"}
