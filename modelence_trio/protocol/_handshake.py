"""Where the session token comes from in a WebSocket opening handshake.

Precedence, most explicit first: an ``Authorization: Bearer`` header, then the
``token`` query parameter, then the ``authToken`` cookie. Cookies come last
because browsers attach them without the page asking; a client that names a
token explicitly means that one.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qs, urlsplit

__all__ = ["HandshakeRejected", "token_from_cookie", "token_from_request"]


class HandshakeRejected(Exception):
    """The handshake must be refused with an HTTP status and a short body.

    Transports turn it into a real HTTP response, so a client learns why
    before any WebSocket frame is exchanged; except a 401 for a browser
    (``_connect.serve_request``), which cannot read that status: it gets an
    accepted socket closed at once with 4001 and the reason.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


def token_from_request(target: str, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The token the client presented, or ``None`` if it presented none.

    Args:
        target: the request target (path and query), e.g. ``/ws?token=abc``.
        headers: the raw request headers as (name, value) byte pairs.

    Raises:
        HandshakeRejected: 401 for a malformed ``Authorization`` header or an
            empty token: a client that sent credentials must not be silently
            treated as anonymous.
    """
    headers = list(headers)
    authorization = next((value for name, value in headers if name.lower() == b"authorization"), None)

    if authorization is not None:
        scheme, _, token = authorization.decode("latin-1").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HandshakeRejected(401, "malformed Authorization header: expected 'Bearer <token>'")
        return token.strip()

    query = parse_qs(urlsplit(target).query, keep_blank_values=True)
    if "token" in query:
        return _non_empty(query["token"][0], "token query parameter")

    return token_from_cookie(headers)


def token_from_cookie(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The ``authToken`` cookie's value, if the request carries one.

    Raises:
        HandshakeRejected: 401 if the cookie is present but empty.
    """
    for name, value in headers:
        if name.lower() != b"cookie":
            continue
        for part in value.decode("latin-1").split(";"):
            key, sep, cookie = part.strip().partition("=")
            if sep and key == "authToken":
                return _non_empty(cookie.strip().strip('"'), "authToken cookie")
    return None


def _non_empty(token: str, where: str) -> str:
    if not token:
        raise HandshakeRejected(401, f"empty {where}")
    return token
