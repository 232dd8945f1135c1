"""What the ``modelence-trio`` command checks before it serves, each failure
a :class:`StartupError` whose message is the one line the command prints
(then it exits 2): the app's import path, the environment's settings,
``MONGODB_URI`` and whether its server answers.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Any

import pymongo
import pymongo.errors
import pymongo.uri_parser
import trio

from ._app import App

__all__ = ["StartupError", "environment_flag", "load_app", "parse_mongodb_uri", "wait_for_mongodb"]


class StartupError(Exception):
    """A start-up failure the user can fix; ``str()`` is the whole message."""


def load_app(path: str) -> App:
    """Import ``module:attribute`` (``attribute`` defaults to ``app``), from
    the current directory too.

    Raises:
        StartupError: the path is malformed, the module is not found or fails
            while importing (the message names the exception and the line
            that raised it), the attribute is missing or is not an ``App``.
    """
    module_name, _, attribute = path.partition(":")
    attribute = attribute or "app"
    if module_name.endswith(".py") or "/" in module_name or "\\" in module_name:
        dotted = module_name.removesuffix(".py").replace("/", ".").replace("\\", ".").strip(".")
        raise StartupError(f"{path} is a file name: give the module's import path, e.g. {dotted}:{attribute}")
    if not module_name or not all(part.isidentifier() for part in module_name.split(".")):
        raise StartupError(f"{path!r} is not an import path: give module:attribute, e.g. myapp:app")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise StartupError(
                f"no module named {exc.name!r} (looked in the current directory and the Python path)"
            ) from None
        raise StartupError(_import_failure(module_name, exc)) from exc
    except Exception as exc:
        raise StartupError(_import_failure(module_name, exc)) from exc
    if not hasattr(module, attribute):
        raise StartupError(f"module {module_name!r} has no attribute {attribute!r}")
    app = getattr(module, attribute)
    if not isinstance(app, App):
        raise StartupError(
            f"{module_name}:{attribute} is a {type(app).__name__}, not a modelence_trio.App"
            + (" (serve a bare Hub with serve_websocket)" if type(app).__name__ == "Hub" else "")
        )
    return app


def _import_failure(module_name: str, exc: BaseException) -> str:
    """``importing m failed: NameError: ... (m.py, line 3)``: where in the
    app's code, not in importlib's."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "importlib" not in f.filename]
    where = f" ({os.path.relpath(frames[-1].filename)}, line {frames[-1].lineno})" if frames else ""
    return f"importing {module_name} failed: {type(exc).__name__}: {exc}{where} (--log-level debug: the traceback)"


def environment_flag(name: str) -> bool:
    """An on/off environment variable: ``1``/``true``/``yes``/``on`` or
    ``0``/``false``/``no``/``off``/unset/empty (any case).

    Raises:
        StartupError: any other value.
    """
    value = os.environ.get(name, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise StartupError(f"{name} must be 1 or 0 (got {os.environ[name]!r})")


def parse_mongodb_uri(uri: str, variable: str = "MONGODB_URI") -> None:
    """Check ``uri``'s syntax and options (for ``mongodb+srv://``, its DNS
    records too), saying what is wrong without repeating the URI, which may
    hold a password.

    Raises:
        StartupError: the URI is not valid.
    """
    try:
        pymongo.uri_parser.parse_uri(uri)
    except (pymongo.errors.ConfigurationError, ValueError, TypeError) as exc:
        raise StartupError(f"{variable} is not a valid MongoDB URI: {exc}") from None


async def wait_for_mongodb(database: Any, timeout: float) -> None:
    """Wait until the server of ``database`` (a pymongo ``Database``)
    answers a ping, at most ``timeout`` seconds, saying once on stderr that it
    waits.

    Raises:
        StartupError: no answer within ``timeout``, or the server refused
            (wrong credentials).
    """
    client: pymongo.MongoClient[Any] = database.client

    def ping(seconds: float) -> None:
        with pymongo.timeout(seconds):  # server selection included, whatever the client's own timeouts
            client.admin.command("ping")

    deadline = trio.current_time() + timeout
    told = False
    reason: str | None = None
    while True:
        attempt = max(0.1, min(2.0, deadline - trio.current_time()))
        try:
            await trio.to_thread.run_sync(ping, attempt, abandon_on_cancel=True)
            return
        except pymongo.errors.PyMongoError as exc:
            if isinstance(exc, pymongo.errors.OperationFailure) and not exc.timeout:
                # Reached it, and it said no (wrong credentials, ...): waiting will not help.
                raise StartupError(f"MongoDB refused the connection: {_mongo_reason(exc)}") from None
            latest = _mongo_reason(exc)
            if reason is None or not latest.endswith("timed out"):  # keep what said more ("refused")
                reason = latest
        if trio.current_time() >= deadline:
            raise StartupError(f"MongoDB is unreachable ({reason}); gave up after {timeout:g} s (--mongodb-wait)")
        if not told:
            told = True
            print(f"modelence-trio: waiting for MongoDB ({reason})", file=sys.stderr, flush=True)
        await trio.sleep(min(0.5, max(0.0, deadline - trio.current_time())))


def _mongo_reason(exc: pymongo.errors.PyMongoError) -> str:
    """pymongo's message without its topology description and timeouts."""
    if isinstance(exc, pymongo.errors.OperationFailure):
        details = exc.details or {}
        return str(details.get("errmsg") or exc)
    text = str(exc)
    for tail in (" (configured timeouts", ", Timeout:", ", Topology Description:"):
        text = text.split(tail, 1)[0]
    return text
