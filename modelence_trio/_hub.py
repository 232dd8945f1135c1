"""The hub: channels, subscriptions and the per-connection core every transport shares."""

from __future__ import annotations

import itertools
import logging
import secrets
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
import trio

from ._auth import Authenticator, Identity, _roles
from ._channel import ChannelContext, PublishRejected, ServerChannel
from ._registry import Registry
from ._transport import SendResult, Transport, TransportClosed
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
    ProtocolError,
    Publish,
    Published,
    ServerFrame,
    Welcome,
    encode,
    error_reply,
    parse_client_frame,
    split_channel,
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
        max_frame_size: largest client message accepted (larger: close 1009).
        max_id_length / max_ref_length: bounds on channel ids and ``ref`` values.
        handshake_timeout: seconds a client has to finish the opening handshake.
        close_timeout: seconds to wait for the closing handshake.
        shutdown_grace: on shutdown, seconds a connection has to flush what is
            queued and complete the close handshake before it is cut.
    """

    require_user: bool = False
    authenticated_roles: tuple[str, ...] = attrs.field(default=(), converter=_roles)
    anonymous_roles: tuple[str, ...] = attrs.field(default=(), converter=_roles)
    heartbeat_interval: float | None = 25.0
    heartbeat_timeout: float = 20.0
    outbound_queue_size: int = 4096
    max_frame_size: int = 64 * 1024
    max_id_length: int = 256
    max_ref_length: int = 128
    handshake_timeout: float = 10.0
    close_timeout: float = 5.0
    shutdown_grace: float = 5.0


@attrs.frozen
class HubStatistics:
    """A snapshot of what the hub holds; all zero once every client has gone."""

    connections: int
    channels: int
    subscriptions: int


_connection_ids = itertools.count(1)


@attrs.define(eq=False)
class _Connection:
    """Server-side state of one accepted WebSocket.

    ``send`` is the only thing the broadcast path touches: it appends a
    reference to the already-encoded frame and wakes the writer; nothing per
    subscriber is encoded and nothing waits.
    """

    id: str
    identity: Identity
    registry: Registry
    max_queue: int
    send_nowait: Callable[[bytes], SendResult]
    queue: deque[Outgoing] = attrs.field(factory=deque)
    wakeup: trio.Event = attrs.field(factory=trio.Event)
    close_reason: tuple[int, str] | None = None
    #: The scope of the connection's tasks; ``fail`` cancels it outright.
    cancel_scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    #: Set once the socket needs no close frame from us (peer gone, or sent).
    closed: bool = False

    def send(self, frame: Outgoing) -> None:
        if self.close_reason is not None:
            return
        if not self.queue:
            result = self.send_nowait(frame.wire)
            if result is SendResult.SENT:
                return
            if result is SendResult.FLUSH:
                self.wakeup.set()
                return
        elif len(self.queue) >= self.max_queue:
            self.fail(CloseCode.SLOW_CONSUMER, "outbound queue overflow: the client does not read")
            return
        self.queue.append(frame)
        self.wakeup.set()

    def reply(self, frame: ServerFrame) -> None:
        self.send(Outgoing.from_text(encode(frame)))

    def fail(self, code: int, reason: str) -> None:
        """Stop all delivery now and end the connection's tasks; the socket is
        then closed with ``code`` (bounded by ``close_timeout``, since a peer
        that does not read may not take the close frame either)."""
        if self.close_reason is None:
            logger.info("closing connection %s: %s (%d)", self.id, reason, code)
            self.close_reason = (code, reason)
            self.registry.drop(self)
            self.queue.clear()
            self.cancel_scope.cancel()

    def begin_shutdown(self) -> None:
        """Stop taking frames; the writer sends what is queued, then 1001."""
        if self.close_reason is None:
            self.close_reason = (CloseCode.GOING_AWAY, "server shutting down")
            self.wakeup.set()


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
    ) -> None:
        self.config = config
        self.authenticator = authenticator
        self._channels: dict[str, ServerChannel[Any]] = {}
        for channel in channels:
            if channel.category in self._channels:
                raise ValueError(f"two channels share the category {channel.category!r}")
            self._channels[channel.category] = channel
        self._limits = Limits(max_id_length=config.max_id_length, max_ref_length=config.max_ref_length)
        self._registry = Registry()
        self._connections: set[_Connection] = set()
        self._instance = secrets.token_hex(4)
        for channel in self._channels.values():
            channel._attach(self)

    @property
    def channels(self) -> Sequence[ServerChannel[Any]]:
        return tuple(self._channels.values())

    def deliver(self, channel: str, frame: Outgoing) -> int:
        """Queue an already-encoded ``message`` frame for local subscribers.

        ``ServerChannel.broadcast`` calls this; it exists separately so that a
        fan-out from other instances can deliver without encoding again.
        """
        return self._registry.deliver(channel, frame)

    def statistics(self) -> HubStatistics:
        stats = self._registry.statistics()
        return HubStatistics(len(self._connections), stats.channels, stats.subscriptions)

    # --- handshake --------------------------------------------------------------

    async def authenticate(self, target: str, headers: Iterable[tuple[bytes, bytes]]) -> Identity:
        """Resolve the identity of a handshake, before it is accepted.

        Raises:
            HandshakeRejected: 401 for a bad, unknown or expired token (or a
                missing one when ``require_user``); 503 if the authenticator
                failed. The transport answers with that HTTP status.
        """
        token = token_from_request(target, headers)
        if token is None:
            if self.config.require_user:
                raise HandshakeRejected(401, "authentication required")
            return Identity(None, None, self.config.anonymous_roles)
        if self.authenticator is None:
            raise HandshakeRejected(401, "this server accepts no tokens")
        try:
            identity = await self.authenticator.authenticate(token)
        except Exception:
            logger.exception("authenticator failed")
            raise HandshakeRejected(503, "authentication unavailable") from None
        if identity is None:
            raise HandshakeRejected(401, "invalid or expired token")
        base = self.config.anonymous_roles if identity.user is None else self.config.authenticated_roles
        roles = tuple(dict.fromkeys((*base, *identity.roles)))
        return attrs.evolve(identity, roles=roles)

    # --- one connection -----------------------------------------------------------

    async def serve_connection(
        self, transport: Transport, identity: Identity, *, stopping: trio.Event | None = None
    ) -> None:
        """Run one accepted connection until the peer leaves, ``stopping`` is set, or we are cancelled.

        Reader, writer and heartbeat share one nursery that this call owns, so
        none of them outlives the connection. On the way out every subscription
        is removed. When ``stopping`` is set (the transport's graceful shutdown,
        see ``shielded_until_stopped``) the queued frames are flushed and the
        socket is closed with 1001; plain cancellation stops at once.
        """
        conn = _Connection(
            f"{self._instance}-{next(_connection_ids)}",
            identity,
            self._registry,
            self.config.outbound_queue_size,
            transport.send_nowait,
        )
        self._connections.add(conn)
        user = identity.user.to_wire() if identity.user is not None else None
        conn.reply(Welcome(conn.id, user, identity.roles))
        try:
            with conn.cancel_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._write_loop, conn, transport)
                    if self.config.heartbeat_interval is not None:
                        nursery.start_soon(self._heartbeat, conn, transport)
                    if stopping is not None:
                        nursery.start_soon(_call_when_set, stopping, conn.begin_shutdown)
                    await self._read_loop(conn, transport)
                    conn.closed = True  # the peer closed
                    conn.cancel_scope.cancel()
        finally:
            self._registry.drop(conn)
            self._connections.discard(conn)
            if not conn.closed and conn.close_reason is not None:
                # Failed (slow consumer, heartbeat): a best-effort close frame.
                with trio.CancelScope(shield=True), trio.move_on_after(self.config.close_timeout):
                    await transport.close(*conn.close_reason)

    async def _write_loop(self, conn: _Connection, transport: Transport) -> None:
        try:
            while conn.close_reason is None or conn.queue:
                await conn.wakeup.wait()
                conn.wakeup = trio.Event()
                # Even with nothing queued: a partial direct write may be waiting.
                batch = list(conn.queue)
                conn.queue.clear()
                await transport.send(batch)
            # Shutting down, and everything queued went out.
            with trio.move_on_after(self.config.close_timeout):
                await transport.close(*conn.close_reason)
        except TransportClosed:
            pass  # the socket broke under us
        conn.closed = True
        conn.cancel_scope.cancel()

    async def _heartbeat(self, conn: _Connection, transport: Transport) -> None:
        assert self.config.heartbeat_interval is not None
        while True:
            await trio.sleep(self.config.heartbeat_interval)
            with trio.move_on_after(self.config.heartbeat_timeout):
                try:
                    await transport.ping()
                except TransportClosed:
                    return
                continue
            conn.fail(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout: no pong")
            return

    async def _read_loop(self, conn: _Connection, transport: Transport) -> None:
        while True:
            try:
                message = await transport.receive()
            except TransportClosed:
                return
            try:
                frame = parse_client_frame(message, limits=self._limits)
            except ProtocolError as exc:
                conn.reply(error_reply(exc))
                continue
            if isinstance(frame, Join):
                await self._join(conn, frame)
            elif isinstance(frame, Leave):
                self._registry.unsubscribe(conn, frame.channel)
                conn.reply(Left(frame.channel, frame.ref))
            elif isinstance(frame, Publish):
                await self._publish(conn, frame)
            elif isinstance(frame, Ping):
                conn.reply(Pong(frame.ref))

    def _context(self, conn: _Connection, channel: str) -> tuple[ServerChannel[Any] | None, ChannelContext]:
        category, channel_id = split_channel(channel, max_id_length=self.config.max_id_length)
        return self._channels.get(category), ChannelContext(conn.identity, category, channel_id, conn.id)

    async def _join(self, conn: _Connection, frame: Join) -> None:
        server_channel, ctx = self._context(conn, frame.channel)
        if server_channel is None:
            why = f"no channel category {ctx.category!r}"
            conn.reply(JoinError(frame.channel, ErrorCode.UNKNOWN_CHANNEL, why, frame.ref))
            return
        if not self._registry.is_subscribed(conn, frame.channel):
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
            self._registry.subscribe(conn, frame.channel)
        conn.reply(Joined(frame.channel, frame.ref))

    async def _publish(self, conn: _Connection, frame: Publish) -> None:
        server_channel, ctx = self._context(conn, frame.channel)
        if not self._registry.is_subscribed(conn, frame.channel):
            why = f"join {frame.channel!r} before publishing to it"
            conn.reply(ErrorFrame(ErrorCode.NOT_JOINED, why, frame.ref))
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


async def _call_when_set(event: trio.Event, fn: Callable[[], None]) -> None:
    await event.wait()
    fn()
