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
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, cast

import attrs
import trio
import trio.testing
import trio_websocket

from ._auth import Authenticator, MemoryAuthenticator, User
from ._channel import ServerChannel
from ._client import Client, Dialer, open_client
from ._config import HubConfig
from ._hub import Hub
from ._memory_fanout import MemoryBus, MemoryFanout
from ._serve import serve_stream
from ._util import background_nursery

__all__ = ["Link", "MemoryBus", "MemoryFanout", "MemoryServer", "Serve", "check_transport", "open_memory_server"]


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


# --- transport conformance ----------------------------------------------------------

#: ``serve(nursery, channels, authenticator, config)`` starts a server of a new
#: hub over some transport and returns the hub and a way to dial it.
Serve = Callable[
    [trio.Nursery, Sequence[ServerChannel[Any]], Authenticator | None, HubConfig], Awaitable[tuple[Hub, Dialer]]
]


async def check_transport(serve: Serve) -> None:
    """The transport conformance check: what every transport must do alike.

    Runs each scenario below against servers that ``serve`` starts (one per
    scenario) and raises ``AssertionError`` naming the first that fails:
    the welcome frame; join, 200 broadcasts in order, ping; a malformed
    frame answered with ``error`` on a connection that stays open; a refused
    handshake as its HTTP status; a message over ``max_frame_size`` closed
    with 1009; a shutdown that delivers what was queued, then 1001. The
    project runs it for the in-memory server, trio-websocket and the App
    under hypercorn (and their public-API fallbacks); a new transport should
    pass it too.
    """
    for scenario in (_delivery_in_order, _malformed_frame, _refusal, _too_big, _shutdown):
        try:
            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    await scenario(serve, nursery)
                    nursery.cancel_scope.cancel()
        except (AssertionError, trio.TooSlowError, BaseExceptionGroup) as exc:
            failure = _first_failure(exc)
            if failure is None:
                raise
            raise AssertionError(f"transport conformance, {scenario.__name__.strip('_')}: {failure!r}") from exc


def _first_failure(exc: BaseException) -> BaseException | None:
    if isinstance(exc, BaseExceptionGroup):
        return next((found for leaf in exc.exceptions if (found := _first_failure(leaf)) is not None), None)
    return exc if isinstance(exc, AssertionError | trio.TooSlowError) else None


async def _welcomed(dial: Dialer, nursery: trio.Nursery, headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    ws = await dial(nursery, headers or [])
    welcome = await _frame(ws)
    assert welcome["type"] == "welcome" and welcome["protocol"] == 1, f"expected welcome, got {welcome}"
    return ws


async def _frame(ws: trio_websocket.WebSocketConnection) -> dict[str, Any]:
    text = await ws.get_message()
    assert isinstance(text, str), "frames are text"
    frame = json.loads(text)
    assert isinstance(frame, dict)
    return frame


async def _delivery_in_order(serve: Serve, nursery: trio.Nursery) -> None:
    chat: ServerChannel[Any] = ServerChannel("chat")
    _, dial = await serve(nursery, [chat], None, HubConfig(heartbeat_interval=None))
    ws = await _welcomed(dial, nursery)
    await ws.send_message('{"type":"join","channel":"chat:a","ref":1}')
    joined = await _frame(ws)
    assert joined["type"] == "joined" and joined["ref"] == 1, f"expected joined, got {joined}"
    for n in range(200):
        chat.broadcast("a", n)
    got = [(await _frame(ws))["data"] for _ in range(200)]
    assert got == list(range(200)), "broadcasts out of order or lost"
    await ws.send_message('{"type":"ping","ref":"p"}')
    assert await _frame(ws) == {"type": "pong", "ref": "p"}


async def _malformed_frame(serve: Serve, nursery: trio.Nursery) -> None:
    _, dial = await serve(nursery, [ServerChannel("chat")], None, HubConfig(heartbeat_interval=None))
    ws = await _welcomed(dial, nursery)
    await ws.send_message("{not json")
    error = await _frame(ws)
    assert error["type"] == "error" and error["code"] == "invalid_json", f"expected invalid_json, got {error}"
    await ws.send_message('{"type":"ping","ref":2}')
    assert await _frame(ws) == {"type": "pong", "ref": 2}, "the connection did not stay open"


async def _refusal(serve: Serve, nursery: trio.Nursery) -> None:
    auth = MemoryAuthenticator()
    auth.add("good", User("1", "ann"))
    _, dial = await serve(nursery, [ServerChannel("chat")], auth, HubConfig(heartbeat_interval=None))
    status = None
    try:
        async with trio.open_nursery() as inner:
            await dial(inner, [(b"Authorization", b"Bearer bad")])
    except* trio_websocket.ConnectionRejected as group:
        rejection = group.exceptions[0]
        assert isinstance(rejection, trio_websocket.ConnectionRejected)
        status = rejection.status_code
    assert status == 401, f"a bad token must be refused with 401, got {status}"
    ws = await _welcomed(dial, nursery, [(b"Authorization", b"Bearer good")])
    await ws.aclose()


async def _too_big(serve: Serve, nursery: trio.Nursery) -> None:
    _, dial = await serve(
        nursery, [ServerChannel("chat")], None, HubConfig(max_frame_size=1024, heartbeat_interval=None)
    )
    ws = await _welcomed(dial, nursery)
    await ws.send_message(json.dumps({"type": "ping", "ref": "é" * 600}, ensure_ascii=False))  # 1,200 bytes
    await _closed_with(ws, 1009)


async def _shutdown(serve: Serve, nursery: trio.Nursery) -> None:
    chat: ServerChannel[Any] = ServerChannel("chat")
    hub, dial = await serve(nursery, [chat], None, HubConfig(heartbeat_interval=None))
    ws = await _welcomed(dial, nursery)
    await ws.send_message('{"type":"join","channel":"chat:a"}')
    assert (await _frame(ws))["type"] == "joined"
    for n in range(20):
        chat.broadcast("a", n)
    hub.begin_shutdown()
    got = [(await _frame(ws))["data"] for _ in range(20)]
    assert got == list(range(20)), "what was queued before the shutdown was not delivered"
    await _closed_with(ws, 1001)


async def _closed_with(ws: trio_websocket.WebSocketConnection, code: int) -> None:
    try:
        frame = await _frame(ws)
    except trio_websocket.ConnectionClosed as exc:
        assert exc.reason is not None and exc.reason.code == code, f"expected {code}, got {exc.reason}"
    else:
        raise AssertionError(f"expected close {code}, got {frame}")
