"""Which web pages may open a WebSocket (or call a method) with the user's cookie.

A browser attaches cookies to a WebSocket handshake whatever page opens it,
so without this check any site could act as the signed-in user
(cross-site WebSocket hijacking). Browsers say which page it is in
``Origin``; other clients send none and are not concerned (their token is
theirs to present). Sans-IO: a pure function of the request's headers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

__all__ = ["ANY_ORIGIN", "check_origin", "origin_allowed", "validate_origins"]

#: In ``allowed_origins``: every origin (for deployments whose tokens travel
#: only in a header or the query, never a cookie).
ANY_ORIGIN = "*"


def validate_origins(allowed: Sequence[str]) -> tuple[str, ...]:
    """``allowed`` checked and normalised (lowercase, no trailing slash).

    Each entry is an exact origin (``https://app.example.com``,
    ``http://localhost:3000``), a wildcard for subdomains
    (``https://*.example.com``), or ``*`` for any origin.

    Raises:
        ValueError: for an entry that is none of these.
    """
    patterns = []
    for entry in allowed:
        pattern = entry.strip().lower().rstrip("/")
        if pattern != ANY_ORIGIN:
            parts = urlsplit(pattern.replace("*.", "wildcard.", 1) if "://*." in pattern else pattern)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
                raise ValueError(f"allowed origin {entry!r}: expected scheme://host[:port], scheme://*.domain or '*'")
            if "*" in pattern.replace("://*.", "://", 1):
                raise ValueError(f"allowed origin {entry!r}: '*' may only open the host, as in https://*.example.com")
        patterns.append(pattern)
    return tuple(patterns)


def origin_allowed(origin: str, host: str | None, allowed: Sequence[str]) -> bool:
    """Whether a request from ``origin`` to ``host`` (its ``Host`` header) may proceed.

    With no ``allowed`` list, only the server's own origin: the one whose
    host and port are the request's ``Host``. ``null`` (sandboxed frames,
    ``file:`` pages) is refused unless ``*`` is allowed.
    """
    origin = origin.strip().lower().rstrip("/")
    if ANY_ORIGIN in allowed:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
        return False  # "null" and anything that is not a web origin
    if not allowed:
        return host is not None and parts.netloc == host.strip().lower()
    for pattern in allowed:
        if pattern == origin:
            return True
        scheme, sep, rest = pattern.partition("://*.")
        if sep and parts.scheme == scheme and origin.endswith("." + rest):  # the port ends both
            return True
    return False


def check_origin(headers: Iterable[tuple[bytes, bytes]], allowed: Sequence[str]) -> str | None:
    """The refusal reason for a request's headers, or ``None`` when it may proceed."""
    origin = host = None
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"origin":
            origin = value.decode("latin-1")
        elif lowered == b"host":
            host = value.decode("latin-1")
    if origin is None or origin_allowed(origin, host, allowed):
        return None
    return f"origin {origin[:200]!r} is not allowed (see allowed_origins)"
