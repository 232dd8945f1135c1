"""What the server does with a client's frames once its ``Session`` has let them through.

The ``Session`` (sans-IO) decides what needs no shared state: sizes, parsing,
malformed frames, rates, the channel count. What is left needs the app's
code or the hub's state, and may wait: a join runs the channel's access
check and a recovery, a publish runs the channel's handler. Any exception
here ends that connection alone (1011), never the transport, the hub or
another client.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from ._auth import Identity
from ._channel import ChannelContext, PublishRejected, ServerChannel
from ._connection import Connection
from ._counters import OTHER
from ._methods import Failed, MethodContext, MethodTable, run_method
from ._router import Router
from ._session import Answer, Close
from ._tracker import Tracker
from ._wire import Outgoing
from .protocol import (
    Call,
    CloseCode,
    ErrorCode,
    Join,
    Joined,
    JoinError,
    Leave,
    Left,
    Ping,
    Pong,
    PresenceQuery,
    Publish,
    Published,
    result_frame,
)
from .protocol import Error as ErrorFrame

__all__ = ["Actions"]

logger = logging.getLogger("modelence_trio")

#: ``modelence_received_frames_total{type}`` of each parsed client frame.
_FRAME_TYPES: dict[type, str] = {
    Join: "join",
    Leave: "leave",
    Publish: "message",
    Ping: "ping",
    PresenceQuery: "presence",
}


class Actions:
    """The frame handling of one hub (its ``Router`` holds what it acts on)."""

    def __init__(self, router: Router, tracker: Tracker) -> None:
        self.router = router
        self.tracker = tracker
        #: The App's methods, for ``call`` frames (``None``: a bare hub has none).
        self.methods: MethodTable | None = None
        self.counters = router.counters

    async def handle(self, conn: Connection, message: str | bytes) -> None:
        """Act on one client message; a failure closes this connection (1011, logged once)."""
        try:
            await self._act(conn, message)
        except Exception:
            logger.exception("handling a frame of connection %s failed; closing it (1011)", conn.id)
            conn.fail(CloseCode.INTERNAL_ERROR, "internal error")

    async def _act(self, conn: Connection, message: str | bytes) -> None:
        session, counters = conn.session, self.counters
        received = session.received_bytes
        frame = session.receive(message, trio.current_time())
        counters.received_bytes += session.received_bytes - received
        if isinstance(frame, Close):
            counters.received["too_big"] += 1
            conn.fail(frame.code, frame.reason)
        elif isinstance(frame, Answer):
            reply = frame.frame
            counters.bad_frames[reply.code] += 1
            if isinstance(reply, JoinError):  # a join with a malformed channel name
                counters.received["join"] += 1
                counters.joins[OTHER, reply.code] += 1
            else:
                counters.received["malformed"] += 1
            conn.reply(reply)
            if frame.then_close is not None:
                conn.fail(frame.then_close.code, frame.then_close.reason)
            return
        counters.received[_FRAME_TYPES.get(type(frame), "malformed")] += 1
        if isinstance(frame, Join):
            await self._join(conn, frame)
        elif isinstance(frame, Leave):
            if self.router.registry.unsubscribe(conn, frame.channel):
                self.tracker.leave(conn, frame.channel)
                counters.leaves[self._category(frame.channel), "leave"] += 1
            conn.reply(Left(frame.channel, frame.ref))
        elif isinstance(frame, Publish):
            await self._publish(conn, frame)
        elif isinstance(frame, Ping):
            conn.reply(Pong(frame.ref))
        elif isinstance(frame, PresenceQuery):
            self._presence(conn, frame)
        elif isinstance(frame, Call):
            await self._call(conn, frame)

    def _category(self, channel: str) -> str:
        """The category label of ``channel``: a declared category, or ``OTHER``."""
        category = channel.partition(":")[0]
        return category if category in self.router.channels else OTHER

    def _context(self, conn: Connection, channel: str) -> tuple[ServerChannel[Any] | None, ChannelContext]:
        # The codec has validated the name against this hub's limits already.
        category, _, channel_id = channel.partition(":")
        return self.router.channels.get(category), ChannelContext(conn.identity, category, channel_id, conn.id)

    async def _join(self, conn: Connection, frame: Join) -> None:
        router, registry = self.router, self.router.registry
        server_channel, ctx = self._context(conn, frame.channel)
        joins = self.counters.joins
        if server_channel is None:
            why = f"no channel category {ctx.category!r}"
            joins[OTHER, ErrorCode.UNKNOWN_CHANNEL] += 1
            conn.reply(JoinError(frame.channel, ErrorCode.UNKNOWN_CHANNEL, why, frame.ref))
            return
        category = server_channel.category
        history = router.history_of(server_channel)
        presence = server_channel.presence
        # Already joined: it missed nothing (if the channel keeps a history at all).
        recovered: bool | None = None if frame.since is None else history is not None
        replay: list[Outgoing] = []
        new = not registry.is_subscribed(conn, frame.channel)
        if new:
            refusal = conn.session.admit_join(frame.channel, frame.ref, registry.count_of(conn), trio.current_time())
            if refusal is not None:
                joins[category, refusal.code] += 1
                conn.reply(refusal)
                return
            if not await self._allows(server_channel, ctx, "denying"):
                joins[category, ErrorCode.ACCESS_DENIED] += 1
                conn.reply(JoinError(frame.channel, ErrorCode.ACCESS_DENIED, "Access denied", frame.ref))
                return
            if conn.close_reason is not None:
                return
            key = self.tracker.key_of(presence, conn) if presence is not None else None
            meta = "null"
            if key is not None:
                assert presence is not None
                meta = await self.tracker.meta_of(presence, ctx)
                if conn.close_reason is not None:
                    return
            if frame.since is not None:
                recovered, replay = await router.recover(frame.channel, frame.since, history)
                if conn.close_reason is not None:
                    return
            elif frame.last and history is not None:
                replay = router.histories.tail(frame.channel, frame.last, history, trio.current_time())
            # No await from here to the replies: nothing falls between them.
            registry.subscribe(conn, frame.channel)
            if key is not None:
                self.tracker.join(conn, frame.channel, key, meta)
        joins[category, "ok"] += 1
        histories = router.histories
        position = (histories.last, histories.epoch) if history is not None else (None, None)
        conn.reply(Joined(frame.channel, frame.ref, recovered, *position))
        # The state after every join; one of a channel already joined costs a
        # join's budget (it may list many members), and is left out past it.
        if presence is not None and (new or conn.session.admit_presence(frame.ref, trio.current_time()) is None):
            conn.send_own(self.tracker.state(frame.channel, presence))
        for out in replay:
            conn.send_own(out)

    async def _call(self, conn: Connection, frame: Call) -> None:
        """A method called over the socket: the caller is the connection's
        identity, the rate limit the App's, the outcome what HTTP would say
        (and counted as the HTTP endpoint's calls are)."""
        started = trio.current_time()
        table = self.methods
        method = table.methods.get(frame.method) if table is not None else None
        if method is None:
            conn.reply(ErrorFrame(ErrorCode.UNKNOWN_METHOD, f"no method named {frame.method!r}", frame.ref, 404))
            self.counters.method_call(OTHER, 404, trio.current_time() - started)
            return
        assert table is not None
        if table.rate_limit is not None:
            user = conn.identity.user
            # The same callers as over HTTP: the user, else the client address.
            key = f"user:{user.id}" if user is not None else f"address:{conn.address or conn.id}"
            wait = table.rate_limit.retry_after(key)
            if wait is not None:
                conn.reply(ErrorFrame(ErrorCode.RATE_LIMITED, f"too many calls; retry in {wait} s", frame.ref, 429))
                self.counters.method_call(frame.method, 429, trio.current_time() - started)
                return
        outcome = await run_method(method, frame.method, frame.args, MethodContext(conn.identity, frame.method))
        status = outcome.status if isinstance(outcome, Failed) else 200
        self.counters.method_call(frame.method, status, trio.current_time() - started)
        if conn.close_reason is not None:
            return
        if isinstance(outcome, Failed):
            conn.reply(ErrorFrame(outcome.code, outcome.message, frame.ref, outcome.status))
        else:
            conn.send_own(Outgoing.from_text(result_frame(outcome, frame.ref)))

    def _presence(self, conn: Connection, frame: PresenceQuery) -> None:
        presence = self.tracker.options(frame.channel)
        if not self.router.registry.is_subscribed(conn, frame.channel):
            why = f"join {frame.channel!r} before asking who is in it"
            conn.reply(ErrorFrame(ErrorCode.NOT_JOINED, why, frame.ref))
        elif presence is None:
            why = f"channels of {frame.channel.partition(':')[0]!r} have no presence"
            conn.reply(ErrorFrame(ErrorCode.PRESENCE_NOT_ENABLED, why, frame.ref))
        elif (refusal := conn.session.admit_presence(frame.ref, trio.current_time())) is not None:
            conn.reply(refusal)
        else:
            conn.send_own(self.tracker.state(frame.channel, presence, frame.ref))

    async def _publish(self, conn: Connection, frame: Publish) -> None:
        server_channel, ctx = self._context(conn, frame.channel)
        if not self.router.registry.is_subscribed(conn, frame.channel):
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

    async def update_identity(self, conn: Connection, identity: Identity) -> None:
        """The session still holds but its user or roles changed: every joined
        channel's access rule runs again, and those that now refuse are left
        (a ``left`` frame with a reason)."""
        if (identity.user, identity.roles) == (conn.identity.user, conn.identity.roles):
            return
        conn.identity = identity
        registry = self.router.registry
        for channel in sorted(registry.channels_of(conn)):
            server_channel, ctx = self._context(conn, channel)
            allowed = server_channel is not None and await self._allows(server_channel, ctx, "leaving it")
            if not allowed and registry.unsubscribe(conn, channel):
                self.tracker.leave(conn, channel)
                self.counters.leaves[self._category(channel), "revoked"] += 1
                conn.reply(Left(channel, None, "access revoked"))

    @staticmethod
    async def _allows(server_channel: ServerChannel[Any], ctx: ChannelContext, otherwise: str) -> bool:
        try:
            return await server_channel._allows(ctx)
        except Exception:
            logger.exception("access check for %s raised; %s", ctx.channel, otherwise)
            return False
