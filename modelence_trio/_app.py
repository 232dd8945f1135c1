"""Modelence-style apps: modules of channels and methods, one ASGI app, and ``App.serve``."""

from __future__ import annotations

import contextlib
import email.utils
import functools
import logging
import math
import mimetypes
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from functools import partial
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import hypercorn.config
import hypercorn.trio
import trio

from . import _hypercorn
from ._asgi import Receive, Scope, Send, serve_asgi_websocket
from ._auth import Authenticator
from ._backend import FanoutBackend
from ._channel import ServerChannel
from ._config import HubConfig
from ._connect import ServedConnections
from ._counters import OTHER
from ._dashboard import CATEGORY as DASHBOARD_CATEGORY
from ._dashboard import PAGE_PATH as DASHBOARD_PATH
from ._dashboard import SCRIPT_PATH as DASHBOARD_SCRIPT
from ._dashboard import asset as dashboard_asset
from ._dashboard import dashboard_channel, run_dashboard
from ._fanout import MongoFanout
from ._hub import Hub
from ._listen import bind_listener
from ._methods import HttpResponse, Method, MethodRateLimit, MethodTable, call_method, typed_method
from ._ops import Bind, MetricsEndpoint, healthz, metrics_response, readyz, require_role
from ._route import ReplayStream, Route, receive_head
from ._serve import serve_stream

if TYPE_CHECKING:
    from ._fanout import MongoTarget

__all__ = ["App", "MetricsEndpoint", "Module"]

logger = logging.getLogger("modelence_trio")

METHOD_PREFIX = "/api/_internal/method/"
CLIENT_PREFIX = "/_modelence/"
#: The JavaScript client and its type declarations, served by every app under CLIENT_PREFIX.
CLIENT_FILES = {"modelence.js": "text/javascript", "modelence.d.ts": "text/plain"}


def _methods(methods: Mapping[str, Method]) -> dict[str, Method]:
    return dict(methods)


def _channels(channels: Iterable[ServerChannel[Any]]) -> tuple[ServerChannel[Any], ...]:
    return tuple(channels)


@attrs.frozen
class Module:
    """A named group of channels and methods, as ``new Module(name, {...})`` in Modelence.

    Methods are called as ``<module>.<method>``; mutations and queries differ
    only in intent (both are ``POST`` calls) and share one namespace.

    >>> chat = ServerChannel("chat")
    >>> def send_message(args, ctx):
    ...     chat.broadcast(args["room"], {"text": args["text"]})
    >>> Module("chat", channels=[chat], mutations={"sendMessage": send_message})
    """

    name: str
    channels: tuple[ServerChannel[Any], ...] = attrs.field(default=(), converter=_channels)
    mutations: dict[str, Method] = attrs.field(factory=dict, converter=_methods)
    queries: dict[str, Method] = attrs.field(factory=dict, converter=_methods)

    def __attrs_post_init__(self) -> None:
        if not self.name or "." in self.name or "/" in self.name:
            raise ValueError(f"a module name must be non-empty, without '.' or '/': {self.name!r}")
        for name in (*self.mutations, *self.queries):
            if not name or "." in name or "/" in name:
                raise ValueError(f"method name {name!r} in module {self.name!r} must be non-empty, without '.' or '/'")
        both = self.mutations.keys() & self.queries.keys()
        if both:
            raise ValueError(f"module {self.name!r} has {sorted(both)} as both a mutation and a query")


