"""The boundary between the connection core and a WebSocket implementation.

The core (``Hub.serve_connection``) speaks only to this small interface, so the
trio-websocket server (``_trio_websocket``), the in-memory test network and
ASGI (``_asgi``) share one copy of the protocol, channel and auth logic.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import trio

from ._idle_reader import IdleReader
from ._wire import Outgoing

__all__ = ["FLUSH", "QUEUE", "SENT", "FrameSafeStream", "SendResult", "Transport", "TransportClosed"]


class SendResult(enum.Enum):
    SENT = "sent"
    QUEUE = "queue"
    FLUSH = "flush"


#: The members, looked up once: on the broadcast path (once per delivery) an
#: enum member's attribute lookup costs as much as a call.
SENT, QUEUE, FLUSH = SendResult.SENT, SendResult.QUEUE, SendResult.FLUSH


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

    @property
    def holds_data(self) -> bool:
        """Whether bytes (the rest of a frame, a ping) wait in the transport
        for the next ``send``: a ping written whole needs no writer task."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Start the closing handshake and wait for it; a no-op once closed."""
        ...


class FrameSafeStream(trio.abc.Stream):
    """A stream that writes whole WebSocket frames, with a non-blocking send.

    Every ``send_all`` (trio-websocket's own, for pongs and close frames, and
    ``send_frames``) carries whole frames. ``try_send`` writes straight to
    the socket when there is one. Bytes that could not be written at once
    (the tail of a partial write, or a ping) wait in ``backlog``, and every
    write sends the backlog first: nothing ever lands inside a partially
    written frame. Public trio API only: the socket is ``SocketStream.socket``
    and the non-blocking write is ``os.write`` on its file descriptor.
    """

    # Slots (trio's stream classes have them too): one per connection, and read on every delivery.
    __slots__ = (
        "_head",
        "_read_sock",
        "_reader",
        "_received",
        "_stream",
        "_trio_sock",
        "absorb",
        "backlog",
        "torn",
        "write_socket",
    )

    def __init__(self, stream: trio.abc.Stream, received: bytes = b"", reader: IdleReader | None = None) -> None:
        """``received``: bytes already read from ``stream`` (a request head
        read to route it), handed out first; ``reader``: the hub's, which
        waits for the socket instead of the reading task while it runs."""
        self._stream = stream
        self._received = received
        self._reader = reader
        #: Bytes the reader may deal with without waking the reading task (pongs), while set.
        self.absorb: Callable[[bytes], bool] | None = None
        sock = getattr(stream, "socket", None)
        # Trio's socket (SocketStream): writes through it report exactly how
        # much went out, even when cancelled (see send_frames). TLS and
        # in-memory streams have none.
        self._trio_sock = sock if isinstance(sock, trio.socket.SocketType) else None
        direct = self._trio_sock is not None and os.name == "posix" and self._trio_sock.fileno() >= 0
        #: The socket ``try_send`` writes to directly (``None``: no such path).
        self.write_socket = self._trio_sock if direct else None
        # Read from the socket directly only when nothing else reads it (a
        # wrapper exposing its socket may hold bytes of its own).
        self._read_sock = self._trio_sock if type(stream) is trio.SocketStream and direct else None
        self.backlog = b""
        self.torn = False
        self._head: bytearray | None = bytearray()  # the opening request, until taken

    def take_request_host(self) -> bytes | None:
        """The ``Host`` header of the HTTP request read so far (the opening
        handshake), which trio-websocket does not expose; nothing more is kept."""
        head, self._head = self._head, None
        for line in bytes(head or b"").split(b"\r\n")[1:]:
            name, sep, value = line.partition(b":")
            if not line or not sep:
                break
            if name.strip().lower() == b"host":
                return value.strip()
        return None

    def try_send(self, data: bytes) -> int:
        sock = self.write_socket
        if sock is None:
            return 0
        try:
            # The socket's descriptor now (-1 once closed: never a number reused by another socket).
            return os.write(sock.fileno(), data)  # non-blocking (trio made it so)
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
        then, rather than one inside a frame). Bytes added to the backlog while it writes (a ping, from
        ``try_send``'s callers) go out before it returns.
        """
        while True:
            if self.torn:
                raise trio.BrokenResourceError("a write was cut short; the stream has no frame boundary")
            if self.backlog:
                frames = [self.backlog, *frames]
                self.backlog = b""
            if not frames:
                return
            await self._write(frames)
            frames = []

    async def _write(self, frames: Sequence[bytes]) -> None:
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
                    # The rest of the frame under way, no more; ahead of anything queued meanwhile.
                    self.backlog = bytes(data[sent:end]) + self.backlog
                    break
            raise

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """``SocketStream.receive_some``, waiting first when there is a socket:
        a WebSocket server's socket is mostly idle, so trying to read before
        waiting fails almost every time (a system call and an exception per
        message), and a task parked here holds two frames instead of nine
        (an idle connection is mostly its parked task)."""
        sock = self._read_sock
        data: bytes | bytearray
        if self._received:
            await trio.lowlevel.checkpoint()
            size = len(self._received) if max_bytes is None else max_bytes
            data, self._received = self._received[:size], self._received[size:]
        elif sock is None or max_bytes is None:
            data = await self._stream.receive_some(max_bytes)
        else:
            while True:
                if sock.fileno() < 0:
                    raise trio.ClosedResourceError("the socket was closed")
                if self._reader is not None:
                    try:
                        received = await self._reader.receive(sock, max_bytes, self.absorb)
                    except OSError as exc:
                        raise trio.BrokenResourceError(str(exc)) from exc
                    if received is not None:
                        data = received
                        break
                await trio.lowlevel.wait_readable(sock)
                try:
                    data = os.read(sock.fileno(), max_bytes)
                except BlockingIOError:
                    continue  # a spurious wake-up
                except OSError as exc:
                    if sock.fileno() < 0:
                        raise trio.ClosedResourceError("the socket was closed") from None
                    raise trio.BrokenResourceError(str(exc)) from exc
                if not (data and self.absorb is not None and self.absorb(data)):
                    break
        if self._head is not None and len(self._head) < _MAX_HEAD:
            self._head += data[: _MAX_HEAD - len(self._head)]
        return data

    def stop_reading(self) -> None:
        """The reading ended: the hub's reader stops watching the socket."""
        if self._reader is not None and self._read_sock is not None:
            self._reader.forget(self._read_sock)

    async def aclose(self) -> None:
        self.stop_reading()  # a task parked on the socket wakes (ClosedResourceError)
        await self._stream.aclose()


_WRITE_CHUNK = 256 * 1024
_MAX_HEAD = 16 * 1024  # h11's own limit on a request head
