"""``/metrics`` after a scripted session, read with prometheus_client's own parser.

Real sockets on both transports: the App under hypercorn serving its own
``/metrics``, and a bare hub on trio-websocket with ``serve_metrics`` (what
an embedder runs). Every value is exact: each follows from the script.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio_websocket

from modelence_trio import (
    App,
    Hub,
    HubConfig,
    MemoryAuthenticator,
    MethodContext,
    MethodError,
    MetricsEndpoint,
    Module,
    ServerChannel,
    User,
    serve_metrics,
    serve_websocket,
)
from modelence_trio._metrics import VERSION

from .helpers import TRANSPORTS, RawClient, receive_json, serve_app
from .metricsparse import Scrape, get, scrape
from .test_app import http

CONFIG = HubConfig(outbound_queue_bytes=256 * 1024, heartbeat_interval=None)


def _auth() -> MemoryAuthenticator:
    auth = MemoryAuthenticator()
    auth.add("ann-token", User("user-ann-17", "ann"))
    auth.add("ops-token", User("user-ops-18", "ops"), roles=["ops"])
    return auth


def _channels() -> tuple[ServerChannel[Any], ServerChannel[Any], ServerChannel[Any]]:
    chat: ServerChannel[Any] = ServerChannel("chat")
    private: ServerChannel[Any] = ServerChannel("private", can_access=lambda ctx: "staff" in ctx.roles)
    big: ServerChannel[Any] = ServerChannel("big", history=None)
    return chat, private, big


async def _serve(nursery: trio.Nursery, transport: str) -> tuple[str, str, Hub, ServerChannel[Any]]:
    """A server of the three channels: its ``ws://`` URL, its metrics URL, its hub and ``chat``."""
    chat, private, big = _channels()
    if transport == "trio-websocket":
        hub = Hub([chat, private, big], authenticator=_auth(), config=CONFIG)
        port = await nursery.start(serve_websocket, hub, "127.0.0.1", 0)
        urls = await nursery.start(serve_metrics, hub, "127.0.0.1", 0)
        return f"ws://127.0.0.1:{port}/ws", urls[0] + "/metrics", hub, chat

    def send(args: dict[str, Any], ctx: MethodContext) -> dict[str, bool]:
        chat.broadcast(args["room"], {"text": args["text"]})
        return {"ok": True}

    def fail(args: dict[str, Any], ctx: MethodContext) -> None:
        raise MethodError("no")

    module = Module("chat", channels=[chat, private, big], mutations={"send": send, "fail": fail})
    app = App([module], authenticator=_auth(), config=CONFIG, metrics=MetricsEndpoint())
    urls = await serve_app(nursery, app, transport)
    return urls[0].replace("http://", "ws://") + "/ws", urls[0] + "/metrics", app.hub, chat


async def _refused(url: str, headers: list[tuple[bytes, bytes]]) -> int:
    try:
        async with trio_websocket.open_websocket_url(url, extra_headers=headers):
            pass
    except trio_websocket.ConnectionRejected as exc:
        return int(exc.status_code)
    raise AssertionError("accepted")


