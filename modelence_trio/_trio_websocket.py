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
- one task per connection: the connection's own task reads the opening
  handshake and then the peer's messages, with trio-websocket's event
  handlers, and runs the hub's handler on each message (no reader task, no
  queue hop and no task switch per received message; backpressure kept);
- pings are written without waiting for their pong (one heartbeat task for
  all connections), and the objects an idle connection would keep for its
  whole life are freed or shared.

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

import collections
import contextlib
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
import wsproto.connection
import wsproto.events
import wsproto.utilities
from wsproto.connection import ConnectionState

from ._config import HubConfig
from ._idle_reader import IdleReader
from ._transport import FLUSH, QUEUE, SENT, FrameSafeStream, SendResult, Transport, TransportClosed
from ._wire import Outgoing

__all__ = ["ENABLED", "TESTED", "FastTransport", "PublicTransport", "TrioWebSocketRequest", "open_request"]

logger = logging.getLogger("modelence_trio")

TESTED = ((0, 12),)  # the minor versions whose internals this module was tested against
ENABLED = os.environ.get("MODELENCE_TRIO_PUBLIC_API", "") in ("", "0")

# What the fast path touches: on the class, and on each connection object.
_CLASS_ATTRIBUTES = (
    "_get_request",
    "_send",
    "_abort_web_socket",
    "_close_stream",
    "_handle_request_event",
    "_handle_close_connection_event",
    "_handle_message_event",
    "_handle_ping_event",
    "_handle_pong_event",
)
_INSTANCE_ATTRIBUTES = (
    "_stream",
    "_stream_lock",
    "_wsproto",
    "_pings",
    "_send_channel",
    "_recv_channel",
    "_open_handshake",
    "_close_handshake",
    "_for_testing_peer_closed_connection",
    "_reader_running",
    "_connection_proposal",
    "_close_reason",
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
    config: HubConfig,
    nursery: trio.Nursery,
    stream: trio.abc.Stream,
    client: str | None = None,
    received: bytes = b"",
    reader: IdleReader | None = None,
) -> TrioWebSocketRequest | None:
    """Read the opening handshake on ``stream``; ``None`` if it does not
    arrive within ``handshake_timeout``.

    On the fast path the calling task reads (see :class:`FastTransport`).
    On the public one, trio-websocket's reader task runs in ``nursery``,
    which must outlive the hub's serving of the connection: the reader is
    what sees the peer's answer to our close frame.
    """
    safe = FrameSafeStream(stream, received, reader)
    transport: FastTransport | None = None
    get_request: Callable[[], Awaitable[trio_websocket.WebSocketRequest | None]]
    if _fast_path_problem() is None:
        # What trio_websocket.wrap_server_stream does, keeping the connection object.
        ws = trio_websocket.WebSocketConnection(
            safe, wsproto.WSConnection(wsproto.ConnectionType.SERVER), max_message_size=config.max_frame_size
        )
        if _connection_problem(ws) is None:
            transport = FastTransport(ws, safe)
            get_request = transport.read_request
    if transport is None:
        get_request = functools.partial(
            trio_websocket.wrap_server_stream, nursery, safe, max_message_size=config.max_frame_size
        )
    request: trio_websocket.WebSocketRequest | None = None
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

    @property
    def reads_in_task(self) -> bool:
        """Whether the connection's own task reads it (the fast path): it then
        needs no nursery of its own apart from the transport's (``serve_request``)."""
        return self._transport is not None

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
    below its per-message API (see the module's docstring).

    No task of trio-websocket's runs: the connection's own task reads, first
    the opening handshake (:meth:`read_request`), then the messages
    (:meth:`run`), feeding wsproto and handing its events to
    trio-websocket's own handlers, as its reader task would. A close started
    by another task (the writer's 1001) is answered by that reading; a close
    started after the reading ended (a failed connection) reads the peer's
    answer itself (:meth:`_Inbox.aclose`).
    """

    __slots__ = ("_inbox", "_lock", "_pong", "_pong_is_set", "_stream", "_ws")

    def __init__(self, ws: trio_websocket.WebSocketConnection, stream: FrameSafeStream) -> None:
        """Wrap a server-side ``ws`` before anything is read.

        Messages then go to our inbox from the start, and the objects it
        replaces are freed: an idle connection is mostly what it keeps, so
        this matters at thousands of connections. Events trio-websocket only
        ever sets on a server connection are shared.
        """
        self._ws = ws
        ws._open_handshake = ws._for_testing_peer_closed_connection = _IGNORED_EVENT
        self._inbox = _Inbox(self)
        ws._send_channel = ws._recv_channel = self._inbox  # type: ignore[assignment]
        self._lock: trio.StrictFIFOLock = ws._stream_lock
        self._stream = stream
        self._pong = _Pong()
        self._pong_is_set = self._pong.is_set
        ws._pings = self._pong  # type: ignore[assignment]  # the one outstanding ping

    async def read_request(self) -> trio_websocket.WebSocketRequest | None:
        """Read until the opening handshake's request has arrived; ``None``
        if the peer left before it did."""
        await self.run(_drop, until_request=True)
        if not self._ws._reader_running:  # the peer left, or broke the protocol
            return None
        return await self._ws._get_request()  # its value is set: returns at once

    async def run(self, on_message: Callable[[str | bytes], Awaitable[None]], *, until_request: bool = False) -> None:
        """What trio-websocket's reader task does, in this task: read, feed
        wsproto, hand each event to trio-websocket's handler for it (each
        message to ``on_message``), until the connection is closed or
        (``until_request``) the opening request has arrived.
        One method rather than two, for one frame less on every connection's
        parked stack."""
        ws = self._ws
        protocol = ws._wsproto
        stream = self._stream
        inbox = self._inbox
        pong = self._pong
        if not until_request:
            # The handshake is done. wsproto would keep its h11 state for the life
            # of the connection; only its (empty) event queue is consulted now.
            protocol.handshake = _NO_HANDSHAKE
            decoder = _frame_decoder(protocol)
            _shrink_event_queue(protocol)
            if decoder is not None:

                def absorb(data: bytes) -> bool:
                    """A heartbeat's pong, whole and alone: what wsproto would make of it, done here
                    (by the hub's reader, without waking this task)."""
                    return (
                        data[:2] == _PONG_HEAD
                        and len(data) == _PONG_SIZE
                        and decoder.header is None
                        and not decoder.buffer
                        and pong.answered_by(data)
                    )

                stream.absorb = absorb
        inbox.handler = on_message
        inbox.reading = True
        event: wsproto.events.Event | None
        try:
            while ws._reader_running:
                for event in protocol.events():
                    handler = _HANDLERS.get(type(event))
                    if handler is None:
                        continue  # a client's events: never seen on a server
                    try:
                        await handler(ws, event)
                    except trio_websocket.ConnectionClosed:
                        ws._reader_running = False
                        break
                    if until_request and type(event) is wsproto.events.Request:
                        return
                event = None  # not kept while parked
                try:
                    data = await stream.receive_some(_RECEIVE_BYTES)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    await ws._abort_web_socket()
                    break
                if not data:  # TCP closed: abnormal unless the close handshake was done
                    if protocol.state != ConnectionState.CLOSED:
                        await ws._abort_web_socket()
                    break
                if protocol.state != ConnectionState.CLOSED:
                    try:
                        protocol.receive_data(bytes(data))
                    except wsproto.utilities.RemoteProtocolError as err:
                        with contextlib.suppress(trio_websocket.ConnectionClosed):
                            if err.event_hint:
                                await ws._send(err.event_hint)
                        await ws._close_stream()
        finally:
            inbox.reading = False
            inbox.handler = _drop
            stream.absorb = None
            stream.stop_reading()

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
        # The broadcast hot path, once per subscriber: FrameSafeStream.try_send
        # and WebSocketConnection.closed spelled out (a call less each).
        stream = self._stream
        if stream.backlog or self._ws._close_reason is not None or self._lock.locked():
            return QUEUE
        sock = stream.write_socket
        if sock is None:
            return QUEUE
        try:
            sent = os.write(sock.fileno(), wire)  # -1 once closed: never a descriptor reused since
        except OSError:  # BlockingIOError, or a broken socket that the next send reports
            return QUEUE
        if sent == len(wire):
            return SENT
        if sent == 0:
            return QUEUE
        stream.backlog = wire[sent:]
        return FLUSH

    def ping_nowait(self) -> Callable[[], bool] | None:
        ws = self._ws
        if ws.closed is not None:
            return None
        payload, wire = _ping_frame()
        self._pong.expect(payload)
        stream = self._stream
        sent = 0 if stream.backlog or self._lock.locked() else stream.try_send(wire)
        stream.backlog += wire[sent:]  # flushed by the next send_all
        return self._pong_is_set

    @property
    def holds_data(self) -> bool:
        return bool(self._stream.backlog)

    async def close(self, code: int, reason: str) -> None:
        await self._ws.aclose(code, reason)  # the reading (ours, or the inbox's) sees the peer's answer

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

    holds_data = False  # its pings are tasks of their own

    async def close(self, code: int, reason: str) -> None:
        await self._ws.aclose(code, reason)

    @property
    def close_code(self) -> int | None:
        """As ``FastTransport.close_code``."""
        closed = self._ws.closed
        return closed.code if closed is not None else None


class _Inbox:
    """Stands in for trio-websocket's channel of received messages.

    trio-websocket's message handler hands every message to ``send``, which
    runs the hub's handler right there, in the connection's task (the
    reading waits for it: backpressure). trio-websocket closes the channel
    when the connection closes (``aclose``): messages are dropped from then
    on. When it is our close (``WebSocketConnection.aclose``, after its close
    frame went out) and the connection's task is not reading any more (it
    was cancelled: a failed connection), ``aclose`` reads until the peer's
    answer, which is what ``WebSocketConnection.aclose`` then waits for.
    """

    __slots__ = ("_transport", "handler", "reading")

    def __init__(self, transport: FastTransport) -> None:
        self._transport = transport
        self.handler: Callable[[str | bytes], Awaitable[None]] = _drop
        self.reading = False

    async def send(self, message: str | bytes) -> None:
        await self.handler(message)

    async def receive(self) -> str | bytes:  # WebSocketConnection.get_message: not used
        raise trio.EndOfChannel

    async def aclose(self) -> None:
        self.handler = _drop
        transport = self._transport
        if not self.reading and transport._ws._wsproto.state == ConnectionState.LOCAL_CLOSING:
            await transport.run(_drop)

    async def __aenter__(self) -> _Inbox:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.handler = _drop


def _shrink_event_queue(protocol: wsproto.WSConnection) -> None:
    """wsproto's queue of events is nearly always empty, and a deque costs
    600 bytes even then, on every open connection: a list does the same job."""
    events = getattr(protocol.connection, "_events", None)
    if type(events) is collections.deque and not events:
        protocol.connection._events = _EventQueue()  # type: ignore[union-attr]


class _EventQueue(list[wsproto.events.Event]):
    """wsproto's event queue (a ``deque``) as a list: it holds an event or
    two at a time, so ``pop(0)`` costs nothing, and an empty one is 56 bytes
    instead of 600."""

    __slots__ = ()

    def popleft(self) -> wsproto.events.Event:
        return self.pop(0)


class _Pong:
    """Stands in for trio-websocket's ordered dict of pings waiting for their
    pong (a ``trio.Event`` each): the hub has one ping outstanding per
    connection at most, so one slot, reused by every ping, does. It is also
    the "event" trio-websocket's pong handler sets."""

    __slots__ = ("answered", "payload")

    def __init__(self) -> None:
        self.payload = b""
        self.answered = True

    def expect(self, payload: bytes) -> None:
        self.payload, self.answered = payload, False

    def is_set(self) -> bool:
        return self.answered

    def answered_by(self, frame: bytes | bytearray) -> bool:
        """Whether ``frame``, a client's masked pong frame with an 8-byte
        payload (``_PONG_HEAD``), answers the ping outstanding; noted if so."""
        mask = int.from_bytes(frame[2:6], "big")
        payload = (int.from_bytes(frame[6:14], "big") ^ (mask << 32 | mask)).to_bytes(8, "big")
        if self.answered or payload != self.payload:
            return False
        self.answered = True
        return True

    # What trio-websocket's pong handler uses: pings[payload], then popitem(False) until it is found.
    def __getitem__(self, payload: bytes) -> _Pong:
        if self.answered or payload != self.payload:
            raise KeyError(payload)
        return self

    def __bool__(self) -> bool:
        return not self.answered

    def popitem(self, last: bool = True) -> tuple[bytes, _Pong]:
        return self.payload, self

    def set(self) -> None:
        self.answered = True


async def _drop(message: str | bytes) -> None:
    pass


_ping_ids = itertools.count()
_last_ping: tuple[float, bytes, bytes] = (-1.0, b"", b"")


def _ping_frame() -> tuple[bytes, bytes]:
    """A ping's payload and wire bytes, shared by the pings of one second: a
    heartbeat round pings every connection at once, and a server's frames are
    not masked, so the frame is built once per round. (Each connection has
    one ping outstanding at most: payloads need not differ between them.)"""
    global _last_ping
    now = trio.current_time()
    if now - _last_ping[0] >= 1.0:
        payload = next(_ping_ids).to_bytes(8, "big")
        wire = _PING_CONNECTION.send(wsproto.events.Ping(payload=payload))
        _last_ping = (now, payload, wire)
    return _last_ping[1], _last_ping[2]


def _server_connection() -> wsproto.connection.Connection:
    return wsproto.connection.Connection(wsproto.ConnectionType.SERVER)


_PING_CONNECTION = _server_connection()  # frames a ping as any server connection would
#: A client's pong to our pings: FIN and opcode 0xA, masked, 8 bytes of payload; 14 bytes in all.
_PONG_HEAD = b"\x8a\x88"
_PONG_SIZE = 14


def _frame_decoder(protocol: wsproto.WSConnection) -> Any:
    """wsproto's frame decoder of an open connection, whose ``header`` is
    ``None`` and ``buffer`` empty between frames (``None`` if wsproto has
    moved them: the pong shortcut is then not taken)."""
    decoder = getattr(getattr(protocol.connection, "_proto", None), "_frame_decoder", None)
    if decoder is None or not hasattr(decoder, "header") or not hasattr(decoder, "buffer"):
        return None
    return decoder


_RECEIVE_BYTES = 4096  # what trio-websocket's reader asks for

#: trio-websocket's handler for each event a server connection sees.
_HANDLERS: dict[type[wsproto.events.Event], Callable[[Any, Any], Awaitable[None]]] = {
    event: getattr(trio_websocket.WebSocketConnection, name)
    for event, name in (
        (wsproto.events.Request, "_handle_request_event"),
        (wsproto.events.CloseConnection, "_handle_close_connection_event"),
        (wsproto.events.TextMessage, "_handle_message_event"),
        (wsproto.events.BytesMessage, "_handle_message_event"),
        (wsproto.events.Ping, "_handle_ping_event"),
        (wsproto.events.Pong, "_handle_pong_event"),
    )
    if hasattr(trio_websocket.WebSocketConnection, name)
}


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
