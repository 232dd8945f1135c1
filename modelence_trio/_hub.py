"""The hub: channels, subscriptions and the per-connection core every transport shares."""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import logging
import math
import secrets
import traceback
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, NoReturn

import attrs
import trio

from ._auth import Authenticator, Identity, SessionChecker, _roles
from ._backend import FanoutBackend
from ._channel import ChannelContext, PublishRejected, ServerChannel
from ._connection import Connection
from ._history import History, HistoryBook
from ._origins import check_origin, validate_origins
from ._registry import Registry
from ._resources import connection_limit, quiet_accept_errors
from ._session import Answer, Close, Session, SessionLimits
from ._transport import Transport
from ._wire import Outgoing
from .protocol import (
    CloseCode,
    ErrorCode,
    HandshakeRejected,
    Join,
    Joined,
    JoinError,
    Leave,
    Left,
    Limits,
    Ping,
    Pong,
    Publish,
    Published,
    Since,
    Welcome,
    encode_message,
    token_from_request,
)
from .protocol import Error as ErrorFrame

__all__ = ["Hub", "HubConfig", "HubStatistics"]

logger = logging.getLogger("modelence_trio")


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


@attrs.frozen
class HubStatistics:
    """A snapshot of what the hub holds; all zero once every client has gone."""

    connections: int
    channels: int
    subscriptions: int


_connection_ids = itertools.count(1)