async def _say(ws: trio_websocket.WebSocketConnection, text: str, sent: list[str]) -> dict[str, Any]:
    sent.append(text)
    await ws.send_message(text)
    return await receive_json(ws)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_scripted_session_gives_exact_metrics(nursery: trio.Nursery, transport: str) -> None:
    url, metrics_url, hub, chat = await _serve(nursery, transport)
    sent: list[str] = []  # every client frame, for the byte count

    # Two refused handshakes: a bad token (401), a page of another origin (403).
    assert await _refused(url + "?token=wrong", []) == 401
    assert await _refused(url, [(b"Origin", b"http://evil.example")]) == 403

    async with trio_websocket.open_websocket_url(url + "?token=ann-token") as ann:
        assert (await receive_json(ann))["type"] == "welcome"
        assert (await _say(ann, '{"type":"join","channel":"chat:room","ref":1}', sent))["type"] == "joined"
        refused = await _say(ann, '{"type":"join","channel":"private:x","ref":2}', sent)
        assert refused["code"] == "access_denied"
        assert (await _say(ann, '{"type":"join","channel":"nope:1","ref":3}', sent))["code"] == "unknown_channel"
        assert (await _say(ann, '{"type":"join","channel":"nocolon","ref":4}', sent))["code"] == "invalid_channel"
        assert (await _say(ann, "{", sent))["code"] == "invalid_json"  # a bad frame
        assert (await _say(ann, '{"type":"ping","ref":5}', sent))["type"] == "pong"

        async with trio_websocket.open_websocket_url(url) as guest:  # anonymous; stays till the end
            await receive_json(guest)
            assert (await _say(guest, '{"type":"join","channel":"chat:room","ref":1}', sent))["type"] == "joined"

            # One broadcast to the two of them: through a method on the App, directly on the bare hub.
            base = metrics_url.removesuffix("/metrics")
            if transport != "trio-websocket":  # the App: a method broadcasts
                ok = await http(f"{base}/api/_internal/method/chat.send", {"args": {"room": "room", "text": "hi"}})
                assert ok.status == 200
                assert (await http(f"{base}/api/_internal/method/chat.fail", {})).status == 400
                assert (await http(f"{base}/api/_internal/method/nope.nothing", {})).status == 404
            else:
                chat.broadcast("room", {"text": "hi"})
            message = await receive_json(ann)
            assert message["data"] == {"text": "hi"}
            guest_text = await guest.get_message()
            assert isinstance(guest_text, str) and json.loads(guest_text) == message
            assert (await _say(ann, '{"type":"leave","channel":"chat:room","ref":6}', sent))["type"] == "left"
            await ann.aclose()  # the client closes: "peer"

            # A slow consumer: it joins, stops reading, and is cut off (4002).
            big = hub.channels[2]
            slow = await RawClient.connect(url)
            text = '{"type":"join","channel":"big:1"}'
            sent.append(text)
            await slow.send_text(text)
            await slow.read_until(lambda: len(slow.texts) >= 2)
            pad = "z" * 16_000
            broadcasts = 0
            while hub._router.registry.subscribers_of("big:1") and broadcasts < 5000:
                big.broadcast("1", {"i": broadcasts, "pad": pad})
                broadcasts += 1
                if broadcasts % 10 == 0:
                    await trio.sleep(0)
            assert not hub._router.registry.subscribers_of("big:1"), "never cut off"
            await slow.read_until(lambda: False)
            assert slow.closes == [4002]

            with trio.fail_after(10):
                while sum(hub.counters.closed.values()) < 2:
                    await trio.sleep(0.01)
            m = await scrape(metrics_url)

            assert m("modelence_connections") == 1  # the guest
            assert m("modelence_connections_accepted_total") == 3
            assert {s: m("modelence_connections_refused_total", status=s) for s in ("401", "403", "429", "503")} == {
                "401": 1,
                "403": 1,
                "429": 0,
                "503": 0,
            }
            closes = {labels["code"]: m("modelence_connections_closed_total", **labels) for labels in
                      m.labels("modelence_connections_closed_total")}  # fmt: skip
            assert closes == {c: 0 for c in ("1001", "1008", "1009", "1011", "4001", "4003")} | {"peer": 1, "4002": 1}

            assert m("modelence_joins_total", category="chat", result="ok") == 2
            assert m("modelence_joins_total", category="private", result="access_denied") == 1
            assert m("modelence_joins_total", category="_other", result="unknown_channel") == 1
            assert m("modelence_joins_total", category="_other", result="invalid_channel") == 1
            assert m("modelence_joins_total", category="big", result="ok") == 1
            assert m.total("modelence_joins_total") == 6
            assert m("modelence_leaves_total", category="chat", reason="leave") == 1
            assert m("modelence_leaves_total", category="chat", reason="closed") == 0  # ann left before closing
            assert m("modelence_leaves_total", category="big", reason="closed") == 1  # the slow consumer
            assert m.total("modelence_leaves_total") == 2
            assert m("modelence_subscriptions", category="chat") == 1
            assert m("modelence_channels", category="chat") == 1
            assert m("modelence_subscriptions", category="big") == m("modelence_channels", category="big") == 0

            assert m("modelence_broadcasts_total", category="chat") == 1
            assert m("modelence_deliveries_total", category="chat") == 2
            assert m("modelence_broadcasts_total", category="big") == broadcasts
            assert m("modelence_deliveries_total", category="big") == broadcasts - 1  # not the one that overflowed
            # Frames handed out: ann 8 of her own (welcome, joined, 3 join_error, error, pong, left), the
            # guest 2, the slow one 2; then the deliveries.
            assert m("modelence_sent_frames_total") == 12 + 2 + broadcasts - 1
            assert m("modelence_history_entries") == 1  # chat keeps one message; big keeps none
            assert m("modelence_history_bytes") == len(guest_text) + 2  # as sent: its header, its text

            received = {t: m("modelence_received_frames_total", type=t) for t in ("join", "leave", "ping", "message")}
            assert received == {"join": 6, "leave": 1, "ping": 1, "message": 0}
            assert m("modelence_received_frames_total", type="malformed") == 1
            assert m("modelence_received_frames_total", type="too_big") == 0
            assert m("modelence_received_bytes_total") == sum(len(text) for text in sent)
            assert m("modelence_bad_frames_total", code="invalid_json") == 1
            assert m("modelence_bad_frames_total", code="invalid_channel") == 1
            assert m.total("modelence_bad_frames_total") == 2

            # The guest's queue is empty: one connection at or under 0 bytes.
            assert m("modelence_outbound_queue_bytes_bucket", le="0.0") == 1
            assert m("modelence_outbound_queue_bytes_gcount") == 1
            assert m("modelence_outbound_queue_bytes_gsum") == 0
            assert m.families["modelence_outbound_queue_bytes"] == "histogram"  # a gauge histogram, as text

            assert m("modelence_ready") == 1
            assert m("modelence_build_info", version=VERSION) == 1
            assert m("process_open_fds") > 0  # the process collector is there too

            if transport != "trio-websocket":  # the App: its method calls are counted
                assert m("modelence_method_calls_total", method="chat.send", status="200") == 1
                assert m("modelence_method_calls_total", method="chat.fail", status="400") == 1
                assert m("modelence_method_calls_total", method="_other", status="404") == 1
                assert m.total("modelence_method_calls_total") == 3
                assert m("modelence_method_duration_seconds_count", method="chat.send") == 1
                assert m("modelence_method_duration_seconds_bucket", method="chat.send", le="+Inf") == 1
                assert m("modelence_method_duration_seconds_sum", method="chat.send") > 0
            else:
                assert not m.labels("modelence_method_calls_total")
            # Neither a channel id, nor a user id or name, nor a token, anywhere.
            text = (await get(metrics_url))[1]
            for token in ("ann-token", "wrong", "nocolon", "room"):
                assert token not in text, token
            values = {value for _, labels in m.samples for _, value in labels}
            assert not values & {"room", "x", "nope", "user-ann-17", "ann", "chat:room", "private:x", "nope:1"}
            assert "user-ann-17" not in text


