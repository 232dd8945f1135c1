"""Operating-system limits a server runs into at scale: open files.

Every connection holds a descriptor. A process started with the common soft
limit of 1,024 would accept connections up to it and then fail every accept
(EMFILE), logging each failure ten times a second. At start-up the hub
raises the soft limit to the hard one where the system allows, and keeps
``max_connections`` below what is left, so a full server refuses
handshakes with 503 instead.
"""

from __future__ import annotations

import contextlib
import logging
import time

__all__ = ["DESCRIPTOR_RESERVE", "OncePer", "connection_limit", "quiet_accept_errors", "raise_open_file_limit"]

logger = logging.getLogger("modelence_trio")

#: Descriptors kept for everything but connections: listeners, the database,
#: files being served, logs.
DESCRIPTOR_RESERVE = 64


def raise_open_file_limit() -> int | None:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; the soft limit
    after (``None``: unlimited, or a system without the notion)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        # Not allowed everywhere (macOS refuses an infinite soft limit): keep what we have then.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


def connection_limit(configured: int | None) -> int | None:
    """``configured`` (``max_connections``), clamped below the open-file limit
    (raised first), with one log line when it had to be."""
    files = raise_open_file_limit()
    if files is None:
        return configured
    room = max(1, files - DESCRIPTOR_RESERVE)
    if configured is None or configured > room:
        logger.warning(
            "max_connections %s is more than %d open files allow; serving at most %d connections "
            "(raise the hard limit, e.g. ulimit -Hn, to allow more)",
            configured if configured is not None else "(unlimited)",
            files,
            room,
        )
        return room
    logger.info(
        "open-file limit %d: room for %d connections; serving at most %d (max_connections)", files, room, configured
    )
    return configured


class OncePer(logging.Filter):
    """Lets one record through per ``interval`` seconds (the rest are counted
    into the next one): for errors that repeat ten times a second, such as
    trio's "accept returned EMFILE"."""

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__()
        self.interval = interval
        self._last = -float("inf")
        self._dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self._last < self.interval:
            self._dropped += 1
            return False
        if self._dropped:
            record.msg = f"{record.msg} (and {self._dropped} more like it in the last {self.interval:g} s)"
        self._last, self._dropped = now, 0
        return True


def quiet_accept_errors() -> None:
    """Rate-limit trio's accept-failure log (trio.serve_listeners, used by both
    transports) to one line per 10 s. Idempotent."""
    accept_log = logging.getLogger("trio.serve_listeners")
    if not any(isinstance(f, OncePer) for f in accept_log.filters):
        accept_log.addFilter(OncePer())