class Hub:
    """Holds the channels and every connection's subscriptions.

    Transports authenticate a handshake with :meth:`authenticate` and then hand
    the accepted WebSocket to :meth:`serve_connection`, which owns it until it
    closes. Example::

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
        self.config = config
        self.authenticator = authenticator
        self.fanout = fanout
        self._channels: dict[str, ServerChannel[Any]] = {}
        for channel in channels:
            if channel.category in self._channels:
                raise ValueError(f"two channels share the category {channel.category!r}")
            self._channels[channel.category] = channel
        self._limits_of: tuple[HubConfig, SessionLimits] | None = None
        self._registry = Registry()
        self._histories = HistoryBook()
        self._connections: set[Connection] = set()
        self._per_address: collections.Counter[str] = collections.Counter()  # admitted, by client address
        self._admitted = 0  # handshakes admitted (being authenticated, accepted or served)
        self._max_connections = config.max_connections  # clamped to the open-file limit by run()
        #: The Trio run this hub runs in, while it runs: how broadcasts from other threads reach it.
        self.trio_token: trio.lowlevel.TrioToken | None = None
        self._shields: set[trio.CancelScope] = set()
        self._stopping = False
        self._running = False  # run() has begun
        self._ready = False  # and is ready
        self._instance = secrets.token_hex(4)
        self._anonymous = Identity(None, None, config.anonymous_roles)
        for channel in self._channels.values():
            channel._attach(self)

    @property
    def channels(self) -> Sequence[ServerChannel[Any]]:
        return tuple(self._channels.values())

    def broadcast(self, channel: ServerChannel[Any], name: str, data: Any) -> None:
        """Encode a broadcast once (with its offset, if the channel keeps a
        history), deliver it to local subscribers at once, and hand it to the
        fan-out (if any) for other instances."""
        fanout = self.fanout
        if fanout is None:  # the single-instance hot path, spelled out
            history = channel.history
            if history is None:
                self._registry.deliver(name, Outgoing.from_text(encode_message(name, data)))
            else:
                self._registry.deliver(name, self._histories.record(name, data, history, _now()))
        elif fanout.ordered:
            # Every subscriber, here too, gets it from the shared sequence (deliver_in_sequence).
            text = encode_message(name, data)
            Outgoing.from_text(text)  # refused here, not in the writer's thread, if it cannot be sent
            fanout.publish(name, text)
        else:
            frame = self._encode(name, data, None)  # no offsets: see _history_of
            self._registry.deliver(name, frame)
            fanout.publish(name, frame.text)

    def _encode(self, name: str, data: Any, history: History | None, offset: int | None = None) -> Outgoing:
        if history is None:
            return Outgoing.from_text(encode_message(name, data))
        return self._histories.record(name, data, history, _now(), offset)

    def _history_of(self, channel: ServerChannel[Any] | None) -> History | None:
        # A fan-out that delivers an instance's own broadcasts at once gives
        # them no place in the shared sequence: no offsets, no recovery (joined says so).
        if channel is None or (self.fanout is not None and not self.fanout.ordered):
            return None
        return channel.history

    # --- what the fan-out delivers (see FanoutBackend) ---------------------------------

    def start_sequence(self, epoch: str, seq: int) -> None:
        """The shared sequence is ready: offsets are its numbers from now on."""
        if self.fanout is not None and self.fanout.ordered:
            self._histories.reset(epoch, seq)

    def deliver_in_sequence(self, name: str, data: Any, seq: int) -> None:
        """A broadcast of any instance, ours included, in the shared order."""
        history = self._history_of(self._channels.get(name.partition(":")[0]))
        self._registry.deliver(name, self._encode(name, data, history, seq))

    def deliver(self, channel: str, frame: Outgoing) -> int:
        """Queue an already-encoded ``message`` frame for local subscribers only
        (the fan-out delivers other instances' broadcasts with it)."""
        return self._registry.deliver(channel, frame)

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
        self._max_connections = connection_limit(self.config.max_connections)
        quiet_accept_errors()
        try:
            async with trio.open_nursery() as nursery:
                self._stopping = False
                nursery.start_soon(self._heartbeats)
                nursery.start_soon(self._session_checks)
                nursery.start_soon(self._sweep_histories)
                if self.fanout is not None:
                    await nursery.start(self.fanout.run, self)
                self._ready = True
                task_status.started()
            raise AssertionError("unreachable: the heartbeats never end")  # pragma: no cover
        finally:
            self._running = self._ready = False
            self.trio_token = None
            self.begin_shutdown()

    @property
    def running(self) -> bool:
        """Whether :meth:`run` is running and ready (servers use the hub then)."""
        return self._ready

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

    async def _sweep_histories(self) -> NoReturn:
        """Forget channels whose history has aged out, so that a hub that saw
        many channels does not keep an empty record of each."""
        ages = [c.history.max_age for c in self._channels.values() if c.history is not None]
        if not ages:
            await trio.sleep_forever()
        while True:
            await trio.sleep(min(ages))
            self._histories.sweep(trio.current_time())

    async def _session_checks(self) -> None:
        authenticator = self.authenticator
        interval = self.config.session_check_interval
        if not isinstance(authenticator, SessionChecker) or interval is None:
            return
        check = authenticator.check
        while True:
            await trio.sleep(interval)
            for conn in [c for c in self._connections if c.identity.user is not None]:
                try:
                    verdict = await check(conn.identity)
                except Exception:
                    logger.exception("session check failed; keeping the connection until the next check")
                    continue
                if verdict is False or (isinstance(verdict, Identity) and verdict.user is None):
                    conn.fail(CloseCode.SESSION_ENDED, "session expired or revoked, or user disabled")
                elif isinstance(verdict, Identity) and conn.close_reason is None:
                    await self._update_identity(conn, self._with_default_roles(verdict))

    async def _update_identity(self, conn: Connection, identity: Identity) -> None:
        """The session still holds but its user or roles changed: every joined
        channel's access rule runs again, and those that now refuse are left
        (a ``left`` frame with a reason)."""
        if (identity.user, identity.roles) == (conn.identity.user, conn.identity.roles):
            return
        conn.identity = identity
        for channel in sorted(self._registry.channels_of(conn)):
            server_channel, ctx = self._context(conn, channel)
            try:
                allowed = server_channel is not None and await server_channel._allows(ctx)
            except Exception:
                logger.exception("access check for %s raised; leaving it", channel)
                allowed = False
            if not allowed and self._registry.unsubscribe(conn, channel):
                conn.reply(Left(channel, None, "access revoked"))

    async def _heartbeats(self) -> NoReturn:
        interval = self.config.heartbeat_interval
        if interval is None:
            await trio.sleep_forever()
        timeout = self.config.heartbeat_timeout
        while True:
            # Sleep until the next ping round, waking for pong deadlines on the way.
            next_round = trio.current_time() + interval
            while True:
                deadline = min((c.ping_deadline for c in self._connections), default=math.inf)
                await trio.sleep_until(min(next_round, deadline))
                now = trio.current_time()
                for conn in list(self._connections):
                    conn.check_pong(now)
                if now >= next_round:
                    break
            for conn in list(self._connections):
                conn.ping_round(now, timeout)

    def statistics(self) -> HubStatistics:
        stats = self._registry.statistics()
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
        self._check_admission(headers, client)
        return await self.identify(token_from_request(target, headers))

    @contextlib.asynccontextmanager
    async def admit(
        self, target: str, headers: Iterable[tuple[bytes, bytes]], client: str | None = None
    ) -> AsyncIterator[Identity]:
        """:meth:`authenticate`, holding the handshake's place in the
        connection limits from the check until the block ends, so that
        handshakes arriving together cannot all pass it (what transports use)."""
        headers = list(headers)
        self._check_admission(headers, client)
        self._admitted += 1
        if client is not None:
            self._per_address[client] += 1
        try:
            yield await self.identify(token_from_request(target, headers))
        finally:
            self._admitted -= 1
            if client is not None:
                self._per_address[client] -= 1
                if not self._per_address[client]:
                    del self._per_address[client]

    def _check_admission(self, headers: list[tuple[bytes, bytes]], client: str | None) -> None:
        if self._stopping:
            raise HandshakeRejected(503, "server shutting down")
        refusal = check_origin(headers, self.config.allowed_origins)
        if refusal is not None:
            raise HandshakeRejected(403, refusal)
        limit = self._max_connections
        if limit is not None and max(self._admitted, len(self._connections)) >= limit:
            raise HandshakeRejected(503, "server full: too many connections")
        per_address = self.config.max_connections_per_address
        if per_address is not None and client is not None and self._per_address[client] >= per_address:
            raise HandshakeRejected(429, "too many connections from this address")

    async def identify(self, token: str | None) -> Identity:
        """Resolve a session token (``None``: none presented) to an identity
        with the hub's default roles; the HTTP methods endpoint uses it too.

        Raises:
            HandshakeRejected: as :meth:`authenticate` (but never for capacity).
        """
        if token is None:
            if self.config.require_user:
                raise HandshakeRejected(401, "authentication required")
            return self._anonymous
        if self.authenticator is None:
            raise HandshakeRejected(401, "this server accepts no tokens")
        if not token.isascii():
            try:
                token.encode()
            except UnicodeEncodeError:  # a lone surrogate: no authenticator could have issued it
                raise HandshakeRejected(401, "invalid or expired token") from None
        try:
            identity = await self.authenticator.authenticate(token)
        except Exception as exc:
            # Where it failed, but not its message, which may quote the token.
            where = "".join(traceback.format_tb(exc.__traceback__))
            logger.error("authenticator failed with %s; traceback:\n%s", type(exc).__qualname__, where)
            raise HandshakeRejected(503, "authentication unavailable") from None
        if identity is None:
            raise HandshakeRejected(401, "invalid or expired token")
        return self._with_default_roles(identity)

    def _with_default_roles(self, identity: Identity) -> Identity:
        base = self.config.anonymous_roles if identity.user is None else self.config.authenticated_roles
        return attrs.evolve(identity, roles=tuple(dict.fromkeys((*base, *identity.roles))))

    # --- one connection -----------------------------------------------------------

    async def serve_connection(self, transport: Transport, identity: Identity, nursery: trio.Nursery) -> None:
        """Run one accepted connection until the peer leaves or the connection ends.

        Args:
            transport: the accepted WebSocket.
            identity: what :meth:`admit` resolved for its handshake.
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
            self._registry,
            transport,
            nursery,
            self.config.outbound_queue_size,
            self.config.close_timeout,
            self.config.outbound_queue_bytes,
            session=Session(self._session_limits()),
        )
        self._connections.add(conn)
        user = identity.user.to_wire() if identity.user is not None else None
        conn.reply(Welcome(conn.id, user, identity.roles))
        if self._stopping:
            conn.begin_shutdown()
        try:
            await transport.run(functools.partial(self._handle, conn))
            conn.peer_closed()
        finally:
            self._registry.drop(conn)
            self._connections.discard(conn)
            if conn.failed and not conn.closed and conn.close_reason is not None:
                # Failed (slow consumer, heartbeat, ...): a best-effort close frame.
                with trio.CancelScope(shield=True), trio.move_on_after(self.config.close_timeout):
                    await transport.close(*conn.close_reason)

    def _session_limits(self) -> SessionLimits:
        """``HubConfig``'s per-connection limits (made again if the config was replaced)."""
        if self._limits_of is None or self._limits_of[0] is not self.config:
            c = self.config
            parse = Limits(max_id_length=c.max_id_length, max_ref_length=c.max_ref_length, max_depth=c.max_depth)
            limits = SessionLimits(
                c.max_frame_size,
                parse,
                c.bad_frame_limit,
                c.bad_frame_window,
                c.joins_per_second,
                c.publishes_per_second,
                c.max_channels_per_connection,
            )
            self._limits_of = (c, limits)
        return self._limits_of[1]

    async def _handle(self, conn: Connection, message: str | bytes) -> None:
        """Act on one client message. Whatever goes wrong here ends at most
        this connection (1011, logged once): it never reaches the transport,
        the hub or another client."""
        try:
            await self._act(conn, message)
        except Exception:
            logger.exception("handling a frame of connection %s failed; closing it (1011)", conn.id)
            conn.fail(CloseCode.INTERNAL_ERROR, "internal error")

    async def _act(self, conn: Connection, message: str | bytes) -> None:
        # The connection's own policy decides first (sans-IO: _session.py).
        frame = conn.session.receive(message, trio.current_time())
        if isinstance(frame, Close):
            conn.fail(frame.code, frame.reason)
        elif isinstance(frame, Answer):
            conn.reply(frame.frame)
            if frame.then_close is not None:
                conn.fail(frame.then_close.code, frame.then_close.reason)
        elif isinstance(frame, Join):
            await self._join(conn, frame)
        elif isinstance(frame, Leave):
            self._registry.unsubscribe(conn, frame.channel)
            conn.reply(Left(frame.channel, frame.ref))
        elif isinstance(frame, Publish):
            await self._publish(conn, frame)
        elif isinstance(frame, Ping):
            conn.reply(Pong(frame.ref))

    def _context(self, conn: Connection, channel: str) -> tuple[ServerChannel[Any] | None, ChannelContext]:
        # The codec has validated the name against this hub's limits already.
        category, _, channel_id = channel.partition(":")
        return self._channels.get(category), ChannelContext(conn.identity, category, channel_id, conn.id)

    async def _join(self, conn: Connection, frame: Join) -> None:
        server_channel, ctx = self._context(conn, frame.channel)
        if server_channel is None:
            why = f"no channel category {ctx.category!r}"
            conn.reply(JoinError(frame.channel, ErrorCode.UNKNOWN_CHANNEL, why, frame.ref))
            return
        history = self._history_of(server_channel)
        # Already joined: it missed nothing (if the channel keeps a history at all).
        recovered: bool | None = None if frame.since is None else history is not None
        replay: list[Outgoing] = []
        if not self._registry.is_subscribed(conn, frame.channel):
            refusal = conn.session.admit_join(
                frame.channel, frame.ref, self._registry.count_of(conn), trio.current_time()
            )
            if refusal is not None:
                conn.reply(refusal)
                return
            try:
                allowed = await server_channel._allows(ctx)
            except Exception:
                logger.exception("access check for %s raised; denying", frame.channel)
                allowed = False
            if not allowed:
                conn.reply(JoinError(frame.channel, ErrorCode.ACCESS_DENIED, "Access denied", frame.ref))
                return
            if conn.close_reason is not None:
                return
            if frame.since is not None:
                recovered, replay = await self._recover(frame.channel, frame.since, history)
                if conn.close_reason is not None:
                    return
            self._registry.subscribe(conn, frame.channel)
        position = (self._histories.last, self._histories.epoch) if history is not None else (None, None)
        conn.reply(Joined(frame.channel, frame.ref, recovered, *position))
        for out in replay:
            conn.send(out)

    async def _recover(self, channel: str, since: Since, history: History | None) -> tuple[bool, list[Outgoing]]:
        """Whether every message after ``since`` can be replayed, and the replay.

        The caller subscribes right after this returns, with no await in
        between, so no broadcast falls between the replay and live delivery.
        With the ordered fan-out, what this instance did not see (it started
        later) is read from the collection, up to where its own history
        takes over.
        """
        recovered, replay = self._histories.replay(channel, since, history, trio.current_time())
        fanout = self.fanout
        if recovered or history is None or fanout is None or not fanout.ordered:
            return recovered, replay
        if since.epoch != self._histories.epoch or since.offset > self._histories.last:
            return False, []
        upto = self._histories.last
        stored = await fanout.history(channel, since.offset, upto)
        if stored is None:
            return False, []
        # Whatever the poller delivered meanwhile is in this instance's history.
        recovered, newer = self._histories.replay(channel, Since(upto, since.epoch), history, trio.current_time())
        if not recovered:
            return False, []
        epoch = self._histories.epoch
        older = [Outgoing.from_text(encode_message(channel, data, seq, epoch)) for seq, data in stored]
        return True, older + newer

    async def _publish(self, conn: Connection, frame: Publish) -> None:
        server_channel, ctx = self._context(conn, frame.channel)
        if not self._registry.is_subscribed(conn, frame.channel):
            why = f"join {frame.channel!r} before publishing to it"
            conn.reply(ErrorFrame(ErrorCode.NOT_JOINED, why, frame.ref))
            return
        refusal = conn.session.admit_publish(frame.ref, trio.current_time())
        if refusal is not None:
            conn.reply(refusal)
            return
        if server_channel is None or server_channel.on_message is None:
            why = f"clients may not publish to {ctx.category!r}"
            conn.reply(ErrorFrame(ErrorCode.PUBLISH_NOT_ALLOWED, why, frame.ref))
            return
        try:
            await server_channel._handle(ctx, frame.data)
        except PublishRejected as exc:
            conn.reply(ErrorFrame(exc.code, exc.message, frame.ref))
            return
        except Exception:
            logger.exception("publish handler for %s raised", frame.channel)
            conn.reply(ErrorFrame(ErrorCode.HANDLER_ERROR, "the publish handler failed", frame.ref))
            return
        if frame.ref is not None:
            conn.reply(Published(frame.channel, frame.ref))


def _now() -> float:
    """Trio's clock (virtual under MockClock); a broadcast made outside Trio is
    stamped as already old, so it only ever makes recovery fail, never lie."""
    try:
        return trio.current_time()
    except RuntimeError:
        return -math.inf


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
