"""The Trio client: connects with a token, joins channels, and survives reconnects."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, Generic

import attrs
import trio
import trio_websocket
from typing_extensions import TypeVar

from ._channel import MAX_ID_LENGTH_CEILING
from ._client_state import ClientSession, Delivery, Notice, PresenceSnapshot, PresenceUpdate, Rejoined, Reply
from ._typed import unstructure
from ._util import Backoff, background_nursery
from .protocol import (
    Call,
    ClientFrame,
    Error,
    ErrorCode,
    Join,
    JoinError,
    Leave,
    Left,
    Message,
    Ping,
    PresenceQuery,
    ProtocolError,
    Publish,
    Result,
    ServerFrame,
    Welcome,
    encode,
    parse_server_frame,
    split_channel,
)

__all__ = [
    "AuthenticationFailed",
    "Backoff",
    "Client",
    "ClientChannel",
    "ClientClosed",
    "ClientError",
    "ClientMessage",
    "ConnectionLost",
    "Dialer",
    "JoinRefused",
    "MethodFailed",
    "PresenceSnapshot",
    "RequestFailed",
    "open_client",
    "url_dialer",
]

logger = logging.getLogger("modelence_trio.client")

#: The payload type; unparametrised channels carry ``Any`` JSON.
T = TypeVar("T", default=Any)

#: Opens one WebSocket: ``await dial(nursery, extra_headers)``. The nursery owns
#: the connection's background reader; the client owns the nursery.
Dialer = Callable[[trio.Nursery, list[tuple[bytes, bytes]]], Awaitable[trio_websocket.WebSocketConnection]]


class ClientError(Exception):
    """Base of the client's own errors."""


class AuthenticationFailed(ClientError):
    """The server refused the token (HTTP 401). Never retried: a new token is needed."""


class ClientClosed(ClientError):
    """The client is closed, or gave up reconnecting."""


class ConnectionLost(ClientError):
    """The connection dropped while a non-idempotent request (a publish) was in flight.

    The server may or may not have received it.
    """


