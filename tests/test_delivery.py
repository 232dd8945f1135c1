"""Ordering, isolation and cleanup over real sockets, many clients at once."""

from __future__ import annotations

import pytest
import trio
import trio_websocket

from modelence_trio import Hub, HubConfig, ServerChannel, serve_websocket

from .helpers import TRANSPORTS, expect_close, receive_json, request, start_server


async def test_many_broadcasts_reach_many_clients_in_order(nursery: trio.Nursery) -> None:
    chat = ServerChannel("chat")
    hub = Hub([chat])
    port = await nursery.start(serve_websocket, hub, "127.0.0.1", 0)
    url = f"ws://127.0.0.1:{port}/ws"
    clients, rooms, count = 20, ("a", "b"), 300
    results: dict[int, dict[str, list[int]]] = {}

    async def subscriber(i: int, ready: trio.MemorySendChannel[int]) -> None:
        async with trio_websocket.open_websocket_url(url) as ws:
            await receive_json(ws)
            mine = rooms if i % 2 == 0 else rooms[:1]
            for room in mine:
                await request(ws, {"type": "join", "channel": f"chat:{room}"})
            await ready.send(i)
            got: dict[str, list[int]] = {room: [] for room in mine}
            while sum(map(len, got.values())) < count * len(mine):
                frame = await receive_json(ws, timeout=20)
                got[frame["channel"].split(":")[1]].append(frame["data"]["seq"])
            results[i] = got

    send, receive = trio.open_memory_channel[int](clients)
    async with trio.open_nursery() as inner:
        for i in range(clients):
            inner.start_soon(subscriber, i, send)
        for _ in range(clients):
            await receive.receive()
        assert hub.statistics().subscriptions == clients + clients // 2
        for seq in range(count):
            for room in rooms:
                chat.broadcast(room, {"seq": seq})
            if seq % 50 == 0:
                await trio.sleep(0)
    assert len(results) == clients
    for i, got in results.items():
        for room, seqs in got.items():
            assert seqs == list(range(count)), (i, room)


async def test_no_delivery_after_leave_and_no_state_after_disconnects(nursery: trio.Nursery) -> None:
    chat = ServerChannel("chat")
    hub = Hub([chat])
    port = await nursery.start(serve_websocket, hub, "127.0.0.1", 0)
    url = f"ws://127.0.0.1:{port}/"
    async with trio_websocket.open_websocket_url(url) as ws1, trio_websocket.open_websocket_url(url) as ws2:
        for ws in (ws1, ws2):
            await receive_json(ws)
            await request(ws, {"type": "join", "channel": "chat:x"})
            await request(ws, {"type": "join", "channel": "chat:y"})
        assert hub.statistics().connections == 2
        assert hub.statistics().subscriptions == 4
        for seq in range(50):
            chat.broadcast("x", seq)
        await request_until_left(ws1)
        chat.broadcast("x", "after")
        # ws1 saw every message sent before its leave, then nothing more.
        assert await request(ws1, {"type": "ping", "ref": 1}) == {"type": "pong", "ref": 1}
        assert hub.statistics().subscriptions == 3
        seen = [(await receive_json(ws2))["data"] for _ in range(51)]
        assert seen == [*range(50), "after"]
    with trio.fail_after(5):
        while hub.statistics().connections:
            await trio.sleep(0.01)
    stats = hub.statistics()
    assert (stats.connections, stats.channels, stats.subscriptions) == (0, 0, 0)


async def request_until_left(ws: trio_websocket.WebSocketConnection) -> None:
    await ws.send_message('{"type":"leave","channel":"chat:x","ref":"L"}')
    seqs = []
    while True:
        frame = await receive_json(ws)
        if frame["type"] == "left":
            break
        seqs.append(frame["data"])
    assert seqs == list(range(50))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cancelling_the_server_flushes_then_closes_with_1001(transport: str) -> None:
    chat: ServerChannel = ServerChannel("chat")
    async with trio.open_nursery() as outer:
        server_scope = trio.CancelScope()

        async def run_server(task_status: trio.TaskStatus[tuple[str, Hub]] = trio.TASK_STATUS_IGNORED) -> None:
            with server_scope:
                async with trio.open_nursery() as nursery:
                    task_status.started(await start_server(nursery, transport, [chat]))

        url, hub = await outer.start(run_server)
        async with trio_websocket.open_websocket_url(url) as ws:
            await receive_json(ws)
            await request(ws, {"type": "join", "channel": "chat:x"})
            for seq in range(500):
                chat.broadcast("x", {"seq": seq, "pad": "x" * 200})
            server_scope.cancel()  # shut down with 500 frames still queued
            got = [(await receive_json(ws))["data"]["seq"] for _ in range(500)]
            assert got == list(range(500))
            await expect_close(ws, 1001, timeout=5)
        # Nothing is accepted any more.
        try:
            async with trio_websocket.open_websocket_url(url):
                raise AssertionError("the server still accepts")
        except trio_websocket.HandshakeError as exc:
            assert isinstance(exc.__cause__, OSError)  # connection refused
    assert hub.statistics().connections == 0


async def test_large_backlog_with_server_pings_stays_intact(nursery: trio.Nursery) -> None:
    # The client stops reading while the server keeps broadcasting large
    # frames and pinging: the socket buffer fills, direct writes go partial,
    # and pings must still land between frames, never inside one.
    chat: ServerChannel = ServerChannel("chat")
    config = HubConfig(heartbeat_interval=0.02, heartbeat_timeout=30, outbound_queue_bytes=16 * 1024 * 1024)
    hub = Hub([chat], config=config)  # room for the whole 8 MB backlog
    port = await nursery.start(serve_websocket, hub, "127.0.0.1", 0)
    count, pad = 400, "y" * 20_000
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/", message_queue_size=1) as ws:
        await receive_json(ws)
        await request(ws, {"type": "join", "channel": "chat:big"})
        for seq in range(count):
            chat.broadcast("big", {"seq": seq, "pad": pad})
            if seq % 20 == 0:
                await trio.sleep(0.01)  # let pings and the writer run
        got = [await receive_json(ws, timeout=20) for _ in range(count)]
        assert [frame["data"]["seq"] for frame in got] == list(range(count))
        assert all(frame["data"]["pad"] == pad for frame in got)
        assert await request(ws, {"type": "ping", "ref": 1}) == {"type": "pong", "ref": 1}
