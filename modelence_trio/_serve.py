"""The trio-websocket transport: a TCP server, and the per-stream handshake it runs."""

from __future__ import annotations

import logging
from functools import partial
from typing import NoReturn

import trio
import trio_websocket
import wsproto

from ._auth import Identity
from ._hub import Hub
from ._transport import TrioWebSocketTransport
from .protocol import HandshakeRejected

__all__ = ["serve_stream", "serve_websocket"]

logger = logging.getLogger("modelence_trio")


async def serve_websocket(
    hub: Hub,
    host: str | None = "127.0.0.1",
    port: int = 0,
    *,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve ``hub`` over WebSockets on ``host:port`` until cancelled.

    Start it with ``port = await nursery.start(serve_websocket, hub, host, 0)``:
    the call returns the bound port once the server accepts connections.
    Cancelling it stops accepting and closes every connection with 1001 after
    flushing what was queued for it (within ``HubConfig.shutdown_grace``).
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound: int = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(trio.serve_listeners, partial(serve_stream, hub), listeners, handler_nursery=handler_nursery)
        )
        await nursery.start(hub.run)
        logger.info("modelence-trio listening on ws://%s:%d", host or "0.0.0.0", bound)
        task_status.started(bound)
        await trio.sleep_forever()
    raise AssertionError("unreachable")  # pragma: no cover


async def serve_stream(hub: Hub, stream: trio.abc.Stream) -> None:
    """Run the WebSocket handshake on ``stream`` and then the hub's connection core.

    One nursery per connection, under the hub's connection shield, holds
    trio-websocket's reader task and our writer when one is needed; it is gone
    when this returns. Errors are logged and contained: one broken connection
    never takes down the server.
    """
    try:
        async with trio.open_nursery() as nursery:
            with hub.shield_connection(nursery):
                accepted = await _handshake(hub, nursery, stream)
                if accepted is not None:
                    await hub.serve_connection(*accepted, nursery)
                # trio-websocket's reader task is still running; the connection is over.
                nursery.cancel_scope.cancel()
    except Exception:
        logger.exception("connection failed")
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)


async def _handshake(
    hub: Hub, nursery: trio.Nursery, stream: trio.abc.Stream
) -> tuple[TrioWebSocketTransport, Identity] | None:
    """Accept or refuse the opening handshake. The request (and its headers)
    is not kept: it goes with this frame once the connection is accepted."""
    # What trio_websocket.wrap_server_stream does, with our transport wrapped
    # around the connection before its reader task first runs (see _transport).
    ws = trio_websocket.WebSocketConnection(
        stream, wsproto.WSConnection(wsproto.ConnectionType.SERVER), max_message_size=hub.config.max_frame_size
    )
    transport = TrioWebSocketTransport(ws)
    nursery.start_soon(transport.run_reader)
    request = None
    with trio.move_on_after(hub.config.handshake_timeout):
        request = await ws._get_request()
    if request is None:
        return None
    try:
        identity = await hub.authenticate(request.path, request.headers)
    except HandshakeRejected as exc:
        await request.reject(
            exc.status,
            extra_headers=[(b"Content-Type", b"text/plain; charset=utf-8")],
            body=exc.reason.encode(),
        )
        return None
    await request.accept()
    return transport, identity
