"""The client behaviour both clients share, as JSON test vectors (tests/vectors/client.json).

Each vector is a script of a server and an app: frames the server sends,
frames the client must send (``ref`` aside), calls the app makes, and
callbacks the app must get. This file runs them against the Python client
over a scripted in-memory server; tests/test_browser.py runs the same file
against the browser client in Chromium. A behaviour that differs between
the two fails one of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
import trio_websocket

from modelence_trio import Backoff, Client, ClientChannel, PresenceSnapshot, open_client
from modelence_trio._client import ClientMessage

VECTORS: list[dict[str, Any]] = json.loads((Path(__file__).parent / "vectors" / "client.json").read_text())
WELCOME = {"type": "welcome", "protocol": 1, "connection": "c1", "user": None, "roles": []}


class ScriptedServer:
    """Accepts the client's connections over memory streams, one at a time, for a script to drive."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._send, self.accepted = trio.open_memory_channel[trio_websocket.WebSocketConnection](10)

    async def dial(
        self, nursery: trio.Nursery, headers: list[tuple[bytes, bytes]]
    ) -> trio_websocket.WebSocketConnection:
        client_stream, server_stream = trio.testing.memory_stream_pair()
        self._nursery.start_soon(self._accept, server_stream)
        return await trio_websocket.wrap_client_stream(nursery, client_stream, "memory", "/ws")  # type: ignore[arg-type]

    async def _accept(self, stream: trio.abc.Stream) -> None:
        request = await trio_websocket.wrap_server_stream(self._nursery, stream)
        await self._send.send(await request.accept())


async def _next_frame(ws: trio_websocket.WebSocketConnection) -> dict[str, Any]:
    with trio.fail_after(5):
        frame = json.loads(await ws.get_message())
    assert isinstance(frame, dict)
    return frame


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
async def test_the_python_client_passes(vector: dict[str, Any]) -> None:
    records: list[list[Any]] = []
    async with trio.open_nursery() as nursery:
        server = ScriptedServer(nursery)

        def on_message(message: ClientMessage[Any]) -> None:
            records.append(["message", message.channel, message.data])

        def on_presence(snapshot: PresenceSnapshot) -> None:
            members = None if snapshot.members is None else [attrs.asdict(m) for m in snapshot.members]
            state = {"count": snapshot.count, "members": members, "truncated": snapshot.truncated}
            records.append(["presence", snapshot.channel, state])

        holder: list[Client] = []

        async def run_client() -> None:
            channels = [ClientChannel("chat", on_message, on_presence=on_presence)]
            backoff = Backoff(initial=0.01, maximum=0.01, jitter=0)

            def on_recovery_failed(channel: str) -> None:
                records.append(["recovery_failed", channel])

            async with open_client(
                dial=server.dial,
                channels=channels,
                heartbeat_interval=None,
                backoff=backoff,
                on_recovery_failed=on_recovery_failed,
            ) as client:
                holder.append(client)
                await trio.sleep_forever()

        async def act(step: dict[str, Any]) -> None:
            client = holder[0]
            if step["do"] == "join":
                await client.join(step["channel"], last=step.get("last"))
            elif step["do"] == "leave":
                await client.leave(step["channel"])
            elif step["do"] == "publish":
                await client.publish(step["channel"], step["data"])
                records.append(["settled", "publish", step["channel"], None])

        nursery.start_soon(run_client)
        ws: trio_websocket.WebSocketConnection | None = None
        ref: Any = None
        seen = 0
        for step in vector["steps"]:
            if "refuse" in step:  # a connection attempt that fails before the welcome
                with trio.fail_after(5):
                    refused = await server.accepted.receive()
                await refused.aclose(1011)
                continue
            if "connect" in step:
                with trio.fail_after(5):
                    ws = await server.accepted.receive()
                await ws.send_message(json.dumps(WELCOME))
                with trio.fail_after(5):
                    while not holder or not holder[0].connected:
                        await trio.sleep(0.001)
                continue
            assert ws is not None
            if "do" in step:
                nursery.start_soon(act, step)
            elif "expect" in step:
                frame = await _next_frame(ws)
                ref = frame.pop("ref", None)
                assert frame == step["expect"]
            elif "reply" in step:
                await ws.send_message(json.dumps({**step["reply"], "ref": ref}))
            elif "push" in step:
                await ws.send_message(json.dumps(step["push"]))
            elif "callback" in step:
                with trio.fail_after(5):
                    while len(records) <= seen:
                        await trio.sleep(0.001)
                assert records[seen] == step["callback"]
                seen += 1
            elif "drop" in step:
                await ws.aclose(1011 if step["drop"] is True else step["drop"])
                with trio.fail_after(5):
                    while holder[0].connected:
                        await trio.sleep(0.001)
            elif "quiet" in step:
                with trio.move_on_after(0.2):
                    unexpected = await ws.get_message()
                    raise AssertionError(f"the client sent {unexpected!r}")
        assert records[seen:] == []
        nursery.cancel_scope.cancel()
