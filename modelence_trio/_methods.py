"""Methods (mutations and queries) called over HTTP, as in Modelence.

``POST /api/_internal/method/<module>.<method>`` with a JSON body
``{"args": {...}, "authToken": "...", "clientInfo": {...}}``. The call is
handled here as a plain request-to-response function, with no ASGI in
sight, so it is tested without a server; the ASGI edge only moves bytes.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._auth import Identity, IdentityView
from ._origins import check_origin
from ._session import TokenBucket
from ._typed import InvalidData, args_type, structure, unstructure
from .protocol import HandshakeRejected, loads_utf8, token_from_cookie

if TYPE_CHECKING:
    from ._hub import Hub

__all__ = [
    "Failed",
    "HttpResponse",
    "Method",
    "MethodContext",
    "MethodError",
    "MethodRateLimit",
    "MethodTable",
    "call_method",
    "run_method",
    "typed_method",
]

logger = logging.getLogger("modelence_trio")

ERROR_CODE_HEADER = b"x-modelence-error-code"


@attrs.frozen
class MethodContext(IdentityView):
    """Who calls a method: what the session token resolved to, with the app's
    default roles, plus the ``clientInfo`` the client sent (untrusted)."""

    identity: Identity
    method: str
    client_info: Any = None


#: ``def method(args, ctx)``, plain or ``async``; returns JSON-serialisable data
#: (or attrs instances). ``args`` may be annotated with an attrs class: see ``typed_method``.
Method = Callable[[Any, MethodContext], Any]

#: The keys of a method call's body; anything else is a mistake worth a 400.
BODY_KEYS = frozenset({"args", "authToken", "clientInfo"})


class MethodError(Exception):
    """Raise it from a method to fail the call with a status the client may act on.

    The message is sent to the client as the response body, so it must not
    hold secrets. Any other exception is a 500 with a generic body (logged
    here, never shown to the client).

    >>> raise MethodError("text must not be empty")                       # 400
    >>> raise MethodError("members only", status=403, code="forbidden")   # 403
    """

    def __init__(self, message: str, *, status: int = 400, code: str = "invalid_arguments") -> None:
        super().__init__(message)
        if not 400 <= status <= 599:
            raise ValueError(f"a method error needs a 4xx or 5xx status, not {status}")
        self.message = message
        self.status = status
        self.code = code


def typed_method(method: Method) -> Method:
    """``method`` itself, or, when its ``args`` parameter is annotated with an
    attrs class, a method that structures and checks the arguments first: a
    call whose arguments do not fit gets 400 ``invalid_arguments`` naming
    each field (``room: required field missing``), never the 500 of a
    ``KeyError`` in the method."""
    cls = args_type(method)
    if cls is None:
        return method

    def checked(args: Any, ctx: MethodContext) -> Any:
        try:
            typed: Any = structure(args, cls)
        except InvalidData as exc:
            raise MethodError(f"invalid arguments: {exc}", code="invalid_arguments") from None
        return method(typed, ctx)

    return checked


@attrs.frozen
class Failed:
    """A call that failed: the HTTP status, the error code and the message."""

    status: int
    code: str
    message: str


async def run_method(method: Method, name: str, args: Any, ctx: MethodContext) -> str | Failed:
    """Run one call, over HTTP or the socket alike: the result as JSON text,
    or how it failed (``MethodError``: its status, code and message; any
    other exception: 500 ``internal_error``, logged here, never shown)."""
    try:
        result = method(args, ctx)
        if inspect.isawaitable(result):
            result = await result
        text = json.dumps(unstructure(result), ensure_ascii=False, allow_nan=False)
        text.encode()  # a lone surrogate cannot be sent: the method's bug, a 500 like any other
        return text
    except MethodError as exc:
        return Failed(exc.status, exc.code, exc.message)
    except Exception:
        logger.exception("method %s failed", name)
        return Failed(500, "internal_error", "internal error")


@attrs.define
class MethodTable:
    """An App's methods by name, and the per-caller rate limit they share:
    what the HTTP endpoint and the socket's ``call`` frame both use."""

    methods: dict[str, Method]
    rate_limit: MethodRateLimit | None = None


@attrs.frozen
class HttpResponse:
    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ()


def _failure(status: int, code: str, message: str) -> HttpResponse:
    headers = ((b"content-type", b"text/plain; charset=utf-8"), (ERROR_CODE_HEADER, code.encode()))
    return HttpResponse(status, message.encode(), headers)


_AUTH_CODES = {401: "invalid_token", 503: "auth_unavailable"}


