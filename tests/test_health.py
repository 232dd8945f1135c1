"""``/healthz`` and ``/readyz``, and the order of a graceful shutdown: not
ready first, connections closed after ``drain_delay``."""

from __future__ import annotations

import functools
import json
import signal
import sys
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket

from modelence_trio import App, Hub, HubConfig, Module, ServerChannel, serve_metrics
from modelence_trio.testing import MemoryBus, MemoryFanout, open_memory_server

from .helpers import expect_close, receive_json
from .metricsparse import get, scrape
from .processes import start_server


async def test_healthz_and_readyz_when_ready(nursery: trio.Nursery) -> None:
    app = App([Module("m", channels=[ServerChannel("chat")])])
    urls = await nursery.start(app.serve, "127.0.0.1", 0)
    status, body, headers = await get(urls[0] + "/healthz")
    assert (status, json.loads(body), headers["content-type"]) == (200, {"status": "ok"}, "application/json")
    status, body, headers = await get(urls[0] + "/readyz")
    assert (status, json.loads(body)) == (200, {"ready": True, "not_ready": {}})
    assert headers["cache-control"] == "no-store"


async def test_health_paths_can_move_or_go(nursery: trio.Nursery) -> None:
    app = App([Module("m", channels=[ServerChannel("chat")])], healthz_path="/live", readyz_path=None)
    urls = await nursery.start(app.serve, "127.0.0.1", 0)
    assert (await get(urls[0] + "/live"))[0] == 200
    assert (await get(urls[0] + "/healthz"))[0] == 404
    assert (await get(urls[0] + "/readyz"))[0] == 404


async def test_a_hub_not_running_is_not_ready() -> None:
    hub = Hub([ServerChannel("chat")])
    assert hub.readiness().to_json() == {"ready": False, "not_ready": {"hub": "not running"}}
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        assert hub.readiness().ready
        nursery.cancel_scope.cancel()
    assert hub.readiness().to_json() == {
        "ready": False,
        "not_ready": {"hub": "not running", "shutdown": "shutting down"},
    }


async def test_a_fanout_cut_off_for_too_long_is_not_ready(autojump_clock: trio.testing.MockClock) -> None:
    fanout = MemoryFanout(MemoryBus())
    hub = Hub([ServerChannel("chat")], fanout=fanout, config=HubConfig(fanout_outage_limit=10.0))
    async with open_memory_server(hub):
        assert hub.readiness().ready
        fanout.cut()
        await trio.sleep(9.0)
        assert hub.readiness().ready  # within the bound: a failover is no reason to leave the rotation
        await trio.sleep(2.0)
        assert hub.readiness().to_json() == {"ready": False, "not_ready": {"fanout": "database unreachable for 11 s"}}
        fanout.heal()
        assert hub.readiness().ready


async def test_a_bare_hub_serves_health_and_metrics_for_embedders(nursery: trio.Nursery) -> None:
    hub = Hub([ServerChannel("chat")])
    urls = await nursery.start(serve_metrics, hub, "127.0.0.1", 0)
    status, body, _ = await get(urls[0] + "/readyz")
    assert (status, json.loads(body)) == (503, {"ready": False, "not_ready": {"hub": "not running"}})
    await nursery.start(hub.run)
    assert (await get(urls[0] + "/readyz"))[0] == 200
    assert (await get(urls[0] + "/healthz"))[0] == 200
    assert (await scrape(urls[0] + "/metrics"))("modelence_ready") == 1
    assert (await get(urls[0] + "/other"))[0] == 404


async def test_shutdown_turns_readyz_503_first_then_drains_connections(nursery: trio.Nursery) -> None:
    """App.serve's shutdown trigger: /readyz says 503 at once; for drain_delay
    everything else goes on (a connection stays, a new one is accepted, a
    broadcast is delivered); then connections close with 1001."""
    chat: ServerChannel[Any] = ServerChannel("chat")
    app = App([Module("m", channels=[chat])], config=HubConfig(drain_delay=1.0))
    stop = trio.Event()
    urls = await nursery.start(functools.partial(app.serve, "127.0.0.1", 0, shutdown_trigger=stop.wait))
    ws_url = urls[0].replace("http", "ws") + "/ws"
    async with trio_websocket.open_websocket_url(ws_url) as ws:
        await receive_json(ws)
        await ws.send_message('{"type":"join","channel":"chat:a","ref":1}')
        await receive_json(ws)
        stop.set()
        with trio.fail_after(0.5):  # well inside the delay
            while (await get(urls[0] + "/readyz"))[0] != 503:
                await trio.sleep(0.02)
        status, body, _ = await get(urls[0] + "/readyz")
        assert (status, json.loads(body)) == (503, {"ready": False, "not_ready": {"shutdown": "draining"}})
        assert (await get(urls[0] + "/healthz"))[0] == 200  # alive all the same
        async with trio_websocket.open_websocket_url(ws_url) as late:  # still accepted while draining
            assert (await receive_json(late))["type"] == "welcome"
        chat.broadcast("a", "still served")
        assert (await receive_json(ws))["data"] == "still served"
        assert app.hub.statistics().connections == 1
        await expect_close(ws, 1001, timeout=5)  # after the delay
    assert app.hub.counters.closed["1001"] == 1


async def test_modelence_trio_on_sigterm_is_unready_first_then_closes_with_1001() -> None:
    """The command line: SIGTERM with --drain-delay 2; /readyz turns 503 while
    the WebSocket stays open, then the WebSocket gets 1001 and the process exits 0."""
    command = [
        sys.executable, "-m", "modelence_trio", "examples.chat.app:app", "--port", "0",
        "--drain-delay", "2", "--log-level", "warning",
    ]  # fmt: skip
    server = await trio.to_thread.run_sync(lambda: start_server(command, r"serving on (http://\S+)"))
    try:
        async with trio_websocket.open_websocket_url(server.ws_url + "?token=ann") as ws:
            await receive_json(ws)
            assert (await get(server.url + "/readyz"))[0] == 200
            server.process.send_signal(signal.SIGTERM)
            with trio.fail_after(1.5):
                while (await get(server.url + "/readyz"))[0] != 503:
                    await trio.sleep(0.02)
            # Not closed yet: a ping still gets its pong.
            await ws.send_message('{"type":"ping","ref":1}')
            assert (await receive_json(ws)) == {"type": "pong", "ref": 1}
            await expect_close(ws, 1001, timeout=10)
        code, err = await trio.to_thread.run_sync(server.stop)
        assert code == 0, err
    finally:
        await trio.to_thread.run_sync(server.stop, signal.SIGKILL)


def test_drain_delay_is_not_negative() -> None:
    with pytest.raises(ValueError):
        HubConfig(drain_delay=-1)
