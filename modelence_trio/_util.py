"""Small structured-concurrency helpers shared by the server, client and tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

__all__ = ["background_nursery"]


@asynccontextmanager
async def background_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery for the background tasks of an ``async with`` resource.

    The tasks are cancelled when the body ends. An exception from the body is
    re-raised as itself rather than inside an ``ExceptionGroup``, so that users
    of our context managers can write ``except JoinRefused``.
    """
    error: Exception | None = None
    async with trio.open_nursery() as nursery:
        try:
            yield nursery
        except Exception as exc:
            error = exc
        finally:
            nursery.cancel_scope.cancel()
    if error is not None:
        raise error


@asynccontextmanager
async def shielded_until_stopped(grace: float) -> AsyncIterator[trio.Event]:
    """Run the body shielded from outside cancellation, and turn that
    cancellation into a polite request instead.

    Yields an event that is set when the surrounding scope is cancelled (the
    server is shutting down). From then on the body has ``grace`` seconds to
    finish on its own (flush, send close frames) before it is cancelled. This
    way a shutdown never interrupts a write half-way, which would leave the
    stream unusable for the close frame.
    """
    stopping = trio.Event()
    shield = trio.CancelScope(shield=True)

    async def watch() -> None:
        try:
            await trio.sleep_forever()
        finally:
            shield.deadline = min(shield.deadline, trio.current_time() + grace)
            stopping.set()

    async with trio.open_nursery() as guard:
        guard.start_soon(watch)
        with shield:
            yield stopping
        guard.cancel_scope.cancel()
