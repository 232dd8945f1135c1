"""One connection path for every transport, from handshake to close.

A transport turns its server's opening handshake into a
:class:`ConnectionRequest` (the request's target, headers and client
address; ``accept`` and ``reject``), much as trio-websocket's
``WebSocketRequest`` does, and hands it to :func:`serve_request`:
authentication, the origin policy, the connection limits and the
connection's nursery are here, once. A new transport writes a request class
and calls these two functions; see docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

import trio

from ._transport import Transport
from .protocol import CloseCode, HandshakeRejected

if TYPE_CHECKING:
    from ._hub import Hub

__all__ = ["ConnectionRequest", "ServedConnections", "connection_nursery", "serve_request"]


class ConnectionRequest(Protocol):
    """An opening handshake that has arrived and is not answered yet."""

    @property
    def target(self) -> str:
        """The request target: path and query, e.g. ``/ws?token=abc``."""
        ...

    @property
    def headers(self) -> Sequence[tuple[bytes, bytes]]:
        """Every request header, ``Host`` included (the origin check needs it)."""
        ...

    @property
    def client(self) -> str | None:
        """The peer's address, for per-address limits (``None`` if unknown)."""
        ...

    async def accept(self) -> Transport:
        """Complete the handshake; the accepted WebSocket as a ``Transport``."""
        ...

    async def reject(self, status: int, body: str) -> None:
        """Answer with an HTTP error instead of accepting."""
        ...


class connection_nursery:
    """A nursery for one connection's transport tasks (trio-websocket's
    reader), under the hub's shield: a shutdown ends the connection
    politely (flush, 1001) instead of cutting a write short. Cancelled when
    the block ends.

    A class, not a generator-based context manager: it lasts as long as the
    connection, and a suspended generator would cost each open connection
    its frame.
    """

    __slots__ = ("_hub", "_manager", "_nursery", "_shield")

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._manager = trio.open_nursery()

    async def __aenter__(self) -> trio.Nursery:
        nursery = await self._manager.__aenter__()
        self._nursery = nursery
        self._shield = self._hub.shield_connection(nursery)
        self._shield.__enter__()
        return nursery

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        if exc_type is None:
            self._nursery.cancel_scope.cancel()
        self._shield.__exit__(exc_type, exc, tb)
        return await self._manager.__aexit__(exc_type, exc, tb)


async def serve_request(
    hub: Hub,
    request: ConnectionRequest,
    served: ServedConnections | None = None,
    nursery: trio.Nursery | None = None,
) -> None:
    """Admit ``request`` (``Hub.admit``: origin, limits, token), refuse it
    with its HTTP status or accept it, and serve the connection until it ends.

    The hub's part of the connection runs in a nursery of its own, inside
    the transport's (:func:`connection_nursery`): cancelling it ends the
    connection while the transport's reader still sees the peer's answer to
    the close frame. A transport whose reading is done by this very task
    (trio-websocket's fast path) has no reader to keep apart, and passes its
    own ``nursery`` to be that nursery: one fewer per connection. ``served``
    (the server's) holds that nursery while the connection is served, so a
    server can end just its own connections.
    """
    counters = hub.counters
    if served is not None and served.stopping:
        counters.refused[503] += 1
        await request.reject(503, "server shutting down")
        return
    try:
        async with hub.admit(request.target, request.headers, request.client) as identity:
            transport = await request.accept()
            counters.accepted += 1
            if served is not None and served.stopping:  # the server stopped while this one was admitted
                counters.closed[str(CloseCode.GOING_AWAY.value)] += 1
                with trio.move_on_after(hub.config.close_timeout):
                    await transport.close(CloseCode.GOING_AWAY, "server shutting down")
                return
            async with _NurseryOr(nursery) as nursery:
                if served is not None:
                    served.nurseries.add(nursery)
                try:
                    await hub.serve_connection(transport, identity, nursery, request.client)
                finally:
                    if served is not None:
                        served.nurseries.discard(nursery)
    except HandshakeRejected as exc:
        counters.refused[exc.status] += 1
        if exc.status == 401 and _from_browser(request.headers):
            # A page cannot read a refused handshake's status, only a close
            # frame's code and reason: it learns of its bad token so, instead
            # of reconnecting for ever (protocol.md, Authentication). The
            # socket counts in the limits until it is closed.
            with hub.hold_place(request.client):
                transport = await request.accept()
                with trio.move_on_after(hub.config.close_timeout):
                    await transport.close(CloseCode.SESSION_ENDED, exc.reason)
            return
        await request.reject(exc.status, exc.reason)


class _NurseryOr:
    """``async with _NurseryOr(nursery)``: that nursery, or a new one
    (cancelled when the block ends) when it is ``None``."""

    __slots__ = ("_given", "_manager", "_nursery")

    def __init__(self, given: trio.Nursery | None) -> None:
        self._given = given

    async def __aenter__(self) -> trio.Nursery:
        if self._given is not None:
            return self._given
        self._manager = trio.open_nursery()
        self._nursery = await self._manager.__aenter__()
        return self._nursery

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        if self._given is not None:
            return False
        if exc_type is None:
            self._nursery.cancel_scope.cancel()
        return await self._manager.__aexit__(exc_type, exc, tb)


def _from_browser(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Browsers send ``Origin`` with every WebSocket handshake; other clients need not."""
    return any(name.lower() == b"origin" for name, _ in headers)


class ServedConnections:
    """One server's connections, so that stopping the server ends them alone
    (the hub and its other servers go on)."""

    def __init__(self) -> None:
        self.nurseries: set[trio.Nursery] = set()
        self.stopping = False

    def stop(self, hub: Hub) -> None:
        """Refuse new ones (503), and end each served one as a shutdown would (flush, 1001)."""
        self.stopping = True
        for nursery in list(self.nurseries):
            hub.shut_down_connection(nursery)
