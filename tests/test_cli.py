"""The command line as a real process: it serves an app by import path and
shuts down gracefully on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from typing import Any

import trio
import trio_websocket

from .helpers import expect_close, receive_json, request
from .processes import CHAT_APP, ROOT, cli_server, start_cli, start_hypercorn


def post_method(url: str, name: str, args: dict[str, str], token: str) -> object:
    body = json.dumps({"args": args, "authToken": token}).encode()
    req = urllib.request.Request(
        f"{url}/api/_internal/method/{name}", body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.loads(response.read())["data"]


async def next_message(ws: trio_websocket.WebSocketConnection) -> dict[str, Any]:
    """The next ``message`` frame (the chat room has presence: its frames come too)."""
    while (frame := await receive_json(ws))["type"] != "message":
        assert frame["type"].startswith("presence_"), frame
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


def test_refuses_what_is_not_an_app() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "modelence_trio", "examples.chat.app:chat"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "is not a modelence_trio.App" in result.stderr


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
            await expect_close(ws, 1001, timeout=15, after_presence=True)
        code, err = await trio.to_thread.run_sync(server.stop)
        assert code == 0, err
    finally:
        await trio.to_thread.run_sync(server.stop, signal.SIGKILL)
