"""The dashboard's server side: who may open the page, who may join its
channel, and snapshots only while someone watches. (The page itself runs in
Chromium in tests/test_browser.py.)"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from modelence_trio import (
    App,
    Hub,
    JoinRefused,
    MemoryAuthenticator,
    Module,
    ServerChannel,
    User,
    open_client,
)
from modelence_trio import _dashboard as dashboard
from modelence_trio.testing import open_memory_server

from .metricsparse import get


def _auth() -> MemoryAuthenticator:
    auth = MemoryAuthenticator()
    auth.add("ann-token", User("u1", "ann"))
    auth.add("ops-token", User("u2", "ops"), roles=["ops"])
    return auth


@pytest.fixture
async def base(nursery: trio.Nursery) -> str:
    app = App([Module("m", channels=[ServerChannel("chat")])], authenticator=_auth(), dashboard_role="ops")
    urls = await nursery.start(app.serve, "127.0.0.1", 0)
    return str(urls[0])


async def test_the_page_is_for_the_role_only(base: str) -> None:
    page = base + "/_modelence/dashboard"
    status, _, headers = await get(page)
    assert (status, headers["www-authenticate"]) == (401, "Bearer")
    assert (await get(page + "?token=wrong"))[0] == 401
    assert (await get(page + "?token=ann-token"))[0] == 403
    for how in ({"Cookie": "authToken=ops-token"}, {"Authorization": "Bearer ops-token"}, {}):
        status, body, headers = await get(page + ("" if how else "?token=ops-token"), how)
        assert status == 200
        assert '<script type="module" src="/_modelence/dashboard.js">' in body
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-store"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert "script-src 'self'" in headers["content-security-policy"]
    status, body, headers = await get(base + "/_modelence/dashboard.js")
    assert (status, headers["content-type"]) == (200, "text/javascript; charset=utf-8")
    assert 'import { ClientChannel, startWebsockets } from "/_modelence/modelence.js"' in body


async def test_no_dashboard_without_a_role(nursery: trio.Nursery) -> None:
    app = App([Module("m", channels=[ServerChannel("chat")])], authenticator=_auth())
    urls = await nursery.start(app.serve, "127.0.0.1", 0)
    assert (await get(urls[0] + "/_modelence/dashboard?token=ops-token"))[0] == 404
    assert (await get(urls[0] + "/_modelence/dashboard.js"))[0] == 404
    assert dashboard.CATEGORY not in {c.category for c in app.hub.channels}


def test_the_dashboard_category_is_reserved() -> None:
    with pytest.raises(ValueError, match="dashboard"):
        App([Module("m", channels=[ServerChannel(dashboard.CATEGORY)])], dashboard_role="ops")


async def test_only_the_role_joins_the_live_channel_and_gets_snapshots(base: str) -> None:
    ws = base.replace("http", "ws") + "/ws"
    async with open_client(ws, token="ann-token") as ann:
        with pytest.raises(JoinRefused) as refused:
            await ann.join(dashboard.CHANNEL)
        assert refused.value.code == "access_denied"
    async with open_client(ws, token="ops-token") as ops:
        with pytest.raises(JoinRefused):
            await ops.join(f"{dashboard.CATEGORY}:other")  # only "live"
        inbox = ops.messages()
        await ops.join(dashboard.CHANNEL)
        with trio.fail_after(5):
            snapshot = (await inbox.receive()).data
        [[labels, connections]] = snapshot["samples"]["modelence_connections"]
        assert labels == {} and connections >= 1
        assert snapshot["instance"] and snapshot["fanout"] is None
        joined = {tuple(labels.items()): value for labels, value in snapshot["samples"]["modelence_subscriptions"]}
        assert joined[(("category", dashboard.CATEGORY),)] == 1
        text = repr(snapshot)
        assert "ops-token" not in text and "u2" not in text  # no token, no user id


async def test_snapshots_only_while_someone_watches(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken: list[float] = []
    real = dashboard.snapshot

    def counting(hub: Hub) -> dict[str, Any]:
        taken.append(trio.current_time())
        return real(hub)

    monkeypatch.setattr(dashboard, "snapshot", counting)
    auth = _auth()
    hub = Hub([ServerChannel("chat"), dashboard.dashboard_channel("ops")], authenticator=auth)
    async with open_memory_server(hub) as server, trio.open_nursery() as nursery:
        nursery.start_soon(dashboard.run_dashboard, hub)
        async with server.client(token="ops-token") as ops:
            await trio.sleep(30)
            assert taken == []  # nobody joined: nothing built, nothing sent
            inbox = ops.messages()
            await ops.join(dashboard.CHANNEL)
            start = trio.current_time()
            for _ in range(5):
                message = await inbox.receive()
                assert message.channel == dashboard.CHANNEL
            assert len(taken) == 5 and taken[-1] - start <= 5.0  # one a second
            await ops.leave(dashboard.CHANNEL)
            count = len(taken)
            await trio.sleep(30)
            assert len(taken) == count  # nobody left: none again
            # A snapshot is not a broadcast: the numbers it shows did not move because of it.
            assert hub.counters.traffic[dashboard.CATEGORY].broadcasts == 0
        nursery.cancel_scope.cancel()


async def test_a_failing_snapshot_is_logged_and_the_next_one_goes_out(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []
    real = dashboard.snapshot

    def flaky(hub: Hub) -> dict[str, Any]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a collector failed")
        return real(hub)

    monkeypatch.setattr(dashboard, "snapshot", flaky)
    hub = Hub([dashboard.dashboard_channel("ops")], authenticator=_auth())
    async with open_memory_server(hub) as server, trio.open_nursery() as nursery:
        nursery.start_soon(dashboard.run_dashboard, hub)
        async with server.client(token="ops-token") as ops:
            inbox = ops.messages()
            await ops.join(dashboard.CHANNEL)
            assert "samples" in (await inbox.receive()).data
        nursery.cancel_scope.cancel()
    assert len(calls) >= 2
    assert "dashboard: a snapshot failed; skipped" in caplog.text
