"""The hub's reader for idle sockets, on real socket pairs: what a parked
task gets, what ``absorb`` keeps from it, and every way a wait ends."""

from __future__ import annotations

import os
import select
import socket
from collections.abc import AsyncIterator, Callable

import pytest
import trio
import trio.testing

from modelence_trio._idle_reader import IdleReader

from .helpers import StepCounter

pytestmark = pytest.mark.skipif(not hasattr(select, "epoll"), reason="the reader needs epoll (Linux)")


@pytest.fixture
async def reader(nursery: trio.Nursery) -> AsyncIterator[IdleReader]:
    idle = IdleReader()
    await nursery.start(idle.run)
    yield idle


def pair() -> tuple[trio.socket.SocketType, trio.socket.SocketType]:
    return trio.socket.socketpair()


def pongs(seen: list[bytes]) -> Callable[[bytes], bool]:
    def absorb(data: bytes) -> bool:
        seen.append(data)
        return data == b"pong"

    return absorb


async def test_a_parked_task_gets_what_arrives(reader: IdleReader) -> None:
    ours, peer = pair()
    async with trio.open_nursery() as nursery:
        got: list[bytes | None] = []

        async def receive() -> None:
            got.append(await reader.receive(ours, 4096, None))

        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # parked: nothing came yet
        await peer.send(b"hello")
    assert got == [b"hello"]


async def test_absorbed_bytes_leave_the_task_parked(reader: IdleReader) -> None:
    ours, peer = pair()
    seen: list[bytes] = []
    got: list[bytes | None] = []
    steps = StepCounter()
    trio.lowlevel.add_instrument(steps)
    try:
        async with trio.open_nursery() as nursery:

            async def receive() -> None:
                steps.watch(trio.lowlevel.current_task())
                got.append(await reader.receive(ours, 4096, pongs(seen)))

            nursery.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()
            parked_at = steps.count
            for sent in range(1, 4):
                await peer.send(b"pong")
                with trio.fail_after(5):
                    while len(seen) < sent:
                        await trio.sleep(0.001)
            assert steps.count == parked_at  # three pongs read, and the task never woke
            await peer.send(b"message")
    finally:
        trio.lowlevel.remove_instrument(steps)
    assert seen == [b"pong", b"pong", b"pong", b"message"]
    assert got == [b"message"]


async def test_what_comes_while_the_task_is_busy_is_read_when_it_waits_again(reader: IdleReader) -> None:
    # Edge-triggered: the edge came while no task waited, so none will come again.
    ours, peer = pair()
    await peer.send(b"first")
    with trio.fail_after(5):
        assert await reader.receive(ours, 4096, None) == b"first"
    await peer.send(b"second")
    await trio.sleep(0.05)  # the reader sees the edge now, with no task parked
    with trio.fail_after(5):
        assert await reader.receive(ours, 4096, None) == b"second"


async def test_more_than_one_read_holds_is_read_without_another_edge(reader: IdleReader) -> None:
    ours, peer = pair()
    await peer.send(b"0123456789")
    with trio.fail_after(5):
        parts = [await reader.receive(ours, 4, None) for _ in range(3)]
    assert parts == [b"0123", b"4567", b"89"]


async def test_the_end_of_the_stream_wakes_the_task_with_no_bytes(reader: IdleReader) -> None:
    ours, peer = pair()
    async with trio.open_nursery() as nursery:
        got: list[bytes | None] = []

        async def receive() -> None:
            got.append(await reader.receive(ours, 4096, pongs([])))

        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        peer.close()
    assert got == [b""]


async def _until_the_end(
    reader: IdleReader, sock: trio.socket.SocketType, absorb: Callable[[bytes], bool] | None
) -> list[bytes | None]:
    """What each receive gets, up to the end of the stream (its b"")."""
    got: list[bytes | None] = []
    with trio.fail_after(2):  # the end must come: no later edge will announce it
        while not got or got[-1]:
            got.append(await reader.receive(sock, 4096, absorb))
    return got


