"""The command line as a real process: it serves an app by import path and
shuts down gracefully on SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import socket
import time
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket

from .helpers import expect_close, receive_json, request
from .mongo import free_port, start_nx, stop_nx, with_database
from .processes import CHAT_APP, CliServer, cli_server, run_cli, start_cli, start_hypercorn


def post_method(url: str, name: str, args: dict[str, str], token: str) -> object:
    body = json.dumps({"args": args, "authToken": token}).encode()
    req = urllib.request.Request(
        f"{url}/api/_internal/method/{name}", body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.loads(response.read())["data"]


async def next_message(ws: trio_websocket.WebSocketConnection) -> dict[str, Any]:
    """The next ``message`` frame (the chat channel has presence: its frames come too)."""
    while (frame := await receive_json(ws))["type"] != "message":
        assert frame["type"] in ("presence_state", "presence_diff"), frame
    return frame


async def test_sigterm_delivers_what_was_broadcast_then_closes_with_1001() -> None:
    server = await trio.to_thread.run_sync(start_cli)
    try:
        async with trio_websocket.open_websocket_url(server.ws_url) as ws:
            await receive_json(ws)
            assert (await request(ws, {"type": "join", "channel": "chat:lobby"}))["type"] == "joined"
            # Broadcast (through the HTTP mutation) while this reader is not reading,
            # then SIGTERM at once.
            for n in range(100):
                args = {"room": "lobby", "text": f"m{n}"}
                await trio.to_thread.run_sync(post_method, server.url, "chat.sendMessage", args, "ann")
            server.process.send_signal(signal.SIGTERM)
            texts = [(await next_message(ws))["data"]["text"] for _ in range(100)]
            assert texts == [f"m{n}" for n in range(100)]
            await expect_close(ws, 1001, timeout=10, after_presence=True)
        code, err = await trio.to_thread.run_sync(server.stop)
        assert code == 0, err
        assert "SIGTERM, shutting down" in err
    finally:
        await trio.to_thread.run_sync(server.stop, signal.SIGKILL)


START_UP_FAILURES = [
    (["nosuch:app"], "no module named 'nosuch' (looked in the current directory and the Python path)"),
    (["examples.chat.app:nope"], "module 'examples.chat.app' has no attribute 'nope'"),
    (["examples.chat.app:chat"], "examples.chat.app:chat is a ServerChannel, not a modelence_trio.App"),
    (
        ["examples/chat/app.py"],
        "examples/chat/app.py is a file name: give the module's import path, e.g. examples.chat.app:app",
    ),
    ([CHAT_APP, "--port", "abc"], "argument --port: not a port number: 'abc' (see modelence-trio --help)"),
    (
        [CHAT_APP, "--port", "70000"],
        "argument --port: 70000 is not a port number (0-65535) (see modelence-trio --help)",
    ),
    ([CHAT_APP, "--bogus"], "unrecognized arguments: --bogus (see modelence-trio --help)"),
    ([], "the following arguments are required: app (see modelence-trio --help)"),
    (
        [CHAT_APP, "--allowed-origin", "nope"],
        "allowed origin 'nope': expected scheme://host[:port], scheme://*.domain or '*'",
    ),
    ([CHAT_APP, "--ordered-fanout"], "--ordered-fanout needs a fan-out: set MONGODB_URI"),
    ([CHAT_APP, "--host", "nohost.invalid"], "cannot listen on nohost.invalid:8000: unknown host 'nohost.invalid'"),
]


@pytest.mark.parametrize(("arguments", "line"), START_UP_FAILURES, ids=[" ".join(a) for a, _ in START_UP_FAILURES])
def test_a_start_up_failure_is_one_line_and_exit_2(arguments: list[str], line: str) -> None:
    assert_one_line_failure(run_cli(*arguments), line)


def assert_one_line_failure(result: tuple[int, str, str], line: str) -> None:
    code, out, err = result
    assert "Traceback" not in out + err
    assert err == f"modelence-trio: {line}\n"
    assert code == 2


def test_help_tells_the_options_and_the_environment() -> None:
    code, out, err = run_cli("--help")
    assert (code, err) == (0, "")
    for option in ("--ordered-fanout", "--mongodb-wait", "--allowed-origin", "--port", "--host"):
        assert option in out
    for variable in ("MONGODB_URI", "MODELENCE_TRIO_ORDERED_FANOUT=1", "MODELENCE_TRIO_ALLOWED_ORIGINS"):
        assert variable in out


def test_a_busy_port_is_one_line_and_exit_2() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_one_line_failure(run_cli(CHAT_APP, "--port", str(port)), f"port {port} is in use")


def test_a_busy_metrics_bind_is_one_line_naming_it_and_exit_2() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        bind = f"127.0.0.1:{busy.getsockname()[1]}"
        result = run_cli(CHAT_APP, "--port", "0", "--metrics-bind", bind)
        assert_one_line_failure(result, f"--metrics-bind {bind}: Address already in use")


def test_an_app_that_fails_to_import_is_one_line_with_where(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("import json\nvalue = 1 / 0\n")
    line = (
        "importing broken failed: ZeroDivisionError: division by zero (broken.py, line 2) "
        "(--log-level debug: the traceback)"
    )
    assert_one_line_failure(run_cli("broken", cwd=tmp_path), line)
    code, _, err = run_cli("broken", "--log-level", "debug", cwd=tmp_path)
    assert code == 2 and "Traceback" in err and "1 / 0" in err  # asked for


async def test_the_command_waits_for_a_mongodb_that_comes_up(tmp_path: Path) -> None:
    port = free_port()
    uri = f"mongodb://127.0.0.1:{port}/app?directConnection=true"
    started: list[CliServer] = []
    database = None

    async def start() -> None:
        started.append(await trio.to_thread.run_sync(partial(start_cli, mongodb_uri=uri)))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(start)
            await trio.sleep(5)  # the command waits meanwhile (its first try gives up after 2 s)
            database = await trio.to_thread.run_sync(start_nx, port, tmp_path)
        code, err = await trio.to_thread.run_sync(started[0].stop)
        assert code == 0, err
        assert re.search(rf"^modelence-trio: waiting for MongoDB \(127\.0\.0\.1:{port}: .+\)$", err, re.MULTILINE), err
    finally:
        for server in started:
            await trio.to_thread.run_sync(server.stop, signal.SIGKILL)
        if database is not None:
            await trio.to_thread.run_sync(stop_nx, database)


def test_environment_settings_are_checked() -> None:
    assert_one_line_failure(
        run_cli(CHAT_APP, env={"MODELENCE_TRIO_ORDERED_FANOUT": "maybe"}),
        "MODELENCE_TRIO_ORDERED_FANOUT must be 1 or 0 (got 'maybe')",
    )
    assert_one_line_failure(
        run_cli(CHAT_APP, env={"MONGODB_URI": "mongodb://user:p@ss@db.example.com/app"}),
        "MONGODB_URI is not a valid MongoDB URI: Username and password must be escaped according to RFC 3986, "
        "use urllib.parse.quote_plus",
    )
    assert_one_line_failure(
        run_cli(CHAT_APP, env={"MONGODB_URI": "postgres://db/app"}),
        "MONGODB_URI is not a valid MongoDB URI: Invalid URI scheme: URI must begin with 'mongodb://' or "
        "'mongodb+srv://'",
    )


def test_an_unreachable_mongodb_is_one_line_and_exit_2() -> None:
    port = free_port()  # nothing listens there
    code, out, err = run_cli(
        CHAT_APP, "--mongodb-wait", "1", env={"MONGODB_URI": f"mongodb://127.0.0.1:{port}/?directConnection=true"}
    )
    assert "Traceback" not in out + err
    assert code == 2
    # pymongo's reason: "[Errno 111] Connection refused", or "timed out" when its last try was cut short
    unreachable = (
        rf"modelence-trio: MongoDB is unreachable \(127\.0\.0\.1:{port}: .+\); gave up after 1 s \(--mongodb-wait\)"
    )
    assert re.fullmatch(unreachable, err.splitlines()[-1]), err


async def test_sigterm_with_an_idle_client_ends_at_once_and_the_client_gets_1001() -> None:
    """Nothing queued: no wait for hypercorn's graceful timeout (the ping task
    of every closed WebSocket used to hold the server for all of it, 5 s)."""
    server = await trio.to_thread.run_sync(start_cli)
    try:
        async with trio_websocket.open_websocket_url(server.ws_url) as ws:
            await receive_json(ws)
            assert (await request(ws, {"type": "join", "channel": "chat:lobby"}))["type"] == "joined"
            assert (await receive_json(ws))["type"] == "presence_state"
            start = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            await expect_close(ws, 1001, timeout=10)
            # The client keeps TCP open meanwhile, as a browser does until the server closes it.
            code, err = await trio.to_thread.run_sync(server.wait)
            took = time.monotonic() - start
        assert code == 0, err
        assert took < 3, f"{took:.1f} s: the 5 s wait is back"  # a bound, not a speed target (about 0.1 s)
    finally:
        await trio.to_thread.run_sync(server.stop, signal.SIGKILL)


UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def read_until(stream: trio.SocketStream, end: bytes) -> bytes:
    received = b""
    with trio.fail_after(10):
        while end not in received:
            data = await stream.receive_some(65536)
            assert data, f"EOF before {end!r}: {received!r}"
            received += data
    return received


async def test_sigterm_with_a_peer_that_never_answers_ends_within_the_grace(tmp_path: Path) -> None:
    """A client that never answers the close frame is waited for until the
    shutdown grace ends, not longer (it used to be the grace, then hypercorn's
    graceful timeout on top)."""
    (tmp_path / "graceful.py").write_text(
        "from modelence_trio import App, HubConfig, Module, ServerChannel\n"
        "app = App([Module('chat', channels=[ServerChannel('chat')])],"
        " config=HubConfig(shutdown_grace=3.0, close_timeout=10.0))\n"
    )
    server = await trio.to_thread.run_sync(partial(start_cli, "graceful:app", cwd=tmp_path))
    try:
        async with await trio.open_tcp_stream("127.0.0.1", server.port) as peer:
            await peer.send_all(UPGRADE)
            await read_until(peer, b'"type":"welcome"')
            start = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            assert b"\x03\xe9server shutting down" in await read_until(peer, b"server shutting down")  # 1001
            code, err = await trio.to_thread.run_sync(server.wait)  # the close never answered
            took = time.monotonic() - start
        assert code == 0, err
        assert took < 5, f"{took:.1f} s for a 3 s grace"  # a bound: 3 s with the grace alone, 6 s before
    finally:
        await trio.to_thread.run_sync(server.stop, signal.SIGKILL)


async def test_ordered_fanout_from_the_command_line(mongodb_uri: str, database_name: str) -> None:
    """--ordered-fanout on one instance and MODELENCE_TRIO_ORDERED_FANOUT=1 on
    the other: one shared order, so a client recovers on the other instance
    what it missed (an unordered instance answers recovered: false)."""
    uri = with_database(mongodb_uri, database_name)
    a = await trio.to_thread.run_sync(partial(start_cli, mongodb_uri=uri, options=["--ordered-fanout"]))
    b = await trio.to_thread.run_sync(partial(start_cli, mongodb_uri=uri, env={"MODELENCE_TRIO_ORDERED_FANOUT": "1"}))
    try:
        async with trio_websocket.open_websocket_url(a.ws_url) as ws:
            await receive_json(ws)
            joined = await request(ws, {"type": "join", "channel": "chat:lobby"})
            await trio.to_thread.run_sync(post_method, a.url, "chat.sendMessage", {"room": "lobby", "text": "1"}, "ann")
            first = await next_message(ws)
            assert (first["epoch"], first["offset"] > joined["offset"]) == (joined["epoch"], True)
        # Offline now; a message is sent through the other instance, whose
        # watcher shows when that instance has it (it may read the sequence
        # later than the client left: an offset it has not reached yet is not recovered).
        async with trio_websocket.open_websocket_url(b.ws_url) as watcher:
            await receive_json(watcher)
            await request(watcher, {"type": "join", "channel": "chat:lobby"})
            args = {"room": "lobby", "text": "2"}
            await trio.to_thread.run_sync(post_method, b.url, "chat.sendMessage", args, "bob")
            while (await next_message(watcher))["data"]["text"] != "2":
                pass  # "1", if this instance reads the sequence later than its subscriber joined
        async with trio_websocket.open_websocket_url(b.ws_url) as ws:
            await receive_json(ws)
            since = {"offset": first["offset"], "epoch": first["epoch"]}
            rejoined = await request(ws, {"type": "join", "channel": "chat:lobby", "since": since})
            assert rejoined["recovered"] is True, (first, rejoined)
            assert (await next_message(ws))["data"]["text"] == "2"
        for server in (a, b):
            code, err = await trio.to_thread.run_sync(server.stop)
            assert code == 0, err
    finally:
        for server in (a, b):
            await trio.to_thread.run_sync(server.stop, signal.SIGKILL)


def test_sigint_stops_cleanly() -> None:
    with cli_server() as server:
        code, err = server.stop(signal.SIGINT)
        assert code == 0, err
        assert "SIGINT, shutting down" in err


async def test_plain_hypercorn_serves_the_app_and_shuts_down_with_1001() -> None:
    """Under ``hypercorn --worker-class trio``, SIGTERM reaches the app only as the
    cancellation at the end of hypercorn's graceful timeout; that still flushes and
    closes with 1001."""
    server = await trio.to_thread.run_sync(start_hypercorn, CHAT_APP, "--graceful-timeout", "1")
    try:
        async with trio_websocket.open_websocket_url(server.ws_url + "?token=ann") as ws:
            assert (await receive_json(ws))["user"]["handle"] == "ann"
            assert (await request(ws, {"type": "join", "channel": "chat:lobby"}))["type"] == "joined"
            args = {"room": "lobby", "text": "via hypercorn"}
            await trio.to_thread.run_sync(post_method, server.url, "chat.sendMessage", args, "ann")
            assert (await next_message(ws))["data"]["text"] == "via hypercorn"
            server.process.send_signal(signal.SIGTERM)
            with pytest.raises(trio_websocket.ConnectionClosed) as closed:
                await next_message(ws)  # presence diffs may come first
            reason = closed.value.reason
            assert reason is not None and reason.code == 1001
        code, err = await trio.to_thread.run_sync(server.stop)
        assert code == 0, err
    finally:
        await trio.to_thread.run_sync(server.stop, signal.SIGKILL)
