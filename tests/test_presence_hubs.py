"""Presence through hubs: frames on the wire, coalescing, and several
instances on the in-memory fan-out under MockClock (crash expiry, goodbye,
partition and heal)."""

from __future__ import annotations

import contextlib
import itertools
import json
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_websocket

from modelence_trio import (
    ClientChannel,
    Hub,
    HubConfig,
    MemoryAuthenticator,
    Presence,
    PresenceSnapshot,
    RequestFailed,
    ServerChannel,
    User,
)
from modelence_trio.testing import MemoryBus, MemoryFanout, MemoryServer, open_memory_server

from .helpers import receive_json, request, send_json

USERS = ["ann", "bob", "cid", "dan", "eve", "fay"]


def authenticator() -> MemoryAuthenticator:
    auth = MemoryAuthenticator()
    for name in USERS:
        auth.add(name, User(f"u-{name}", name))
    return auth


def handle(ctx: Any) -> dict[str, str]:
    return {"handle": ctx.user.handle if ctx.user else "guest"}


def room(**options: Any) -> ServerChannel[Any]:
    return ServerChannel("room", presence=Presence(meta=handle, **options))


async def dial(server: MemoryServer, nursery: trio.Nursery, token: str | None = None) -> Any:
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    ws = await server.dial(nursery, headers)
    assert (await receive_json(ws))["type"] == "welcome"
    return ws


async def answer(ws: trio_websocket.WebSocketConnection, frame: dict[str, Any]) -> dict[str, Any]:
    """Send ``frame``; its answer, past the presence diffs that come meanwhile."""
    await send_json(ws, frame)
    while (reply := await receive_json(ws))["type"] == "presence_diff":
        pass
    return reply


async def join(ws: trio_websocket.WebSocketConnection, channel: str = "room:1") -> dict[str, Any]:
    """Join; returns the presence_state that follows ``joined``."""
    assert (await answer(ws, {"type": "join", "channel": channel, "ref": "j"}))["type"] == "joined"
    state = await receive_json(ws)
    assert state["type"] == "presence_state"
    return state


