"""Heartbeats, reconnection, slow consumers and shutdown, in virtual time."""

from __future__ import annotations

import trio
import trio.testing
import trio_websocket

from modelence_trio import Backoff, Hub, HubConfig, JoinRefused, ServerChannel
from modelence_trio.testing import open_memory_server

from .helpers import receive_json, request


async def test_dead_peer_is_dropped_after_heartbeat_timeout(autojump_clock: trio.testing.MockClock) -> None:
    chat = ServerChannel("chat")
    hub = Hub([chat], config=HubConfig(heartbeat_interval=10, heartbeat_timeout=5))
    async with open_memory_server(hub) as server, trio.open_nursery() as nursery:
        ws = await server.dial(nursery)
        await receive_json(ws)
        await request(ws, {"type": "join", "channel": "chat:a"})
        assert hub.statistics().subscriptions == 1
        start = trio.current_time()
        server.partition()
        with trio.fail_after(60):
            while hub.statistics().connections:
                await trio.sleep(0.5)
        elapsed = trio.current_time() - start
        # Dropped at the first unanswered ping: interval + timeout, not before.
        assert 10 + 5 <= elapsed < 10 + 5 + 1
        assert hub.statistics().subscriptions == 0
        nursery.cancel_scope.cancel()


async def test_live_peer_is_kept(autojump_clock: trio.testing.MockClock) -> None:
    hub = Hub([ServerChannel("chat")], config=HubConfig(heartbeat_interval=10, heartbeat_timeout=5))
    async with open_memory_server(hub) as server, server.client(heartbeat_interval=None) as client:
        await trio.sleep(120)
        assert client.connections == 1
        assert hub.statistics().connections == 1


async def test_client_reconnects_with_backoff_and_rejoins(autojump_clock: trio.testing.MockClock) -> None:
    chat = ServerChannel("chat")
    hub = Hub([chat], config=HubConfig(heartbeat_interval=None))
    backoff = Backoff(initial=1, factor=2, maximum=8, jitter=0)
    async with open_memory_server(hub) as server:
        async with server.client(heartbeat_interval=5, heartbeat_timeout=3, backoff=backoff) as client:
            inbox = client.messages()
            await client.join("chat:a")
            await client.join("chat:b")
            chat.broadcast("a", 1)
            assert (await inbox.receive()).data == 1

            server.accepting = False
            server.partition()
            lost_at = trio.current_time()
            # The client notices at its next unanswered ping (5 + 3 s), then
            # retries after 1, 2 and 4 s while the server refuses.
            await trio.sleep(5 + 3 + 1 + 2 + 0.5)
            assert not client.connected
            server.accepting = True
            with trio.fail_after(30):
                await client.wait_connected()
            reconnected_after = trio.current_time() - lost_at
            assert 5 + 3 + 1 + 2 + 4 <= reconnected_after < 5 + 3 + 1 + 2 + 4 + 1
            # The old server-side connection still holds its two subscriptions
            # (the server runs no heartbeat here); the re-join adds two more.
            with trio.fail_after(5):
                while hub.statistics().subscriptions < 4:
                    await trio.sleep(0.1)
            assert client.connections == 2
            assert client.joined == {"chat:a", "chat:b"}
            chat.broadcast("b", 2)
            assert (await inbox.receive()).data == 2


async def test_rejoin_refusal_reaches_the_app(autojump_clock: trio.testing.MockClock) -> None:
    allowed = {"chat:a": True}
    chat = ServerChannel("chat", can_access=lambda ctx: allowed[ctx.channel])
    hub = Hub([chat], config=HubConfig(heartbeat_interval=None))
    refusals: list[JoinRefused] = []
    async with open_memory_server(hub) as server:
        async with server.client(heartbeat_interval=2, heartbeat_timeout=2, on_join_error=refusals.append) as client:
            await client.join("chat:a")
            allowed["chat:a"] = False
            server.partition()
            await trio.sleep(30)
            assert client.connections == 2
    assert [(r.channel, r.code) for r in refusals] == [("chat:a", "access_denied")]
    assert client.joined == frozenset()


