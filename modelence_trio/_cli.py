"""``modelence-trio APP``: serve an app by import path, shut down gracefully on
SIGTERM; with ``MONGODB_URI`` in the environment, share broadcasts with other
instances through that MongoDB."""

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

__all__ = ["main"]

ORIGINS_VARIABLE = "MODELENCE_TRIO_ALLOWED_ORIGINS"


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
                    print(f"modelence-trio: {signal.Signals(signum).name}, shutting down", file=sys.stderr, flush=True)
                    stop.set()

            async def run(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
                await app.serve(host, port, shutdown_trigger=stop.wait, task_status=task_status)
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_signals)
            for url in await nursery.start(run):
                ws = url.replace("http", "ws", 1) + app.websocket_path
                print(f"modelence-trio: serving on {url} (WebSocket: {ws})", flush=True)


def typescript_main(argv: Sequence[str]) -> None:
    """``modelence-trio typescript module:app``: the app's types for the browser client."""
    from ._typescript import CLIENT_MODULE, typescript

    parser = argparse.ArgumentParser(
        prog="modelence-trio typescript",
        description="Write the TypeScript declarations of an App's channel payloads and methods "
        "(attrs classes) for the browser client's types (modelence.d.ts).",
    )
    parser.add_argument("app", help="import path of the App, as module:attribute")
    parser.add_argument("-o", "--output", help="file to write (default: standard output)")
    parser.add_argument(
        "--client-module", default=CLIENT_MODULE, help="the module specifier pages import the client from"
    )
    args = parser.parse_args(argv)
    text = typescript(
        load_app(args.app), command=f"modelence-trio typescript {args.app}", client_module=args.client_module
    )
    if args.output:
        with open(args.output, "w", encoding="utf-8") as file:
            file.write(text)
    else:
        sys.stdout.write(text)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["typescript"]:
        typescript_main(argv[1:])
        return
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
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = load_app(args.app)
    allow_origins(app, [*os.environ.get(ORIGINS_VARIABLE, "").split(","), *args.allowed_origin])
    uri = os.environ.get("MONGODB_URI")
    if uri and app.hub.fanout is None:
        app.hub.use_fanout(MongoFanout.from_uri(uri))
        print("modelence-trio: fan-out through MongoDB (MONGODB_URI)", flush=True)
    trio.run(partial(serve, app, args.host, args.port))
