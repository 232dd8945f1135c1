"""The hub's periodic work over all its connections: heartbeats and session checks.

One task each for every connection of a hub, not one per connection: a
hub with 20,000 connections runs two timers, not 40,000. ``Hub.run`` starts
them (and the history sweep, ``Router.sweep_histories``) in its nursery.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Collection
from typing import NoReturn

import trio

from ._auth import Identity, SessionChecker
from ._connection import Connection
from .protocol import CloseCode

__all__ = ["heartbeats", "session_checks"]

logger = logging.getLogger("modelence_trio")


async def heartbeats(connections: Collection[Connection], interval: float | None, timeout: float) -> NoReturn:
    """Ping every connection every ``interval`` seconds and drop those whose
    pong does not come within ``timeout`` (4003); ``None``: never."""
    if interval is None:
        await trio.sleep_forever()
    while True:
        # Sleep until the next ping round, waking for pong deadlines on the way.
        next_round = trio.current_time() + interval
        while True:
            deadline = min((c.ping_deadline for c in connections), default=math.inf)
            await trio.sleep_until(min(next_round, deadline))
            now = trio.current_time()
            for conn in list(connections):
                conn.check_pong(now)
            if now >= next_round:
                break
        for conn in list(connections):
            conn.ping_round(now, timeout)


async def session_checks(
    checker: SessionChecker,
    interval: float,
    connections: Collection[Connection],
    changed: Callable[[Connection, Identity], Awaitable[None]],
) -> NoReturn:
    """Every ``interval`` seconds ask ``checker`` whether each signed-in
    connection's session still holds: an ended one closes its connection
    (4001); a changed identity is handed to ``changed`` (its access rules run again)."""
    check = checker.check
    while True:
        await trio.sleep(interval)
        for conn in [c for c in connections if c.identity.user is not None]:
            try:
                verdict = await check(conn.identity)
            except Exception:
                logger.exception("session check failed; keeping the connection until the next check")
                continue
            if verdict is False or (isinstance(verdict, Identity) and verdict.user is None):
                conn.fail(CloseCode.SESSION_ENDED, "session expired or revoked, or user disabled")
            elif isinstance(verdict, Identity) and conn.close_reason is None:
                await changed(conn, verdict)
