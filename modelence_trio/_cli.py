"""``modelence-trio APP``: serve an app by import path, shut down gracefully on
SIGTERM; with ``MONGODB_URI`` in the environment, share broadcasts with other
instances through that MongoDB.

The shutdown, in order (``Hub.drain``): the first SIGTERM or SIGINT makes
``/readyz`` answer 503; ``--drain-delay`` seconds later new WebSockets are
refused and every connection flushes and closes with 1001 (within the hub's
``shutdown_grace``); then the process exits 0. A second signal stops at once."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from functools import partial

import attrs
import trio

from ._app import App
from ._fanout import MongoFanout
from ._logs import configure_logging
from ._ops import Bind, MetricsEndpoint

__all__ = ["main"]

ORIGINS_VARIABLE = "MODELENCE_TRIO_ALLOWED_ORIGINS"

logger = logging.getLogger("modelence_trio.cli")


def load_app(path: str) -> App:
    """Import ``module:attribute`` (``attribute`` defaults to ``app``), from the current directory too."""
    module_name, _, attribute = path.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    app = getattr(module, attribute or "app", None)
    if not isinstance(app, App):
        raise SystemExit(f"modelence-trio: {path} is not a modelence_trio.App (got {type(app).__name__})")
    return app


def allow_origins(app: App, origins: Sequence[str]) -> None:
    """Add ``origins`` (blanks skipped) to the app's ``allowed_origins``; a bad
    one ends the program with one line saying which."""
    extra = [origin.strip() for origin in origins if origin.strip()]
    if extra:
        try:
            config = attrs.evolve(app.hub.config, allowed_origins=(*app.hub.config.allowed_origins, *extra))
        except ValueError as exc:
            raise SystemExit(f"modelence-trio: {exc}") from None
        app.hub.config = config


def use_metrics_bind(app: App, bind: Bind) -> None:
    """Serve ``/metrics`` on ``bind`` only (the app's path and role kept, if it had any)."""
    app.metrics = attrs.evolve(app.metrics or MetricsEndpoint(), bind=bind)


async def serve(app: App, host: str, port: int) -> None:
    """Serve ``app`` until SIGTERM or SIGINT: the first drains and closes every
    connection with 1001 within the hub's grace period; a second stops at once."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for signum in signals:
                    if stop.is_set():
                        nursery.cancel_scope.cancel()
                    logger.warning("modelence-trio: %s, shutting down", signal.Signals(signum).name)
                    stop.set()

            async def run(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
                await app.serve(host, port, shutdown_trigger=stop.wait, task_status=task_status)
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_signals)
            urls = await nursery.start(run)
            metrics = app.metrics
            if metrics is not None and metrics.bind is not None:
                print(f"modelence-trio: metrics on {urls.pop()}{metrics.path}", flush=True)
            for url in urls:
                ws = url.replace("http", "ws", 1) + app.websocket_path
                print(f"modelence-trio: serving on {url} (WebSocket: {ws})", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="modelence-trio", description="Serve a modelence-trio App with hypercorn.")
    parser.add_argument("app", help="import path of the App, as module:attribute (default attribute: app)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument(
        "--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default: %(default)s)"
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
        "--drain-delay",
        type=float,
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
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    app = load_app(args.app)
    allow_origins(app, [*os.environ.get(ORIGINS_VARIABLE, "").split(","), *args.allowed_origin])
    if args.drain_delay is not None:
        try:
            app.hub.config = attrs.evolve(app.hub.config, drain_delay=args.drain_delay)
        except ValueError as exc:
            raise SystemExit(f"modelence-trio: --drain-delay: {exc}") from None
    if args.metrics_bind is not None:
        try:
            bind = Bind.parse(args.metrics_bind)
        except ValueError as exc:
            raise SystemExit(f"modelence-trio: --metrics-bind: {exc}") from None
        use_metrics_bind(app, bind)
    uri = os.environ.get("MONGODB_URI")
    if uri and app.hub.fanout is None:
        app.hub.use_fanout(MongoFanout.from_uri(uri))
        print("modelence-trio: fan-out through MongoDB (MONGODB_URI)", flush=True)
    trio.run(partial(serve, app, args.host, args.port))
