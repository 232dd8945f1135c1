"""Everything modelence-trio does below hypercorn's public API, in one place.

Two things. ``App.serve`` accepts connections itself and hands those that
are not its WebSocket endpoint's to hypercorn's HTTP server for one
connection (:class:`ConnectionServer`: hypercorn's ``TCPServer``, as
``hypercorn.trio.serve`` runs it for each connection it accepts); when that
cannot be used (:func:`connection_server_problem`), ``App.serve`` runs
``hypercorn.trio.serve`` for everything instead, as before.

And for WebSockets served through ASGI under hypercorn (plain ``hypercorn``,
or that fallback): ASGI hides the WebSocket's framing from the app, and under hypercorn that
costs three things this adapter wins back, per connection:

- **Speed.** A batch of frames, encoded once per broadcast, is written as one
  block through hypercorn's own stream writer (``WSStream.send``, under its
  send lock, so it never interleaves with hypercorn's pongs and close
  frames) instead of one ``websocket.send``, one framing and one system call
  per frame.
- **No permessage-deflate.** hypercorn would negotiate it, and inflates a
  whole compressed frame before any limit applies (a 65 KB frame became
  64 MiB). The extension offer is dropped before the handshake is answered.
- **Bounded input.** hypercorn's message buffer keeps growing after its own
  1009 close, for as long as the peer sends. Ours counts UTF-8 bytes, holds
  nothing once the limit is passed or the connection is closing, and tells
  the transport, so the hub ends the connection too.

The internals are those of the tested versions (``TESTED``, pinned in
pyproject.toml). :func:`connection_server_problem` probes the first once per
process. :func:`attach` probes the others per connection; when they differ,
or ``ENABLED`` is false (environment: ``MODELENCE_TRIO_PUBLIC_API=1``), it
returns ``None`` and the transport uses plain ASGI messages instead, with one
warning: correct, slower, and without the two protections above (hypercorn's
own ``websocket_max_message_size`` still bounds a message).
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import Any

import hypercorn.config
import trio

__all__ = [
    "ENABLED",
    "TESTED",
    "ConnectionServer",
    "HypercornStream",
    "attach",
    "connection_server_problem",
    "warn_connection_server_off",
]

logger = logging.getLogger("modelence_trio")

TESTED = (0, 17), (0, 18)  # the minor versions whose internals this module was tested against
ENABLED = os.environ.get("MODELENCE_TRIO_PUBLIC_API", "") in ("", "0")

try:  # the internals used below; any difference means the public path
    from hypercorn.events import Closed
    from hypercorn.protocol.events import Data, StreamClosed
    from hypercorn.protocol.h11 import H11Protocol
    from hypercorn.protocol.ws_stream import ASGIWebsocketState, FrameTooLargeError, WebsocketBuffer, WSStream

    _import_problem = None
except ImportError as exc:  # pragma: no cover - a hypercorn without them
    _import_problem = f"hypercorn's internals moved ({exc})"

try:  # and those of the per-connection server
    from hypercorn.app_wrappers import ASGIWrapper
    from hypercorn.trio.tcp_server import TCPServer
    from hypercorn.trio.worker_context import WorkerContext

    _server_import_problem = None
except ImportError as exc:  # pragma: no cover - a hypercorn without them
    _server_import_problem = f"hypercorn's internals moved ({exc})"


def _version_problem() -> str | None:
    installed = tuple(int(part) for part in version("hypercorn").split(".")[:2])
    if installed not in TESTED:
        return f"hypercorn {version('hypercorn')} is not a tested version"
    return None


def _probe() -> str | None:
    """Why the WebSocket internals cannot be used in this process, or ``None``."""
    return _import_problem or _version_problem()


#: What ``hypercorn.trio.run.worker_serve`` passes each connection's server, in order.
_SERVER_PARAMETERS = ["app", "config", "context", "state", "stream"]


def _probe_server() -> str | None:
    """Why the per-connection server cannot be used in this process, or ``None``."""
    problem = _server_import_problem or _version_problem()
    if problem is not None:
        return problem
    if list(inspect.signature(TCPServer).parameters) != _SERVER_PARAMETERS:
        return "hypercorn's TCPServer takes other arguments"
    if not callable(getattr(TCPServer, "run", None)):
        return "hypercorn's TCPServer has no run"
    context = WorkerContext(None)
    if not all(callable(getattr(getattr(context, name, None), "set", None)) for name in ("terminate", "terminated")):
        return "hypercorn's WorkerContext has changed"
    return None


_STREAM_ATTRIBUTES = ("send", "stream_id", "closed", "state", "handshake", "buffer")
_problem = _probe()
_server_problem = _probe_server()
_warned = False
_server_warned = False


def connection_server_problem() -> str | None:
    """Why ``App.serve`` cannot accept connections itself (it then serves
    everything with ``hypercorn.trio.serve``), or ``None``: it can."""
    return _server_problem if ENABLED else "MODELENCE_TRIO_PUBLIC_API is set"


class ConnectionServer:
    """hypercorn's HTTP server (HTTP/1.1, h2c, WebSockets over ASGI) for
    connections accepted elsewhere, one :meth:`serve` per connection: what
    ``hypercorn.trio.serve`` runs for each connection it accepts, with
    ``config``. The app's lifespan is not run (``App.serve`` runs the app's
    background work itself)."""

    def __init__(self, app: Any, config: hypercorn.config.Config) -> None:
        self._app = ASGIWrapper(app)
        self._config = config
        self._context = WorkerContext(None)  # no max_requests
        self._state: dict[str, Any] = {}  # the lifespan's state, of which the app keeps none

    async def serve(self, stream: trio.abc.Stream) -> None:
        """Serve HTTP on ``stream`` (it needs a ``socket``) until the
        connection ends; it is closed then."""
        await TCPServer(self._app, self._config, self._context, self._state, stream).run()  # type: ignore[arg-type]


def warn_connection_server_off(problem: str) -> None:
    """``App.serve`` serves everything through hypercorn: one warning per
    process (the adapter's own when the public API was asked for)."""
    global _server_warned
    if not ENABLED:
        _warn_once(problem)
    elif not _server_warned:
        _server_warned = True
        logger.warning("App.serve through hypercorn alone (%s): WebSockets over ASGI, slower", problem)


def _warn_once(problem: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        logger.warning(
            "hypercorn fast path off (%s): plain ASGI messages, permessage-deflate as hypercorn does", problem
        )


class _BoundedBuffer:
    """hypercorn's ``WebsocketBuffer``, counting UTF-8 bytes and holding nothing
    once the limit is passed or ``stop()`` was called (the connection is
    closing): what the peer still sends is parsed and dropped."""

    def __init__(self, max_bytes: int, on_overflow: Callable[[], None]) -> None:
        self.parts: list[str | bytes] = []
        self._text = True
        self.length = 0
        self.max_length = max_bytes
        self._on_overflow = on_overflow
        self.stopped = False

    def extend(self, event: Any) -> None:
        if self.stopped:
            return
        data = event.data
        self._text = isinstance(data, str)
        self.length += len(data.encode("utf-8", "surrogatepass")) if self._text else len(data)
        if self.length > self.max_length:
            self.stop()
            self._on_overflow()
            raise FrameTooLargeError()  # hypercorn answers with its 1009 close frame
        self.parts.append(data)

    def stop(self) -> None:
        self.stopped = True
        self.clear()

    def clear(self) -> None:
        self.parts = []
        self.length = 0

    def to_message(self) -> dict[str, Any]:
        text = bytes_ = None
        if self.stopped:
            pass  # dropped: the transport skips a message with neither
        elif self._text:
            text = "".join(part for part in self.parts if isinstance(part, str))
        else:
            bytes_ = b"".join(part for part in self.parts if isinstance(part, bytes))
        return {"type": "websocket.receive", "bytes": bytes_, "text": text}


class HypercornStream:
    """One hypercorn WebSocket, reached below ASGI (see the module's docstring)."""

    def __init__(self, stream: Any, max_message_bytes: int, on_overflow: Callable[[], None]) -> None:
        self._stream = stream
        self._buffer = _BoundedBuffer(max_message_bytes, on_overflow)

    def before_accept(self) -> None:
        """Refuse permessage-deflate and bound the input; call before ``websocket.accept``."""
        self._stream.handshake.extensions = None  # no offer: nothing negotiated, compressed frames are refused
        self._stream.buffer = self._buffer

    def stop_reading(self) -> None:
        """The connection is closing: drop whatever the peer still sends."""
        self._buffer.stop()

    @property
    def buffered(self) -> int:
        """Bytes of the peer's unfinished message held now."""
        return sum(len(part) for part in self._buffer.parts)

    @property
    def closed(self) -> bool:
        return bool(self._stream.closed)

    async def abort(self) -> None:
        """Close TCP now, without a close frame: a write did not finish.

        Over HTTP/1.1 the stream's protocol hands ``Closed`` to the TCP
        server, which closes the socket at once (a blocked write then
        fails); it takes no lock and puts nothing in the app's queue. Other
        protocols get ``StreamClosed``, which closes the stream.
        """
        self._buffer.stop()
        protocol = getattr(self._stream.send, "__self__", None)
        if isinstance(protocol, H11Protocol):
            await protocol.send(Closed())
        else:
            await self._stream.send(StreamClosed(stream_id=self._stream.stream_id))

    async def write(self, data: bytes) -> None:
        """Write encoded frames (whole ones) through hypercorn's stream writer."""
        await self._stream.send(Data(stream_id=self._stream.stream_id, data=data))


def attach(
    send: Callable[[Any], Awaitable[None]], max_message_bytes: int, on_overflow: Callable[[], None]
) -> HypercornStream | None:
    """The hypercorn stream behind an ASGI ``send``, or ``None`` for the public path.

    ``None`` too for any other ASGI server (its ``send`` is not a WSStream's
    ``app_send``); the warning is only for hypercorn whose internals differ.
    """
    stream: Any = getattr(send, "__self__", None)
    if not type(stream).__module__.startswith("hypercorn."):
        return None  # another ASGI server
    problem = _problem if ENABLED else "MODELENCE_TRIO_PUBLIC_API is set"
    if problem is None and not isinstance(stream, WSStream):
        problem = "hypercorn's send is not a WSStream's"
    if problem is None and not all(hasattr(stream, name) for name in _STREAM_ATTRIBUTES):
        problem = "hypercorn's WSStream has changed"
    if problem is None and not hasattr(stream.handshake, "extensions"):
        problem = "hypercorn's Handshake has changed"
    if problem is not None:
        _warn_once(problem)
        return None
    if stream.state != ASGIWebsocketState.HANDSHAKE or not isinstance(stream.buffer, WebsocketBuffer):
        return None
    return HypercornStream(stream, max_message_bytes, on_overflow)
