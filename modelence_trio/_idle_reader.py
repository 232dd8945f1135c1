"""One reader for many idle sockets: heartbeat pongs without waking tasks.

A connection's task spends most of its life parked, waiting for its socket
to become readable. With trio's own wait every pong (one per connection
per heartbeat round) wakes that task, and that wake-up, with the re-arming
of the socket in trio's epoll, was the largest part of a hub's idle CPU at
19,000 connections (the pings' own writes are now). So a parked task hands its socket to the hub's
:class:`IdleReader` instead: an epoll set of its own, watched by one task.
A readable socket is read there, and what the connection's ``absorb``
takes (a whole pong, checked against its ping) is done with while the
task sleeps on; anything else (a message, end of file, an error) wakes the
task with it.

Edge-triggered: a socket is registered once, when its task first waits,
and stays so until its reading ends (``forget``); an edge that comes while
its task is busy is remembered (``_pending``), and the task reads before it
parks again. The peer's hang-up comes with an edge of its own only if it
comes alone: bytes and the end arriving together are one edge, so a socket
whose edge said the peer hung up stays pending after every read until its
end is read, and nothing it sends is absorbed. Public APIs only: ``select.epoll``, ``os.read`` and trio's
``wait_task_rescheduled``. Where there is no epoll (not Linux), before the
reader runs and after it stopped, :meth:`IdleReader.receive` returns
``None`` and the caller waits with trio as before.
"""

from __future__ import annotations

import contextlib
import os
import select
from collections.abc import Callable
from typing import Any

import outcome
import trio

__all__ = ["IdleReader"]

#: Events taken from the epoll set per system call.
_BATCH = 1024
#: How long pongs may gather after a wake-up that read only pongs (seconds).
_GATHER = 0.002
#: The events that say the peer hung up (or the socket failed): no later edge follows them.
_HUNG_UP = getattr(select, "EPOLLRDHUP", 0) | getattr(select, "EPOLLHUP", 0) | getattr(select, "EPOLLERR", 0)


class _Watch:
    """One registered socket: while its task is parked, the task and how to read for it."""

    __slots__ = ("absorb", "hung_up", "max_bytes", "owner", "task")

    def __init__(self, owner: object) -> None:
        self.owner = owner  # the socket object: a descriptor number may be reused
        self.task: trio.lowlevel.Task | None = None
        self.absorb: Callable[[bytes], bool] | None = None
        self.max_bytes = 0
        #: An edge said the peer hung up: read until the end, with no edge to wait for.
        self.hung_up = False


class IdleReader:
    """Reads the sockets of parked connections for them (see the module's docstring).

    A hub owns one and runs it (``Hub.run``); ``FrameSafeStream`` waits
    through it. An error reading one socket wakes that socket's task with
    it and no other: the reader itself never fails because of a connection.
    """

    def __init__(self) -> None:
        self._epoll: Any = None  # select.epoll while running
        self._watched: dict[int, _Watch] = {}
        self._pending: set[int] = set()

    @property
    def running(self) -> bool:
        return self._epoll is not None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch the registered sockets until cancelled; then hand every
        parked task back to trio's own wait (``receive`` returns ``None``)."""
        if not hasattr(select, "epoll") or self._epoll is not None:
            task_status.started()  # no epoll here, or another run watches: trio's wait serves
            return
        epoll = self._epoll = select.epoll()
        try:
            task_status.started()
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                events = epoll.poll(0, _BATCH)
                if not any([self._readable(fd, mask) for fd, mask in events]) and len(events) < _BATCH:
                    # Only pongs: the next ones are let gather for a moment, so one
                    # wake-up reads many (they trickle in, one per connection, for a
                    # second or so after each heartbeat round). A message arriving
                    # meanwhile waits at most this long.
                    await trio.sleep(_GATHER)
        finally:
            self._epoll = None
            watched = list(self._watched.values())
            self._watched.clear()
            self._pending.clear()
            epoll.close()
            for watch in watched:
                if watch.task is not None:
                    trio.lowlevel.reschedule(watch.task, outcome.Value(None))

    async def receive(
        self, sock: trio.socket.SocketType, max_bytes: int, absorb: Callable[[bytes], bool] | None
    ) -> bytes | None:
        """What ``os.read(sock.fileno(), max_bytes)`` returns once the socket is
        readable, except what ``absorb`` took (it says ``True`` for bytes it
        dealt with). ``None``: the reader is not running; wait with trio.

        Raises ``trio.ClosedResourceError`` if the socket is closed meanwhile
        (``forget``) and the ``OSError`` of a failed read.
        """
        epoll = self._epoll
        fd = sock.fileno()
        if epoll is None or fd < 0:
            return None
        await trio.lowlevel.checkpoint_if_cancelled()  # before reading: bytes read are never lost to a cancel
        watch = self._watched.get(fd)
        if watch is None or watch.owner is not sock:
            watch = self._watched[fd] = _Watch(sock)
            epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET)
            self._pending.add(fd)  # bytes may have come before it was registered
        pending = self._pending
        while fd in pending:
            pending.discard(fd)
            try:
                data = os.read(fd, max_bytes)
            except BlockingIOError:
                break
            if len(data) == max_bytes or watch.hung_up:
                pending.add(fd)  # more may wait (or the end), and no new edge will say so
            elif data and absorb is not None and absorb(data):
                continue
            await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        watch.task = trio.lowlevel.current_task()
        watch.absorb = absorb
        watch.max_bytes = max_bytes

        def abort(_: object) -> trio.lowlevel.Abort:
            watch.task = watch.absorb = None
            return trio.lowlevel.Abort.SUCCEEDED

        data = await trio.lowlevel.wait_task_rescheduled(abort)
        return data  # type: ignore[no-any-return]

    def forget(self, sock: trio.socket.SocketType) -> None:
        """Stop watching ``sock`` (its reading ended, or it is about to be
        closed): a task parked on it wakes with ``trio.ClosedResourceError``."""
        fd = sock.fileno()
        watch = self._watched.get(fd)
        if watch is None or watch.owner is not sock:
            return
        del self._watched[fd]
        self._pending.discard(fd)
        if self._epoll is not None:
            with contextlib.suppress(OSError):  # closed already: the kernel dropped it
                self._epoll.unregister(fd)
        if watch.task is not None:
            self._wake(watch, outcome.Error(trio.ClosedResourceError("the socket was closed")))

    def _readable(self, fd: int, events: int) -> bool:
        """Read ``fd`` for its parked task; whether that woke the task."""
        watch = self._watched.get(fd)
        if watch is None:
            return False  # forgotten since the event
        if events & _HUNG_UP:
            watch.hung_up = True
        if watch.task is None:
            self._pending.add(fd)  # its task is busy: it reads before it parks again
            return False
        try:
            data = os.read(fd, watch.max_bytes)
        except BlockingIOError:
            return False
        except OSError as exc:
            return self._wake(watch, outcome.Error(exc))
        if len(data) == watch.max_bytes or watch.hung_up:
            self._pending.add(fd)  # more may wait (or the end): the task reads again
        elif data and watch.absorb is not None:
            try:
                if watch.absorb(data):
                    return False
            except Exception as exc:  # that connection's failure, not the reader's
                return self._wake(watch, outcome.Error(exc))
        return self._wake(watch, outcome.Value(data))

    @staticmethod
    def _wake(watch: _Watch, result: outcome.Outcome[bytes | None]) -> bool:
        task = watch.task
        watch.task = watch.absorb = None
        if task is not None:
            trio.lowlevel.reschedule(task, result)
        return True
