"""Everything modelence-trio does with trio-websocket, its internals in one place.

trio-websocket keeps the opening handshake, the receive side, pong handling
and the closing handshake. Its public API sends one message at a time,
framing it per call; a broadcast to a thousand subscribers would frame the
same text a thousand times and wake a task for each. The fast path
(:class:`FastTransport`) reaches below that API:

- a frame's wire bytes, encoded once per broadcast, go straight to the
  stream, under trio-websocket's own stream lock so they never interleave
  with its control frames; while nothing is queued, straight to the socket
  from the broadcast call (one ``send`` system call, no task switch);
- the reader task runs the hub's handler itself (no second task and no queue
  hop per received message, with backpressure kept);
- pings are written without waiting for their pong (one heartbeat task for
  all connections), and the objects an idle connection would keep for its
  whole life are freed.

The internals used are those of the tested minor versions (``TESTED``,
pinned in pyproject.toml). A probe checks them once per process, and each
connection's object before it is used; when they differ, or ``ENABLED`` is
false (environment: ``MODELENCE_TRIO_PUBLIC_API=1``), connections take the
public API (:class:`PublicTransport`) with one warning: the same behaviour,
slower (framing per subscriber, a task per ping). CI runs the socket tests on
both. Both write through :class:`FrameSafeStream`, so on both a cut-off
connection's close frame lands on a frame boundary.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
from collections.abc import Awaitable, Callable, Iterator, Sequence
from importlib.metadata import version
from typing import Any

import trio
import trio_websocket
import wsproto
import wsproto.events

from ._config import HubConfig
from ._transport import FrameSafeStream, SendResult, Transport, TransportClosed
from ._wire import Outgoing

__all__ = ["ENABLED", "TESTED", "FastTransport", "PublicTransport", "TrioWebSocketRequest", "open_request"]

logger = logging.getLogger("modelence_trio")

TESTED = ((0, 12),)  # the minor versions whose internals this module was tested against
ENABLED = os.environ.get("MODELENCE_TRIO_PUBLIC_API", "") in ("", "0")

# What the fast path touches: on the class, and on each connection object.
_CLASS_ATTRIBUTES = ("_reader_task", "_get_request", "_send")
_INSTANCE_ATTRIBUTES = (
    "_stream",
    "_stream_lock",
    "_wsproto",
    "_pings",
    "_send_channel",
    "_recv_channel",
    "_open_handshake",
    "_for_testing_peer_closed_connection",
)


def _probe() -> str | None:
    """Why the fast path cannot be used in this process, or ``None``."""
    installed = tuple(int(part) for part in version("trio-websocket").split(".")[:2])
    if installed not in TESTED:
        return f"trio-websocket {version('trio-websocket')} is not a tested version"
    missing = [name for name in _CLASS_ATTRIBUTES if not hasattr(trio_websocket.WebSocketConnection, name)]
    if missing:
        return f"trio-websocket's WebSocketConnection has no {missing[0]}"
    if not hasattr(wsproto.WSConnection(wsproto.ConnectionType.SERVER), "handshake"):
        return "wsproto's WSConnection has no handshake"
    return None


_problem = _probe()
_warned = False


def _fast_path_problem() -> str | None:
    problem = _problem if ENABLED else "MODELENCE_TRIO_PUBLIC_API is set"
    if problem is not None:
        _warn_once(problem)
    return problem


def _connection_problem(ws: trio_websocket.WebSocketConnection) -> str | None:
    missing = [name for name in _INSTANCE_ATTRIBUTES if not hasattr(ws, name)]
    if not missing:
        return None
    problem = f"trio-websocket's WebSocketConnection has no {missing[0]}"
    _warn_once(problem)
    return problem


def _warn_once(problem: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        logger.warning("trio-websocket fast path off (%s): sending through its public API", problem)


async def open_request(
    config: HubConfig, nursery: trio.Nursery, stream: trio.abc.Stream, client: str | None = None
) -> TrioWebSocketRequest | None:
    """Read the opening handshake on ``stream``; ``None`` if it does not
    arrive within ``handshake_timeout``.

    trio-websocket's reader task runs in ``nursery``, which must outlive the
    hub's serving of the connection: the reader is what sees the peer's
    answer to our close frame.
    """
    safe = FrameSafeStream(stream)
    transport: FastTransport | None = None
    get_request: Callable[[], Awaitable[trio_websocket.WebSocketRequest]]
    if _fast_path_problem() is None:
        # What trio_websocket.wrap_server_stream does, keeping the connection object.
        ws = trio_websocket.WebSocketConnection(
            safe, wsproto.WSConnection(wsproto.ConnectionType.SERVER), max_message_size=config.max_frame_size
        )
        if _connection_problem(ws) is None:
            transport = FastTransport(ws, safe)
            nursery.start_soon(ws._reader_task)
            get_request = ws._get_request
    if transport is None:
        get_request = functools.partial(
            trio_websocket.wrap_server_stream, nursery, safe, max_message_size=config.max_frame_size
        )
    request = None
    with trio.move_on_after(config.handshake_timeout):
        request = await get_request()
    if request is None:
        return None
    headers = list(request.headers)  # wsproto keeps Host apart; the origin check needs it
    host = safe.take_request_host()
    if host is not None:
        headers.append((b"host", host))
    return TrioWebSocketRequest(request, headers, client, transport, nursery)


class TrioWebSocketRequest:
    """trio-websocket's ``WebSocketRequest`` as a ``ConnectionRequest``. The
    request (and its headers) is dropped once it is answered."""

    def __init__(
        self,
        request: trio_websocket.WebSocketRequest,
        headers: list[tuple[bytes, bytes]],
        client: str | None,
        transport: FastTransport | None,
        nursery: trio.Nursery,
    ) -> None:
        self._request: trio_websocket.WebSocketRequest | None = request
        self.target: str = request.path
        self.headers: list[tuple[bytes, bytes]] = headers
        self.client = client
        self._transport = transport
        self._nursery = nursery

    def _take(self) -> trio_websocket.WebSocketRequest:
        request, self._request = self._request, None
        self.headers = []
        if request is None:
            raise RuntimeError("this request was answered already")
        return request

    async def accept(self) -> Transport:
        ws = await self._take().accept()
        return self._transport or PublicTransport(ws, self._nursery)

    async def reject(self, status: int, body: str) -> None:
        headers = [(b"Content-Type", b"text/plain; charset=utf-8"), (b"X-Content-Type-Options", b"nosniff")]
        await self._take().reject(status, extra_headers=headers, body=body.encode())


class FastTransport:
    """A ``trio_websocket.WebSocketConnection`` seen as a :class:`Transport`,
    below its per-message API (see the module's docstring)."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, stream: FrameSafeStream) -> None:
        """Wrap a server-side ``ws`` before its reader task first runs.

        The reader then reads into our inbox from the start, and the objects
        it replaces are freed: an idle connection is mostly what it keeps, so
        this matters at thousands of connections. Events trio-websocket only
        ever sets on a server connection are shared.
        """
        self._ws = ws
        ws._open_handshake = ws._for_testing_peer_closed_connection = _IGNORED_EVENT
        self._inbox = _Inbox()
        ws._send_channel = ws._recv_channel = self._inbox  # type: ignore[assignment]
        self._lock: trio.StrictFIFOLock = ws._stream_lock
        self._stream = stream

    async def run(self, on_message: Callable[[str | bytes], Awaitable[None]]) -> None:
        # The handshake is done. wsproto would keep its h11 state for the life
        # of the connection; only its (empty) event queue is consulted now.
        self._ws._wsproto.handshake = _NO_HANDSHAKE
        await self._inbox.run(on_message)

    async def send(self, frames: Sequence[Outgoing]) -> None:
        if not frames and not self._stream.backlog:
            return
        async with self._lock:
            if self._ws.closed is not None:
                raise TransportClosed(str(self._ws.closed))
            try:
                await self._stream.send_frames([frame.wire for frame in frames])
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise TransportClosed(str(exc)) from None

    def send_nowait(self, wire: bytes) -> SendResult:
        stream = self._stream
        if stream.backlog or self._lock.locked() or self._ws.closed is not None:
            return SendResult.QUEUE
        sent = stream.try_send(wire)
        if sent == len(wire):
            return SendResult.SENT
        if sent == 0:
            return SendResult.QUEUE
        stream.backlog = wire[sent:]
        return SendResult.FLUSH

    def ping_nowait(self) -> Callable[[], bool] | None:
        ws = self._ws
        if ws.closed is not None:
            return None
        payload = next(_ping_ids).to_bytes(8, "big")
        answered = trio.Event()
        ws._pings[payload] = answered  # trio-websocket's reader sets it on the pong
        wire = ws._wsproto.send(wsproto.events.Ping(payload=payload))
        stream = self._stream
        sent = 0 if stream.backlog or self._lock.locked() else stream.try_send(wire)
        stream.backlog += wire[sent:]  # flushed by the next send_all
        return answered.is_set

    async def close(self, code: int, reason: str) -> None:
        await self._ws.aclose(code, reason)  # the reader task sees the peer's answer

    @property
    def close_code(self) -> int | None:
        """The close code of the closing handshake (the peer's, ours, or
        trio-websocket's 1009), or 1006 without one; ``None`` while open."""
        closed = self._ws.closed
        return closed.code if closed is not None else None


class PublicTransport:
    """A ``trio_websocket.WebSocketConnection`` through its public API only."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, nursery: trio.Nursery) -> None:
        self._ws = ws
        self._nursery = nursery  # the connection's: pings wait for their pong there

    async def run(self, on_message: Callable[[str | bytes], Awaitable[None]]) -> None:
        while True:
            try:
                message = await self._ws.get_message()
            except trio_websocket.ConnectionClosed:
                return
            await on_message(message)

    async def send(self, frames: Sequence[Outgoing]) -> None:
        try:
            for frame in frames:
                await self._ws.send_message(frame.text)
        except trio_websocket.ConnectionClosed as exc:
            raise TransportClosed(str(exc)) from None

    def send_nowait(self, wire: bytes) -> SendResult:
        return SendResult.QUEUE

    def ping_nowait(self) -> Callable[[], bool] | None:
        if self._ws.closed is not None:
            return None
        answered = trio.Event()

        async def ping() -> None:
            try:
                await self._ws.ping()  # returns when the pong arrives
            except trio_websocket.ConnectionClosed:
                return
            answered.set()

        self._nursery.start_soon(ping)
        return answered.is_set

    async def close(self, code: int, reason: str) -> None:
        await self._ws.aclose(code, reason)

    @property
    def close_code(self) -> int | None:
        """As ``FastTransport.close_code``."""
        closed = self._ws.closed
        return closed.code if closed is not None else None


class _Inbox:
    """Stands in for trio-websocket's channel of received messages.

    trio-websocket's reader task hands every message to ``send``, which runs
    the connection's handler right there: no second task per connection, no
    queue hop and no task switch per received message, and the reader still
    waits for the handler (backpressure). It is installed before the handshake
    is accepted, so no message can slip into the channel it replaces; one that
    arrives before ``run`` waits for it. Once ``run`` has ended (the
    connection is over), messages are dropped and a handler still running is
    cancelled: the reader task goes on only to see the peer's close.
    """

    __slots__ = ("_closed", "_handler", "_handling", "_ready")

    def __init__(self) -> None:
        self._handler: Callable[[str | bytes], Awaitable[None]] | None = None
        self._ready: trio.Event | None = None  # made only if a message comes early
        self._closed = trio.Event()
        self._handling: trio.CancelScope | None = None

    async def run(self, handler: Callable[[str | bytes], Awaitable[None]]) -> None:
        self._handler = handler
        if self._ready is not None:
            self._ready.set()
        try:
            await self._closed.wait()
        finally:
            self._handler = _drop
            if self._handling is not None:
                self._handling.cancel()

    async def send(self, message: str | bytes) -> None:
        if self._handler is None:
            self._ready = self._ready or trio.Event()
            await self._ready.wait()
        assert self._handler is not None
        if self._handler is _drop:
            return
        with trio.CancelScope() as self._handling:
            await self._handler(message)
        self._handling = None

    async def receive(self) -> str | bytes:  # WebSocketConnection.get_message: not used
        raise trio.EndOfChannel

    async def aclose(self) -> None:
        self._closed.set()

    async def __aenter__(self) -> _Inbox:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closed.set()


async def _drop(message: str | bytes) -> None:
    pass


_ping_ids = itertools.count()


class _IgnoredEvent:
    """Takes ``set()`` calls nobody waits for."""

    def set(self) -> None:
        pass


_IGNORED_EVENT: Any = _IgnoredEvent()


class _NoHandshake:
    """Stands in for wsproto's finished opening handshake (see above)."""

    def events(self) -> Iterator[wsproto.events.Event]:
        return iter(())


_NO_HANDSHAKE: Any = _NoHandshake()
