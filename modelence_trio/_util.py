"""Small helpers shared by the server, the client and tests: a nursery for
background tasks, and exponential backoff for retries."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio

__all__ = ["Backoff", "background_nursery"]


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


@attrs.frozen
class Backoff:
    """Exponential reconnect delays with jitter: ``initial * factor**attempt``, capped."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.2

    def delay(self, attempt: int) -> float:
        base = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        return base * (1 + self.jitter * (2 * random.random() - 1))