@pytest.mark.parametrize("sent", [b"message", b"pong"])
async def test_bytes_and_the_end_arriving_together_give_the_bytes_then_the_end(reader: IdleReader, sent: bytes) -> None:
    # One edge for both: a read that takes the bytes leaves the end unread, and
    # no other edge will come for it. Written without a checkpoint in between,
    # so that the reader sees them together, while the task is parked.
    ours, peer = pair()
    async with trio.open_nursery() as nursery:
        got: list[bytes | None] = []

        async def receive() -> None:
            got.extend(await _until_the_end(reader, ours, pongs([])))

        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        os.write(peer.fileno(), sent)
        peer.shutdown(socket.SHUT_WR)
    assert got == [sent, b""]  # even a pong is handed over: the task must see the end after it


async def test_bytes_and_the_end_that_came_while_the_task_was_busy(reader: IdleReader) -> None:
    ours, peer = pair()
    await peer.send(b"first")
    with trio.fail_after(5):
        assert await reader.receive(ours, 4096, None) == b"first"  # registered now
    os.write(peer.fileno(), b"message")
    peer.shutdown(socket.SHUT_WR)
    await trio.sleep(0.05)  # the reader sees the edge now, with no task parked
    assert await _until_the_end(reader, ours, None) == [b"message", b""]


async def test_forgetting_a_socket_wakes_its_task_as_closed(reader: IdleReader, nursery: trio.Nursery) -> None:
    ours, _peer = pair()

    async def close_soon() -> None:
        await trio.testing.wait_all_tasks_blocked()
        reader.forget(ours)  # what FrameSafeStream.aclose does first

    nursery.start_soon(close_soon)
    with pytest.raises(trio.ClosedResourceError):
        await reader.receive(ours, 4096, None)


async def test_a_cancelled_wait_loses_nothing(reader: IdleReader) -> None:
    ours, peer = pair()
    with trio.move_on_after(0.05) as scope:
        await reader.receive(ours, 4096, None)
    assert scope.cancelled_caught
    await peer.send(b"after")
    with trio.fail_after(5):
        assert await reader.receive(ours, 4096, None) == b"after"


async def test_a_cancelled_wait_never_drops_bytes_that_were_waiting(reader: IdleReader) -> None:
    # The bytes are there before the wait starts: read at once, unless the wait is
    # cancelled, in which case they must stay in the socket for the next one.
    ours, peer = pair()
    await peer.send(b"kept")
    with trio.CancelScope() as scope:
        scope.cancel()
        await reader.receive(ours, 4096, None)
    assert scope.cancelled_caught
    with trio.fail_after(5):
        assert await reader.receive(ours, 4096, None) == b"kept"


async def test_a_failing_absorb_ends_only_its_own_wait(reader: IdleReader) -> None:
    broken, broken_peer = pair()
    fine, fine_peer = pair()

    def explode(data: bytes) -> bool:
        raise RuntimeError("this connection's bug")

    results: dict[str, object] = {}
    async with trio.open_nursery() as nursery:

        async def receive(name: str, sock: trio.socket.SocketType, absorb: Callable[[bytes], bool] | None) -> None:
            try:
                results[name] = await reader.receive(sock, 4096, absorb)
            except RuntimeError as exc:
                results[name] = exc

        nursery.start_soon(receive, "broken", broken, explode)
        nursery.start_soon(receive, "fine", fine, None)
        await trio.testing.wait_all_tasks_blocked()
        await broken_peer.send(b"x")
        await trio.sleep(0.05)
        assert isinstance(results.get("broken"), RuntimeError)
        await fine_peer.send(b"still served")
    assert results["fine"] == b"still served"


async def test_a_stopped_reader_hands_its_tasks_back() -> None:
    idle = IdleReader()
    ours, _peer = pair()
    got: list[bytes | None] = []

    async def receive() -> None:
        got.append(await idle.receive(ours, 4096, None))

    async with trio.open_nursery() as tasks:
        async with trio.open_nursery() as readers:
            await readers.start(idle.run)
            assert idle.running
            tasks.start_soon(receive)
            await trio.testing.wait_all_tasks_blocked()
            readers.cancel_scope.cancel()  # the reader stops; the parked task is not cancelled
    assert got == [None]  # "wait with trio yourself"
    assert not idle.running
    assert await idle.receive(ours, 4096, None) is None
