"""Operations endpoints over HTTP: health, readiness, metrics, and who may see them.

``/healthz`` answers 200 while the process serves HTTP; ``/readyz`` 200 or
503 with a small JSON body naming what is not ready (``Hub.readiness``).
``/metrics`` is off unless the app asks for it (:class:`MetricsEndpoint`),
and may then be restricted to a role (a token, as at the WebSocket
handshake) or to one bind address (a port that only the scraper reaches).
Each returns an ``HttpResponse``; the App routes (``_app.py``) and a bare
hub's server (``_metrics.serve_metrics``) share them.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING

import attrs

from ._methods import HttpResponse
from .protocol import HandshakeRejected, token_from_request

if TYPE_CHECKING:
    from ._hub import Hub

__all__ = ["MetricsEndpoint", "Bind", "healthz", "metrics_response", "readyz", "require_role"]

_JSON = (b"content-type", b"application/json")
_NO_STORE = (b"cache-control", b"no-store")


@attrs.frozen
class Bind:
    """A listening address: ``host:port`` (``[::1]:9100`` for IPv6) or ``unix:/path``."""

    host: str
    port: int | None  # None: a unix socket

    @classmethod
    def parse(cls, text: str) -> Bind:
        if text.startswith("unix:"):
            if len(text) == len("unix:"):
                raise ValueError("a unix bind needs a path: unix:/run/app/metrics.sock")
            return cls(text, None)
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ValueError(f"a bind is host:port or unix:/path, not {text!r}")
        return cls(host.removeprefix("[").removesuffix("]"), int(port))

    def __str__(self) -> str:
        if self.port is None:
            return self.host
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def wildcard(self) -> bool:
        """Listening on every address of the machine (``0.0.0.0``, ``::``)."""
        try:
            return self.port is not None and ipaddress.ip_address(self.host).is_unspecified
        except ValueError:
            return False

    def serves(self, server: Iterable[object] | None) -> bool:
        """Whether a request whose ASGI ``server`` (the local address it
        arrived on; ``None`` for a unix socket) came in on this bind."""
        if self.port is None:
            return server is None
        if server is None:
            return False
        host, port = tuple(server)[:2]
        if port != self.port:
            return False
        return self.wildcard or _same_host(str(host), self.host)


def _same_host(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a.lower() == b.lower() or {a.lower(), b.lower()} <= {"localhost", "127.0.0.1", "::1"}


def _bind(value: str | Bind | None) -> Bind | None:
    return Bind.parse(value) if isinstance(value, str) else value


def _path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"a metrics path must start with '/': {value!r}")
    return value


@attrs.frozen
class MetricsEndpoint:
    """Where, and to whom, an ``App`` serves its Prometheus metrics.

    ``App(metrics=None)`` (the default) serves none: a metrics page tells
    whoever reaches it how loaded the server is and what it runs, and the
    usual deployment behind a proxy on the same machine would make a
    "loopback only" default public. Give one of these to turn it on:

    Attributes:
        path: where (default ``/metrics``).
        role: only for requests with a token (``Authorization: Bearer``, as
            Prometheus' ``authorization`` setting sends it, or the
            ``authToken`` cookie) whose identity has this role: 401 without
            a valid token, 403 without the role. ``None``: no token needed.
        bind: only on requests that arrived on this listening address,
            ``host:port`` or ``unix:/path`` (404 elsewhere); ``App.serve`` and
            ``modelence-trio --metrics-bind`` listen there too, and answer
            nothing but ``path``, ``/healthz`` and ``/readyz`` on it. Under
            plain hypercorn, pass the same address to ``--bind``. ``None``:
            every address the app listens on.

    With neither ``role`` nor ``bind``, anyone who reaches the server may
    read it: keep ``path`` out of what your proxy forwards.
    """

    path: str = attrs.field(default="/metrics", converter=_path)
    role: str | None = None
    bind: Bind | None = attrs.field(default=None, converter=_bind)


def healthz() -> HttpResponse:
    """The process serves: always 200 (liveness must not depend on the database)."""
    return HttpResponse(200, b'{"status":"ok"}', (_JSON, _NO_STORE))


def readyz(hub: Hub) -> HttpResponse:
    """200 when the hub is ready for traffic, else 503; the body says what is not."""
    readiness = hub.readiness()
    body = json.dumps(readiness.to_json(), separators=(",", ":")).encode()
    return HttpResponse(200 if readiness.ready else 503, body, (_JSON, _NO_STORE))


async def require_role(hub: Hub, role: str, target: str, headers: list[tuple[bytes, bytes]]) -> HttpResponse | None:
    """``None`` if the request's token (header, ``?token=`` or cookie, as at
    the handshake) resolves to an identity with ``role``; else the refusal:
    401 (no token, or a bad one), 403 (not that role), 503 (the
    authenticator failed). Anonymous callers never pass, whatever the
    anonymous roles."""
    try:
        token = token_from_request(target, headers)
        if token is None:
            raise HandshakeRejected(401, "sign in: a token is required")
        identity = await hub.identify(token)
    except HandshakeRejected as exc:
        headers_out: tuple[tuple[bytes, bytes], ...] = (_NO_STORE,)
        if exc.status == 401:
            headers_out += ((b"www-authenticate", b"Bearer"),)
        return HttpResponse(exc.status, exc.reason.encode(), headers_out)
    if role not in identity.roles:
        return HttpResponse(403, f"the {role!r} role is required".encode(), (_NO_STORE,))
    return None


async def metrics_response(
    hub: Hub, endpoint: MetricsEndpoint, target: str, headers: list[tuple[bytes, bytes]]
) -> HttpResponse:
    """The metrics page, or the refusal (``endpoint.role``); the bind was checked by the caller."""
    if endpoint.role is not None:
        refusal = await require_role(hub, endpoint.role, target, headers)
        if refusal is not None:
            return refusal
    from ._metrics import render_metrics  # here: _metrics needs _methods, as this module does

    accept = next((value for name, value in headers if name.lower() == b"accept"), b"")
    body, content_type = render_metrics(hub.metrics, accept.decode("latin-1"))
    return HttpResponse(200, body, ((b"content-type", content_type.encode()), _NO_STORE))