class View:
    """A watcher's members, from the frames it reads, as a client keeps them."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.members = {m["key"]: m for m in state["members"]}
        self.count = state["count"]
        self.diffs = 0
        self.events: list[tuple[str, str]] = []

    def apply(self, diff: dict[str, Any]) -> None:
        assert diff["type"] == "presence_diff"
        self.diffs += 1
        for member in diff["joins"]:
            self.events.append(("join", member["key"]))
            self.members[member["key"]] = member
        for member in diff["leaves"]:
            self.events.append(("leave", member["key"]))
            self.members.pop(member["key"], None)
        self.count = diff["count"]

    def keys(self) -> set[str]:
        return set(self.members)

    async def until(self, ws: trio_websocket.WebSocketConnection, keys: set[str], within: float) -> float:
        """Read diffs until the members are ``keys``; returns the (virtual) time it took."""
        start = trio.current_time()
        with trio.fail_after(within):
            while self.keys() != keys:
                self.apply(await receive_json(ws, timeout=within))
        assert self.count == len(keys)
        return trio.current_time() - start


async def test_state_after_joined_then_coalesced_diffs(autojump_clock: trio.abc.Clock) -> None:
    hub = Hub([room()], authenticator=authenticator())
    async with open_memory_server(hub) as server, trio.open_nursery() as nursery:
        ann = await dial(server, nursery, "ann")
        state = await join(ann)
        assert state == {
            "type": "presence_state",
            "channel": "room:1",
            "count": 1,
            "members": [{"key": "u-ann", "connections": 1, "meta": {"handle": "ann"}}],
            "truncated": False,
        }
        view = View(state)
        # The window's diff repeats ann's own join: the state was a snapshot taken
        # at the join, the diff covers the window; applying either is idempotent.
        assert [m["key"] for m in (await receive_json(ann))["joins"]] == ["u-ann"]
        bob, phone = await dial(server, nursery, "bob"), await dial(server, nursery, "bob")
        await join(bob)
        assert (await join(phone))["count"] == 2
        # One diff for both of bob's joins: the member with his two connections.
        diff = await receive_json(ann)
        assert diff == {
            "type": "presence_diff",
            "channel": "room:1",
            "count": 2,
            "joins": [{"key": "u-bob", "connections": 2, "meta": {"handle": "bob"}}],
            "leaves": [],
            "truncated": False,
        }
        view.apply(diff)
        await phone.aclose()
        view.apply(await receive_json(ann))
        assert view.members["u-bob"]["connections"] == 1
        assert (await answer(bob, {"type": "leave", "channel": "room:1", "ref": 1}))["type"] == "left"
        diff = await receive_json(ann)
        assert diff["leaves"] == [{"key": "u-bob", "connections": 0, "meta": {"handle": "bob"}}]
        assert diff["count"] == 1
        # Asked for: the state, with the request's ref.
        asked = await answer(ann, {"type": "presence", "channel": "room:1", "ref": 7})
        assert asked["type"] == "presence_state" and asked["ref"] == 7 and asked["count"] == 1
        nursery.cancel_scope.cancel()


async def test_who_may_see_and_who_is_listed(autojump_clock: trio.abc.Clock) -> None:
    plain = ServerChannel("plain")
    guests = ServerChannel("lobby", presence=Presence(anonymous=True))
    hub = Hub([room(), guests, plain], authenticator=authenticator())
    async with open_memory_server(hub) as server, trio.open_nursery() as nursery:
        guest = await dial(server, nursery)
        # Anonymous connections see presence but are members only where allowed.
        assert (await join(guest))["members"] == []
        lobby = await join(guest, "lobby:1")
        assert [m["key"] for m in lobby["members"]] == [guest_id := lobby["members"][0]["key"]]
        assert lobby["members"][0]["meta"] is None and guest_id
        # Not joined, no presence, a channel without presence joined: errors, the connection lives on.
        refused = await request(guest, {"type": "presence", "channel": "room:2", "ref": 1})
        assert (refused["type"], refused["code"], refused["ref"]) == ("error", "not_joined", 1)
        assert (await request(guest, {"type": "join", "channel": "plain:1"}))["type"] == "joined"
        refused = await request(guest, {"type": "presence", "channel": "plain:1", "ref": 2})
        assert refused["code"] == "presence_not_enabled"
        bad = await request(guest, {"type": "presence", "ref": 3})
        assert (bad["code"], bad["ref"]) == ("invalid_field", 3)
        nursery.cancel_scope.cancel()


async def test_counts_only_and_truncated(autojump_clock: trio.abc.Clock) -> None:
    hub = Hub(
        [room(max_members=2), ServerChannel("stage", presence=Presence(counts_only=True))],
        authenticator=authenticator(),
    )
    async with open_memory_server(hub) as server, trio.open_nursery() as nursery:
        sockets = [await dial(server, nursery, name) for name in USERS[:4]]
        for ws in sockets:
            await join(ws)
        last = await join(await dial(server, nursery, "eve"))
        assert last["count"] == 5 and len(last["members"]) == 2 and last["truncated"] is True
        states = [await join(ws, "stage:1") for ws in sockets[:3]]
        assert states[-1] == {"type": "presence_state", "channel": "stage:1", "count": 3}
        while (frame := await receive_json(sockets[0]))["channel"] != "stage:1":
            pass
        assert frame == {"type": "presence_diff", "channel": "stage:1", "count": 3}
        nursery.cancel_scope.cancel()


async def test_a_join_storm_is_a_few_frames_per_watcher(autojump_clock: trio.abc.Clock) -> None:
    config = HubConfig(max_connections_per_address=None, joins_per_second=None)
    hub = Hub([ServerChannel("room", presence=Presence(anonymous=True, max_members=1000))], config=config)
    async with open_memory_server(hub) as server, trio.open_nursery() as nursery:
        watchers = [await dial(server, nursery) for _ in range(3)]
        views = [View(await join(ws)) for ws in watchers]
        start = trio.current_time()
        storm = []
        for _ in range(300):  # 300 joins, 10 ms apart: 3 s of virtual time
            storm.append(await dial(server, nursery))
            await send_json(storm[-1], {"type": "join", "channel": "room:1"})
            await trio.sleep(0.01)
        everyone = {m.key for m in hub._tracker.book.members("room:1", 1000)}
        assert len(everyone) == 303
        for ws, view in zip(watchers, views, strict=True):
            await view.until(ws, everyone, within=5)
            # 100 ms windows: about one diff per window, not one per join.
            assert view.diffs <= (trio.current_time() - start) / 0.1 + 2
            assert view.diffs < 50
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def instances(count: int, **config: Any) -> AsyncIterator[list[tuple[MemoryServer, MemoryFanout]]]:
    bus = MemoryBus()
    settings = HubConfig(presence_interval=1.0, **config)
    async with AsyncExitStack() as stack:
        found = []
        for _ in range(count):
            fanout = MemoryFanout(bus)
            hub = Hub([room()], authenticator=authenticator(), config=settings, fanout=fanout)
            found.append((await stack.enter_async_context(open_memory_server(hub)), fanout))
        yield found


async def test_every_instance_sees_every_member(autojump_clock: trio.abc.Clock) -> None:
    async with instances(3) as [(a, _), (b, _), (c, _)], trio.open_nursery() as nursery:
        watcher = await dial(a, nursery, "ann")
        view = View(await join(watcher))
        for server, name in ((b, "bob"), (c, "cid"), (c, "bob")):
            await join(await dial(server, nursery, name))
        took = await view.until(watcher, {"u-ann", "u-bob", "u-cid"}, within=2)
        assert took <= 0.3  # a window here, one on the way back
        assert view.members["u-bob"]["connections"] == 2  # one on b, one on c: one member
        # A late instance learns who is there from the others.
        fanout = MemoryFanout(a.hub.fanout.bus)  # type: ignore[union-attr]
        late = Hub([room()], authenticator=authenticator(), config=HubConfig(presence_interval=1.0), fanout=fanout)
        async with open_memory_server(late) as d:
            watcher_d = await dial(d, nursery, "dan")
            view_d = View(await join(watcher_d))
            await view_d.until(watcher_d, {"u-ann", "u-bob", "u-cid", "u-dan"}, within=2)
            assert view_d.members["u-bob"]["connections"] == 2
            nursery.cancel_scope.cancel()


async def test_a_crashed_instance_members_expire_a_stopped_one_leaves_at_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with instances(2) as [(a, _), (c, c_fanout)], trio.open_nursery() as nursery:
        bus_b = MemoryFanout(a.hub.fanout.bus)  # type: ignore[union-attr]
        hub_b = Hub([room()], authenticator=authenticator(), config=HubConfig(presence_interval=1.0), fanout=bus_b)
        watcher = await dial(a, nursery, "ann")
        view = View(await join(watcher))
        await join(await dial(c, nursery, "cid"))
        async with open_memory_server(hub_b) as b, trio.open_nursery() as b_clients:
            await join(await dial(b, b_clients, "bob"))
            await view.until(watcher, {"u-ann", "u-bob", "u-cid"}, within=2)
            b_clients.cancel_scope.cancel()
        # b stopped: it said goodbye, its member leaves within a window, not after expiry.
        assert await view.until(watcher, {"u-ann", "u-cid"}, within=2) <= 0.3
        c_fanout.cut()  # c crashes: silent from now on
        took = await view.until(watcher, {"u-ann"}, within=10)
        assert 3.0 <= took <= 3 * 1.0 + 1.0 + 0.2  # three intervals, a beat's phase, a window
        nursery.cancel_scope.cancel()


async def test_a_partitioned_instance_keeps_its_members_and_reconciles(autojump_clock: trio.abc.Clock) -> None:
    async with instances(2) as [(a, _), (c, c_fanout)], trio.open_nursery() as nursery:
        watcher_a = await dial(a, nursery, "ann")
        view_a = View(await join(watcher_a))
        watcher_c = await dial(c, nursery, "cid")
        view_c = View(await join(watcher_c))
        bob = await dial(c, nursery, "bob")
        await join(bob)
        await join(await dial(c, nursery, "dan"))
        everyone = {"u-ann", "u-bob", "u-cid", "u-dan"}
        await view_a.until(watcher_a, everyone, within=2)
        await view_c.until(watcher_c, everyone, within=2)
        c_fanout.cut()
        await bob.aclose()  # leaves during the partition
        # c's own members stay on c; a's member expires there, as c's do on a.
        await view_c.until(watcher_c, {"u-cid", "u-dan"}, within=10)
        await view_a.until(watcher_a, {"u-ann"}, within=10)
        await trio.sleep(2)
        c_fanout.heal()
        # Reconciled both ways; bob, who left meanwhile, does not come back.
        await view_a.until(watcher_a, {"u-ann", "u-cid", "u-dan"}, within=5)
        await view_c.until(watcher_c, {"u-ann", "u-cid", "u-dan"}, within=5)
        await trio.sleep(5)  # more beats: nothing changes any more
        assert view_a.keys() == view_c.keys() == {"u-ann", "u-cid", "u-dan"}
        for view in (view_a, view_c):
            for key in {key for _, key in view.events}:
                kinds = [kind for kind, k in view.events if k == key]
                # Each member alternates: never joins twice in a row, never leaves twice.
                assert all(x != y for x, y in itertools.pairwise(kinds)), (key, kinds)
        nursery.cancel_scope.cancel()


async def test_presence_survives_a_bad_message_on_the_bus(autojump_clock: trio.abc.Clock) -> None:
    async with instances(2) as [(a, fanout_a), (b, _)], trio.open_nursery() as nursery:
        watcher = await dial(a, nursery, "ann")
        view = View(await join(watcher))
        fanout_a.bus.append("$presence", json.dumps({"instance": "x", "kind": "delta"}), "x", "x-1")
        fanout_a.bus.append("$presence", "[1", "x", "x-2")
        fanout_a.bus.append("$presence", json.dumps({"instance": "x", "kind": []}), "x", "x-3")
        bad_key = {"instance": "x", "kind": "state", "version": 0, "part": 0, "entries": [["room:1", "\ud800", 1, "1"]]}
        fanout_a.bus.append("$presence", json.dumps(bad_key), "x", "x-4")
        await join(await dial(b, nursery, "bob"))
        await view.until(watcher, {"u-ann", "u-bob"}, within=2)
        nursery.cancel_scope.cancel()


async def test_the_python_client_keeps_the_members(autojump_clock: trio.abc.Clock) -> None:
    seen: list[PresenceSnapshot] = []
    hub = Hub([room(), ServerChannel("plain")], authenticator=authenticator())
    async with (
        open_memory_server(hub) as server,
        server.client(token="ann", channels=[ClientChannel("room", on_presence=seen.append)]) as ann,
        server.client(token="bob") as bob,
    ):
        await ann.join("room:1")
        with trio.fail_after(1):  # the state follows the joined answer
            while ann.presence("room:1").count < 1:
                await trio.sleep(0.01)
        await bob.join("room:1")
        with trio.fail_after(1):
            while ann.presence("room:1").count < 2:
                await trio.sleep(0.01)
        members = ann.presence("room:1").members
        assert members is not None and [m.key for m in members] == ["u-ann", "u-bob"]
        assert members[1].meta == {"handle": "bob"}
        assert seen[-1] == ann.presence("room:1") and seen[0].count == 1
        await bob.leave("room:1")
        assert (await ann.fetch_presence("room:1")).count == 1
        await ann.join("plain:1")
        with pytest.raises(RequestFailed, match="presence_not_enabled"):
            await ann.fetch_presence("plain:1")
        assert ann.presence("plain:1") == PresenceSnapshot("plain:1")  # nothing known


def _worked_example() -> list[tuple[str, str, dict[str, Any]]]:
    """protocol.md's presence example as (who, "C" or "S", frame) lines."""
    text = (Path(__file__).resolve().parent.parent / "protocol.md").read_text()
    block = text.split("Worked example (`ann` and `bob`", 1)[1].split("```\n", 1)[1].split("```", 1)[0]
    lines = []
    for line in block.splitlines():
        found = re.fullmatch(r"([CS])\(([a-z, ]+)\): (\{.*\})", line)
        if found:
            lines.append((found[2], found[1], json.loads(found[3])))
    return lines


