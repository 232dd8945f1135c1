"""The README's examples, kept true by running them.

Every ```python block of README.md is run: by the named test that
``COVERED_BY`` lists for its first line, or else as what it is: a block with
test functions by pytest in a fresh project (as a user runs them, with the
plugin the testing extra brings), any other as a program that must end with
status 0. ```html and ```js blocks must be listed (they run in Chromium:
tests/test_browser.py). A block added without either fails
``test_every_block_is_run``.
"""

from __future__ import annotations

import importlib
import os
import re
import socket
import subprocess
import sys
import time
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
    User,
    open_client,
)
from modelence_trio.testing import open_memory_server

from .mongo import free_port
from .processes import kill_group, run_pytest, start_server
from .readme import Block, block, blocks
from .test_app import http

#: Blocks run by a named test (``module::test`` for another test module), by first line.
COVERED_BY = {
    "# myapp.py": "test_app_quickstart",
    "# presence": "test_the_presence_snippet",
    "# typed channel": "test_the_typed_channel_snippet",
    "# metrics, health and the dashboard": "test_the_metrics_health_and_dashboard_snippet",
    "# metrics for an embedded hub": "test_the_embedded_metrics_snippet",
    "# one MongoDB client for everything": "test_the_shared_mongodb_client_snippet",
    "# server.py": "test_the_embedded_server_and_the_python_client",
    "# client.py": "test_the_embedded_server_and_the_python_client",
    "<!-- a page served by the app (static_dir) -->": "test_browser::test_the_readme_page_runs_as_written",
}
#: Languages whose blocks must run; only Python ones can run without a named test.
RUN = ("python", "html", "js", "javascript")
#: How long a program block may take to end by itself.
PROGRAM_TIMEOUT = 60


def _named_test_exists(name: str) -> bool:
    module, _, test = name.rpartition("::")
    found = importlib.import_module(f"tests.{module}") if module else sys.modules[__name__]
    return callable(getattr(found, test, None))


def test_every_block_is_run() -> None:
    listed = {line: [b for b in blocks() if b.first_line == line] for line in COVERED_BY}
    assert {line: len(found) for line, found in listed.items() if len(found) != 1} == {}, (
        "COVERED_BY lists first lines that are not one README block's"
    )
    assert [name for name in COVERED_BY.values() if not _named_test_exists(name)] == []
    unrun = [str(b) for b in blocks() if b.language in RUN[1:] and b.first_line not in COVERED_BY]
    assert unrun == [], "run these blocks in a test and list them in COVERED_BY"


def _generic_blocks() -> list[Block]:
    return [b for b in blocks("python") if b.first_line not in COVERED_BY]


@pytest.mark.parametrize("readme", _generic_blocks(), ids=str)
def test_a_block_runs_as_written(readme: Block, tmp_path: Path) -> None:
    """Test functions pass under pytest in a fresh project; anything else runs to status 0."""
    if readme.defines_tests:
        name = readme.file_name if readme.file_name and readme.file_name.startswith("test_") else None
        (tmp_path / (name or f"test_readme_{readme.line}.py")).write_text(readme.code)
        code, output = run_pytest(tmp_path, "-p", "no:cacheprovider")
        assert code == 0, output
        summary = output.strip().splitlines()[-1]
        assert re.fullmatch(r"=+ \d+ passed in .*", summary), output  # nothing skipped, failed or warned
        return
    program = tmp_path / (readme.file_name or f"readme_{readme.line}.py")
    program.write_text(readme.code)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    try:
        result = subprocess.run(
            [sys.executable, str(program)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=PROGRAM_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"{readme} did not end within {PROGRAM_TIMEOUT} s: a program that serves needs a test that runs it, "
            "listed in COVERED_BY"
        ) from None
    assert result.returncode == 0, result.stdout + result.stderr


async def test_app_quickstart(nursery: trio.Nursery) -> None:
    namespace: dict[str, Any] = {}
    exec(compile(block("# myapp.py"), "README.md", "exec"), namespace)
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


async def test_the_shared_mongodb_client_snippet(mongodb_uri: str, database_name: str, nursery: trio.Nursery) -> None:
    code = block("# one MongoDB client for everything")
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
    exec(compile(block("# presence"), "README.md", "exec"), namespace)
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
    exec(compile(block("# typed channel"), "README.md", "exec"), namespace)
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


def test_the_embedded_server_and_the_python_client(tmp_path: Path) -> None:
    """The two programs as written, on a free port instead of 8000: the
    client prints what ann's notifications channel gets (the server
    broadcasts every 5 s)."""
    port = free_port()
    for name in ("server.py", "client.py"):
        (tmp_path / name).write_text(block(f"# {name}").replace("8000", str(port)))
    pipe = subprocess.PIPE
    server = subprocess.Popen(
        [sys.executable, "server.py"], cwd=tmp_path, stdout=pipe, stderr=pipe, text=True, start_new_session=True
    )
    try:
        _wait_for_port(port, server)
        client = start_server([sys.executable, "client.py"], r"(notifications:456 .*)\n", cwd=tmp_path)
        kill_group(client.process)
        client.process.communicate()
        assert client.url == "notifications:456 {'text': 'only ann sees this'}"
    finally:
        kill_group(server)
        server.communicate()


def _wait_for_port(port: int, process: subprocess.Popen[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                kill_group(process)
                raise AssertionError(f"the server did not listen on {port}: {process.communicate()}") from None
            time.sleep(0.05)


async def test_the_metrics_health_and_dashboard_snippet(nursery: trio.Nursery) -> None:
    from .metricsparse import get, scrape

    code = block("# metrics, health and the dashboard").replace("127.0.0.1:9100", "127.0.0.1:0")
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
    code = block("# metrics for an embedded hub").replace("8000", "0").replace("9100", "0")
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    with trio.move_on_after(2):
        await namespace["main"]()
    hub: Hub = namespace["hub"]
    assert "modelence_connections 0.0" in capsys.readouterr().out
    assert hub.metrics.get_sample_value("modelence_ready") == 0  # stopped with main