class App:
    """The whole server of a Modelence-style app (the reference's ``startApp``).

    It is an ASGI application: the WebSocket endpoint at ``websocket_path``,
    the methods at ``POST /api/_internal/method/<module>.<method>``, the
    JavaScript client at ``/_modelence/client.js`` and, if given,
    ``static_dir`` (``index.html`` at ``/``). Serve it with the command line
    ``modelence-trio mymodule:app`` or from a Trio program with
    :meth:`serve`: WebSockets on the fast transport (trio-websocket, as
    :func:`serve_websocket`), everything else through hypercorn, on one port.
    Under ``hypercorn --worker-class trio mymodule:app`` (or another ASGI
    server) its WebSockets go through ASGI: 40% of the deliveries on one busy
    channel, two thirds on many (bench/RESULTS.md).

    With ``mongodb`` (a URI, a ``MongoClient`` or a ``Database``: one client
    may serve the app's own code and ``MongoSessionAuthenticator`` too) or a
    ready ``fanout``, several instances of the app share one MongoDB and
    behave as one server (docs/fanout.md); without, broadcasts stay in this
    process.

    Operations (README, Observability): ``healthz_path`` (default
    ``/healthz``: 200 while the process serves) and ``readyz_path`` (default
    ``/readyz``: 200 or 503 with what is not ready; 503 first on a graceful
    shutdown), ``None`` to turn either off; ``metrics`` (default ``None``:
    no ``/metrics``; a :class:`MetricsEndpoint` says where and for whom);
    ``dashboard_role`` (default ``None``: no dashboard), the role that may
    open the live dashboard at ``/_modelence/dashboard``. These paths come
    before ``static_dir``.

    Example::

        chat = ServerChannel("chat")
        app = App([Module("chat", channels=[chat], mutations={"send": send})],
                  authenticator=MemoryAuthenticator(),
                  config=HubConfig(authenticated_roles=["user"]))
    """

    def __init__(
        self,
        modules: Iterable[Module],
        *,
        authenticator: Authenticator | None = None,
        config: HubConfig = HubConfig(),
        websocket_path: str = "/ws",
        static_dir: str | Path | None = None,
        max_request_size: int = 1024 * 1024,
        request_timeout: float = 30.0,
        methods_per_second: float | None = 50.0,
        mongodb: MongoTarget | None = None,
        fanout: FanoutBackend | None = None,
        metrics: MetricsEndpoint | None = None,
        dashboard_role: str | None = None,
        healthz_path: str | None = "/healthz",
        readyz_path: str | None = "/readyz",
    ) -> None:
        self.modules = tuple(modules)
        channels: dict[str, str] = {}
        self._methods: dict[str, Method] = {}
        names: set[str] = set()
        for module in self.modules:
            if module.name in names:
                raise ValueError(f"two modules are named {module.name!r}")
            names.add(module.name)
            for channel in module.channels:
                if channel.category in channels:
                    raise ValueError(
                        f"channel category {channel.category!r} is declared by module "
                        f"{channels[channel.category]!r} and by module {module.name!r}"
                    )
                channels[channel.category] = module.name
            for name, method in (*module.mutations.items(), *module.queries.items()):
                self._methods[f"{module.name}.{name}"] = typed_method(method)
        if not websocket_path.startswith("/"):
            raise ValueError(f"websocket_path must start with '/': {websocket_path!r}")
        if mongodb is not None:
            if fanout is not None:
                raise ValueError("give the App mongodb or fanout, not both")
            fanout = MongoFanout(mongodb)
        every_channel = [c for m in self.modules for c in m.channels]
        if dashboard_role is not None:
            if DASHBOARD_CATEGORY in channels:
                raise ValueError(f"the channel category {DASHBOARD_CATEGORY!r} is the dashboard's")
            every_channel.append(dashboard_channel(dashboard_role))
        for path in (healthz_path, readyz_path):
            if path is not None and not path.startswith("/"):
                raise ValueError(f"a health path must start with '/': {path!r}")
        self.dashboard_role = dashboard_role
        self.healthz_path = healthz_path
        self.readyz_path = readyz_path
        self.metrics = metrics
        self.hub = Hub(every_channel, authenticator=authenticator, config=config, fanout=fanout)
        self.websocket_path = websocket_path
        self.static_dir = Path(static_dir).resolve() if static_dir is not None else None
        if self.static_dir is not None and not self.static_dir.is_dir():
            raise ValueError(f"static_dir is not a directory: {self.static_dir}")
        self.max_request_size = max_request_size
        self.request_timeout = request_timeout
        self._rate_limit = MethodRateLimit(methods_per_second) if methods_per_second is not None else None
        self.hub.methods = MethodTable(self._methods, self._rate_limit)  # ``call`` over the socket too
        self._http_requests = 0  # under way, for the drain at shutdown

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self._methods)

    @property
    def metrics(self) -> MetricsEndpoint | None:
        """Where and for whom ``/metrics`` is served (``None``: it is not)."""
        return self._metrics

    @metrics.setter
    def metrics(self, endpoint: MetricsEndpoint | None) -> None:
        """Change it before the app serves (``modelence-trio --metrics-bind`` does)."""
        self._metrics = endpoint
        #: The metrics bind as it listens (its port, once ``serve`` bound port 0).
        self._metrics_bind: Bind | None = endpoint.bind if endpoint is not None else None
        bind_paths = {self.healthz_path, self.readyz_path, endpoint.path if endpoint is not None else None}
        self._metrics_bind_paths = frozenset(path for path in bind_paths if path is not None)
        paths = bind_paths | ({DASHBOARD_PATH, DASHBOARD_SCRIPT} if self.dashboard_role is not None else set())
        self._ops_paths = frozenset(path for path in paths if path is not None)

    # --- serving it ---------------------------------------------------------------

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve the app in this Trio program, on one port: WebSockets on the
        fast transport, everything else through hypercorn.

        It accepts each connection itself and reads its request head (at
        most 16 KiB, within ``HubConfig.handshake_timeout``; a longer head is
        answered 431, a slower one closed). A WebSocket handshake to
        ``websocket_path`` is served as :func:`serve_websocket` serves it
        (trio-websocket with the fast path: what the bare hub delivers, 2.5
        times as much as through ASGI on one busy channel); every other
        request goes to hypercorn's HTTP server for that connection, and is
        answered as ``hypercorn`` would (keep-alive, h2c, the app's routes
        over ASGI). The app's background
        work (the hub, the dashboard) runs as under ASGI's lifespan. When
        hypercorn's internals cannot be used for that (an untested version,
        or ``MODELENCE_TRIO_PUBLIC_API=1``), it serves everything through
        ``hypercorn.trio.serve`` instead, WebSockets over ASGI, with one
        warning.

        ``nursery.start(app.serve, host, port)`` returns the URLs it listens
        on (port 0 picks a free one), the metrics bind's last if it has one.
        The port is bound before anything else starts, so a busy one raises
        ``OSError`` (``errno.EADDRINUSE``) at once, unwrapped, with the hub
        not started.

        When ``shutdown_trigger`` returns, the shutdown is graceful
        (:meth:`drain`): ``/readyz`` answers 503 at once; after
        ``HubConfig.drain_delay`` new WebSockets get 503 and every connection
        flushes what is queued and closes with 1001, HTTP requests under way
        are answered (all within ``HubConfig.shutdown_grace``), and then the
        server stops at once: nothing else is waited for (idle keep-alive
        connections are closed). With nothing queued and no drain delay that
        is well under a second. Cancelling this task shuts down the same
        way, but at once: it stops listening, HTTP connections end, and its
        WebSockets flush and close with 1001 (within ``shutdown_grace``), even
        on a hub that another server shares and goes on running.

        A connection that sends nothing (no request, no body, no pong to the
        heartbeat pings) for hypercorn's ``read_timeout`` is closed (the
        heartbeat's interval, timeout and ``close_timeout`` added up; 60 s or
        ``request_timeout`` without heartbeats): slow-loris requests included.

        Raises:
            OSError: ``host:port`` cannot be bound (see ``errno``); or the
                metrics bind, whose address is then the error's ``filename``.
        """
        sockets = [bind_listener(host, port)]
        with contextlib.ExitStack() as closing:
            closing.enter_context(sockets[0])
            metrics_bind = self.metrics.bind if self.metrics is not None else None
            if metrics_bind is not None:
                sockets.append(closing.enter_context(_bind(metrics_bind)))
            problem = _hypercorn.connection_server_problem()
            if problem is not None:
                _hypercorn.warn_connection_server_off(problem)
                await self._serve_hypercorn(sockets, shutdown_trigger, task_status=task_status)
            else:
                await self._serve_routed(sockets, shutdown_trigger, task_status=task_status)

    def _hypercorn_config(self) -> hypercorn.config.Config:
        """hypercorn's settings for this app (its binds aside)."""
        config = hypercorn.config.Config()
        hub = self.hub.config
        config.websocket_max_message_size = hub.max_frame_size
        config.websocket_ping_interval = hub.heartbeat_interval
        # A connection that sends nothing (no request, no body, no pong to
        # those pings) for this long is closed: slow-loris requests included.
        if hub.heartbeat_interval is not None:
            config.read_timeout = math.ceil(hub.heartbeat_interval + hub.heartbeat_timeout + hub.close_timeout)
        else:
            config.read_timeout = math.ceil(max(60.0, self.request_timeout))
        config.graceful_timeout = hub.shutdown_grace
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        return config

    async def _serve_routed(
        self,
        sockets: list[socket.socket],
        shutdown_trigger: Callable[[], Awaitable[object]] | None,
        *,
        task_status: trio.TaskStatus[list[str]],
    ) -> None:
        """``serve``, accepting connections itself (see there), on its port
        and (``sockets[1]``, if any) the metrics bind."""
        config = self._hypercorn_config()
        http = _hypercorn.ConnectionServer(self, config)
        for sock in sockets:
            sock.listen(config.backlog)
        urls = [f"http://{_address(sock)}" for sock in sockets]
        if len(sockets) > 1:
            self._metrics_bind = Bind.parse(urls[-1].removeprefix("http://"))  # the port it got, if 0
        listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(sock)) for sock in sockets]
        served = ServedConnections()
        hub, timeout = self.hub, self.hub.config.handshake_timeout

        async def route(stream: trio.SocketStream) -> None:
            try:
                head = await receive_head(stream, self.websocket_path, timeout)
                if head is None:
                    return  # closed
                where, data = head
                if where is Route.WEBSOCKET:
                    await serve_stream(hub, stream, served=served, received=data)  # read directly from the socket
                else:
                    await http.serve(ReplayStream(stream, data))
            except Exception:
                logger.exception("connection failed")
            finally:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(stream)

        async def ops_only(stream: trio.SocketStream) -> None:
            try:
                await http.serve(stream)  # serves no WebSocket: the app answers 1008 there
            except Exception:
                logger.exception("connection failed")

        async def end_connections_when_cancelled() -> None:
            try:
                await trio.sleep_forever()
            finally:
                served.stop(hub)  # its own WebSockets, even on a shared hub; handshakes under way get 503

        async with trio.open_nursery() as nursery:
            await nursery.start(self._run_background)
            nursery.start_soon(end_connections_when_cancelled)
            await nursery.start(trio.serve_listeners, route, listeners[:1])
            if len(listeners) > 1:
                await nursery.start(trio.serve_listeners, ops_only, listeners[1:])
            task_status.started(urls)
            await (shutdown_trigger or trio.sleep_forever)()
            await self.drain()
            nursery.cancel_scope.cancel()  # what is left is nobody's: idle keep-alive connections

    async def _serve_hypercorn(
        self,
        sockets: list[socket.socket],
        shutdown_trigger: Callable[[], Awaitable[object]] | None,
        *,
        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """``serve`` through ``hypercorn.trio.serve`` alone (its public API),
        WebSockets over ASGI as under ``hypercorn --worker-class trio``; on
        its port and (``sockets[1]``, if any) the metrics bind."""
        config = self._hypercorn_config()
        config.bind = [f"fd://{sock.detach()}" for sock in sockets]  # hypercorn listens on them

        async def drain_then_stop() -> None:
            await (shutdown_trigger or trio.sleep_forever)()
            await self.drain()
            # What is left is nobody's: idle keep-alive connections and the
            # ping tasks of closed WebSockets (each sleeps out a whole
            # websocket_ping_interval). hypercorn reads this once the trigger
            # returns, as the deadline for its connections.
            config.graceful_timeout = 0

        async with trio.open_nursery() as nursery:
            serving = partial(
                hypercorn.trio.serve,
                self,  # type: ignore[arg-type]  # hypercorn's Framework type wants its own TypedDicts
                config,
                shutdown_trigger=drain_then_stop,
                mode="asgi",
            )
            urls: list[str] = await nursery.start(serving)
            if len(sockets) > 1:
                self._metrics_bind = Bind.parse(urls[-1].removeprefix("http://"))  # the port it got, if 0
            task_status.started(urls)

    async def drain(self) -> None:
        """Shut the hub down in order (``Hub.drain``: ``/readyz`` answers 503
        first; after ``drain_delay`` new WebSockets get 503 and each
        connection flushes and closes with 1001) and wait until every
        WebSocket has closed and every HTTP request under way has been
        answered, at most ``shutdown_grace`` (plus ``close_timeout`` for a
        write that was cut off at that deadline). What ``serve`` does when its
        trigger returns; for another ASGI server, call it from that server's
        shutdown hook."""
        await self.hub.drain()
        with trio.move_on_after(self.hub.config.shutdown_grace + self.hub.config.close_timeout):
            while self.hub.statistics().connections or self._http_requests:
                await trio.sleep(0.01)

    # --- ASGI -----------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            self._http_requests += 1
            try:
                await self._http(scope, receive, send)
            finally:
                self._http_requests -= 1
        elif kind == "websocket":
            if scope["path"] != self.websocket_path or self._on_metrics_bind(scope):
                await send({"type": "websocket.close", "code": 1008, "reason": "no WebSocket endpoint here"})
                return
            if not self.hub.running:
                logger.warning("a WebSocket arrived but the hub is not running: serve the app with ASGI lifespan on")
            await serve_asgi_websocket(self.hub, scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        """ASGI lifespan: the app's background work runs in a nursery owned by the server's lifespan task."""
        if (await receive())["type"] != "lifespan.startup":
            return
        async with trio.open_nursery() as nursery:
            await nursery.start(self._run_background)
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
            nursery.cancel_scope.cancel()
        await send({"type": "lifespan.shutdown.complete"})

    async def _run_background(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The app's background work (the hub's heartbeats and session
        checks, the dashboard) until cancelled; started once the hub is ready.
        Under ASGI's lifespan, and ``serve`` runs it itself."""
        async with trio.open_nursery() as nursery:
            if not self.hub.running:  # else it is shared, and run by its owner
                await nursery.start(self.hub.run)
            if self.dashboard_role is not None:
                nursery.start_soon(run_dashboard, self.hub)
            task_status.started()
            await trio.sleep_forever()

    def _on_metrics_bind(self, scope: Scope) -> bool:
        """Whether the request came in on the metrics bind (which serves nothing else)."""
        bind = self._metrics_bind
        return bind is not None and bind.serves(scope.get("server"))

    async def _ops(self, scope: Scope, path: str) -> HttpResponse | None:
        """The response for an operations path, or ``None`` if ``path`` is not one."""
        metrics = self.metrics
        if path == self.healthz_path:
            return healthz()
        if path == self.readyz_path:
            return readyz(self.hub)
        headers, target = list(scope["headers"]), _target(scope)
        if metrics is not None and path == metrics.path:
            if metrics.bind is not None and not self._on_metrics_bind(scope):
                return HttpResponse(404, b"not found")
            return await metrics_response(self.hub, metrics, target, headers)
        if self.dashboard_role is not None and path == DASHBOARD_PATH:
            refusal = await require_role(self.hub, self.dashboard_role, target, headers)
            if refusal is not None:
                return refusal
            return HttpResponse(200, dashboard_asset("dashboard.html"), _DASHBOARD_HEADERS)
        if self.dashboard_role is not None and path == DASHBOARD_SCRIPT:
            return _static(dashboard_asset("dashboard.js"), "text/javascript")
        return None

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        verb: str = scope["method"]
        on_metrics_bind = self._on_metrics_bind(scope)
        if on_metrics_bind or path in self._ops_paths:
            if on_metrics_bind and path not in self._metrics_bind_paths:
                response = HttpResponse(404, b"not found")  # the metrics bind serves nothing else
            elif verb not in ("GET", "HEAD"):
                response = HttpResponse(405, b"method not allowed", ((b"allow", b"GET, HEAD"),))
            else:
                response = await self._ops(scope, path) or HttpResponse(404, b"not found")
            await _respond(send, response, head=verb == "HEAD")
            return
        if path.startswith(METHOD_PREFIX):
            started = time.perf_counter()
            response = await self._method(scope, receive, path, verb)
            name = path.removeprefix(METHOD_PREFIX)
            label = name if name in self._methods else OTHER
            self.hub.counters.method_call(label, response.status, time.perf_counter() - started)
            await _respond(send, response, head=verb == "HEAD")
            return
        if verb not in ("GET", "HEAD"):
            response = HttpResponse(405, b"method not allowed", ((b"allow", b"GET, HEAD"),))
        else:
            found = self._file(path)
            if isinstance(found, Path):
                await _send_file(send, found, scope["headers"], head=verb == "HEAD")
                return
            response = found
        await _respond(send, response, head=verb == "HEAD")

    async def _method(self, scope: Scope, receive: Receive, path: str, verb: str) -> HttpResponse:
        if verb != "POST":
            return HttpResponse(405, b"methods are called with POST", ((b"allow", b"POST"),))
        body: bytes | int | None = None
        with trio.move_on_after(self.request_timeout):
            body = await _read_body(receive, self.max_request_size)
        if body is None:
            return HttpResponse(408, b"the request body did not arrive in time")
        if isinstance(body, int):
            return HttpResponse(413, b"request body too large")
        client = scope.get("client")
        return await call_method(
            self.hub,
            self._methods,
            path.removeprefix(METHOD_PREFIX),
            scope["headers"],
            body,
            client=str(client[0]) if client else None,
            rate_limit=self._rate_limit,
        )

    def _file(self, path: str) -> HttpResponse | Path:
        """The response for ``GET path``, or the static file to stream."""
        if path.startswith(CLIENT_PREFIX) and path.removeprefix(CLIENT_PREFIX) in CLIENT_FILES:
            name = path.removeprefix(CLIENT_PREFIX)
            return _static(_client_file(name), CLIENT_FILES[name])
        not_found = HttpResponse(404, b"not found")
        if self.static_dir is None:
            return not_found
        relative = path.lstrip("/") or "index.html"
        segments = relative.split("/")
        if any(s.startswith(".") or len(s) > 255 or "\x00" in s or "\\" in s for s in segments):
            return not_found  # dotfiles and dot-folders (.env, .git), and names no file system has
        try:
            target = (self.static_dir / relative).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.is_relative_to(self.static_dir) or not target.is_file():
                return not_found
        except (OSError, ValueError):
            return not_found
        return target


#: The dashboard page: never cached, never framed, never a referrer (its URL may carry ``?token=``).
_DASHBOARD_HEADERS = (
    (b"content-type", b"text/html; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; "
        b"img-src 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
)


def _bind(bind: Bind) -> socket.socket:
    """A socket bound to ``bind`` (not listening yet), as hypercorn makes it.

    Raises:
        OSError: it cannot be bound; its ``filename`` is the bind.
    """
    config = hypercorn.config.Config()
    config.bind = [str(bind)]
    try:
        return config.create_sockets().insecure_sockets[0]
    except OSError as exc:
        exc.filename = str(bind)  # which of the app's binds failed
        raise


def _address(sock: socket.socket) -> str:
    """Where ``sock`` listens, as hypercorn writes it in its URLs."""
    name = sock.getsockname()
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    return f"{name[0]}:{name[1]}"


def _target(scope: Scope) -> str:
    """The request target (path and query), as a handshake's: the token may be in the query."""
    target: str = scope.get("path", "/")
    if scope.get("query_string"):
        target += "?" + scope["query_string"].decode("latin-1")
    return target


@functools.cache
def _client_file(name: str) -> bytes:
    return resources.files("modelence_trio").joinpath("client", name).read_bytes()  # once per process


def _static(body: bytes, content_type: str) -> HttpResponse:
    if content_type.startswith("text/"):
        content_type += "; charset=utf-8"
    return HttpResponse(200, body, ((b"content-type", content_type.encode()), (b"cache-control", b"no-cache")))


async def _read_body(receive: Receive, limit: int) -> bytes | int:
    """The request body, or its size so far once it grows past ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b""
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return size
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


#: On every response the App makes: browsers must not guess a content type.
NOSNIFF = (b"x-content-type-options", b"nosniff")
_FILE_CHUNK = 64 * 1024


async def _respond(send: Send, response: HttpResponse, *, head: bool = False) -> None:
    headers = list(response.headers)
    if not any(name == b"content-type" for name, _ in headers):
        headers.append((b"content-type", b"text/plain; charset=utf-8"))
    headers.append((b"content-length", str(len(response.body)).encode()))
    headers.append(NOSNIFF)
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else response.body})


async def _send_file(send: Send, path: Path, request_headers: Iterable[tuple[bytes, bytes]], *, head: bool) -> None:
    """Stream a static file in chunks read in a worker thread (the event loop
    never reads a whole file), with validators: 304 when ``If-None-Match``
    names the current version."""
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if content_type.startswith("text/"):
        content_type += "; charset=utf-8"
    try:
        file = await trio.open_file(path, "rb")
    except OSError:
        await _respond(send, HttpResponse(404, b"not found"))
        return
    async with file:
        stat = await trio.to_thread.run_sync(os.fstat, file.fileno())
        etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'.encode()
        headers = [
            (b"content-type", content_type.encode()),
            (b"cache-control", b"no-cache"),
            (b"etag", etag),
            (b"last-modified", email.utils.formatdate(stat.st_mtime, usegmt=True).encode()),
            NOSNIFF,
        ]
        if _matches(request_headers, etag):
            await send({"type": "http.response.start", "status": 304, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        headers.append((b"content-length", str(stat.st_size).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        remaining = 0 if head else stat.st_size
        while remaining > 0:
            chunk = await file.read(min(_FILE_CHUNK, remaining))
            remaining = remaining - len(chunk) if chunk else 0  # a file that shrank ends short
            await send({"type": "http.response.body", "body": chunk, "more_body": remaining > 0})
        if head or not stat.st_size:
            await send({"type": "http.response.body", "body": b""})


def _matches(headers: Iterable[tuple[bytes, bytes]], etag: bytes) -> bool:
    for name, value in headers:
        if name.lower() == b"if-none-match":
            tags = [tag.strip().removeprefix(b"W/") for tag in value.split(b",")]
            return etag in tags or b"*" in tags
    return False
