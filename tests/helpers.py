from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import trio
import trio_websocket

from modelence_trio import App, Authenticator, Hub, HubConfig, Module, ServerChannel, serve_websocket


async def receive_json(ws: trio_websocket.WebSocketConnection, timeout: float = 5) -> dict[str, Any]:
    """The next frame as JSON, failing the test rather than hanging."""
    with trio.fail_after(timeout):
        message = await ws.get_message()
    assert isinstance(message, str)
    frame = json.loads(message)
    assert isinstance(frame, dict)
    return frame


async def send_json(ws: trio_websocket.WebSocketConnection, frame: dict[str, Any]) -> None:
    await ws.send_message(json.dumps(frame))


async def request(ws: trio_websocket.WebSocketConnection, frame: dict[str, Any]) -> dict[str, Any]:
    await send_json(ws, frame)
    return await receive_json(ws)


#: Every WebSocket transport; tests parametrised over it run the same scenario against each.
TRANSPORTS = ["trio-websocket", "hypercorn"]


async def start_server(
    nursery: trio.Nursery,
    transport: str,
    channels: Sequence[ServerChannel[Any]],
    *,
    authenticator: Authenticator | None = None,
    config: HubConfig = HubConfig(),
) -> tuple[str, Hub]:
    """Serve ``channels`` over real sockets with ``transport``; the ``ws://`` URL and the hub."""
    if transport == "trio-websocket":
        hub = Hub(channels, authenticator=authenticator, config=config)
        port = await nursery.start(serve_websocket, hub, "127.0.0.1", 0)
        return f"ws://127.0.0.1:{port}/ws", hub
    assert transport == "hypercorn", transport
    app = App([Module("test", channels=channels)], authenticator=authenticator, config=config)
    urls = await nursery.start(app.serve, "127.0.0.1", 0)
    return urls[0].replace("http://", "ws://") + "/ws", app.hub


async def expect_close(ws: trio_websocket.WebSocketConnection, code: int, timeout: float = 10) -> None:
    """The server closes ``ws`` with ``code`` next (after any frames already read)."""
    with trio.fail_after(timeout):
        try:
            await ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            assert exc.reason is not None
            assert exc.reason.code == code
        else:
            raise AssertionError(f"expected close {code}")