class RequestFailed(ClientError):
    """The server answered a request with an ``error`` frame (``status``: the
    HTTP status it gave, on the answer to a method call)."""

    def __init__(self, code: str, error: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {error}")
        self.code = code
        self.error = error
        self.status = status


class MethodFailed(RequestFailed):
    """A method call failed: ``code`` and ``error`` as the server said, and
    ``status``, the HTTP status the same failure has over HTTP."""

    def __init__(self, method: str, code: str, error: str, status: int | None) -> None:
        super().__init__(code, error, status)
        self.method = method


class JoinRefused(RequestFailed):
    """The server refused a join (``access_denied``, ``unknown_channel``, ...)."""

    def __init__(self, channel: str, code: str, error: str) -> None:
        super().__init__(code, error)
        self.channel = channel


@attrs.frozen
class ClientMessage(Generic[T]):
    """A delivery: the full channel name and its data."""

    channel: str
    data: T

    @property
    def category(self) -> str:
        return self.channel.partition(":")[0]

    @property
    def channel_id(self) -> str:
        return self.channel.partition(":")[2]


class ClientChannel(Generic[T]):
    """The client side of one category, as in the reference: ``ClientChannel("chat", on_message)``.

    ``on_message`` is called with each :class:`ClientMessage` of the category; it
    runs inside the client's reader, so it must be quick and must not block
    (hand slow work to a task, or use ``Client.messages()``). On a category
    with presence, ``on_presence`` is called the same way with a channel's
    :class:`PresenceSnapshot` (who is there) after each change.
    """

    def __init__(
        self,
        category: str,
        on_message: Callable[[ClientMessage[T]], None] | None = None,
        *,
        on_presence: Callable[[PresenceSnapshot], None] | None = None,
    ) -> None:
        self.category = category
        self.on_message = on_message
        self.on_presence = on_presence
        self._client: Client | None = None

    def _bound(self) -> Client:
        if self._client is None:
            raise RuntimeError(f"ClientChannel({self.category!r}) is not part of a client; pass it to open_client()")
        return self._client

    async def join(self, channel_id: str) -> None:
        await self._bound().join(f"{self.category}:{channel_id}")

    async def leave(self, channel_id: str) -> None:
        await self._bound().leave(f"{self.category}:{channel_id}")

    async def publish(self, channel_id: str, data: T) -> None:
        await self._bound().publish(f"{self.category}:{channel_id}", data)

    def presence(self, channel_id: str) -> PresenceSnapshot:
        """Who is in ``category:channel_id``, as last heard (see :meth:`Client.presence`)."""
        return self._bound().presence(f"{self.category}:{channel_id}")


@attrs.define(eq=False)
class _Pending:
    event: trio.Event = attrs.field(factory=trio.Event)
    reply: ServerFrame | None = None


def url_dialer(url: str) -> Dialer:
    """A dialer for a ``ws://`` or ``wss://`` URL."""

    async def dial(nursery: trio.Nursery, headers: list[tuple[bytes, bytes]]) -> trio_websocket.WebSocketConnection:
        return await trio_websocket.connect_websocket_url(nursery, url, extra_headers=headers)

    return dial


class Client:
    """A connection to a modelence-trio server that outlives network failures.

    Create it with :func:`open_client`. ``join``/``leave``/``publish`` wait for
    the server's reply; while the connection is down they wait for the next
    one. After a reconnect every joined channel is joined again.
    """

    def __init__(
        self,
        dial: Dialer,
        *,
        token: str | None,
        channels: Iterable[ClientChannel[Any]],
        reconnect: bool,
        backoff: Backoff,
        heartbeat_interval: float | None,
        heartbeat_timeout: float,
        on_join_error: Callable[[JoinRefused], None] | None,
        on_recovery_failed: Callable[[str], None] | None = None,
    ) -> None:
        self._dial = dial
        self._headers = [(b"Authorization", f"Bearer {token}".encode())] if token is not None else []
        self._channels: dict[str, ClientChannel[Any]] = {}
        for channel in channels:
            if channel._client is not None:
                raise ValueError(f"ClientChannel({channel.category!r}) already belongs to a client")
            channel._client = self
            self._channels[channel.category] = channel
        self._reconnect = reconnect
        self._heartbeat_interval = heartbeat_interval
        self._heartbeat_timeout = heartbeat_timeout
        self._on_join_error = on_join_error
        self._on_recovery_failed = on_recovery_failed
        #: The protocol engine (sans-IO): refs, what frames mean, the joined channels, backoff.
        self._protocol = ClientSession[_Pending](backoff)
        self._book = self._protocol.book
        self._ws: trio_websocket.WebSocketConnection | None = None
        self._connected = trio.Event()
        self._inbox: (
            tuple[trio.MemorySendChannel[ClientMessage[Any]], trio.MemoryReceiveChannel[ClientMessage[Any]]] | None
        ) = None
        self._closed: BaseException | None = None
        self._peer_silent = False
        self._close_code: int | None = None  # the server's close code of the connection that just ended
        self.welcome: Welcome | None = None
        #: How many times the connection was (re-)established.
        self.connections = 0

    # --- public API ---------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._ws is not None

    @property
    def joined(self) -> frozenset[str]:
        """Channels this client has joined and will re-join after a reconnect."""
        return self._book.joined

    async def wait_connected(self) -> None:
        """Wait until a connection is up (returns at once if it is)."""
        await self._current_ws()

    async def join(self, channel: str, *, last: int | None = None) -> None:
        """Join ``channel``; idempotent. ``last``: also get the channel's last
        messages (at most that many, as far as the server's history holds),
        before live ones: a room's recent history on entering it.

        Raises:
            JoinRefused: carrying the server's ``code`` (``access_denied``, ...).
            ValueError: ``channel`` is not a valid ``category:id`` name.
        """
        _check_name(channel)
        reply = await self._request(lambda ref: Join(channel, ref, last=last), retry=True)
        if isinstance(reply, JoinError):
            raise JoinRefused(channel, reply.code, reply.error)
        self._book.joined_now(channel, reply)

    async def leave(self, channel: str) -> None:
        """Leave ``channel``; once this returns no more of its messages arrive.
        While disconnected it returns at once: the channel is not re-joined."""
        _check_name(channel)
        self._book.leave(channel)
        if self._ws is None:
            return
        await self._request(lambda ref: Leave(channel, ref), retry=True)

    async def publish(self, channel: str, data: Any) -> None:
        """Publish into a joined channel whose server side accepts publishes.

        Raises:
            RequestFailed: e.g. ``not_joined`` or ``publish_not_allowed``.
            ConnectionLost: the connection dropped before the server confirmed.
        """
        _check_name(channel)
        await self._request(lambda ref: Publish(channel, data, ref), retry=False)

    async def call(self, method: str, args: Any = None) -> Any:
        """Call the App's method ``module.method`` over this connection, as
        the signed-in user; returns its result (the HTTP endpoint's ``data``).
        ``args``: a JSON object, or an attrs instance (sent as one).

        Raises:
            MethodFailed: the method refused or failed (``code``, ``status``:
                ``invalid_arguments`` 400, ``unknown_method`` 404, ...).
            ConnectionLost: the connection dropped before the answer (the
                method may or may not have run; it is not called again).
        """
        payload = {} if args is None else unstructure(args)
        try:
            reply = await self._request(lambda ref: Call(method, payload, ref), retry=False)
        except RequestFailed as exc:
            raise MethodFailed(method, exc.code, exc.error, exc.status) from None
        assert isinstance(reply, Result), reply
        return reply.data

    async def ping(self) -> float:
        """An application-level round trip; returns the seconds it took."""
        start = trio.current_time()
        await self._request(lambda ref: Ping(ref), retry=True)
        return trio.current_time() - start

    def presence(self, channel: str) -> PresenceSnapshot:
        """Who is in the joined presence channel ``channel``, as last heard:
        the server sends the members after the join and every change after
        that (coalesced), so this is current without a round trip. Empty
        before the join's answer, and for channels without presence."""
        return self._book.presence(channel)

    async def fetch_presence(self, channel: str) -> PresenceSnapshot:
        """Ask the server for the members of the joined ``channel`` now.

        Raises:
            RequestFailed: ``not_joined``, ``presence_not_enabled``, ``rate_limited``.
        """
        _check_name(channel)
        await self._request(lambda ref: PresenceQuery(channel, ref), retry=True)
        return self._book.presence(channel)

    def messages(self, buffer: int = 1024) -> trio.MemoryReceiveChannel[ClientMessage[Any]]:
        """Every delivery from the first call on, in order, across reconnects.

        ``async for message in client.messages(): ...``. Messages that arrived
        before the first call are not kept. A full buffer pauses the reader
        (backpressure) rather than dropping anything. It ends when the client
        closes.
        """
        if self._inbox is None:
            self._inbox = trio.open_memory_channel[ClientMessage[Any]](buffer)
        return self._inbox[1]

    # --- connection supervision ---------------------------------------------------

    async def _supervise(
        self, *, task_status: trio.TaskStatus[BaseException | None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        attempt = 0
        started = False
        while True:
            failure: BaseException | None = None
            try:
                async with trio.open_nursery() as nursery:
                    await self._connect(nursery)
                    attempt = 0
                    if not started:
                        started = True
                        task_status.started(None)
                    # Snapshot now: joins made from here on are the callers' own.
                    nursery.start_soon(self._rejoin, self._book.rejoin_plan())
                    if self._heartbeat_interval is not None:
                        nursery.start_soon(self._heartbeat, nursery.cancel_scope)
                    await self._read_loop()
                    nursery.cancel_scope.cancel()
            except Exception as exc:  # groups of Exceptions too; Cancelled passes
                failure = _classify(exc)
            finally:
                await self._disconnected()
            if isinstance(failure, AuthenticationFailed) or (not started and failure is not None):
                self._finish(failure or ClientClosed("could not connect"))
                if not started:
                    task_status.started(self._closed)
                return
            if not self._reconnect:
                self._finish(ClientClosed("connection closed and reconnect is off"))
                return
            delay = self._protocol.reconnect_delay(attempt)
            attempt += 1
            logger.info("connection lost (%s); reconnecting in %.2fs", failure, delay)
            await trio.sleep(delay)

    async def _connect(self, nursery: trio.Nursery) -> None:
        ws = await self._dial(nursery, list(self._headers))
        first = parse_server_frame(await ws.get_message())
        if not isinstance(first, Welcome):
            raise ProtocolError(ErrorCode.INVALID_FRAME, "the first frame was not 'welcome'")
        self.welcome = first
        self.connections += 1
        self._ws = ws
        self._connected.set()

    async def _disconnected(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            # What the next re-join's answer means depends on how the last connection
            # that was up ended (failed attempts since do not count).
            self._book.closed_cleanly = self._close_code == 1001
        self._close_code = None
        if self._connected.is_set():
            self._connected = trio.Event()
        for pending in self._protocol.waiting():
            pending.event.set()  # reply None: the waiter sees a disconnect
        if ws is not None:
            # A peer that stopped answering pings will not answer a close
            # either: then close the socket at once instead of waiting.
            grace = 0.0 if self._peer_silent else 1.0
            self._peer_silent = False
            with trio.CancelScope(shield=True), trio.move_on_after(grace):
                await ws.aclose()

    def _finish(self, reason: BaseException) -> None:
        if self._closed is None:
            self._closed = reason
        self._connected.set()  # wake waiters so they see the closed state
        if self._inbox is not None:
            self._inbox[0].close()

    async def _rejoin(self, plan: list[Join]) -> None:
        """Join again after a reconnect, asking for what was missed (``since``)."""
        for join in plan:
            try:
                reply = await self._request(functools.partial(Join, join.channel, since=join.since), retry=False)
            except ClientError:
                return  # disconnected again (the next connection re-joins) or closed
            outcome = self._book.rejoined(join, reply)
            if outcome is Rejoined.REFUSED and isinstance(reply, JoinError):
                refusal = JoinRefused(join.channel, reply.code, reply.error)
                logger.warning("re-join refused: %s", refusal)
                if self._on_join_error is not None:
                    self._on_join_error(refusal)
            elif outcome is Rejoined.GAP:
                # The replay (if any) is already in order in the inbox; this says there is a gap before it.
                logger.warning("messages missed on %s while disconnected could not be recovered", join.channel)
                if self._on_recovery_failed is not None:
                    self._on_recovery_failed(join.channel)

    async def _heartbeat(self, cancel_scope: trio.CancelScope) -> None:
        assert self._heartbeat_interval is not None
        ws = self._ws
        assert ws is not None
        while True:
            await trio.sleep(self._heartbeat_interval)
            with trio.move_on_after(self._heartbeat_timeout):
                try:
                    await ws.ping()
                except trio_websocket.ConnectionClosed:
                    return
                continue
            logger.warning("no pong from the server within %.1fs; reconnecting", self._heartbeat_timeout)
            self._peer_silent = True
            cancel_scope.cancel()
            return

    async def _read_loop(self) -> None:
        ws = self._ws
        assert ws is not None
        while True:
            try:
                text = await ws.get_message()
            except trio_websocket.ConnectionClosed as exc:
                self._close_code = exc.reason.code if exc.reason is not None else None
                return
            incoming = self._protocol.receive(text)
            if isinstance(incoming, Delivery):
                await self._dispatch(incoming.message)
            elif isinstance(incoming, Reply):
                incoming.waiter.reply = incoming.frame
                incoming.waiter.event.set()
            elif isinstance(incoming, PresenceUpdate):
                self._presence_changed(incoming)
            elif isinstance(incoming, Notice):
                notice = incoming.frame
                if isinstance(notice, Left):  # the server removed us (access revoked): not re-joined
                    logger.warning("left %s: %s", notice.channel, notice.reason)
                else:
                    logger.warning("server error: %s: %s", notice.code, notice.error)
            elif incoming.malformed:
                logger.warning("ignoring a frame from the server: %s", incoming.why)

    def _presence_changed(self, update: PresenceUpdate[_Pending]) -> None:
        if update.waiter is not None:
            update.waiter.reply = update.frame
            update.waiter.event.set()
        channel = self._channels.get(update.snapshot.channel.partition(":")[0])
        if channel is not None and channel.on_presence is not None:
            try:
                channel.on_presence(update.snapshot)
            except Exception:
                logger.exception("on_presence handler for %s raised", update.snapshot.channel)

    async def _dispatch(self, frame: Message) -> None:
        message: ClientMessage[Any] = ClientMessage(frame.channel, frame.data)
        channel = self._channels.get(message.category)
        if channel is not None and channel.on_message is not None:
            try:
                channel.on_message(message)
            except Exception:
                logger.exception("on_message handler for %s raised", frame.channel)
        if self._inbox is not None:
            try:
                await self._inbox[0].send(message)
            except trio.BrokenResourceError:
                self._inbox = None

    async def _current_ws(self) -> trio_websocket.WebSocketConnection:
        while True:
            if self._closed is not None:
                raise ClientClosed(f"the client is closed: {self._closed}") from self._closed
            if self._ws is not None:
                return self._ws
            await self._connected.wait()

    async def _request(self, build: Callable[[int], ClientFrame], *, retry: bool) -> ServerFrame:
        while True:
            ws = await self._current_ws()
            pending = _Pending()
            ref = self._protocol.request(pending)
            try:
                try:
                    await ws.send_message(encode(build(ref)))
                except trio_websocket.ConnectionClosed:
                    pending.reply = None
                else:
                    await pending.event.wait()
            finally:
                self._protocol.forget(ref)
            reply = pending.reply
            if reply is None:
                if retry:
                    continue
                raise ConnectionLost("the connection dropped before the server replied")
            if isinstance(reply, Error):
                raise RequestFailed(reply.code, reply.error, reply.status)
            return reply

    async def _aclose(self) -> None:
        self._finish(ClientClosed("closed by the application"))
        ws = self._ws
        if ws is not None:
            with trio.move_on_after(1.0):
                await ws.aclose()


def _check_name(channel: str) -> None:
    # The shape only: how long an id may be is the server's to say (HubConfig.max_id_length).
    try:
        split_channel(channel, max_id_length=MAX_ID_LENGTH_CEILING)
    except ProtocolError as exc:
        raise ValueError(exc.message) from None


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


_TRANSIENT = (
    OSError,
    trio_websocket.HandshakeError,
    trio_websocket.ConnectionClosed,
    ProtocolError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)


def _classify(exc: Exception) -> BaseException:
    """Turn what a connection attempt raised into the reason we record.

    A 401 becomes ``AuthenticationFailed``; network and handshake failures are
    transient; anything else is a bug and propagates.
    """
    leaves = _leaves(exc)
    for leaf in leaves:
        if isinstance(leaf, trio_websocket.ConnectionRejected):
            body = (leaf.body or b"").decode("utf-8", "replace")
            if leaf.status_code == 401:
                return AuthenticationFailed(f"the server refused the token: {body or 401}")
            return leaf
    if all(isinstance(leaf, _TRANSIENT) for leaf in leaves):
        return leaves[0]
    raise exc


@asynccontextmanager
async def open_client(
    url: str | None = None,
    *,
    token: str | None = None,
    dial: Dialer | None = None,
    channels: Iterable[ClientChannel[Any]] = (),
    reconnect: bool = True,
    backoff: Backoff = Backoff(maximum=10.0),
    heartbeat_interval: float | None = 25.0,
    heartbeat_timeout: float = 20.0,
    on_join_error: Callable[[JoinRefused], None] | None = None,
    on_recovery_failed: Callable[[str], None] | None = None,
) -> AsyncIterator[Client]:
    """Connect to a server and yield a :class:`Client`; close it on exit.

    Give either ``url`` (``ws://host:port/ws``) or ``dial`` (see
    ``modelence_trio.testing`` for an in-memory one). The first connection must
    succeed, so that a wrong URL or token fails here, loudly; after that the
    client reconnects with ``backoff`` and re-joins its channels, asking for
    the messages it missed meanwhile: they arrive, in order and once, before
    the live ones. When the server no longer has them (its history was
    trimmed, expired or reset), ``on_recovery_failed(channel)`` is called
    after the reconnect, so the app can reload that channel's state.

    Raises:
        AuthenticationFailed: the server refused ``token``.
        ClientClosed: the first connection could not be made (see ``__cause__``).
    """
    if (url is None) == (dial is None):
        raise TypeError("give exactly one of url= or dial=")
    dialer = dial if dial is not None else url_dialer(url)  # type: ignore[arg-type]
    client = Client(
        dialer,
        token=token,
        channels=channels,
        reconnect=reconnect,
        backoff=backoff,
        heartbeat_interval=heartbeat_interval,
        heartbeat_timeout=heartbeat_timeout,
        on_join_error=on_join_error,
        on_recovery_failed=on_recovery_failed,
    )
    async with background_nursery() as nursery:
        failure = await nursery.start(client._supervise)
        if failure is None:
            try:
                yield client
            finally:
                await client._aclose()
    if failure is not None:
        if isinstance(failure, ClientError):
            raise failure
        raise ClientClosed(f"could not connect: {failure!r}") from failure
