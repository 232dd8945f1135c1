from __future__ import annotations

import json
from typing import Any

import trio
import trio_websocket


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
