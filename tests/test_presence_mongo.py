"""Presence across instances on one MongoDB (nx-27017 here, or MONGODB_URI):
in-process instances over real database sockets (a partition through the
TCP proxy), and instances as processes, one of them killed with SIGKILL."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import trio
import trio_websocket

from modelence_trio import Hub, HubConfig, MongoFanout
from modelence_trio.testing import MemoryServer, open_memory_server

from .helpers import receive_json
from .mongo import connect, with_database
from .processes import CliServer, start_cli
from .proxy import Proxy
from .test_presence_hubs import View, authenticator, dial, join, room

INTERVAL = 0.5  # presence heartbeats: a silent instance expires after 1.5 s


@asynccontextmanager
async def instance(uri: str, database: str) -> AsyncIterator[MemoryServer]:
    """One instance in this process: its own MongoDB client, fan-out and hub."""
    with connect(uri) as client:
        fanout = MongoFanout(client[database], poll_interval=0.02, retry_maximum=0.5, probe_interval=0.2)
        config = HubConfig(presence_interval=INTERVAL)
        async with open_memory_server(Hub([room()], authenticator=authenticator(), config=config, fanout=fanout)) as s:
            yield s


async def test_three_instances_share_presence_and_a_partition_reconciles(
    mongodb_uri: str, database_name: str, nursery: trio.Nursery
) -> None:
    proxy = Proxy(mongodb_uri)
    await nursery.start(proxy.run)
    async with (
        instance(mongodb_uri, database_name) as a,
        instance(mongodb_uri, database_name) as b,
        instance(proxy.uri_through(), database_name) as c,
        trio.open_nursery() as clients,
    ):
        watcher_a = await dial(a, clients, "ann")
        view_a = View(await join(watcher_a))
        await join(await dial(b, clients, "bob"))
        watcher_c = await dial(c, clients, "cid")
        view_c = View(await join(watcher_c))
        dan = await dial(c, clients, "dan")
        await join(dan)
        everyone = {"u-ann", "u-bob", "u-cid", "u-dan"}
        took = await view_a.until(watcher_a, everyone, within=10)
        await view_c.until(watcher_c, everyone, within=10)
        print(f"presence: every member seen on another instance after {took:.3f} s")
        # c loses MongoDB: its own members stay on c; a sees them leave
        # after three heartbeat intervals; c sees a's and b's leave too.
        proxy.cut()
        await dan.aclose()  # leaves during the partition
        await view_a.until(watcher_a, {"u-ann", "u-bob"}, within=15)
        await view_c.until(watcher_c, {"u-cid"}, within=15)
        proxy.restore()
        # Reconciled both ways; dan, who left meanwhile, does not come back.
        await view_a.until(watcher_a, {"u-ann", "u-bob", "u-cid"}, within=15)
        await view_c.until(watcher_c, {"u-ann", "u-bob", "u-cid"}, within=15)
        await trio.sleep(4 * INTERVAL)
        assert view_a.keys() == view_c.keys() == {"u-ann", "u-bob", "u-cid"}
        assert ("join", "u-dan") not in view_a.events[view_a.events.index(("leave", "u-dan")) :]
        clients.cancel_scope.cancel()


@contextmanager
def processes(uri: str, count: int) -> Iterator[list[CliServer]]:
    servers: list[CliServer] = []
    try:
        for _ in range(count):
            servers.append(start_cli("tests.presence_app:app", mongodb_uri=uri))
        yield servers
    finally:
        for server in servers:
            if server.process.poll() is None:
                server.process.kill()
            server.process.communicate(timeout=10)


async def _socket(server: CliServer, nursery: trio.Nursery, name: str) -> trio_websocket.WebSocketConnection:
    ws = await trio_websocket.connect_websocket_url(nursery, f"{server.ws_url}?token={name}")
    assert (await receive_json(ws))["type"] == "welcome"
    await ws.send_message(json.dumps({"type": "join", "channel": "room:1", "ref": 1}))
    assert (await receive_json(ws))["type"] == "joined"
    return ws


async def _view(ws: trio_websocket.WebSocketConnection) -> View:
    state = await receive_json(ws)
    assert state["type"] == "presence_state"
    return View(state)


async def test_a_killed_instance_members_expire_and_a_restart_leaves_no_ghost(
    mongodb_uri: str, database_name: str
) -> None:
    uri = with_database(mongodb_uri, database_name)
    with processes(uri, 3) as (one, two, three):
        async with trio.open_nursery() as nursery:
            watcher = await _socket(one, nursery, "ann")
            view = await _view(watcher)
            await _view(await _socket(two, nursery, "bob"))
            cid = await _socket(three, nursery, "cid")
            await _view(cid)
            await view.until(watcher, {"dev-ann", "dev-bob", "dev-cid"}, within=15)
            three.process.send_signal(signal.SIGKILL)
            three.process.wait()
            killed = time.monotonic()
            await view.until(watcher, {"dev-ann", "dev-bob"}, within=15)
            took = time.monotonic() - killed
            print(f"presence: a SIGKILLed instance's members left after {took:.2f} s")
            # Three intervals after its last beat (which came up to one interval
            # before the kill), checked once an interval; slack for a busy machine.
            assert 2 * INTERVAL <= took <= 4 * INTERVAL + 5
            # cid comes back through a restarted instance: one member, no ghost of the old one.
            with processes(uri, 1) as (again,):
                await _view(await _socket(again, nursery, "cid"))
                await view.until(watcher, {"dev-ann", "dev-bob", "dev-cid"}, within=15)
                await trio.sleep(4 * INTERVAL)
                assert view.members["dev-cid"]["connections"] == 1
                nursery.cancel_scope.cancel()
