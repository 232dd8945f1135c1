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
