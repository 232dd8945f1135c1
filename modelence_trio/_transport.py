"""The boundary between the connection core and a WebSocket implementation.

The core (``Hub.serve_connection``) speaks only to this small interface, so the
trio-websocket server, the in-memory test network and, later, ASGI share one
copy of the protocol, channel and auth logic.
"""

from __future__ import annotations

import enum
import itertools
import socket
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Protocol

import trio
import trio_websocket
import wsproto.connection
import wsproto.events

from ._wire import Outgoing

__all__ = ["SendResult", "Transport", "TransportClosed", "TrioWebSocketTransport"]


class SendResult(enum.Enum):
    SENT = "sent"
    QUEUE = "queue"
    FLUSH = "flush"


class TransportClosed(Exception):
    """The WebSocket is closed; no more frames can be sent or received."""


class Transport(Protocol):
    async def run(self, on_message: Callable[[str | bytes], Awaitable[None]]) -> None:
        """Hand each message from the peer to ``on_message``, in order, one at a
        time (the next is not read until it returns: backpressure); return once
        the peer has closed the connection."""
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

    def ping_nowait(self) -> Callable[[], bool] | None:
        """Send a ping (possibly left for the next ``send`` to flush).

        Returns a function that tells whether its pong has arrived, or ``None``
        when the transport cannot ping (the hub then does not time it out).
        """
        ...

    async def close(self, code: int, reason: str) -> None:
        """Start the closing handshake and wait for it; a no-op once closed."""
        ...


