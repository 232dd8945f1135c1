"""Which server gets a connection on ``App.serve``'s port, decided from its first bytes.

``App.serve`` accepts TCP connections itself. A WebSocket handshake to the
app's ``websocket_path`` goes to the fast transport (``serve_stream``, as
``serve_websocket`` serves it); everything else (plain HTTP, a WebSocket to
another path, h2c, bytes that are not HTTP at all) goes to hypercorn's HTTP
server for that one connection (``_hypercorn.ConnectionServer``), which
answers it exactly as ``hypercorn`` would. :func:`route` decides from the
bytes read so far (pure, no I/O); :func:`receive_head` reads them, bounded in
bytes and in time. The fast transport takes those bytes as ``received`` and
then reads the socket itself; hypercorn gets them through
:class:`ReplayStream`.

Only a request that both servers would take as a WebSocket handshake is
routed to the fast transport: ``GET``, HTTP/1.1, the path (query aside)
equal to ``websocket_path``, ``Connection`` naming ``upgrade`` among its
tokens and ``Upgrade`` being ``websocket`` (case-insensitive; the last of
each header counts, as in wsproto and hypercorn). Anything else goes to
hypercorn, which may still serve it over ASGI: routing there is never wrong,
only slower.
"""

from __future__ import annotations

import enum
import re

import trio

__all__ = ["MAX_HEAD", "ReplayStream", "Route", "receive_head", "route"]

#: The most bytes a request head may take until it is routed (h11's and hypercorn's own limit).
MAX_HEAD = 16 * 1024


class Route(enum.Enum):
    MORE = "more"  # undecided: read on
    WEBSOCKET = "websocket"  # the fast transport
    HTTP = "http"  # hypercorn
    TOO_LARGE = "too large"  # no decision within MAX_HEAD bytes: 431


_HEAD_END = re.compile(rb"\n\r?\n")  # as h11 finds it
_LINE_END = re.compile(rb"\r?\n")


def route(data: bytes, websocket_path: str, max_head: int = MAX_HEAD) -> Route:
    """Where the connection whose first bytes are ``data`` goes.

    A request line that cannot be ``GET <websocket_path>`` decides for HTTP
    at once (hypercorn then applies its own limits to the rest); a possible
    WebSocket handshake is read to the end of its head, which must fit in
    ``max_head`` bytes.
    """
    line_end = data.find(b"\n")
    line = data if line_end < 0 else data[:line_end].removesuffix(b"\r")
    prefix = b"GET " + websocket_path.encode("utf-8")
    if not prefix.startswith(line[: len(prefix)]):
        return Route.HTTP
    if line_end < 0:
        if line[len(prefix) : len(prefix) + 1] not in (b"", b" ", b"?"):
            return Route.HTTP  # another path that starts the same
        return Route.TOO_LARGE if len(data) >= max_head else Route.MORE
    parts = line.split(b" ")
    if len(parts) != 3 or parts[1].partition(b"?")[0] != prefix[4:] or parts[2] != b"HTTP/1.1":
        return Route.HTTP
    end = _HEAD_END.search(data, line_end)
    if end is None:
        return Route.TOO_LARGE if len(data) >= max_head else Route.MORE
    if end.end() > max_head:
        return Route.TOO_LARGE
    connection: list[bytes] = []
    upgrade = b""
    headers = data[line_end + 1 : end.start()]
    for header in _LINE_END.split(headers) if headers else ():
        name, colon, value = header.partition(b":")
        if not colon or not name or name != name.strip():
            return Route.HTTP  # malformed, or a folded line: hypercorn's to answer
        name = name.lower()
        if name == b"connection":
            connection = [token.strip().lower() for token in value.split(b",")]
        elif name == b"upgrade":
            upgrade = value.strip().lower()
    if b"upgrade" in connection and upgrade == b"websocket":
        return Route.WEBSOCKET
    return Route.HTTP


class ReplayStream(trio.abc.HalfCloseableStream):
    """A socket stream whose first bytes were already read (to route the
    connection): it hands them out again, then reads on. ``socket`` is the
    stream's, so the peer's address and the transports' direct socket writes
    still apply."""

    def __init__(self, stream: trio.SocketStream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix
        self.socket = stream.socket

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            await trio.lowlevel.checkpoint()
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        self._prefix = b""
        await self._stream.aclose()


_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"x-content-type-options: nosniff\r\ncontent-length: 22\r\nconnection: close\r\n\r\nrequest head too large"
)


async def receive_head(
    stream: trio.SocketStream, websocket_path: str, timeout: float, max_head: int = MAX_HEAD
) -> tuple[Route, bytes] | None:
    """Read from ``stream`` until :func:`route` decides: the route and every
    byte read, or ``None`` once the connection is closed.

    It is closed when the peer ends it or the bytes do not decide within
    ``timeout`` seconds, and after a 431 answer when a head would not fit in
    ``max_head`` bytes. Nothing is raised for what the peer does.
    """
    data = b""
    decided = Route.MORE
    with trio.move_on_after(timeout):
        try:
            while decided is Route.MORE:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                data += chunk
                decided = route(data, websocket_path, max_head)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    if decided is Route.WEBSOCKET or decided is Route.HTTP:
        return decided, data
    if decided is Route.TOO_LARGE:
        with trio.move_on_after(1.0):  # time for the answer to leave before the rest of the head is refused
            try:
                await stream.send_all(_TOO_LARGE)
                await stream.send_eof()
                while await stream.receive_some(65536):
                    pass
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
    await trio.aclose_forcefully(stream)
    return None
