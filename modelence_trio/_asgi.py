"""The ASGI transport: a WebSocket accepted by an ASGI server (hypercorn),
handed to the same connection core as the trio-websocket server.

Under ASGI the server owns the socket and its framing, so this transport has
no non-blocking fast path and cannot ping (the server may: hypercorn's
``websocket_ping_interval``). Everything else, from the handshake's
authentication to slow-consumer cut-offs, is the hub's. Under hypercorn,
``_hypercorn`` reaches below the interface for speed and bounded input;
every other server, or a hypercorn whose internals differ, gets plain ASGI.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import trio

from . import _hypercorn
from ._config import HubConfig
from ._connect import ServedConnections, connection_nursery, serve_request
from ._hub import Hub
from ._transport import SendResult, TransportClosed
from ._wire import Outgoing
from .protocol import CloseCode

__all__ = ["AsgiRequest", "AsgiTransport", "serve_asgi_websocket"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class AsgiTransport:
    """An ASGI WebSocket seen as a ``Transport``."""

    def __init__(
        self, receive: Receive, send: Send, max_message_bytes: int, close_timeout: float, nursery: trio.Nursery
    ) -> None:
        """Wrap an ASGI WebSocket before it is accepted (see :meth:`accept`);
        ``nursery`` is the connection's (the transport's), for the watchdog."""
        self._receive = receive
        self._send = send
        self._close_timeout = close_timeout
        self._nursery = nursery
        self._lock = trio.StrictFIFOLock()
        self._writing = False  # a write is under way
        self._writes = 0  # writes finished
        self._watching = False
        self._torn = False
        self._ending = False
        self._closed = False  # disconnected, or our close was sent
        self._disconnected = trio.Event()
        self._reading = False
        self._reader = trio.CancelScope()
        self.overflowed = False
        #: The close code the server reported (``websocket.disconnect``), or 1009 after an overflow.
        self.close_code: int | None = None
        self._fast = _hypercorn.attach(send, max_message_bytes, self._on_overflow)

    async def accept(self) -> None:
        if self._fast is not None:
            self._fast.before_accept()
        await self._send({"type": "websocket.accept"})

    def _on_overflow(self) -> None:
        # hypercorn has sent 1009 and drops what follows: the connection is over.
        self.overflowed = self._closed = True
        self.close_code = CloseCode.MESSAGE_TOO_BIG
        self._reader.cancel()

    async def run(self, on_message: Callable[[str | bytes], Awaitable[None]]) -> None:
        self._reading = True
        try:
            with self._reader:
                while not self._disconnected.is_set():
                    message = await self._next_message()
                    if message is not None and not self._closed:
                        await on_message(message)  # the hub applies its size limit (in bytes) to every transport
            if self.overflowed:  # hypercorn closed with 1009: wait for the peer's answer, then TCP closes
                with trio.move_on_after(self._close_timeout):
                    while not self._disconnected.is_set():
                        await self._next_message()
        finally:
            self._reading = False
            self._bound_writes()  # the connection is ending; its writer must not outlive it

    async def _next_message(self) -> str | bytes | None:
        event = await self._receive()
        kind = event["type"]
        if kind == "websocket.disconnect":
            self._closed = True
            if self.close_code is None:
                code = event.get("code")
                self.close_code = code if isinstance(code, int) else None
            self._disconnected.set()
            return None
        if kind != "websocket.receive":
            return None
        text = event.get("text")
        message: str | bytes | None = text if text is not None else event.get("bytes")
        return message

    async def send(self, frames: Sequence[Outgoing]) -> None:
        """Write ``frames``; a frame is never cut short by cancellation.

        The server's stream cannot say how much of a cancelled write went
        out, and hypercorn shields its socket writes anyway, so a write is
        never cancelled. Once the connection is ending, one under way gets
        ``close_timeout`` to finish; then a watchdog aborts TCP (under
        hypercorn: the blocked write fails at once) and the connection ends
        without a close frame.
        """
        async with self._lock:
            if self._closed or self._torn or (self._fast is not None and self._fast.closed):
                raise TransportClosed("the WebSocket is closed")
            if self._fast is not None:
                await self._write(self._fast.write(b"".join([frame.wire for frame in frames])))
            else:
                for frame in frames:
                    await self._write(self._send({"type": "websocket.send", "text": frame.text}))

    async def _write(self, write: Awaitable[None]) -> None:
        self._writing = True
        if self._ending:
            self._arm_watchdog()
        try:
            with trio.CancelScope(shield=True):
                await write
        finally:
            self._writing = False
            self._writes += 1
        if self._torn:
            raise TransportClosed("a write did not finish within close_timeout")
        await trio.lowlevel.checkpoint_if_cancelled()

    def _arm_watchdog(self) -> None:
        """The connection is ending with a write under way: watch it, in the
        transport's nursery (a task only then, none per write)."""
        if not self._watching:
            self._watching = True
            self._nursery.start_soon(self._watchdog, self._writes)

    async def _watchdog(self, write: int) -> None:
        await trio.sleep(self._close_timeout)
        self._watching = False
        if not self._writing:
            return
        if self._writes != write:  # that one finished; another is under way
            self._arm_watchdog()
            return
        self._torn = True  # no close frame can follow: abort TCP (under hypercorn; plain ASGI cannot)
        if self._fast is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(self._close_timeout):
                await self._fast.abort()

    def send_nowait(self, wire: bytes) -> SendResult:
        return SendResult.QUEUE  # every send goes through the server's framing

    def ping_nowait(self) -> None:
        return None

    holds_data = False  # hypercorn pings by itself

    async def close(self, code: int, reason: str) -> None:
        """Send the close frame once a write under way has finished (within
        ``close_timeout``), then wait for the peer's answer (the caller bounds
        the wait): the server closes TCP once it has it, or once the app
        returns. After a torn write, TCP is aborted without a close frame."""
        self._bound_writes()
        async with self._lock:  # the write under way ends first
            if self._torn:
                return  # aborted
            if not self._closed:
                self._closed = True
                if self._fast is not None:
                    self._fast.stop_reading()
                await self._send({"type": "websocket.close", "code": code, "reason": reason})
        await self.wait_disconnected()

    def _bound_writes(self) -> None:
        """The connection is ending: a write under way, or any later one,
        gets ``close_timeout`` to finish."""
        self._ending = True
        if self._writing:
            self._arm_watchdog()

    async def wait_disconnected(self) -> None:
        if self._reading:
            await self._disconnected.wait()  # run() sees it
            return
        while not self._disconnected.is_set():
            await self._next_message()  # dropped: the connection is closing


