"""Limits: each one refuses with its documented reply, and the rest carries on."""

from __future__ import annotations

import pytest
import trio
import trio.testing
import trio_websocket

from modelence_trio import Hub, HubConfig, ServerChannel
from modelence_trio.testing import open_memory_server

from .helpers import receive_json, request


def hub_with(**config: object) -> Hub:
    chat: ServerChannel = ServerChannel("chat", on_message=lambda ctx, cid, data: None)
    return Hub([chat], config=HubConfig(heartbeat_interval=None, **config))  # type: ignore[arg-type]


async def test_channels_per_connection(autojump_clock: trio.testing.MockClock) -> None:
    async with open_memory_server(hub_with(max_channels_per_connection=3)) as server:
        async with trio.open_nursery() as nursery:
            ws = await server.dial(nursery)
            await receive_json(ws)
            for i in range(3):
                assert (await request(ws, {"type": "join", "channel": f"chat:{i}"}))["type"] == "joined"
            reply = await request(ws, {"type": "join", "channel": "chat:3", "ref": 1})
            assert (reply["type"], reply["code"], reply["ref"]) == ("join_error", "too_many_channels", 1)
            # Re-joining one it has, and joining after a leave, still work.
            assert (await request(ws, {"type": "join", "channel": "chat:0"}))["type"] == "joined"
            await request(ws, {"type": "leave", "channel": "chat:0"})
            assert (await request(ws, {"type": "join", "channel": "chat:3"}))["type"] == "joined"
            nursery.cancel_scope.cancel()


async def test_join_and_publish_rates(autojump_clock: trio.testing.MockClock) -> None:
    hub = hub_with(joins_per_second=5, publishes_per_second=5)
    async with open_memory_server(hub) as server:
        async with trio.open_nursery() as nursery:
            ws = await server.dial(nursery)
            await receive_json(ws)
            codes = [(await request(ws, {"type": "join", "channel": f"chat:{i}"})).get("code", "ok") for i in range(12)]
            assert codes == ["ok"] * 10 + ["rate_limited"] * 2  # a burst of twice the rate
            publishes = [
                (await request(ws, {"type": "message", "channel": "chat:0", "data": i, "ref": i})).get("code", "ok")
                for i in range(12)
            ]
            assert publishes == ["ok"] * 10 + ["rate_limited"] * 2
            await trio.sleep(1)  # the budget refills at the configured rate
            assert (await request(ws, {"type": "join", "channel": "chat:x"}))["type"] == "joined"
            nursery.cancel_scope.cancel()


async def test_nesting_depth(autojump_clock: trio.testing.MockClock) -> None:
    deep: object = 1
    for _ in range(10):
        deep = [deep]
    async with open_memory_server(hub_with(max_depth=8)) as server:
        async with trio.open_nursery() as nursery:
            ws = await server.dial(nursery)
            await receive_json(ws)
            await request(ws, {"type": "join", "channel": "chat:a"})
            reply = await request(ws, {"type": "message", "channel": "chat:a", "data": deep, "ref": 7})
            assert (reply["type"], reply["code"], reply["ref"]) == ("error", "too_deep", 7)
            assert (await request(ws, {"type": "ping", "ref": 1}))["type"] == "pong"
            nursery.cancel_scope.cancel()


async def test_a_flood_of_bad_frames_closes_with_1008_and_others_carry_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = hub_with(bad_frame_limit=5)
    chat = hub.channels[0]
    async with open_memory_server(hub) as server:
        async with trio.open_nursery() as nursery:
            good = await server.dial(nursery)
            await receive_json(good)
            await request(good, {"type": "join", "channel": "chat:a"})
            bad = await server.dial(nursery)
            await receive_json(bad)
            for _ in range(5):
                await bad.send_message("{nope")
                assert (await receive_json(bad))["code"] == "invalid_json"
            await bad.send_message("{nope")
            with pytest.raises(trio_websocket.ConnectionClosed) as info:
                for _ in range(3):
                    await receive_json(bad)
            assert info.value.reason is not None and info.value.reason.code == 1008
            chat.broadcast("a", "still here")
            assert (await receive_json(good))["data"] == "still here"
            nursery.cancel_scope.cancel()


async def test_bad_frames_spread_out_are_tolerated(autojump_clock: trio.testing.MockClock) -> None:
    async with open_memory_server(hub_with(bad_frame_limit=2, bad_frame_window=10)) as server:
        async with trio.open_nursery() as nursery:
            ws = await server.dial(nursery)
            await receive_json(ws)
            for _ in range(6):
                await ws.send_message("[]")
                assert (await receive_json(ws))["code"] == "invalid_frame"
                await trio.sleep(6)
            assert (await request(ws, {"type": "ping"}))["type"] == "pong"
            nursery.cancel_scope.cancel()


async def test_connections_per_instance(nursery: trio.Nursery) -> None:
    from modelence_trio import serve_websocket

    hub = hub_with(max_connections=2)
    port = await nursery.start(serve_websocket, hub, "127.0.0.1", 0)
    url = f"ws://127.0.0.1:{port}/"
    async with trio_websocket.open_websocket_url(url) as a, trio_websocket.open_websocket_url(url) as b:
        await receive_json(a)
        await receive_json(b)
        with pytest.raises(trio_websocket.ConnectionRejected) as info:
            async with trio_websocket.open_websocket_url(url):
                pass  # pragma: no cover
        assert info.value.status_code == 503
        assert await request(a, {"type": "ping"}) == {"type": "pong"}
