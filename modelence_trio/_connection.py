"""One accepted connection as the hub sees it: its identity, its outbound
queue, and the writer that drains the queue when the socket cannot take a
frame at once."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import attrs
import trio

from ._auth import Identity
from ._counters import HubCounters
from ._registry import Registry
from ._session import Session, SessionLimits
from ._transport import FLUSH, SENT, Transport, TransportClosed
from ._wire import Outgoing
from .protocol import CloseCode, ServerFrame, encode

__all__ = ["Connection"]

#: The most ``send_many`` joins into one non-blocking write: an unwritten tail
#: waits in the transport, outside the queue's byte count.
_JOINED_WRITE = 64 * 1024

logger = logging.getLogger("modelence_trio")


@attrs.define(eq=False)
class Connection:
    """Server-side state of one accepted WebSocket.

    ``send`` is all the broadcast path touches. While nothing is queued it
    hands the frame's shared wire bytes to the transport, which usually writes
    them to the socket on the spot. Otherwise the frame is queued and a writer
    task, started in the connection's own nursery only when needed and gone
    once the queue is empty, sends the queue in one write. An idle connection
    thus costs no writer task.
    """

    id: str
    identity: Identity
    registry: Registry
    transport: Transport
    #: The connection's own nursery (the transport's); cancelling it ends the connection.
    nursery: trio.Nursery
    max_queue: int
    close_timeout: float
    #: Bytes the queue and the batch being written may hold together.
    max_queue_bytes: int = 1024 * 1024
    queue: list[Outgoing] = attrs.field(factory=list)
    #: Bytes queued plus bytes of the batch in flight (not yet taken by the socket).
    queued_bytes: int = 0
    writing: bool = False
    close_reason: tuple[int, str] | None = None
    #: Set once the socket needs no close frame from us (peer gone, or sent).
    closed: bool = False
    #: Tells whether the outstanding heartbeat ping was answered (``None``: none outstanding).
    pong: Callable[[], bool] | None = None
    ping_deadline: float = math.inf
    #: What this connection may do (limits, rates, malformed frames), sans-IO.
    session: Session = attrs.field(factory=lambda: Session(SessionLimits()))
    #: The hub's counters (frames other than broadcasts are counted as they are sent).
    counters: HubCounters = attrs.field(factory=HubCounters)
    #: Frames and bytes of broadcasts delivered over ended subscriptions (the
    #: registry adds them, per broadcast: ``send`` counts nothing).
    delivered_frames: int = 0
    delivered_bytes: int = 0
    #: Frames other than broadcasts sent to it (welcome, replies, presence, replays), and their bytes.
    own_frames: int = 0
    own_bytes: int = 0
    #: The client's address, when the transport knows it (rate limits of anonymous callers).
    address: str | None = None

    @property
    def failed(self) -> bool:
        """Ended by ``fail`` (rather than by a shutdown or by the peer): the hub owes the close frame."""
        return self.close_reason is not None and self.close_reason[0] != CloseCode.GOING_AWAY

    def send(self, frame: Outgoing) -> None:
        if self.close_reason is not None:
            return
        if not self.queue:
            result = self.transport.send_nowait(frame.wire)
            if result is SENT:
                return
            if result is FLUSH:
                self.kick()
                return
        elif len(self.queue) >= self.max_queue or self.queued_bytes + len(frame.wire) > self.max_queue_bytes:
            self.fail(CloseCode.SLOW_CONSUMER, "outbound queue overflow: the client does not read")
            return
        self.queue.append(frame)
        self.queued_bytes += len(frame.wire)
        self.kick()

    def send_many(self, frames: list[Outgoing]) -> None:
        """``send`` for each frame, with one write for all of them while
        nothing is queued (a batch of broadcasts read from the fan-out)."""
        if self.close_reason is not None:
            return
        # At most _JOINED_WRITE at once: what the transport may hold beyond the queue's bound.
        if not self.queue and sum(len(frame.wire) for frame in frames) <= _JOINED_WRITE:
            result = self.transport.send_nowait(b"".join(frame.wire for frame in frames))
            if result is SENT:
                return
            if result is FLUSH:
                self.kick()
                return
        for frame in frames:
            self.send(frame)

    def reply(self, frame: ServerFrame) -> None:
        self.send_own(Outgoing.from_text(encode(frame)))

    def send_own(self, frame: Outgoing) -> None:
        """``send`` a frame of this connection's own (a reply, a presence
        state, a replay), counted as it goes: not the broadcast path."""
        size = len(frame.wire)
        self.own_frames += 1
        self.own_bytes += size
        counters = self.counters
        counters.sent_frames += 1
        counters.sent_bytes += size
        self.send(frame)

    def kick(self) -> None:
        """Make sure a writer runs: something is queued or held by the transport."""
        if not self.writing:
            self.writing = True
            self.nursery.start_soon(self._write)

    def ping_round(self, now: float, timeout: float) -> None:
        """The hub's heartbeat round: ping, unless a ping is still unanswered
        (its deadline, ``check_pong``, decides)."""
        if self.pong is None or self.pong():
            self.pong = self.transport.ping_nowait()
            if self.transport.holds_data:
                self.kick()  # the ping is waiting in the transport
            self.ping_deadline = now + timeout if self.pong is not None else math.inf

    def check_pong(self, now: float) -> None:
        """At the pong's deadline: answered, or the connection ends (4003)."""
        if self.pong is not None and self.ping_deadline <= now:
            if self.pong():
                self.pong, self.ping_deadline = None, math.inf
            else:
                self.fail(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout: no pong")

    def peer_closed(self) -> None:
        """The transport's reading ended with the peer's close; unless we are
        failing it (which still owes a close frame), nothing more is owed."""
        if self.close_reason is None:
            self.closed = True

    def fail(self, code: int, reason: str) -> None:
        """Stop all delivery now and end the connection; the socket is then
        closed with ``code`` (bounded by ``close_timeout``, since a peer that
        does not read may not take the close frame either)."""
        if self.close_reason is None:
            logger.debug("closing connection %s: %s (%d)", self.id, reason, code)
            self.close_reason = (code, reason)
            self.registry.drop(self)
            self.queue.clear()
            self.queued_bytes = 0
            self.nursery.cancel_scope.cancel()

    def begin_shutdown(self) -> None:
        """Stop taking frames; the writer sends what is queued, then closes with 1001."""
        if self.close_reason is None:
            self.close_reason = (CloseCode.GOING_AWAY, "server shutting down")
            self.kick()

    async def _write(self) -> None:
        try:
            while True:
                batch, self.queue = self.queue, []
                size = sum(len(frame.wire) for frame in batch)
                await self.transport.send(batch)  # also flushes what the transport holds
                self.queued_bytes -= size  # in flight until the socket took it
                if not self.queue:
                    break
            # Shutting down, and everything went out. (A failed connection is
            # being cancelled; the hub sends its close frame.)
            if self.close_reason is not None and not self.failed:
                with trio.move_on_after(self.close_timeout):
                    await self.transport.close(*self.close_reason)
                self.closed = True
                self.nursery.cancel_scope.cancel()
        except TransportClosed:  # the socket broke under us
            self.closed = True
            self.nursery.cancel_scope.cancel()
        finally:
            self.writing = False