class MethodRateLimit:
    """Calls per second for each caller: the signed-in user, else the client
    address; bursts of twice the rate. It remembers the ``capacity`` callers
    seen last (a caller forgotten starts with a full burst again), so its
    memory is bounded whatever the number of addresses."""

    def __init__(self, rate: float, capacity: int = 10_000) -> None:
        self.rate = rate
        self._capacity = capacity
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def retry_after(self, key: str) -> int | None:
        """Take one call for ``key``: ``None`` if allowed, else seconds to wait."""
        now = trio.current_time()
        bucket = self._buckets.pop(key, None) or TokenBucket(tokens=2 * self.rate, stamp=now)
        self._buckets[key] = bucket
        while len(self._buckets) > self._capacity:
            self._buckets.popitem(last=False)
        if bucket.take(self.rate, now):
            return None
        return max(1, math.ceil((1 - bucket.tokens) / self.rate))


def _token(headers: list[tuple[bytes, bytes]], body_token: str | None) -> tuple[str | None, bool]:
    """The call's token and whether it came from the cookie.

    Precedence: an ``Authorization: Bearer`` header (as at the handshake),
    then the ``authToken`` cookie, then the body's ``authToken`` (cookie
    over body, as in the reference).

    Raises:
        HandshakeRejected: 401 for a malformed header or an empty token.
    """
    authorization = next((value for name, value in headers if name.lower() == b"authorization"), None)
    if authorization is not None:
        scheme, _, token = authorization.decode("latin-1").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HandshakeRejected(401, "malformed Authorization header: expected 'Bearer <token>'")
        return token.strip(), False
    cookie = token_from_cookie(headers)
    if cookie is not None:
        return cookie, True
    if body_token == "":
        raise HandshakeRejected(401, "empty authToken")
    return body_token, False


async def call_method(
    hub: Hub,
    methods: Mapping[str, Method],
    name: str,
    headers: Iterable[tuple[bytes, bytes]],
    body: bytes,
    *,
    client: str | None = None,
    rate_limit: MethodRateLimit | None = None,
) -> HttpResponse:
    """Run the method ``name`` for one HTTP request and say what to answer.

    Token precedence: ``Authorization: Bearer``, then the ``authToken``
    cookie, then the body's ``authToken``. A token that does not resolve is a
    401, not an anonymous call, as at the WebSocket handshake. A token from
    the cookie is refused (403) when the request's ``Origin`` is not allowed
    (``HubConfig.allowed_origins``). Past ``rate_limit`` for the caller (the
    user, else ``client``, its address): 429 with ``Retry-After``.
    """
    method = methods.get(name)
    if method is None:
        return _failure(404, "unknown_method", f"no method named {name!r}")
    headers = list(headers)
    content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"")
    if content_type.split(b";")[0].strip().lower() != b"application/json":
        # Also what stops a cross-site <form> from calling methods with the user's cookie.
        return _failure(415, "unsupported_media_type", "send the request body as application/json")
    try:
        request = loads_utf8(body.decode())
    except RecursionError:
        return _failure(400, "too_deep", "the request body nests too deeply")
    except (UnicodeDecodeError, ValueError):  # integers past 4,300 digits included
        return _failure(400, "invalid_request", "the request body is not valid JSON (or not valid Unicode)")
    if not isinstance(request, dict):
        return _failure(400, "invalid_request", "the request body must be a JSON object")
    unknown = sorted(set(request) - BODY_KEYS)
    if unknown:
        shown = ", ".join(repr(key[:40]) for key in unknown[:5])
        why = f'the body is {{"args": {{...}}, "authToken": ..., "clientInfo": ...}}; unknown keys: {shown}'
        if "args" not in request:
            why += " (arguments go inside 'args')"
        return _failure(400, "invalid_request", why)
    args = request.get("args", {})
    body_token = request.get("authToken")
    if not isinstance(args, dict):
        return _failure(400, "invalid_arguments", "'args' must be a JSON object")
    if body_token is not None and not isinstance(body_token, str):
        return _failure(400, "invalid_request", "'authToken' must be a string")
    try:
        token, from_cookie = _token(headers, body_token)
        if from_cookie:
            refusal = check_origin(headers, hub.config.allowed_origins)
            if refusal is not None:
                return _failure(403, "origin_not_allowed", refusal)
        identity = await hub.identify(token)
    except HandshakeRejected as exc:
        return _failure(exc.status, _AUTH_CODES.get(exc.status, "unauthenticated"), exc.reason)
    if rate_limit is not None:
        key = f"user:{identity.user.id}" if identity.user is not None else f"address:{client}"
        wait = rate_limit.retry_after(key)
        if wait is not None:
            response = _failure(429, "rate_limited", f"too many calls; retry in {wait} s")
            return attrs.evolve(response, headers=(*response.headers, (b"retry-after", str(wait).encode())))
    outcome = await run_method(method, name, args, MethodContext(identity, name, request.get("clientInfo")))
    if isinstance(outcome, Failed):
        return _failure(outcome.status, outcome.code, outcome.message)
    return HttpResponse(200, f'{{"data":{outcome}}}'.encode(), ((b"content-type", b"application/json"),))