async def test_the_worked_example_in_protocol_md_is_what_the_server_sends(autojump_clock: trio.abc.Clock) -> None:
    auth = MemoryAuthenticator()
    auth.add("ann", User("u1", "ann"))
    auth.add("bob", User("u2", "bob"))
    lines = _worked_example()
    sent = [(who, frame) for who, side, frame in lines if side == "C"]
    join = {"type": "join", "channel": "room:1", "ref": 1}
    assert sent == [("ann", join), ("bob", join), ("ann", {"type": "presence", "channel": "room:1", "ref": 2})]
    got: dict[str, list[dict[str, Any]]] = {"ann": [], "bob": []}

    async def read(name: str, ws: trio_websocket.WebSocketConnection) -> None:
        with contextlib.suppress(trio_websocket.ConnectionClosed):
            while True:
                got[name].append(json.loads(await ws.get_message()))

    example = ServerChannel("room", history=None, presence=Presence(meta=handle))  # no offsets on joined
    async with open_memory_server(Hub([example], authenticator=auth)) as server, trio.open_nursery() as nursery:
        ann, bob = await dial(server, nursery, "ann"), await dial(server, nursery, "bob")
        nursery.start_soon(read, "ann", ann)
        nursery.start_soon(read, "bob", bob)
        await send_json(ann, join)
        await trio.sleep(0.2)
        await send_json(bob, join)
        await trio.sleep(0.2)
        window = await dial(server, nursery, "bob")  # bob's second window
        await send_json(window, join)
        await trio.sleep(0.2)
        await window.aclose()
        await bob.aclose()
        await trio.sleep(0.2)
        await send_json(ann, {"type": "presence", "channel": "room:1", "ref": 2})
        await trio.sleep(0.2)
        for name in ("ann", "bob"):
            expected = [frame for who, side, frame in lines if side == "S" and name in who.split(", ")]
            assert got[name] == expected, name
        nursery.cancel_scope.cancel()


