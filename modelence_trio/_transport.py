"""The boundary between the connection core and a WebSocket implementation.

The core (``Hub.serve_connection``) speaks only to this small interface, so the
trio-websocket server, the in-memory test network and, later, ASGI share one
copy of the protocol, channel and auth logic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import trio_websocket

__all__ = ["Transport", "TransportClosed", "TrioWebSocketTransport"]


class TransportClosed(Exception):
    """The WebSocket is closed; no more frames can be sent or received."""


class Transport(Protocol):
    async def receive(self) -> str | bytes:
        """The next message from the peer. Raises ``TransportClosed`` at the end."""
        ...

    async def send(self, frames: Sequence[str]) -> None:
        """Send text frames in order. Raises ``TransportClosed``."""
        ...

    async def ping(self) -> None:
        """Ping the peer and wait for its pong. Raises ``TransportClosed``."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Start the closing handshake and wait for it; a no-op once closed."""
        ...


class TrioWebSocketTransport:
    """A ``trio_websocket.WebSocketConnection`` seen as a :class:`Transport`."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws

    async def receive(self) -> str | bytes:
        try:
            return await self._ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise TransportClosed(str(exc.reason)) from None

    async def send(self, frames: Sequence[str]) -> None:
        try:
            for frame in frames:
                await self._ws.send_message(frame)
        except trio_websocket.ConnectionClosed as exc:
            raise TransportClosed(str(exc.reason)) from None

    async def ping(self) -> None:
        try:
            await self._ws.ping()
        except trio_websocket.ConnectionClosed as exc:
            raise TransportClosed(str(exc.reason)) from None

    async def close(self, code: int, reason: str) -> None:
        await self._ws.aclose(code, reason)
