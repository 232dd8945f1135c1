"""Logging: repeated identical errors folded into one line, and JSON lines for log shippers.

The library logs to ``modelence_trio`` and its children (``.fanout``,
``.presence``) and never configures handlers; ``modelence-trio`` does
(:func:`configure_logging`, ``--log-format text|json``). What the server
logs never holds a token, a request target or a header (tests read every
record); a connection's end is one INFO line with structured fields
(``Hub._ended``), which the JSON format carries as keys.
"""

from __future__ import annotations

import collections
import datetime
import json
import logging
import time
from collections.abc import Callable

__all__ = ["LOGGERS", "JsonFormatter", "RepeatFilter", "configure_logging", "quiet_repeated_errors"]

#: The loggers of the library (a filter on a logger sees only records made on it, not on its children).
LOGGERS = ("modelence_trio", "modelence_trio.fanout", "modelence_trio.presence")

#: What every ``LogRecord`` has: anything else came in ``extra`` and goes into a JSON line.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class RepeatFilter(logging.Filter):
    """Lets the first of identical records through, and drops the same line
    (logger, level and formatted message) again within ``interval`` seconds;
    the next one let through says how many were dropped. Records below
    ``level`` (default: errors) always pass: the library's warnings are
    already once per event (an outage is one line when it starts, one when
    it ends). At most ``capacity`` distinct lines are remembered (the oldest
    forgotten first), so its memory is bounded.

    For errors that repeat on every request or every frame (an app's hook
    that always fails, an authenticator whose database is down): one line
    per interval, not a flood.
    """

    def __init__(
        self,
        interval: float = 10.0,
        *,
        level: int = logging.ERROR,
        capacity: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval = interval
        self.level = level
        self.capacity = capacity
        self._clock = clock
        self._seen: collections.OrderedDict[tuple[str, int, str], list[float]] = collections.OrderedDict()

    def reset(self) -> None:
        """Forget every line seen."""
        self._seen.clear()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.level:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format: the handler reports it
            return True
        key = (record.name, record.levelno, message)
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.interval:
            seen[1] += 1
            return False
        dropped = int(seen[1]) if seen is not None else 0
        self._seen[key] = [now, 0]
        self._seen.move_to_end(key)
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        if dropped:
            # Formatted once here (getMessage above), so the args go.
            record.msg = f"{key[2]} (repeated {dropped} more times in the last {self.interval:g} s)"
            record.args = None
        return True


def quiet_repeated_errors(interval: float = 10.0) -> None:
    """Fold repeated identical errors of the library's loggers
    (:class:`RepeatFilter`). Idempotent; ``Hub.run`` calls it."""
    for name in LOGGERS:
        log = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in log.filters):
            log.addFilter(RepeatFilter(interval))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``,
    ``logger``, ``message``, the record's ``extra`` fields, and
    ``exception`` (the traceback's text) when there is one. Newlines inside
    the message are escaped, so a line is always one record."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def configure_logging(level: str = "info", log_format: str = "text") -> None:
    """What ``modelence-trio`` does: one handler on the root logger, to
    stderr, in ``text`` (the default) or ``json`` (one object per line)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