async def test_a_hub_without_presence_on_a_shared_bus_keeps_nothing(autojump_clock: trio.abc.Clock) -> None:
    async with instances(1) as [(a, fanout_a)], trio.open_nursery() as nursery:
        plain = Hub(
            [ServerChannel("other")], config=HubConfig(presence_interval=1.0), fanout=MemoryFanout(fanout_a.bus)
        )
        async with open_memory_server(plain):
            for name in USERS:
                ws = await dial(a, nursery, name)
                await join(ws)
                await ws.aclose()
            await trio.sleep(5)  # beats, expiry checks
            book = plain._tracker.book
            assert (book._before, book._replicas, book.outgoing) == ({}, {}, [])
        nursery.cancel_scope.cancel()


async def test_a_hub_that_runs_again_still_shares_presence(autojump_clock: trio.abc.Clock) -> None:
    bus = MemoryBus()
    settings = HubConfig(presence_interval=1.0)
    again = Hub([room()], authenticator=authenticator(), config=settings, fanout=MemoryFanout(bus))
    other = Hub([room()], authenticator=authenticator(), config=settings, fanout=MemoryFanout(bus))
    async with open_memory_server(other) as b, trio.open_nursery() as nursery:
        watcher = await dial(b, nursery, "ann")
        view = View(await join(watcher))
        for name in ("bob", "cid"):  # the same hub, run twice (as a test fixture may)
            async with open_memory_server(again) as a, trio.open_nursery() as clients:
                await join(await dial(a, clients, name))
                await view.until(watcher, {"u-ann", f"u-{name}"}, within=5)
                clients.cancel_scope.cancel()
            await view.until(watcher, {"u-ann"}, within=5)
        nursery.cancel_scope.cancel()


async def test_joining_again_gets_the_state_within_the_join_rate(autojump_clock: trio.abc.Clock) -> None:
    # A join of a channel already joined answers joined and the state, but the
    # state (many members) costs a join's budget: no flood of states.
    async with open_memory_server(Hub([room()], authenticator=authenticator())) as server:
        async with trio.open_nursery() as nursery:
            ws = await dial(server, nursery, "ann")
            await join(ws)
            for _ in range(100):
                await send_json(ws, {"type": "join", "channel": "room:1"})
            frames = []
            with trio.move_on_after(0.05):  # less than a window: no diff yet
                while True:
                    frames.append((await receive_json(ws))["type"])
            assert frames.count("joined") == 100
            assert 0 < frames.count("presence_state") <= 40  # a burst of twice 20 joins a second
            nursery.cancel_scope.cancel()
