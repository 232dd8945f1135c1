"""Deterministic tests for apps: a hub and its clients entirely in memory.

Connections run over ``trio.testing`` memory streams with the real WebSocket
handshake and framing (trio-websocket on both ends), so the code under test is
the code that runs in production, minus the sockets. Run tests under
``trio.testing.MockClock(autojump_threshold=0)`` (pytest-trio's
``autojump_clock`` fixture) and heartbeats, timeouts and reconnect backoff take
no wall time. Example::

    async def test_only_members_get_messages(autojump_clock):
        chat = ServerChannel("chat", can_access=lambda ctx: "member" in ctx.roles)
        auth = MemoryAuthenticator()
        auth.add("t1", User("u1", "ann"), roles=["member"])
        async with open_memory_server(Hub([chat], authenticator=auth)) as server:
            async with server.client(token="t1") as client:
                await client.join("chat:lobby")
                chat.broadcast("lobby", {"text": "hi"})
                async for message in client.messages():
                    assert message.data == {"text": "hi"}
                    break
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, cast

import attrs
import trio
import trio.testing
import trio_websocket

from ._client import Client, Dialer, open_client
from ._hub import Hub
from ._serve import serve_stream
from ._util import background_nursery

__all__ = ["Link", "MemoryServer", "open_memory_server"]


@attrs.define(eq=False)
class Link:
    """One in-memory network path between a client and the server.

    ``cut()`` turns it into a black hole in both directions, like a pulled
    cable: no bytes and no EOF get through, so only timeouts can notice.
    ``stall()`` freezes it with backpressure instead.
    """

    is_cut: bool = False
    _flowing: trio.Event = attrs.field(factory=trio.Event, init=False)

    def __attrs_post_init__(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        self.is_cut = True

    def stall(self) -> None:
        """Stop carrying bytes, with backpressure: writers block, as when a
        peer stops reading and the TCP window fills. ``resume()`` undoes it."""
        if self._flowing.is_set():
            self._flowing = trio.Event()

    def resume(self) -> None:
        self._flowing.set()

    def stream_pair(self) -> tuple[trio.StapledStream[Any, Any], trio.StapledStream[Any, Any]]:
        a_send, b_receive = self._one_way()
        b_send, a_receive = self._one_way()
        return trio.StapledStream(a_send, a_receive), trio.StapledStream(b_send, b_receive)

    def _one_way(self) -> tuple[trio.testing.MemorySendStream, trio.testing.MemoryReceiveStream]:
        send, receive = trio.testing.memory_stream_one_way_pair()

        def pump() -> None:
            if self.is_cut:
                with contextlib.suppress(trio.WouldBlock):
                    send.get_data_nowait()  # dropped on the floor
            else:
                trio.testing.memory_stream_pump(send, receive)

        async def async_pump() -> None:
            await self._flowing.wait()
            pump()

        send.send_all_hook = async_pump
        send.close_hook = pump
        return send, receive


class MemoryServer:
    """A hub served over in-memory links; make clients with :meth:`client`."""

    def __init__(self, hub: Hub, nursery: trio.Nursery) -> None:
        self.hub = hub
        self._nursery = nursery
        #: Every link ever dialled, in order.
        self.links: list[Link] = []
        #: While false, new connections are refused (as by a stopped server).
        self.accepting = True

    async def dial(
        self,
        nursery: trio.Nursery,
        headers: Iterable[tuple[bytes, bytes]] = (),
        *,
        path: str = "/ws",
    ) -> trio_websocket.WebSocketConnection:
        """Open one WebSocket to the hub; ``nursery`` owns its reader task.

        A refused handshake surfaces as ``trio_websocket.ConnectionRejected``
        raised into ``nursery`` (as trio-websocket does over TCP).
        """
        if not self.accepting:
            raise ConnectionRefusedError("the in-memory server is not accepting connections")
        link = Link()
        self.links.append(link)
        client_stream, server_stream = link.stream_pair()
        self._nursery.start_soon(serve_stream, self.hub, server_stream)
        return await trio_websocket.wrap_client_stream(
            nursery, cast(trio.SocketStream, client_stream), "memory", path, extra_headers=list(headers)
        )

    def dialer(self, path: str = "/ws") -> Dialer:
        async def dial(nursery: trio.Nursery, headers: list[tuple[bytes, bytes]]) -> trio_websocket.WebSocketConnection:
            return await self.dial(nursery, headers, path=path)

        return dial

    def client(self, **options: Any) -> AbstractAsyncContextManager[Client]:
        """``open_client(dial=..., **options)`` connected to this server."""
        return open_client(dial=self.dialer(), **options)

    def partition(self) -> None:
        """Cut every link made so far: connected peers can no longer hear each other."""
        for link in self.links:
            link.cut()


@asynccontextmanager
async def open_memory_server(hub: Hub) -> AsyncIterator[MemoryServer]:
    """Serve ``hub`` in memory for the duration of the block.

    Leaving the block cancels the server side the way a shutdown does:
    connections get close 1001 after their queued frames.
    """
    async with background_nursery() as nursery:
        if not hub.running:
            await nursery.start(hub.run)
        yield MemoryServer(hub, nursery)