async def test_broadcasts_count_once_per_broadcast_however_many_subscribers(nursery: trio.Nursery) -> None:
    chat: ServerChannel[Any] = ServerChannel("chat", history=None)
    hub = Hub([chat])
    port = await nursery.start(serve_websocket, hub, "127.0.0.1", 0)
    clients = []
    for _ in range(5):
        ws = await trio_websocket.connect_websocket_url(nursery, f"ws://127.0.0.1:{port}/ws")
        await receive_json(ws)
        await ws.send_message('{"type":"join","channel":"chat:a"}')
        await receive_json(ws)
        clients.append(ws)
    for n in range(7):
        chat.broadcast("a", n)
    for ws in clients:
        assert [(await receive_json(ws))["data"] for _ in range(7)] == list(range(7))
    traffic = hub.counters.traffic["chat"]
    frame = len('{"type":"message","channel":"chat:a","data":0}') + 2  # header + payload
    assert (traffic.broadcasts, traffic.deliveries, traffic.bytes) == (7, 35, 35 * frame)
    for ws in clients:
        await ws.aclose()


async def test_each_hub_has_its_own_registry(nursery: trio.Nursery) -> None:
    one, two = Hub([ServerChannel("chat")]), Hub([ServerChannel("chat")])
    assert one.metrics is one.metrics
    assert one.metrics is not two.metrics
    port = await nursery.start(serve_websocket, one, "127.0.0.1", 0)
    await nursery.start(two.run)
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws") as ws:
        await receive_json(ws)
        from prometheus_client import generate_latest

        assert Scrape.parse(generate_latest(one.metrics).decode())("modelence_connections") == 1
        assert Scrape.parse(generate_latest(two.metrics).decode())("modelence_connections") == 0


# --- who may read /metrics -----------------------------------------------------------------


async def test_metrics_are_off_by_default(nursery: trio.Nursery) -> None:
    app = App([Module("m", channels=[ServerChannel("chat")])])
    urls = await nursery.start(app.serve, "127.0.0.1", 0)
    status, _, _ = await get(urls[0] + "/metrics")
    assert status == 404
    assert (await get(urls[0] + "/healthz"))[0] == 200  # health is on


