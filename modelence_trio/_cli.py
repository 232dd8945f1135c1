"""``modelence-trio APP``: serve an app by import path, shut down gracefully on
SIGTERM; with ``MONGODB_URI`` in the environment, share broadcasts with other
instances through that MongoDB.

A start-up failure the user can fix (a bad import path or option, a busy
port, an invalid ``MONGODB_URI`` or one whose server does not answer) prints
one line, ``modelence-trio: <what is wrong>``, and exits with status 2.

The shutdown, in order (``Hub.drain``): the first SIGTERM or SIGINT makes
``/readyz`` answer 503; ``--drain-delay`` seconds later new WebSockets are
refused and every connection flushes and closes with 1001 (within the hub's
``shutdown_grace``); then the process exits 0. A second signal stops at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from functools import partial
from typing import NoReturn

import attrs
import trio

from ._app import App
from ._fanout import MongoFanout
from ._listen import describe_bind_error
from ._logs import configure_logging
from ._ops import Bind, MetricsEndpoint
from ._startup import StartupError, environment_flag, load_app, parse_mongodb_uri, wait_for_mongodb

__all__ = ["main"]

PROGRAM = "modelence-trio"
ORIGINS_VARIABLE = "MODELENCE_TRIO_ALLOWED_ORIGINS"
ORDERED_VARIABLE = "MODELENCE_TRIO_ORDERED_FANOUT"
#: Exit status of a start-up failure (as argparse's for a bad option).
STARTUP_FAILED = 2

logger = logging.getLogger("modelence_trio.cli")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise StartupError(f"{message} (see {PROGRAM} --help)")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0-65535)")
    return port


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not seconds >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, not {text}")
    return seconds


def parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROGRAM,
        description="Serve a modelence-trio App: WebSockets on the fast transport, everything else through "
        "hypercorn, on one port. SIGTERM or SIGINT drains every connection "
        "(1001) and exits 0; a start-up failure prints one line and exits 2.",
        epilog="environment: MONGODB_URI shares broadcasts with the other instances on that MongoDB; "
        f"{ORDERED_VARIABLE}=1 is --ordered-fanout; {ORIGINS_VARIABLE} adds allowed origins (comma-separated).",
    )
    parser.add_argument("app", help="import path of the App, as module:attribute (default attribute: app)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument(
        "--port", type=_port, default=8000, help="port to listen on; 0 picks a free one (default: %(default)s)"
    )
    parser.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web origin allowed to connect with the user's cookie, e.g. https://app.example.com or "
        "https://*.example.com, '*' for any; repeatable; adds to the app's own and to "
        f"${ORIGINS_VARIABLE} (comma-separated). Default: only the server's own origin",
    )
    parser.add_argument(
        "--ordered-fanout",
        action="store_true",
        help="with MONGODB_URI: every instance delivers every broadcast in one shared order whose numbers "
        "are the messages' offsets, so a client that reconnects to another instance recovers what it "
        "missed (local delivery then waits for MongoDB). Also "
        f"${ORDERED_VARIABLE}=1",
    )
    parser.add_argument(
        "--mongodb-wait",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="how long to wait at start-up for MongoDB to answer before giving up (default: %(default)g)",
    )
    parser.add_argument(
        "--drain-delay",
        type=_seconds,
        metavar="SECONDS",
        help="on SIGTERM, seconds between /readyz turning 503 and connections being closed, for a load "
        "balancer to take this instance out first (default: the app's HubConfig.drain_delay, 0)",
    )
    parser.add_argument(
        "--metrics-bind",
        metavar="HOST:PORT",
        help="also listen on this address (or unix:/path) and serve /metrics there, and only there, with "
        "/healthz and /readyz (default: the app's own MetricsEndpoint; none: no /metrics)",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="json: one JSON object per line, for log shippers (default: %(default)s)",
    )
    return parser


def allow_origins(app: App, origins: Sequence[str]) -> None:
    """Add ``origins`` (blanks skipped) to the app's ``allowed_origins``.

    Raises:
        StartupError: an origin is malformed (the message says which).
    """
    extra = [origin.strip() for origin in origins if origin.strip()]
    if extra:
        try:
            config = attrs.evolve(app.hub.config, allowed_origins=(*app.hub.config.allowed_origins, *extra))
        except ValueError as exc:
            raise StartupError(str(exc)) from None
        app.hub.config = config


def use_metrics_bind(app: App, bind: Bind) -> None:
    """Serve ``/metrics`` on ``bind`` only (the app's path and role kept, if it had any)."""
    app.metrics = attrs.evolve(app.metrics or MetricsEndpoint(), bind=bind)


def use_mongodb(app: App, uri: str | None, *, ordered: bool) -> None:
    """Give the app the MongoDB fan-out of ``uri`` (``MONGODB_URI``), ordered
    or not, unless it has a fan-out of its own.

    Raises:
        StartupError: ``uri`` is invalid, or the ordered mode was asked for
            without a fan-out that has it.
    """
    own = app.hub.fanout
    if uri and own is None:
        parse_mongodb_uri(uri)
        app.hub.use_fanout(MongoFanout.from_uri(uri, ordered=ordered))
        mode = ", ordered" if ordered else ""
        print(f"{PROGRAM}: fan-out through MongoDB (MONGODB_URI{mode})", flush=True)
        return
    if uri:
        print(f"{PROGRAM}: MONGODB_URI not used: the app has a fan-out of its own", flush=True)
    if ordered and own is None:
        raise StartupError("--ordered-fanout needs a fan-out: set MONGODB_URI")
    if ordered and not (isinstance(own, MongoFanout) and own.ordered):
        raise StartupError(
            "--ordered-fanout: the app makes its own fan-out; give it ordered=True there "
            "(App(fanout=MongoFanout(database, ordered=True)))"
        )


async def serve(app: App, host: str, port: int, mongodb_wait: float = 30.0) -> None:
    """Serve ``app`` until SIGTERM or SIGINT: the first drains and closes every
    connection with 1001 within the hub's grace period; a second stops at once.

    Raises:
        StartupError: MongoDB did not answer within ``mongodb_wait`` seconds,
            or ``host:port`` cannot be listened on.
    """
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        stop = trio.Event()
        serving = False
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for signum in signals:
                    logger.warning("%s: %s, shutting down", PROGRAM, signal.Signals(signum).name)
                    if stop.is_set() or not serving:
                        nursery.cancel_scope.cancel()
                    stop.set()

            async def run(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
                await app.serve(host, port, shutdown_trigger=stop.wait, task_status=task_status)
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_signals)
            if isinstance(app.hub.fanout, MongoFanout):
                await wait_for_mongodb(app.hub.fanout.database, mongodb_wait)
            try:
                urls = await nursery.start(run)
            except OSError as exc:
                if exc.filename is not None:  # the metrics bind
                    raise StartupError(f"--metrics-bind {exc.filename}: {exc.strerror or exc}") from None
                raise StartupError(describe_bind_error(exc, host, port)) from None
            serving = True
            metrics = app.metrics
            if metrics is not None and metrics.bind is not None:
                print(f"{PROGRAM}: metrics on {urls.pop()}{metrics.path}", flush=True)
            for url in urls:
                ws = url.replace("http", "ws", 1) + app.websocket_path
                print(f"{PROGRAM}: serving on {url} (WebSocket: {ws})", flush=True)


def typescript_main(argv: Sequence[str]) -> None:
    """``modelence-trio typescript module:app``: the app's types for the browser client."""
    from ._typescript import CLIENT_MODULE, typescript

    parser = _Parser(
        prog=f"{PROGRAM} typescript",
        description="Write the TypeScript declarations of an App's channel payloads and methods "
        "(attrs classes) for the browser client's types (modelence.d.ts).",
    )
    parser.add_argument("app", help="import path of the App, as module:attribute")
    parser.add_argument("-o", "--output", help="file to write (default: standard output)")
    parser.add_argument(
        "--client-module", default=CLIENT_MODULE, help="the module specifier pages import the client from"
    )
    args = parser.parse_args(argv)
    text = typescript(load_app(args.app), command=f"{PROGRAM} typescript {args.app}", client_module=args.client_module)
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as file:
                file.write(text)
        except OSError as exc:
            raise StartupError(f"cannot write {args.output}: {exc.strerror}") from None
    else:
        sys.stdout.write(text)


def _startup_error(exc: BaseException) -> StartupError | None:
    """``exc`` if it is a StartupError, alone or alone in exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, StartupError) else None


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["typescript"]:
            typescript_main(argv[1:])
            return
        args = parser().parse_args(argv)
        configure_logging(args.log_level, args.log_format)
        app = load_app(args.app)
        allow_origins(app, [*os.environ.get(ORIGINS_VARIABLE, "").split(","), *args.allowed_origin])
        if args.drain_delay is not None:
            try:
                app.hub.config = attrs.evolve(app.hub.config, drain_delay=args.drain_delay)
            except ValueError as exc:
                raise StartupError(f"--drain-delay: {exc}") from None
        if args.metrics_bind is not None:
            try:
                use_metrics_bind(app, Bind.parse(args.metrics_bind))
            except ValueError as exc:
                raise StartupError(f"--metrics-bind: {exc}") from None
        ordered = args.ordered_fanout or environment_flag(ORDERED_VARIABLE)
        use_mongodb(app, os.environ.get("MONGODB_URI"), ordered=ordered)
        trio.run(partial(serve, app, args.host, args.port, args.mongodb_wait))
    except KeyboardInterrupt:  # before the signal handlers were installed
        sys.exit(130)
    except BaseException as exc:
        error = _startup_error(exc)
        if error is None:
            raise
        if error.__cause__ is not None:  # the app's own code failed: its traceback, on request
            logging.getLogger("modelence_trio").debug("start-up failed", exc_info=error.__cause__)
        print(f"{PROGRAM}: {error}", file=sys.stderr, flush=True)
        sys.exit(STARTUP_FAILED)
