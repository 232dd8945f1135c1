from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import trio
import trio_websocket

from modelence_trio import (
    App,
    Authenticator,
    Hub,
    HubConfig,
    Module,
    ServerChannel,
    _hypercorn,
    _trio_websocket,
    serve_websocket,
)
from modelence_trio._backend import FanoutBackend
from modelence_trio._listen import bind_listener


async def receive_json(ws: trio_websocket.WebSocketConnection, timeout: float = 5) -> dict[str, Any]:
    """The next frame as JSON, failing the test rather than hanging."""
    with trio.fail_after(timeout):
        message = await ws.get_message()
    assert isinstance(message, str)
    frame = json.loads(message)
    assert isinstance(frame, dict)
    return frame


async def send_json(ws: trio_websocket.WebSocketConnection, frame: dict[str, Any]) -> None:
    await ws.send_message(json.dumps(frame))


async def request(ws: trio_websocket.WebSocketConnection, frame: dict[str, Any]) -> dict[str, Any]:
    await send_json(ws, frame)
    return await receive_json(ws)


#: Every WebSocket transport; tests parametrised over it run the same scenario against each:
#: the bare hub's ``serve_websocket``, the App under hypercorn alone (ASGI, as plain
#: ``hypercorn`` serves it) and ``App.serve`` (WebSockets routed to the fast transport).
TRANSPORTS = ["trio-websocket", "hypercorn", "app"]
#: The same, plus each transport's public-API fallback (the fast paths' internals unused;
#: ``App.serve``'s is hypercorn alone, as "hypercorn-public").
ALL_PATHS = [*TRANSPORTS, "trio-websocket-public", "hypercorn-public"]


async def serve_app(nursery: trio.Nursery, app: App, transport: str) -> list[str]:
    """Serve ``app`` on a free loopback port with ``transport`` ("hypercorn":
    hypercorn alone, as ``App.serve``'s fallback; "app": ``App.serve``); its URLs."""
    if transport == "hypercorn":
        urls: list[str] = await nursery.start(app._serve_hypercorn, [bind_listener("127.0.0.1", 0)], None)
        return urls
    assert transport == "app", transport
    urls = await nursery.start(app.serve, "127.0.0.1", 0)
    return urls


async def start_server(
    nursery: trio.Nursery,
    transport: str,
    channels: Sequence[ServerChannel[Any]],
    *,
    authenticator: Authenticator | None = None,
    config: HubConfig = HubConfig(),
    fanout: FanoutBackend | None = None,
) -> tuple[str, Hub]:
    """Serve ``channels`` over real sockets with ``transport``; the ``ws://`` URL and the hub.

    A ``-public`` transport turns its fast path off for the rest of the test
    (conftest turns it back on).
    """
    if transport.endswith("-public"):
        transport = transport.removesuffix("-public")
        if transport == "trio-websocket":
            _trio_websocket.ENABLED = False
        else:
            _hypercorn.ENABLED = False
    if transport == "trio-websocket":
        hub = Hub(channels, authenticator=authenticator, config=config, fanout=fanout)
        port = await nursery.start(serve_websocket, hub, "127.0.0.1", 0)
        return f"ws://127.0.0.1:{port}/ws", hub
    app = App([Module("test", channels=channels)], authenticator=authenticator, config=config, fanout=fanout)
    urls = await serve_app(nursery, app, transport)
    return urls[0].replace("http://", "ws://") + "/ws", app.hub


async def expect_close(
    ws: trio_websocket.WebSocketConnection, code: int, timeout: float = 10, *, after_presence: bool = False
) -> None:
    """The server closes ``ws`` with ``code`` next (after any frames already
    read; ``after_presence``: and after any presence frames still to come)."""
    with trio.fail_after(timeout):
        try:
            while True:
                message = await ws.get_message()
                if not (after_presence and json.loads(message)["type"].startswith("presence_")):
                    break
        except trio_websocket.ConnectionClosed as exc:
            assert exc.reason is not None
            assert exc.reason.code == code
        else:
            raise AssertionError(f"expected close {code}, got {message!r}")


class RawClient:
    """A WebSocket client on wsproto over a TCP stream: every byte the server
    sends is parsed here, so a test sees exactly what is on the wire."""

    def __init__(self, stream: trio.SocketStream, extensions: Sequence[Any] = ()) -> None:
        import wsproto

        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.extensions = list(extensions)
        self.accepted: Any = None  # the AcceptConnection event
        self.texts: list[str] = []
        self.closes: list[int] = []
        self.close_reasons: list[str | None] = []
        self.rejected: Any = None  # the RejectConnection event (an HTTP answer instead of 101)
        self.eof = False
        self._parts: list[str] = []

    @classmethod
    async def connect(
        cls, url: str, extensions: Sequence[Any] = (), *, headers: Sequence[tuple[str, str]] = (), welcome: bool = True
    ) -> RawClient:
        """Open the handshake; with ``welcome``, read until the first frame."""
        from urllib.parse import urlsplit

        from wsproto.events import Request

        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        client = cls(await trio.open_tcp_stream(parts.hostname, parts.port), extensions)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        extra = [(name.encode(), value.encode()) for name, value in headers]
        request = Request(host=parts.netloc, target=target, extensions=client.extensions, extra_headers=extra)
        await client.stream.send_all(client.ws.send(request))
        if welcome:
            await client.read_until(lambda: client.texts)  # the welcome
        return client

    async def send_text(self, text: str) -> None:
        from wsproto.events import TextMessage

        await self.stream.send_all(self.ws.send(TextMessage(text)))

    async def next_events(self) -> list[Any] | None:
        """One read, and the events wsproto makes of it, for a test that answers
        pings itself; close codes are noted in ``closes``. ``None`` at EOF."""
        from wsproto.events import CloseConnection

        data = await self.stream.receive_some(65536)
        if not data:
            self.eof = True
            return None
        self.ws.receive_data(data)
        events = list(self.ws.events())
        self.closes += [event.code for event in events if isinstance(event, CloseConnection)]
        return events

    async def read_until(self, done: Any, timeout: float = 15) -> None:
        """Read and parse until ``done()`` or EOF; a close frame is answered."""
        from wsproto.events import AcceptConnection, CloseConnection, Ping, RejectConnection, RejectData, TextMessage

        with trio.fail_after(timeout):
            while not done() and not self.eof:
                data = await self.stream.receive_some(65536)
                if not data:
                    self.eof = True
                    return
                self.ws.receive_data(data)
                for event in self.ws.events():
                    if isinstance(event, TextMessage):
                        self._parts.append(event.data)
                        if event.message_finished:
                            self.texts.append("".join(self._parts))
                            self._parts.clear()
                    elif isinstance(event, CloseConnection):
                        self.closes.append(event.code)
                        self.close_reasons.append(event.reason)
                        await self.stream.send_all(self.ws.send(event.response()))
                    elif isinstance(event, RejectConnection):
                        self.rejected = event
                    elif isinstance(event, RejectData):
                        pass
                    elif isinstance(event, AcceptConnection):
                        self.accepted = event
                    elif isinstance(event, Ping):
                        await self.stream.send_all(self.ws.send(event.response()))
                    else:
                        raise AssertionError(f"unexpected {event!r}")


class StepCounter(trio.abc.Instrument):
    """Counts the steps of the tasks it watches: each step is a wake-up."""

    def __init__(self, tasks: Iterable[trio.lowlevel.Task] = ()) -> None:
        self.tasks = set(tasks)
        self.count = 0

    def watch(self, task: trio.lowlevel.Task) -> None:
        self.tasks.add(task)

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task in self.tasks:
            self.count += 1
