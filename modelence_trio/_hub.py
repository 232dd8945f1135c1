"""The hub: one server's channels and connections, and the life of each connection.

The hub composes the parts that do the work, each in its own module:
``Admission`` (who may connect), ``Router`` (where a broadcast goes: the
registry, the histories, the fan-out), ``Actions`` (what a client's frame
does), ``_upkeep`` (heartbeats and session checks) and ``Connection`` (one
connection's outbound queue). What is left here is what ties them together:
running, shutting down, and serving one connection from its ``welcome`` to
its close. docs/architecture.md draws the map.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import secrets
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import attrs
import trio

from ._actions import Actions
from ._admission import Admission, Held
from ._auth import Authenticator, Identity, SessionChecker
from ._backend import FanoutBackend
from ._channel import ServerChannel
from ._config import HubConfig, session_limits
from ._connection import Connection
from ._counters import HubCounters
from ._idle_reader import IdleReader
from ._logs import quiet_repeated_errors
from ._methods import MethodTable
from ._resources import connection_limit, quiet_accept_errors
from ._router import Router
from ._session import Session
from ._tracker import Tracker
from ._transport import Transport
from ._upkeep import heartbeats, session_checks
from .protocol import CloseCode, Welcome, token_from_request

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["Hub", "HubStatistics", "Readiness"]

logger = logging.getLogger("modelence_trio")


@attrs.frozen
class HubStatistics:
    """A snapshot of what the hub holds; all zero once every client has gone."""

    connections: int
    channels: int
    subscriptions: int


@attrs.frozen
class Readiness:
    """Whether the hub should get traffic (``/readyz``): ``not_ready`` names
    each check that fails and why; empty when ready."""

    not_ready: tuple[tuple[str, str], ...] = ()

    @property
    def ready(self) -> bool:
        return not self.not_ready

    def to_json(self) -> dict[str, Any]:
        """The ``/readyz`` body: ``{"ready": false, "not_ready": {"fanout": "..."}}``."""
        return {"ready": self.ready, "not_ready": dict(self.not_ready)}


_connection_ids = itertools.count(1)


class Hub:
    """Holds the channels and every connection's subscriptions.

    Transports admit a handshake with :meth:`admit` and then hand the
    accepted WebSocket to :meth:`serve_connection`, which owns it until it
    closes (``_connect.serve_request`` does both). Example::

        chat = ServerChannel("chat")
        hub = Hub([chat], authenticator=MemoryAuthenticator())
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_websocket, hub, "127.0.0.1", 8000)
            chat.broadcast("lobby", {"text": "hello"})
    """

    def __init__(
        self,
        channels: Iterable[ServerChannel[Any]],
        *,
        authenticator: Authenticator | None = None,
        config: HubConfig = HubConfig(),
        fanout: FanoutBackend | None = None,
    ) -> None:
        self._instance = secrets.token_hex(4)
        self._counters = HubCounters()
        self._router = Router(channels, fanout, self._counters)
        #: ``ServerChannel.broadcast``'s way in: encode once and route (``Router``)
        #: to local subscribers, the channel's history and the fan-out. The
        #: router's method itself, so a broadcast costs no call in between.
        self.broadcast = self._router.broadcast
        self._tracker = Tracker(self._router, self._instance)
        self._router.on_presence = self._tracker.receive
        self._actions = Actions(self._router, self._tracker)
        self._admission = Admission(config, authenticator)
        self._config = config
        self._session_limits = session_limits(config)
        self._connections: set[Connection] = set()
        #: Reads idle sockets for their connections while the hub runs (heartbeat pongs wake no task).
        self.idle_reader = IdleReader()
        #: The Trio run this hub runs in, while it runs: how broadcasts from other threads reach it.
        self.trio_token: trio.lowlevel.TrioToken | None = None
        self._shields: set[trio.CancelScope] = set()
        self._stopping = False
        self._draining = False  # drain() has begun: not ready, connections still served
        self._running = False  # run() has begun
        self._ready = False  # and is ready
        self._metrics: CollectorRegistry | None = None
        for channel in self._router.channels.values():
            channel._attach(self)

    @property
    def config(self) -> HubConfig:
        return self._config

    @config.setter
    def config(self, config: HubConfig) -> None:
        """Replace the options before the hub runs (the CLI adds allowed origins so)."""
        if self._running:
            raise RuntimeError("the hub is running: give it its config before it starts")
        self._config = self._admission.config = config
        self._admission.max_connections = config.max_connections
        self._session_limits = session_limits(config)
        for channel in self._router.channels.values():
            channel._attach(self)

    @property
    def authenticator(self) -> Authenticator | None:
        """What resolves handshake tokens (``None``: tokens are refused)."""
        return self._admission.authenticator

    @property
    def fanout(self) -> FanoutBackend | None:
        """The fan-out backend (``None``: this hub is the only instance)."""
        return self._router.fanout

    def use_fanout(self, fanout: FanoutBackend) -> None:
        """Give a hub built without one a fan-out backend, before it runs (what
        the CLI does for ``MONGODB_URI``)."""
        if self._running:
            raise RuntimeError("the hub is running: give it its fan-out before it starts")
        if self._router.fanout is not None:
            raise RuntimeError("this hub has a fan-out backend already")
        self._router.fanout = fanout

    @property
    def methods(self) -> MethodTable | None:
        """The methods clients may ``call`` over the socket (an App sets its own)."""
        return self._actions.methods

    @methods.setter
    def methods(self, methods: MethodTable | None) -> None:
        self._actions.methods = methods

    @property
    def channels(self) -> Sequence[ServerChannel[Any]]:
        return tuple(self._router.channels.values())

    @property
    def instance(self) -> str:
        """This hub's id, new with every hub: connection ids start with it."""
        return self._instance

    @property
    def counters(self) -> HubCounters:
        """What the hub counted so far (plain numbers; :attr:`metrics` is their Prometheus view)."""
        return self._counters

    @property
    def metrics(self) -> CollectorRegistry:
        """This hub's Prometheus registry: its own (not the global default
        one, so several hubs in one process do not collide), read when
        scraped; process and garbage-collector metrics included. Serve it
        with ``prometheus_client.generate_latest(hub.metrics)`` or
        :func:`~modelence_trio.serve_metrics`; docs: README, Observability.
        Collect it in the hub's Trio thread, as those do (from another
        thread: ``trio.from_thread.run_sync(generate_latest, hub.metrics,
        trio_token=hub.trio_token)``): the hub's numbers change in that thread."""
        if self._metrics is None:
            from ._metrics import hub_registry  # here: _metrics needs _methods, which needs this module

            self._metrics = hub_registry(self)
        return self._metrics

    # --- the hub's own life: heartbeats and shutdown ---------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        """The hub's background work, for every server of this hub.

        It pings every connection every ``heartbeat_interval`` (one task for
        all connections, not one each) and drops those whose pong does not
        come within ``heartbeat_timeout``; with a fan-out, it stores this
        instance's broadcasts and polls other instances'. Every ``session_check_interval`` it
        asks the authenticator whether each signed-in connection's session
        still holds, and closes those that ended (4001). When it is cancelled, the hub shuts
        down gracefully: each connection flushes what is queued and closes with
        1001 within ``shutdown_grace``.

        Start it with ``await nursery.start(hub.run)``: that returns once the
        hub is ready, the fan-out's collections prepared and its sequence
        read included, so no connection is accepted on a half-set-up hub.
        Servers started on a running hub use it (``serve_websocket``, the
        App's lifespan); one that finds it idle runs it for as long as it
        serves. A hub runs once at a time: a second ``run`` raises.
        """
        if self._running:
            raise RuntimeError("this hub is already running; servers started now share it")
        self._running = True
        self.trio_token = trio.lowlevel.current_trio_token()
        self._router.use_clock(trio.lowlevel.current_clock())
        self._admission.max_connections = connection_limit(self.config.max_connections)
        quiet_accept_errors()
        try:
            async with trio.open_nursery() as nursery:
                self._stopping = self._draining = False
                quiet_repeated_errors()
                await nursery.start(self.idle_reader.run)
                config = self.config
                nursery.start_soon(heartbeats, self._connections, config.heartbeat_interval, config.heartbeat_timeout)
                checker, interval = self.authenticator, config.session_check_interval
                if isinstance(checker, SessionChecker) and interval is not None:
                    nursery.start_soon(session_checks, checker, interval, self._connections, self._identity_changed)
                nursery.start_soon(self._router.sweep_histories)
                if self.fanout is not None:
                    await nursery.start(self.fanout.run, self._router)
                if self._tracker.enabled:
                    nursery.start_soon(self._tracker.run, config.presence_window, config.presence_interval)
                self._ready = True
                task_status.started()
            raise AssertionError("unreachable: the heartbeats never end")  # pragma: no cover
        finally:
            self._running = self._ready = False
            self.trio_token = None
            self._router.use_clock(None)
            self.begin_shutdown()
            with trio.CancelScope(shield=True):
                # The other instances: this one's members leave now, and what
                # it still holds for them is stored (within the backend's bound).
                self._tracker.stop()
                if self.fanout is not None:
                    await self.fanout.close()

    @property
    def running(self) -> bool:
        """Whether :meth:`run` is running and ready (servers use the hub then)."""
        return self._ready

    def readiness(self) -> Readiness:
        """Whether this hub should get traffic: it runs and is ready, it is
        neither draining nor shutting down, and its fan-out (if any) has not
        been cut off from its database for more than ``fanout_outage_limit``."""
        not_ready: list[tuple[str, str]] = []
        if not self._ready:
            not_ready.append(("hub", "not running"))
        if self._stopping:
            not_ready.append(("shutdown", "shutting down"))
        elif self._draining:
            not_ready.append(("shutdown", "draining"))
        limit, fanout = self.config.fanout_outage_limit, self.fanout
        if fanout is not None and limit is not None and self._ready:
            since = fanout.statistics().outage_since
            try:
                lasted = trio.current_time() - since if since is not None else 0.0
            except RuntimeError:  # asked outside the hub's Trio run: that outage cannot be timed
                lasted = math.inf
            if lasted > limit:
                not_ready.append(("fanout", f"database unreachable for {lasted:.0f} s"))
        return Readiness(tuple(not_ready))

    async def drain(self) -> None:
        """Shut down gracefully, in order: from now on :meth:`readiness` says
        "draining" (``/readyz`` answers 503) while everything goes on; after
        ``HubConfig.drain_delay`` seconds (for a load balancer to notice) new
        connections are refused (503) and every connection flushes and closes
        with 1001 (:meth:`begin_shutdown`). Returns once none is left, or
        after ``shutdown_grace`` plus ``close_timeout``. What ``App.serve``
        and ``modelence-trio`` run on their shutdown signal."""
        config = self.config
        self._draining = True
        if config.drain_delay > 0:
            logger.info("draining: not ready; closing connections in %g s", config.drain_delay)
            await trio.sleep(config.drain_delay)
        self.begin_shutdown()
        with trio.move_on_after(config.shutdown_grace + config.close_timeout):
            while self._connections:
                await trio.sleep(0.05)

    def begin_shutdown(self) -> None:
        """Ask every connection to flush and close with 1001, under the grace deadline."""
        self._stopping = True
        deadline = trio.current_time() + self.config.shutdown_grace
        for scope in self._shields:
            scope.deadline = min(scope.deadline, deadline)
        for conn in self._connections:
            conn.begin_shutdown()

    def shut_down_connection(self, nursery: trio.Nursery) -> None:
        """End the one connection served in ``nursery`` as a shutdown would
        (flush, 1001, within ``shutdown_grace``), leaving the hub running:
        what a transport does when the server cancels one connection's task."""
        scope = nursery.cancel_scope
        scope.deadline = min(scope.deadline, trio.current_time() + self.config.shutdown_grace)
        for conn in self._connections:
            if conn.nursery is nursery:
                conn.begin_shutdown()

    def shield_connection(self, nursery: trio.Nursery) -> _ShieldedConnection:
        """``with hub.shield_connection(nursery):`` shields a transport's
        per-connection nursery from outside cancellation for the block.

        A shutdown must not cancel a connection half-way through a write (the
        stream would be left unusable for the close frame). Under this shield
        it is :meth:`begin_shutdown` (run by :meth:`run` when cancelled) that
        ends the connection, politely and with a deadline. The nursery's own
        scope is the shield, so it costs no extra cancel scope.
        """
        return _ShieldedConnection(self, nursery.cancel_scope)

    async def _identity_changed(self, conn: Connection, identity: Identity) -> None:
        await self._actions.update_identity(conn, self._admission.with_default_roles(identity))

    def statistics(self) -> HubStatistics:
        stats = self._router.registry.statistics()
        return HubStatistics(len(self._connections), stats.channels, stats.subscriptions)

    # --- handshake --------------------------------------------------------------

    async def authenticate(
        self, target: str, headers: Iterable[tuple[bytes, bytes]], client: str | None = None
    ) -> Identity:
        """Resolve the identity of a handshake, before it is accepted.

        ``client`` is the peer's address (for the per-address limit).

        Raises:
            HandshakeRejected: 403 for an origin that is not allowed; 401 for
                a bad, unknown or expired token (or a missing one when
                ``require_user``); 429 past ``max_connections_per_address``;
                503 when full, shutting down, or if the authenticator failed.
                The transport answers with that HTTP status.
        """
        headers = list(headers)
        self._admission.check(headers, client, connections=len(self._connections), stopping=self._stopping)
        return await self.identify(token_from_request(target, headers))

    def admit(self, target: str, headers: Iterable[tuple[bytes, bytes]], client: str | None = None) -> Admitted:
        """``async with hub.admit(target, headers, client) as identity:``
        :meth:`authenticate`, holding the handshake's place in the
        connection limits from the check until the block ends, so that
        handshakes arriving together cannot all pass it (what transports use)."""
        return Admitted(self, target, headers, client)

    def hold_place(self, client: str | None) -> Held:
        """Count a socket that is not served (a refusal being closed) in the
        connection limits while the block runs."""
        return self._admission.hold(client)

    async def identify(self, token: str | None) -> Identity:
        """Resolve a session token (``None``: none presented) to an identity
        with the hub's default roles; the HTTP methods endpoint uses it too.

        Raises:
            HandshakeRejected: as :meth:`authenticate` (but never for capacity).
        """
        return await self._admission.identify(token)

    # --- one connection -----------------------------------------------------------

    async def serve_connection(
        self, transport: Transport, identity: Identity, nursery: trio.Nursery, address: str | None = None
    ) -> None:
        """Run one accepted connection until the peer leaves or the connection ends.

        Args:
            transport: the accepted WebSocket.
            identity: what :meth:`admit` resolved for its handshake.
            address: the client's address (what per-caller limits key
                anonymous callers by, as over HTTP).
            nursery: the hub's nursery for this connection (``serve_request``
                opens it inside the transport's, which is under
                :meth:`shield_connection`). A writer task runs there when the
                socket cannot take frames at once; cancelling it ends the
                connection, while the transport's reader, outside it, still
                sees the peer's answer to the close frame.

        This task reads; on the way out every subscription is removed.
        """
        conn = Connection(
            f"{self._instance}-{next(_connection_ids)}",
            identity,
            self._router.registry,
            transport,
            nursery,
            self.config.outbound_queue_size,
            self.config.close_timeout,
            self.config.outbound_queue_bytes,
            session=Session(self._session_limits),
            counters=self._counters,
            address=address,
        )
        started = time.monotonic()
        self._connections.add(conn)
        user = identity.user.to_wire() if identity.user is not None else None
        conn.reply(Welcome(conn.id, user, identity.roles))
        if self._stopping:
            conn.begin_shutdown()
        try:
            await transport.run(functools.partial(self._actions.handle, conn))
            conn.peer_closed()
        finally:
            self._tracker.drop(conn)
            self._router.registry.drop(conn)
            self._connections.discard(conn)
            if conn.failed and not conn.closed and conn.close_reason is not None:
                # Failed (slow consumer, heartbeat, ...): a best-effort close frame.
                with trio.CancelScope(shield=True), trio.move_on_after(self.config.close_timeout):
                    await transport.close(*conn.close_reason)
            self._ended(conn, transport, time.monotonic() - started)

    def _ended(self, conn: Connection, transport: Transport, duration: float) -> None:
        """Count a connection's end and log it: one INFO line, with why it
        ended and what went through it; never a token, a user or a channel."""
        peer_code: int | None = getattr(transport, "close_code", None)  # the transport's, if it knows
        code: int | None
        if conn.close_reason is not None:
            code, reason = conn.close_reason
            by, label = "server", str(code)
        elif peer_code == CloseCode.MESSAGE_TOO_BIG:  # the WebSocket library closed for us
            code, reason, by, label = peer_code, "message too big", "server", str(peer_code)
        else:
            code, reason, by, label = peer_code, "closed by the client", "peer", "peer"
        self._counters.closed[label] += 1
        frames_out, bytes_out = conn.delivered_frames + conn.own_frames, conn.delivered_bytes + conn.own_bytes
        session = conn.session
        logger.info(
            "connection %s ended: close %s by %s (%s) after %.1f s; %d frames in (%d bytes), %d out (%d bytes)",
            conn.id,
            code if code is not None else "-",
            by,
            reason,
            duration,
            session.received_frames,
            session.received_bytes,
            frames_out,
            bytes_out,
            extra={
                "event": "connection_ended",
                "connection": conn.id,
                "close_code": code,
                "closed_by": by,
                "reason": reason,
                "duration_s": round(duration, 3),
                "frames_in": session.received_frames,
                "bytes_in": session.received_bytes,
                "frames_out": frames_out,
                "bytes_out": bytes_out,
            },
        )


class Admitted:
    """See ``Hub.admit``. A class, not a generator-based context manager:
    it lasts as long as the connection, and keeps neither the request's
    headers nor a suspended frame for it."""

    __slots__ = ("_client", "_headers", "_held", "_hub", "_target")

    def __init__(self, hub: Hub, target: str, headers: Iterable[tuple[bytes, bytes]], client: str | None) -> None:
        self._hub = hub
        self._target: str | None = target
        self._headers: Iterable[tuple[bytes, bytes]] | None = headers
        self._client = client
        self._held: Held | None = None

    async def __aenter__(self) -> Identity:
        hub = self._hub
        headers, target = list(self._headers or ()), self._target or ""
        self._headers = self._target = None
        admission = hub._admission
        admission.check(headers, self._client, connections=len(hub._connections), stopping=hub._stopping)
        self._held = admission.hold(self._client)
        try:
            return await hub.identify(token_from_request(target, headers))
        except BaseException:
            self._release()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._release()

    def _release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.__exit__(None, None, None)


class _ShieldedConnection:
    """See ``Hub.shield_connection``."""

    __slots__ = ("_hub", "_scope")

    def __init__(self, hub: Hub, scope: trio.CancelScope) -> None:
        self._hub = hub
        self._scope = scope

    def __enter__(self) -> None:
        hub, scope = self._hub, self._scope
        scope.shield = True
        if hub._stopping:
            scope.deadline = trio.current_time() + hub.config.shutdown_grace
        hub._shields.add(scope)

    def __exit__(self, *exc_info: object) -> None:
        self._hub._shields.discard(self._scope)
