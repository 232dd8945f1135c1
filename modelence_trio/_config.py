"""The hub's options, and the per-connection limits derived from them."""

from __future__ import annotations

import attrs

from ._auth import _roles
from ._origins import validate_origins
from ._session import SessionLimits
from .protocol import Limits

__all__ = ["HubConfig"]


@attrs.frozen
class HubConfig:
    """Options of a :class:`Hub`; every field has a documented default.

    Attributes:
        require_user: refuse handshakes without a token (401) instead of
            admitting them as anonymous.
        authenticated_roles / anonymous_roles: roles every authenticated /
            anonymous connection has, before those the authenticator adds.
        heartbeat_interval: seconds between server pings; ``None`` disables them.
        heartbeat_timeout: seconds to wait for the pong before dropping the peer.
        outbound_queue_size: frames queued for one connection before it counts
            as a slow consumer and is closed (4002), so it cannot hold memory or
            delay anyone else.
        outbound_queue_bytes: the same bound in bytes of encoded frames,
            counting the batch being written until the socket has taken it
            (default 1 MiB): a client that does not read holds at most this.
        max_frame_size: largest client message accepted (larger: close 1009).
        max_id_length / max_ref_length: bounds on channel ids and ``ref`` values.
        max_depth: deepest nesting of arrays and objects in a client frame
            (the frame itself is level 1); deeper: ``error`` ``too_deep``.
        max_connections: open connections per hub; past it the handshake is
            refused with 503. ``None``: no limit.
        max_channels_per_connection: past it a join gets ``too_many_channels``.
        joins_per_second / publishes_per_second: sustained rate per connection,
            with bursts of twice that; past it: ``rate_limited``. ``None``: no limit.
        bad_frame_limit: malformed frames one connection may send within
            ``bad_frame_window`` seconds; one more closes it with 1008.
        handshake_timeout: seconds a client has to finish the opening handshake.
        close_timeout: seconds to wait for the closing handshake.
        session_check_interval: seconds between re-checks of signed-in
            connections' sessions with the authenticator's ``check`` (if it has
            one); an ended session closes its connection with 4001. ``None``: never.
        shutdown_grace: on shutdown, seconds a connection has to flush what is
            queued and complete the close handshake before it is cut.
        allowed_origins: the web pages (``Origin``) that may open a WebSocket
            or call a method with the user's cookie. Empty (the default): only
            the server's own origin, the one whose host is the request's
            ``Host``. Entries are exact origins (``https://app.example.com``),
            subdomain wildcards (``https://*.example.com``), or ``"*"`` for any
            origin (when tokens never travel in a cookie). ``Origin: null`` is
            refused unless ``"*"``; requests without ``Origin`` (not from a
            browser) are not concerned. Refused: HTTP 403.
        max_connections_per_address: open connections from one client address;
            past it the handshake is refused with 429. ``None``: no limit.
        presence_window: seconds over which presence changes are coalesced
            into one ``presence_diff`` per channel (a join storm costs each
            watcher about ``1 / presence_window`` frames a second).
        presence_interval: seconds between an instance's presence heartbeats
            through the fan-out; an instance silent for three intervals (a
            crash, a partition) has its members removed everywhere else.
        drain_delay: on a graceful shutdown (``Hub.drain``: ``modelence-trio``
            on SIGTERM, ``App.serve``'s shutdown trigger), seconds between
            ``/readyz`` turning 503 and connections being closed, for a load
            balancer to stop sending new ones (default 0: at once; behind a
            balancer that probes every few seconds, give it two probe periods).
        fanout_outage_limit: seconds the fan-out may be unable to reach its
            database before ``/readyz`` says not ready (default 30: longer
            than a MongoDB primary election, so a routine failover does not
            take every instance out of rotation at once). ``None``: never.
    """

    require_user: bool = False
    authenticated_roles: tuple[str, ...] = attrs.field(default=(), converter=_roles)
    anonymous_roles: tuple[str, ...] = attrs.field(default=(), converter=_roles)
    heartbeat_interval: float | None = 25.0
    heartbeat_timeout: float = 20.0
    outbound_queue_size: int = 4096
    outbound_queue_bytes: int = 1024 * 1024
    max_frame_size: int = 64 * 1024
    max_id_length: int = 256
    max_ref_length: int = 128
    max_depth: int = 32
    max_connections: int | None = 10_000
    max_channels_per_connection: int = 256
    joins_per_second: float | None = 20.0
    publishes_per_second: float | None = 50.0
    bad_frame_limit: int = 20
    bad_frame_window: float = 10.0
    handshake_timeout: float = 10.0
    close_timeout: float = 5.0
    shutdown_grace: float = 5.0
    session_check_interval: float | None = 60.0
    allowed_origins: tuple[str, ...] = attrs.field(default=(), converter=validate_origins)
    max_connections_per_address: int | None = 1000
    presence_window: float = 0.1
    presence_interval: float = 5.0
    drain_delay: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))
    fanout_outage_limit: float | None = 30.0


def session_limits(config: HubConfig) -> SessionLimits:
    """The limits each connection's ``Session`` applies, from ``config``."""
    c = config
    parse = Limits(max_id_length=c.max_id_length, max_ref_length=c.max_ref_length, max_depth=c.max_depth)
    return SessionLimits(
        c.max_frame_size,
        parse,
        c.bad_frame_limit,
        c.bad_frame_window,
        c.joins_per_second,
        c.publishes_per_second,
        c.max_channels_per_connection,
    )