async def serve_asgi_websocket(hub: Hub, scope: Scope, receive: Receive, send: Send) -> None:
    """Serve one ASGI ``websocket`` scope with ``hub`` until it closes.

    The handshake goes the one connection path (``serve_request``): a
    refusal is an HTTP response with the hub's status where the server
    supports the ASGI denial response, and otherwise a close before
    accepting (which the server turns into 403). The ASGI server cancels
    this task only when it shuts down (hypercorn: after
    ``graceful_timeout``); that cancellation ends this connection alone,
    which still flushes and closes with 1001. The hub itself stops with its
    own task (the App's lifespan).
    """
    if (await receive())["type"] != "websocket.connect":
        return
    served = ServedConnections()
    async with trio.open_nursery() as guard, connection_nursery(hub) as connection:
        request = AsgiRequest(scope, receive, send, hub.config, connection)

        async def end_politely_when_cancelled() -> None:
            try:
                await trio.sleep_forever()
            finally:
                if served.nurseries:
                    served.stop(hub)
                else:  # not being served (yet): nothing to flush
                    served.stopping = True
                    connection.cancel_scope.cancel()

        guard.start_soon(end_politely_when_cancelled)
        await serve_request(hub, request, served)
        guard.cancel_scope.cancel()


class AsgiRequest:
    """An ASGI ``websocket`` scope, its ``websocket.connect`` received, as a
    ``ConnectionRequest``."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, config: HubConfig, nursery: trio.Nursery) -> None:
        target = scope.get("path", "/")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        client = scope.get("client")
        self.target: str = target
        self.headers: list[tuple[bytes, bytes]] = list(scope.get("headers", []))
        self.client = str(client[0]) if client else None
        self._scope, self._receive, self._send, self._config = scope, receive, send, config
        self._nursery = nursery

    async def accept(self) -> AsgiTransport:
        self.headers = []
        config = self._config
        transport = AsgiTransport(self._receive, self._send, config.max_frame_size, config.close_timeout, self._nursery)
        await transport.accept()
        return transport

    async def reject(self, status: int, body: str) -> None:
        self.headers = []
        if "websocket.http.response" in self._scope.get("extensions", {}):
            headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"x-content-type-options", b"nosniff")]
            await self._send({"type": "websocket.http.response.start", "status": status, "headers": headers})
            await self._send({"type": "websocket.http.response.body", "body": body.encode()})
        else:
            await self._send({"type": "websocket.close", "code": CloseCode.POLICY_VIOLATION, "reason": body})
