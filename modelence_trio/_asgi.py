"""The ASGI transport: a WebSocket accepted by an ASGI server (hypercorn),
handed to the same connection core as the trio-websocket server.

Under ASGI the server owns the socket and its framing, so this transport has
no non-blocking fast path and cannot ping (the server may: hypercorn's
``websocket_ping_interval``). Everything else, from the handshake's
authentication to slow-consumer cut-offs, is the hub's.

Under hypercorn one thing is done below the ASGI interface: a batch of
frames, already encoded once per broadcast, is written as one block through
hypercorn's own stream writer instead of one ASGI ``websocket.send`` (and
one framing, one system call) per frame. That is most of the cost of a
delivery under ASGI. Other servers get the plain ASGI path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import trio
from hypercorn.protocol.events import Data
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream

from ._hub import Hub
from ._transport import SendResult, TransportClosed
from ._wire import Outgoing
from .protocol import CloseCode, HandshakeRejected

__all__ = ["AsgiTransport", "serve_asgi_websocket"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class AsgiTransport:
    """An accepted ASGI WebSocket seen as a ``Transport``."""

    def __init__(self, receive: Receive, send: Send) -> None:
        """Wrap an ASGI WebSocket that has been accepted."""
        self._receive = receive
        self._send = send
        self._closed = False  # disconnected, or our close was sent
        self._write = _hypercorn_writer(send)

    async def run(self, on_message: Callable[[str | bytes], Awaitable[None]]) -> None:
        while True:
            event = await self._receive()
            kind = event["type"]
            if kind == "websocket.disconnect":
                self._closed = True
                return
            if kind != "websocket.receive" or self._closed:
                continue
            text = event.get("text")
            message: str | bytes | None = text if text is not None else event.get("bytes")
            if message is None:
                continue
            await on_message(message)  # the hub applies its size limit (in bytes) to every transport

    async def send(self, frames: Sequence[Outgoing]) -> None:
        if self._write is not None:
            if self._closed:
                raise TransportClosed("the WebSocket is closed")
            await self._write(b"".join([frame.wire for frame in frames]))
            return
        for frame in frames:
            if self._closed:
                raise TransportClosed("the WebSocket is closed")
            await self._send({"type": "websocket.send", "text": frame.text})

    def send_nowait(self, wire: bytes) -> SendResult:
        return SendResult.QUEUE  # every send goes through the server's framing

    def ping_nowait(self) -> None:
        return None

    async def close(self, code: int, reason: str) -> None:
        """Send the close frame. The server completes the closing handshake
        (ASGI gives the app no part in it), so there is nothing to wait for."""
        if not self._closed:
            self._closed = True
            await self._send({"type": "websocket.close", "code": code, "reason": reason})


def _hypercorn_writer(send: Send) -> Callable[[bytes], Awaitable[None]] | None:
    """Write encoded frames through the hypercorn WebSocket stream behind ``send``.

    hypercorn hands its ``WSStream.app_send`` to the app as ``send``; the
    stream's own writer takes raw bytes (``Data`` events) and serialises them
    with hypercorn's control frames (pongs, close) under its send lock.
    Valid with or without permessage-deflate (an uncompressed message is
    always allowed), over HTTP/1.1 and HTTP/2. Tested with hypercorn 0.18;
    ``None`` (the plain ASGI path) when ``send`` is anything else.
    """
    stream = getattr(send, "__self__", None)
    if not isinstance(stream, WSStream) or stream.state != ASGIWebsocketState.CONNECTED:
        return None

    async def write(data: bytes) -> None:
        if stream.closed:
            raise TransportClosed("the WebSocket is closed")
        await stream.send(Data(stream_id=stream.stream_id, data=data))

    return write


async def serve_asgi_websocket(hub: Hub, scope: Scope, receive: Receive, send: Send) -> None:
    """Serve one ASGI ``websocket`` scope with ``hub`` until it closes.

    The handshake is authenticated before it is accepted; a refusal is an HTTP
    response with the hub's status (401, 503) where the server supports the
    ASGI denial response, and otherwise a close before accepting (which the
    server turns into 403). The connection gets its own nursery under the
    hub's shield, as with trio-websocket. The ASGI server cancels this task
    only when it shuts down (hypercorn: after ``graceful_timeout``); that
    cancellation ends this connection alone, which still flushes and closes
    with 1001. The hub itself stops with its own task (the App's lifespan).
    """
    if (await receive())["type"] != "websocket.connect":
        return
    target = scope.get("path", "/")
    if scope.get("query_string"):
        target += "?" + scope["query_string"].decode("latin-1")
    try:
        identity = await hub.authenticate(target, scope.get("headers", []))
    except HandshakeRejected as exc:
        await _refuse(scope, send, exc)
        return
    await send({"type": "websocket.accept"})
    transport = AsgiTransport(receive, send)

    async with trio.open_nursery() as guard:
        async with trio.open_nursery() as nursery:

            async def end_politely_when_cancelled() -> None:
                # The server cancels this task when it stops (hypercorn: after
                # graceful_timeout). That ends this connection, with 1001 after
                # its queue; the hub and every other connection go on.
                try:
                    await trio.sleep_forever()
                finally:
                    hub.shut_down_connection(nursery)

            guard.start_soon(end_politely_when_cancelled)
            with hub.shield_connection(nursery):
                await hub.serve_connection(transport, identity, nursery)
                nursery.cancel_scope.cancel()
        guard.cancel_scope.cancel()


async def _refuse(scope: Scope, send: Send, exc: HandshakeRejected) -> None:
    if "websocket.http.response" in scope.get("extensions", {}):
        headers = [(b"content-type", b"text/plain; charset=utf-8")]
        await send({"type": "websocket.http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": exc.reason.encode()})
    else:
        await send({"type": "websocket.close", "code": CloseCode.POLICY_VIOLATION, "reason": exc.reason})
