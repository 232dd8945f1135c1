"""The README's examples, kept true by running them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from modelence_trio import App, Hub, JoinRefused, MemoryAuthenticator, MongoFanout, ServerChannel, User, open_client
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


async def test_the_metrics_health_and_dashboard_snippet(nursery: trio.Nursery) -> None:
    from .metricsparse import get, scrape

    code = readme_block("# metrics, health and the dashboard").replace("127.0.0.1:9100", "127.0.0.1:0")
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    app: App = namespace["app"]
    main, internal = await nursery.start(app.serve, "127.0.0.1", 0)
    assert (await scrape(internal + "/metrics"))("modelence_ready") == 1
    assert (await get(main + "/metrics"))[0] == 404  # there, and only there
    assert (await get(main + "/readyz"))[0] == 200
    assert (await get(main + "/_modelence/dashboard?token=alice"))[0] == 200
    assert (await get(main + "/_modelence/dashboard?token=bob"))[0] == 403


async def test_the_embedded_metrics_snippet(nursery: trio.Nursery, capsys: pytest.CaptureFixture[str]) -> None:
    code = readme_block("# metrics for an embedded hub").replace("8000", "0").replace("9100", "0")
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    with trio.move_on_after(2):
        await namespace["main"]()
    hub: Hub = namespace["hub"]
    assert "modelence_connections 0.0" in capsys.readouterr().out
    assert hub.metrics.get_sample_value("modelence_ready") == 0  # stopped with main
