"""A TCP proxy that tests cut and restore: a database outage for one instance,
a dropped network for one browser page."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import trio


class Proxy:
    """Forwards TCP to the database until ``cut()``: then every connection is
    dropped and new ones are refused (closed at once) until ``restore()``."""

    def __init__(self, uri: str, *, delay: float = 0.0) -> None:
        """``uri``: where to forward, as ``scheme://host:port/...``; ``delay``:
        seconds each chunk waits before it is forwarded, each way (a slow or
        distant database; ``delay`` may be changed while it runs)."""
        self.delay = delay
        self.requests = 0  # chunks forwarded to the server: about one per request
        where = urlsplit(uri)
        self.target = (where.hostname or "127.0.0.1", where.port or 80)
        self.uri = uri
        self.port = 0
        self.up = True
        self._scopes: set[trio.CancelScope] = set()

    def uri_through(self) -> str:
        where = urlsplit(self.uri)
        netloc = where.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        netloc[-1] = host
        return where._replace(netloc="@".join(netloc)).geturl()

    async def run(self, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._handle, listeners, task_status=task_status)

    def cut(self) -> None:
        self.up = False
        for scope in self._scopes:
            scope.cancel()

    def restore(self) -> None:
        self.up = True

    async def _handle(self, client: trio.SocketStream) -> None:
        if not self.up:
            await trio.aclose_forcefully(client)
            return
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                server = await trio.open_tcp_stream(*self.target)
                async with server, trio.open_nursery() as nursery:
                    nursery.start_soon(self._pipe, client, server, nursery.cancel_scope, self, True)
                    nursery.start_soon(self._pipe, server, client, nursery.cancel_scope, self, False)
            except OSError:
                pass
            finally:
                self._scopes.discard(scope)
        await trio.aclose_forcefully(client)

    @staticmethod
    async def _pipe(
        source: trio.SocketStream, sink: trio.SocketStream, done: trio.CancelScope, proxy: Proxy, upstream: bool
    ) -> None:
        try:
            while data := await source.receive_some(65536):
                proxy.requests += upstream
                if proxy.delay:
                    await trio.sleep(proxy.delay)
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        done.cancel()  # one side ended: so does the connection


@contextmanager
def proxy_thread(uri: str) -> Iterator[tuple[Proxy, Callable[[Callable[[], None]], None]]]:
    """A proxy for synchronous tests (the browser's), running its own Trio loop
    in a thread; yields it and a function that runs a call (``cut``,
    ``restore``) in that loop."""
    proxy = Proxy(uri)
    ready = threading.Event()
    token: list[trio.lowlevel.TrioToken] = []
    stop = threading.Event()

    async def main() -> None:
        token.append(trio.lowlevel.current_trio_token())
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.run)
            ready.set()
            await trio.to_thread.run_sync(stop.wait, abandon_on_cancel=True)
            nursery.cancel_scope.cancel()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    ready.wait(10)

    def call(fn: Callable[[], None]) -> None:
        trio.from_thread.run_sync(fn, trio_token=token[0])

    try:
        yield proxy, call
    finally:
        stop.set()
        thread.join(10)
