"""The trio-websocket transport: a TCP server, and the per-stream work it runs."""

from __future__ import annotations

import logging
from functools import partial
from typing import NoReturn

import trio

from . import _trio_websocket
from ._connect import ServedConnections, connection_nursery, serve_request
from ._hub import Hub

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
    the call returns the bound port once the server accepts connections, on
    a ready hub. A hub that is not running yet is run by this server, for as
    long as it serves; to share one hub between servers (this one and an
    :class:`App`, or two ports), run it first, ``await nursery.start(hub.run)``.
    Cancelling the server stops accepting and closes its connections with
    1001 after flushing what was queued for each (within
    ``HubConfig.shutdown_grace``); a hub it did not start goes on serving
    the others.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound: int = listeners[0].socket.getsockname()[1]
    served = ServedConnections()

    async def shut_down_connections_when_cancelled() -> None:
        try:
            await trio.sleep_forever()
        finally:
            served.stop(hub)  # and handshakes still under way are refused

    async with trio.open_nursery() as nursery:
        if not hub.running:
            await nursery.start(hub.run)
        nursery.start_soon(shut_down_connections_when_cancelled)
        handler = partial(serve_stream, hub, served=served)
        await nursery.start(partial(trio.serve_listeners, handler, listeners, handler_nursery=handler_nursery))
        logger.info("modelence-trio listening on ws://%s:%d", host or "0.0.0.0", bound)
        task_status.started(bound)
        await trio.sleep_forever()
    raise AssertionError("unreachable")  # pragma: no cover


async def serve_stream(
    hub: Hub, stream: trio.abc.Stream, *, served: ServedConnections | None = None, received: bytes = b""
) -> None:
    """Run the WebSocket handshake on ``stream`` and then the hub's connection core.

    This task is the connection's only one on the fast path: it reads the
    handshake and then the messages (``FastTransport``); on the public path
    trio-websocket's reader task runs in the connection's nursery
    (:func:`connection_nursery`). :func:`serve_request` does the rest.
    Errors are logged and contained: one broken connection never takes down
    the server. ``served`` is the server's (see ``serve_request``);
    ``received``, bytes already read from ``stream`` (a router that read the
    request head to choose this transport), which are read again first.
    """
    try:
        async with connection_nursery(hub) as nursery:
            request = await _trio_websocket.open_request(
                hub.config, nursery, stream, peer_address(stream), received, hub.idle_reader
            )
            if request is not None:
                await serve_request(hub, request, served, nursery if request.reads_in_task else None)
    except Exception:
        logger.exception("connection failed")
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)


def peer_address(stream: trio.abc.Stream) -> str | None:
    """The client's IP address, for per-address limits (``None`` off TCP)."""
    sock = getattr(stream, "socket", None)
    try:
        peer = sock.getpeername() if isinstance(sock, trio.socket.SocketType) else None
    except OSError:
        return None
    return str(peer[0]) if isinstance(peer, tuple) else None