async def test_slow_consumer_is_cut_off_and_others_are_unaffected(autojump_clock: trio.testing.MockClock) -> None:
    chat = ServerChannel("chat")
    hub = Hub([chat], config=HubConfig(outbound_queue_size=50, heartbeat_interval=None))
    async with open_memory_server(hub) as server, trio.open_nursery() as nursery:
        slow = await server.dial(nursery)
        await receive_json(slow)
        await request(slow, {"type": "join", "channel": "chat:a"})
        server.links[-1].stall()  # it stops reading; its socket buffer is full
        async with server.client() as fast:
            inbox = fast.messages()
            await fast.join("chat:a")
            assert hub.statistics().subscriptions == 2
            for seq in range(200):
                chat.broadcast("a", seq)
                assert (await inbox.receive()).data == seq
            # The slow one overflowed its queue of 50 and was cut off at once;
            # the fast one never waited for it.
            assert hub.statistics().subscriptions == 1
            assert trio.current_time() < 1
        with trio.fail_after(30):
            while hub.statistics().connections:
                await trio.sleep(0.5)
        nursery.cancel_scope.cancel()


async def test_shutdown_drains_then_closes_with_1001(autojump_clock: trio.testing.MockClock) -> None:
    chat = ServerChannel("chat")
    hub = Hub([chat], config=HubConfig(heartbeat_interval=None))
    async with trio.open_nursery() as nursery:
        async with open_memory_server(hub) as server:
            ws = await server.dial(nursery)
            await receive_json(ws)
            await request(ws, {"type": "join", "channel": "chat:a"})
            for seq in range(10):
                chat.broadcast("a", seq)
        # The server is gone; what it queued before the shutdown was delivered.
        got = [(await receive_json(ws))["data"] for _ in range(10)]
        assert got == list(range(10))
        try:
            await ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            assert exc.reason is not None and exc.reason.code == 1001
        else:
            raise AssertionError("expected the connection to be closed")
        assert hub.statistics().connections == 0
        nursery.cancel_scope.cancel()


async def test_sessions_that_end_while_connected_are_closed(autojump_clock: trio.testing.MockClock) -> None:
    from modelence_trio import MemoryAuthenticator, User

    auth = MemoryAuthenticator(clock=trio.current_time)
    auth.add("expiring", User("1", "ann"), expires_at=30)
    auth.add("revoked", User("2", "bob"))
    auth.add("fine", User("3", "cy"))
    chat = ServerChannel("chat")
    hub = Hub([chat], authenticator=auth, config=HubConfig(heartbeat_interval=None, session_check_interval=10))
    closed_at: dict[str, tuple[float, int]] = {}

    async def watch(name: str, nursery: trio.Nursery) -> None:
        ws = await server.dial(nursery, [(b"Authorization", f"Bearer {name}".encode())])
        await receive_json(ws)
        await request(ws, {"type": "join", "channel": "chat:a"})
        try:
            while True:
                await ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            assert exc.reason is not None
            closed_at[name] = (trio.current_time(), exc.reason.code)

    async with open_memory_server(hub) as server, trio.open_nursery() as nursery:
        for name in ("expiring", "revoked", "fine"):
            nursery.start_soon(watch, name, nursery)
        await trio.sleep(5)
        assert hub.statistics().subscriptions == 3
        auth.revoke("revoked")
        await trio.sleep(60)
        assert set(closed_at) == {"expiring", "revoked"}
        revoked_time, revoked_code = closed_at["revoked"]
        expiring_time, expiring_code = closed_at["expiring"]
        assert (revoked_code, expiring_code) == (4001, 4001)
        assert 5 < revoked_time <= 10 + 1  # within one check interval of the revocation
        assert 30 <= expiring_time <= 40 + 1
        assert hub.statistics().subscriptions == 1
        nursery.cancel_scope.cancel()


async def test_leave_while_disconnected_returns_at_once_and_is_not_rejoined(
    autojump_clock: trio.testing.MockClock,
) -> None:
    chat = ServerChannel("chat")
    hub = Hub([chat], config=HubConfig(heartbeat_interval=None))
    backoff = Backoff(initial=1, factor=2, maximum=8, jitter=0)
    async with open_memory_server(hub) as server:
        async with server.client(heartbeat_interval=5, heartbeat_timeout=3, backoff=backoff) as client:
            await client.join("chat:a")
            await client.join("chat:b")
            server.accepting = False
            server.partition()
            await trio.sleep(5 + 3 + 0.5)  # the client has noticed
            assert not client.connected
            with trio.fail_after(0.1):  # virtual time: a leave that waited for a reconnect would time out
                await client.leave("chat:a")
            assert client.joined == {"chat:b"}
            server.accepting = True
            with trio.fail_after(30):
                await client.wait_connected()
            with trio.fail_after(5):
                while hub.statistics().subscriptions < 3:  # the old connection's two, and chat:b again
                    await trio.sleep(0.1)
            await trio.sleep(1)
            assert hub.statistics().subscriptions == 3  # chat:a was not re-joined