async def test_metrics_restricted_to_a_role(nursery: trio.Nursery) -> None:
    app = App(
        [Module("m", channels=[ServerChannel("chat")])],
        authenticator=_auth(),
        metrics=MetricsEndpoint(path="/internal/metrics", role="ops"),
    )
    urls = await nursery.start(app.serve, "127.0.0.1", 0)
    url = urls[0] + "/internal/metrics"
    status, _, headers = await get(url)
    assert (status, headers["www-authenticate"]) == (401, "Bearer")
    assert (await get(url, {"Authorization": "Bearer wrong"}))[0] == 401
    assert (await get(url, {"Authorization": "Bearer ann-token"}))[0] == 403  # no ops role
    status, body, headers = await get(url, {"Authorization": "Bearer ops-token"})
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert headers["cache-control"] == "no-store"
    assert Scrape.parse(body)("modelence_connections") == 0
    # OpenMetrics for a scraper that asks for it.
    status, body, headers = await get(
        url, {"Authorization": "Bearer ops-token", "Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")
    assert (await get(urls[0] + "/metrics", {"Authorization": "Bearer ops-token"}))[0] == 404  # the path moved


async def test_metrics_restricted_to_a_bind_address(nursery: trio.Nursery) -> None:
    chat: ServerChannel[Any] = ServerChannel("chat")
    app = App(
        [Module("m", channels=[chat], queries={"q": lambda args, ctx: 1})],
        metrics=MetricsEndpoint(bind="127.0.0.1:0"),
    )
    main, internal = await nursery.start(app.serve, "127.0.0.1", 0)
    assert main != internal
    assert (await get(main + "/metrics"))[0] == 404  # not on the public address
    status, body, _ = await get(internal + "/metrics")
    assert status == 200 and Scrape.parse(body)("modelence_ready") == 1
    assert (await get(internal + "/healthz"))[0] == 200
    assert (await get(internal + "/readyz"))[0] == 200
    # Nothing else on the metrics address: no pages, no methods, no WebSocket.
    assert (await get(internal + "/_modelence/modelence.js"))[0] == 404
    assert (await http(internal + "/api/_internal/method/m.q", {})).status == 404
    assert (await http(main + "/api/_internal/method/m.q", {})).status == 200
    with pytest.raises(trio_websocket.ConnectionRejected):
        async with trio_websocket.open_websocket_url(internal.replace("http", "ws") + "/ws"):
            pass
    async with trio_websocket.open_websocket_url(main.replace("http", "ws") + "/ws") as ws:
        assert (await receive_json(ws))["type"] == "welcome"


def test_metrics_endpoint_options_are_checked() -> None:
    with pytest.raises(ValueError, match="start with '/'"):
        MetricsEndpoint(path="metrics")
    with pytest.raises(ValueError, match="host:port"):
        MetricsEndpoint(bind="9100")
    assert str(MetricsEndpoint(bind="[::1]:9100").bind) == "[::1]:9100"
    assert MetricsEndpoint(bind="unix:/run/m.sock").bind is not None


def test_the_history_counts_its_entries_and_bytes_as_they_change() -> None:
    from modelence_trio import History
    from modelence_trio._history import HistoryBook
    from modelence_trio._wire import Outgoing
    from modelence_trio.protocol import Since

    book = HistoryBook()

    def recount() -> tuple[int, int]:
        kept = [text for channel in book._channels.values() for _, _, text, _ in channel.messages()]
        return len(kept), sum(len(Outgoing.from_text(text).wire) for text in kept)

    short, long = History(size=3, max_age=10.0), History(size=100, max_age=100.0)
    for n in range(5):
        book.record("a:1", f'"é{n}"', short, float(n))  # evicted past 3; non-ASCII: bytes, not characters
        book.record("b:1", str(n) if n % 2 else f'"{"x" * 300 * n}"', long, float(n))  # 2- and 4-byte headers
        assert (book.entries, book.bytes) == recount()
    assert book.entries == 3 + 5
    book.replay("a:1", Since(0, book.epoch), short, 13.5)
    assert (book.entries, book.bytes) == recount()  # expired on the way: those of a:1 older than 3.5
    assert book.entries == 1 + 5
    book.sweep(200.0)  # both aged out whole
    assert (book.entries, book.bytes) == (0, 0) == recount()
    book.record("a:1", "1", short, 300.0)
    book.reset("other", 10)
    assert (book.entries, book.bytes) == (0, 0) == recount()