class _BackloggedStream(trio.abc.Stream):
    """The stream under trio-websocket, extended with non-blocking sends.

    ``try_send`` writes straight to the socket when there is one. Bytes that
    could not be written at once (the tail of a partial write, or a ping)
    wait in ``backlog``, and every ``send_all``, ours or trio-websocket's own
    (pongs, close frames), writes the backlog first: nothing ever lands inside
    a partially written frame.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        trio_sock = getattr(stream, "socket", None)
        # Trio's socket (public on SocketStream): writes through it report
        # exactly how much went out, even when cancelled (see send_frames).
        self._trio_sock = trio_sock if isinstance(trio_sock, trio.socket.SocketType) else None
        sock = getattr(trio_sock, "_sock", None)
        # The stdlib socket under trio's (TCP only; TLS and in-memory streams have none).
        self._sock = sock if isinstance(sock, socket.socket) else None
        self.backlog = b""
        self.torn = False

    def try_send(self, data: bytes) -> int:
        if self._sock is None:
            return 0
        try:
            return self._sock.send(data)
        except OSError:  # BlockingIOError, or a broken socket that send_all will report
            return 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.send_frames([bytes(data)])

    async def send_frames(self, frames: Sequence[bytes]) -> None:
        """Write the backlog, then ``frames``, each a whole WebSocket frame.

        Cancelled part-way (a connection cut off as a slow consumer), it
        keeps the unwritten rest of the frame it was in as the backlog, and
        drops the frames after it: whatever is written next (the close frame)
        starts at a frame boundary. A stream without a trio socket (TLS, an
        in-memory stream) cannot say how much it wrote: cancelled inside a
        write, it is torn, and refuses every later write (no close frame
        then, rather than one inside a frame).
        """
        if self.torn:
            raise trio.BrokenResourceError("a write was cut short; the stream has no frame boundary")
        if self.backlog:
            frames = [self.backlog, *frames]
            self.backlog = b""
        sock = self._trio_sock
        if sock is None:
            for frame in frames:
                try:
                    await self._stream.send_all(frame)
                except trio.Cancelled:
                    self.torn = True
                    raise
            return
        data = memoryview(b"".join(frames)) if len(frames) > 1 else memoryview(frames[0])
        sent = 0
        try:
            while sent < len(data):
                sent += await sock.send(data[sent : sent + _WRITE_CHUNK])
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        except trio.Cancelled:
            end = 0
            for frame in frames:
                end += len(frame)
                if end > sent:
                    self.backlog = bytes(data[sent:end])  # the rest of the frame under way, no more
                    break
            raise

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._stream.aclose()


class TrioWebSocketTransport:
    """A ``trio_websocket.WebSocketConnection`` seen as a :class:`Transport`.

    trio-websocket keeps the handshake, the receive side, pong handling and the
    close. Sends go underneath its per-message API: the frames' wire bytes
    (encoded once per broadcast, shared by every subscriber) are written to the
    stream directly, under trio-websocket's own stream lock so they never
    interleave with its control frames. While nothing is queued,
    ``send_nowait`` writes to the socket right from the broadcast call, as
    asyncio transports do, so a delivery usually costs one ``send`` system call
    and no task switch.
    """

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        """Wrap a server-side ``ws`` before its reader task first runs.

        The reader then reads into our inbox and writes through our stream from
        the start, and the objects they replace are freed: an idle connection
        is mostly what it keeps, so this matters at thousands of connections.
        Events trio-websocket only ever sets on a server connection are shared.
        """
        self._ws = ws
        ws._open_handshake = ws._for_testing_peer_closed_connection = _IGNORED_EVENT
        self._inbox = _Inbox()
        ws._send_channel = ws._recv_channel = self._inbox  # type: ignore[assignment]
        self._lock: trio.StrictFIFOLock = ws._stream_lock
        self.reading = False
        self._stream = ws._stream = _BackloggedStream(ws._stream)

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
        if self.reading:
            await self._ws.aclose(code, reason)  # its reader task sees the peer's answer
            return
        # The connection was cut off (its nursery cancelled, the reader task
        # with it): send the close frame and read the answer here, discarding
        # anything else the peer still sends, so that the closing handshake
        # completes and the caller closes TCP at once (RFC 6455, 5.5.1).
        proto = self._ws._wsproto
        if proto.state is wsproto.connection.ConnectionState.OPEN:
            data = proto.send(wsproto.events.CloseConnection(code=code, reason=reason))
            async with self._lock:
                await self._stream.send_frames([data])
        while proto.state is not wsproto.connection.ConnectionState.CLOSED:
            received = await self._stream.receive_some(_READ_CHUNK)
            if not received:
                return
            proto.receive_data(bytes(received))
            for _ in proto.events():
                pass

    async def run_reader(self) -> None:
        """trio-websocket's reader task, marked as running (see ``close``)."""
        self.reading = True
        try:
            await self._ws._reader_task()
        finally:
            self.reading = False


class _Inbox:
    """Stands in for trio-websocket's channel of received messages.

    trio-websocket's reader task hands every message to ``send``, which runs
    the connection's handler right there: no second task per connection, no
    queue hop and no task switch per received message, and the reader still
    waits for the handler (backpressure). It is installed before the handshake
    is accepted, so no message can slip into the channel it replaces; one that
    arrives before ``run`` waits for it.
    """

    __slots__ = ("_closed", "_handler", "_ready")

    def __init__(self) -> None:
        self._handler: Callable[[str | bytes], Awaitable[None]] | None = None
        self._ready: trio.Event | None = None  # made only if a message comes early
        self._closed = trio.Event()

    async def run(self, handler: Callable[[str | bytes], Awaitable[None]]) -> None:
        self._handler = handler
        if self._ready is not None:
            self._ready.set()
        await self._closed.wait()

    async def send(self, message: str | bytes) -> None:
        if self._handler is None:
            self._ready = self._ready or trio.Event()
            await self._ready.wait()
        assert self._handler is not None
        await self._handler(message)

    async def receive(self) -> str | bytes:  # WebSocketConnection.get_message: not used
        raise trio.EndOfChannel

    async def aclose(self) -> None:
        self._closed.set()

    async def __aenter__(self) -> _Inbox:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closed.set()


_ping_ids = itertools.count()
_WRITE_CHUNK = 256 * 1024
_READ_CHUNK = 64 * 1024


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
