"""The boundary between the connection core and a WebSocket implementation.

The core (``Hub.serve_connection``) speaks only to this small interface, so the
trio-websocket server, the in-memory test network and, later, ASGI share one
copy of the protocol, channel and auth logic.
"""

from __future__ import annotations

import enum
import socket
from collections.abc import Sequence
from typing import Protocol

import trio
import trio_websocket

from ._wire import Outgoing

__all__ = ["SendResult", "Transport", "TransportClosed", "TrioWebSocketTransport"]


class SendResult(enum.Enum):
    SENT = "sent"
    QUEUE = "queue"
    FLUSH = "flush"


class TransportClosed(Exception):
    """The WebSocket is closed; no more frames can be sent or received."""


class Transport(Protocol):
    async def receive(self) -> str | bytes:
        """The next message from the peer. Raises ``TransportClosed`` at the end."""
        ...

    async def send(self, frames: Sequence[Outgoing]) -> None:
        """Send frames in order, as one write where the transport can.

        Raises ``TransportClosed``. Never called concurrently with itself.
        """
        ...

    def send_nowait(self, wire: bytes) -> SendResult:
        """Write ``wire`` now if the socket takes it without blocking.

        Only called while nothing is queued, so it never overtakes earlier
        frames. ``QUEUE``: nothing was written (or the transport has no such
        path), queue the frame for ``send``. ``FLUSH``: part was written and the
        transport holds the rest; the next ``send`` (even of no frames) writes it.
        """
        ...

    async def ping(self) -> None:
        """Ping the peer and wait for its pong. Raises ``TransportClosed``."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Start the closing handshake and wait for it; a no-op once closed."""
        ...


class _RawSendStream(trio.abc.Stream):
    """A socket stream that can also send without blocking, keeping any unsent tail.

    Installed under trio-websocket, so that its own writes (pongs, close
    frames) go out after the tail of a partially written frame, never inside it.
    """

    def __init__(self, stream: trio.abc.Stream, sock: socket.socket) -> None:
        self._stream = stream
        self._sock = sock
        self.backlog = b""

    def try_send(self, data: bytes) -> int:
        try:
            return self._sock.send(data)
        except OSError:  # BlockingIOError, or a broken socket that send_all will report
            return 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.backlog:
            data, self.backlog = self.backlog + data, b""
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._stream.aclose()


class TrioWebSocketTransport:
    """A ``trio_websocket.WebSocketConnection`` seen as a :class:`Transport`.

    trio-websocket keeps the handshake, the receive side, pings and the close.
    Sends go underneath its per-message API: the frames' wire bytes (encoded
    once per broadcast, shared by every subscriber) are written to the stream
    directly, under trio-websocket's own stream lock so they never interleave
    with its control frames. While nothing is queued, ``send_nowait`` writes to
    the socket right from the broadcast call, as asyncio transports do, so a
    delivery usually costs one ``send`` system call and no task switch.
    """

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws
        self._lock: trio.StrictFIFOLock = ws._stream_lock
        self._raw: _RawSendStream | None = None
        # A plain TCP stream (or a wrapper exposing its ``socket``): the stdlib
        # socket under trio's can send without blocking. Other streams (TLS, in
        # memory) always go through ``send``.
        sock = getattr(getattr(ws._stream, "socket", None), "_sock", None)
        if isinstance(sock, socket.socket):
            self._raw = ws._stream = _RawSendStream(ws._stream, sock)
        self._stream: trio.abc.Stream = ws._stream

    async def receive(self) -> str | bytes:
        try:
            return await self._ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise TransportClosed(str(exc.reason)) from None

    async def send(self, frames: Sequence[Outgoing]) -> None:
        data = b"".join([frame.wire for frame in frames])
        if not data and not (self._raw and self._raw.backlog):
            return
        async with self._lock:
            if self._ws.closed is not None:
                raise TransportClosed(str(self._ws.closed))
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise TransportClosed(str(exc)) from None

    def send_nowait(self, wire: bytes) -> SendResult:
        raw = self._raw
        if raw is None or raw.backlog or self._lock.locked() or self._ws.closed is not None:
            return SendResult.QUEUE
        sent = raw.try_send(wire)
        if sent == len(wire):
            return SendResult.SENT
        if sent == 0:
            return SendResult.QUEUE
        raw.backlog = wire[sent:]
        return SendResult.FLUSH

    async def ping(self) -> None:
        try:
            await self._ws.ping()
        except trio_websocket.ConnectionClosed as exc:
            raise TransportClosed(str(exc.reason)) from None

    async def close(self, code: int, reason: str) -> None:
        await self._ws.aclose(code, reason)
