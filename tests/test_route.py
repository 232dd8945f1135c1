"""App.serve on one port: WebSocket handshakes to the endpoint on the fast
transport, everything else through hypercorn (modelence_trio/_route.py)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from modelence_trio import App, HubConfig, MetricsEndpoint, Module, ServerChannel, _hypercorn, _trio_websocket
from modelence_trio._asgi import AsgiTransport
from modelence_trio._route import MAX_HEAD, ReplayStream, Route, route
from modelence_trio._trio_websocket import FastTransport, PublicTransport

from .helpers import RawClient, expect_close, receive_json, serve_app

KEY = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"


def head(line: bytes = b"GET /ws HTTP/1.1", *headers: bytes, end: bytes = b"\r\n") -> bytes:
    """A request head: the line, ``Host``, ``headers``, then the blank line."""
    return end.join([line, b"Host: 127.0.0.1", *headers, b"", b""])


WS = (b"Upgrade: websocket", b"Connection: Upgrade")
UPGRADE = head(b"GET /ws HTTP/1.1", *WS, KEY.rstrip())

ROUTES = [
    (UPGRADE, Route.WEBSOCKET),
    (head(b"GET /ws HTTP/1.1", b"upgrade: WebSocket", b"CONNECTION: UPGRADE"), Route.WEBSOCKET),
    (head(b"GET /ws HTTP/1.1", b"Connection: keep-alive, Upgrade", b"Upgrade:websocket"), Route.WEBSOCKET),
    (head(b"GET /ws HTTP/1.1", b"Upgrade: \t websocket \t", b"Connection:  upgrade ,x"), Route.WEBSOCKET),
    (head(b"GET /ws?token=abc&x=/ws HTTP/1.1", *WS), Route.WEBSOCKET),
    (head(b"GET /ws? HTTP/1.1", *WS), Route.WEBSOCKET),
    (head(b"GET /ws HTTP/1.1", *WS, end=b"\n"), Route.WEBSOCKET),  # bare LF, as h11 takes it
    (head(b"GET /ws HTTP/1.1", b"Upgrade: h2c", b"Upgrade: websocket", b"Connection: upgrade"), Route.WEBSOCKET),
    (UPGRADE + b"\x81\x85frame", Route.WEBSOCKET),  # the client's first frame right behind
    # Not a handshake to the endpoint: hypercorn's.
    (head(b"GET /ws HTTP/1.1"), Route.HTTP),
    (head(b"GET /ws HTTP/1.1", b"Upgrade: websocket"), Route.HTTP),
    (head(b"GET /ws HTTP/1.1", b"Connection: Upgrade"), Route.HTTP),
    (head(b"GET /ws HTTP/1.1", b"Upgrade: websocket, h2c", b"Connection: Upgrade"), Route.HTTP),
    (head(b"GET /ws HTTP/1.1", b"Upgrade: h2c", b"Connection: Upgrade, HTTP2-Settings"), Route.HTTP),
    (head(b"GET /ws HTTP/1.1", b"Upgrade: websocket", b"Connection: Upgrade", b"Connection: close"), Route.HTTP),
    (head(b"GET /ws HTTP/1.1", b"Upgrade: websocket", b"Connection: keep-alive"), Route.HTTP),
    (head(b"POST /ws HTTP/1.1", *WS), Route.HTTP),
    (head(b"get /ws HTTP/1.1", *WS), Route.HTTP),
    (head(b"GET /ws HTTP/1.0", *WS), Route.HTTP),
    (head(b"GET /wsx HTTP/1.1", *WS), Route.HTTP),
    (head(b"GET /ws/ HTTP/1.1", *WS), Route.HTTP),
    (head(b"GET /w HTTP/1.1", *WS), Route.HTTP),
    (head(b"GET / HTTP/1.1", *WS), Route.HTTP),
    (head(b"GET /w%73 HTTP/1.1", *WS), Route.HTTP),  # hypercorn's to decode (and serve over ASGI)
    (head(b"GET http://127.0.0.1/ws HTTP/1.1", *WS), Route.HTTP),
    (head(b"GET  /ws HTTP/1.1", *WS), Route.HTTP),
    (head(b"GET /ws HTTP/1.1", b" Upgrade: websocket", b"Connection: Upgrade"), Route.HTTP),  # folded
    (head(b"GET /ws HTTP/1.1", b"Upgrade : websocket", b"Connection: Upgrade"), Route.HTTP),
    (head(b"GET /ws HTTP/1.1", b"no colon", *WS), Route.HTTP),
    (b"GET /ws HTTP/1.1\r\n\r\n", Route.HTTP),
    (b"\r\nGET /ws HTTP/1.1\r\n", Route.HTTP),
    # Decided before the head ends.
    (b"POST /api/_internal/method/m.q HTTP/1.1\r\nContent-Le", Route.HTTP),
    (b"P", Route.HTTP),
    (b"GET /h", Route.HTTP),
    (b"GET /wsx", Route.HTTP),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Route.HTTP),  # h2 with prior knowledge
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", Route.HTTP),  # a TLS client hello
    # Not decided yet.
    (b"", Route.MORE),
    (b"G", Route.MORE),
    (b"GET /ws", Route.MORE),
    (b"GET /ws?token=", Route.MORE),
    (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n", Route.MORE),
    (UPGRADE[:-2], Route.MORE),
    (UPGRADE[:-1], Route.MORE),
    # Too large to be a head.
    (b"GET /ws HTTP/1.1\r\n" + b"X-Pad: " + b"a" * MAX_HEAD, Route.TOO_LARGE),
    (head(b"GET /ws HTTP/1.1", *WS, b"X-Pad: " + b"a" * MAX_HEAD), Route.TOO_LARGE),
    (b"GET /ws?" + b"a" * MAX_HEAD, Route.TOO_LARGE),
    # A small head followed by a large body is a head.
    (head(b"POST /api/_internal/method/m.q HTTP/1.1") + b"x" * (4 * MAX_HEAD), Route.HTTP),
    (UPGRADE + b"x" * (4 * MAX_HEAD), Route.WEBSOCKET),
]


@pytest.mark.parametrize(("data", "expected"), ROUTES, ids=[repr(data[:60]) for data, _ in ROUTES])
def test_route(data: bytes, expected: Route) -> None:
    assert route(data, "/ws") is expected


@pytest.mark.parametrize("data", [data for data, expected in ROUTES if expected is not Route.MORE])
def test_route_split_anywhere_waits_then_decides_once(data: bytes) -> None:
    # The head may arrive in pieces: every prefix is undecided or decided as the whole is.
    whole = route(data, "/ws")
    ends = range(len(data) + 1) if len(data) < 2000 else sorted({*range(300), *range(0, len(data), 997), len(data)})
    decided = [(end, route(data[:end], "/ws")) for end in ends]
    assert {found for _, found in decided} <= {Route.MORE, whole}
    first = next(end for end, found in decided if found is whole)
    assert all(found is whole for end, found in decided if end >= first)  # once decided, it stays so
    if whole is Route.WEBSOCKET:
        blank_line = re.search(rb"\n\r?\n", data)
        assert blank_line is not None and first == blank_line.end()  # nothing short of the whole head decides


def test_route_to_another_websocket_path() -> None:
    assert route(head(b"GET /live/socket?x=1 HTTP/1.1", *WS), "/live/socket") is Route.WEBSOCKET
    assert route(UPGRADE, "/live/socket") is Route.HTTP
    assert route(head(b"GET / HTTP/1.1", *WS), "/") is Route.WEBSOCKET
    assert route(UPGRADE, "/") is Route.HTTP


@given(
    upgrade=st.sampled_from(["websocket", "WebSocket", "WEBSOCKET", " websocket ", "websocket\t"]),
    before=st.lists(st.sampled_from(["keep-alive", "close", "x", "HTTP2-Settings"]), max_size=3),
    token=st.sampled_from(["upgrade", "Upgrade", "UPGRADE", " upgrade"]),
    names=st.tuples(st.sampled_from(["Upgrade", "upgrade", "UPGRADE"]), st.sampled_from(["Connection", "connection"])),
    query=st.sampled_from(["", "?", "?token=a%20b", "?a=1&b=/ws"]),
)
def test_route_takes_any_spelling_of_a_handshake(
    upgrade: str, before: list[str], token: str, names: tuple[str, str], query: str
) -> None:
    connection = ", ".join([*before, token])
    data = head(
        f"GET /ws{query} HTTP/1.1".encode(),
        f"{names[0]}: {upgrade}".encode(),
        f"{names[1]}: {connection}".encode(),
        KEY.rstrip(),
    )
    assert route(data, "/ws") is Route.WEBSOCKET


@given(st.binary(max_size=300))
def test_route_never_fails_on_any_bytes(data: bytes) -> None:
    assert isinstance(route(data, "/ws"), Route)
    assert isinstance(route(UPGRADE[:40] + data, "/ws"), Route)


async def test_replay_stream_hands_out_what_was_read_then_reads_on() -> None:
    ours, theirs = trio.socket.socketpair()
    stream, peer = trio.SocketStream(ours), trio.SocketStream(theirs)
    replay = ReplayStream(stream, b"abcdef")
    assert replay.socket is stream.socket  # the transports write to it directly
    await peer.send_all(b"gh")
    assert await replay.receive_some(4) == b"abcd"
    assert await replay.receive_some() == b"ef"
    assert await replay.receive_some(10) == b"gh"
    await replay.send_all(b"ij")
    await replay.send_eof()
    assert await peer.receive_some(10) == b"ij"
    assert await peer.receive_some(10) == b""
    await replay.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await replay.receive_some(1)
    await peer.aclose()


# --- through App.serve -------------------------------------------------------------------

#: App.serve routes (its fallback, hypercorn alone, serves everything: MODELENCE_TRIO_PUBLIC_API=1).
routed = pytest.mark.skipif(
    _hypercorn.connection_server_problem() is not None, reason="App.serve is on hypercorn alone (the fallback)"
)


def answer(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {"echo": args}


def make_app(tmp_path: Path, **config: Any) -> App:
    (tmp_path / "index.html").write_text("<h1>hi</h1>")
    chat: ServerChannel[Any] = ServerChannel("chat")
    settings = {"heartbeat_interval": None, **config}
    return App([Module("m", channels=[chat], queries={"q": answer})], config=HubConfig(**settings), static_dir=tmp_path)


@pytest.fixture
async def served(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[tuple[App, int]]:
    app = make_app(tmp_path, handshake_timeout=0.5)
    urls = await nursery.start(app.serve, "127.0.0.1", 0)
    yield app, int(urls[0].rsplit(":", 1)[1])


async def responses(stream: trio.abc.Stream, count: int, method: bytes = b"GET") -> list[tuple[int, bytes]]:
    """Read ``count`` HTTP responses from ``stream`` (h11 parses them): status and body."""
    client = h11.Connection(h11.CLIENT)
    found: list[tuple[int, bytes]] = []
    with trio.fail_after(10):
        while len(found) < count:
            # h11 needs a request it sent to parse each response: a stand-in of the method sent.
            client.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
            client.send(h11.EndOfMessage())
            status, body = 0, b""
            while True:
                event = client.next_event()
                if event is h11.NEED_DATA:
                    client.receive_data(bytes(await stream.receive_some(65536)))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    break
            found.append((status, body))
            if len(found) < count:
                client.start_next_cycle()
    return found


async def until_closed(stream: trio.SocketStream, timeout: float = 10) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    with trio.fail_after(timeout):
        try:
            while data := await stream.receive_some(65536):
                received += data
        except trio.BrokenResourceError:  # reset: closed with our bytes unread
            pass
    return received


def expected_transport() -> type[Any]:
    """The transport App.serve's WebSockets to the endpoint get."""
    if _hypercorn.connection_server_problem() is not None:
        return AsgiTransport  # hypercorn alone
    return FastTransport if _trio_websocket.ENABLED else PublicTransport


async def test_a_websocket_to_the_endpoint_is_served_by_the_fast_transport(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    app = make_app(tmp_path)
    urls = await serve_app(nursery, app, "app")
    client = await RawClient.connect(urls[0].replace("http", "ws") + "/ws?x=1")
    assert json.loads(client.texts[0])["type"] == "welcome"
    assert [type(conn.transport) for conn in app.hub._connections] == [expected_transport()]
    # On the wire: hypercorn names itself in its 101, trio-websocket does not.
    server = dict(client.accepted.extra_headers).get(b"server")
    if expected_transport() is AsgiTransport:
        assert server == b"hypercorn-h11"
    else:
        assert server is None
        assert app.hub.counters.accepted == 1
    # Under hypercorn alone (what plain `hypercorn` runs) the same app is served over ASGI.
    (tmp_path / "other").mkdir()
    other = make_app(tmp_path / "other")
    other_urls = await serve_app(nursery, other, "hypercorn")
    client = await RawClient.connect(other_urls[0].replace("http", "ws") + "/ws")
    assert [type(conn.transport) for conn in other.hub._connections] == [AsgiTransport]
    assert dict(client.accepted.extra_headers).get(b"server") == b"hypercorn-h11"


async def test_app_serve_falls_back_to_hypercorn_alone_with_one_warning(
    nursery: trio.Nursery, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_hypercorn, "_warned", False)
    _hypercorn.ENABLED = False  # as MODELENCE_TRIO_PUBLIC_API=1 (conftest turns it back on)
    assert _hypercorn.connection_server_problem() == "MODELENCE_TRIO_PUBLIC_API is set"
    app = make_app(tmp_path)
    urls = await nursery.start(app.serve, "127.0.0.1", 0)
    for _ in range(2):
        client = await RawClient.connect(urls[0].replace("http", "ws") + "/ws")
        assert dict(client.accepted.extra_headers).get(b"server") == b"hypercorn-h11"
    assert {type(conn.transport) for conn in app.hub._connections} == {AsgiTransport}
    warnings = [r.getMessage() for r in caplog.records if "fast path off" in r.getMessage()]
    assert len(warnings) == 1 and "MODELENCE_TRIO_PUBLIC_API" in warnings[0]


@pytest.mark.parametrize("transport", ["app", "hypercorn"])
async def test_http_keep_alive_pipelining_and_a_body_after_the_head(
    nursery: trio.Nursery, tmp_path: Path, transport: str
) -> None:
    app = make_app(tmp_path)
    port = int((await serve_app(nursery, app, transport))[0].rsplit(":", 1)[1])
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        # Two requests, one after the other on one connection.
        for _ in range(2):
            await stream.send_all(head(b"GET /healthz HTTP/1.1"))
            assert await responses(stream, 1) == [(200, b'{"status":"ok"}')]
        # A method call whose head comes in pieces and whose body comes later.
        body = json.dumps({"args": {"n": 1}}).encode()
        call = head(
            b"POST /api/_internal/method/m.q HTTP/1.1",
            b"Content-Type: application/json",
            b"Content-Length: %d" % len(body),
        )
        for piece in (call[:3], call[3:30], call[30:]):
            await stream.send_all(piece)
            await trio.sleep(0.05)
        await trio.sleep(0.2)
        await stream.send_all(body)
        [(status, reply)] = await responses(stream, 1, b"POST")
        assert (status, json.loads(reply)) == (200, {"data": {"echo": {"n": 1}}})
        # Three pipelined in one write: the index page, the WebSocket path as plain HTTP, and /readyz.
        await stream.send_all(head(b"GET / HTTP/1.1") + head(b"GET /ws HTTP/1.1") + head(b"GET /readyz HTTP/1.1"))
        found = await responses(stream, 3)
        assert [status for status, _ in found] == [200, 404, 200]
        assert found[0][1] == b"<h1>hi</h1>"
    assert app.hub.statistics().connections == 0


#: Requests App.serve hands to hypercorn: each answered as hypercorn alone answers it.
HYPERCORN_REQUESTS = [
    head(b"GET /elsewhere HTTP/1.1", *WS, KEY.rstrip()),  # a WebSocket to another path: 1008 before accepting
    head(b"GET /ws HTTP/1.1"),  # the endpoint's path, without the upgrade
    head(b"DELETE /healthz HTTP/1.1"),
    head(b"HEAD /healthz HTTP/1.1"),
    head(b"GET /healthz HTTP/1.1", b"X-Pad: " + b"a" * (MAX_HEAD + 100)),  # too large, for hypercorn
    head(b"GET /w%73 HTTP/1.1", b"Upgrade: websocket", b"Connection: Upgrade"),  # no key: not a valid handshake
    b"hello\r\n\r\n",
    head(b"GET /healthz HTTP/1.0"),
]


@pytest.mark.parametrize("request_bytes", HYPERCORN_REQUESTS, ids=[repr(r[:40]) for r in HYPERCORN_REQUESTS])
async def test_other_requests_get_what_hypercorn_alone_gives(
    nursery: trio.Nursery, tmp_path: Path, request_bytes: bytes
) -> None:
    answers = []
    for transport in ("app", "hypercorn"):
        app = make_app(tmp_path)
        port = int((await serve_app(nursery, app, transport))[0].rsplit(":", 1)[1])
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(request_bytes)
            with trio.move_on_after(2):  # keep-alive ones stay open
                received = b""
                while b"\r\n\r\n" not in received and (data := await stream.receive_some(65536)):
                    received += data
        answers.append(received.split(b"\r\n", 1)[0])
    assert answers[0] == answers[1]
    assert answers[0].startswith(b"HTTP/1.1 4") or answers[0].startswith(b"HTTP/1.1 2")


@pytest.mark.parametrize("transport", ["app", "hypercorn"])
async def test_a_stalled_http_request_is_closed_after_the_read_timeout(
    nursery: trio.Nursery, tmp_path: Path, transport: str
) -> None:
    app = make_app(tmp_path, heartbeat_interval=1.0, heartbeat_timeout=0.5, close_timeout=0.5)  # read_timeout: 2 s
    port = int((await serve_app(nursery, app, transport))[0].rsplit(":", 1)[1])
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(head(b"POST /api/_internal/method/m.q HTTP/1.1", b"Content-Length: 100") + b"{")
        start = time.monotonic()
        await until_closed(stream)
        assert 1.5 < time.monotonic() - start < 5  # not request_timeout's 30 s


@routed
async def test_a_head_that_never_finishes_is_closed_after_the_handshake_timeout(served: tuple[App, int]) -> None:
    app, port = served  # handshake_timeout=0.5
    for first in (b"", b"GET /ws HTTP/1.1\r\nHost: x\r\n", b"GET"):
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            start = time.monotonic()
            await stream.send_all(first)
            assert await until_closed(stream) == b""
            assert 0.4 < time.monotonic() - start < 3
    # One byte every 0.1 s: the bound is on the whole head, not on each read.
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        start = time.monotonic()
        with trio.move_on_after(3):
            try:
                for byte in UPGRADE[:-4]:
                    await stream.send_all(bytes([byte]))
                    await trio.sleep(0.1)
            except trio.BrokenResourceError:
                pass
        assert await until_closed(stream) == b""
        assert time.monotonic() - start < 1.5
    assert app.hub.counters.accepted == 0


@routed
async def test_an_oversized_head_is_refused_with_431_and_the_server_goes_on(served: tuple[App, int]) -> None:
    _, port = served
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        await stream.send_all(b"X-Pad: " + b"a" * MAX_HEAD + b"\r\n")
        received = await until_closed(stream)
    assert received.startswith(b"HTTP/1.1 431 ")
    assert received.endswith(b"\r\n\r\nrequest head too large")
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(UPGRADE)
        assert b" 101 " in (await stream.receive_some(65536)).split(b"\r\n", 1)[0]


async def test_websockets_on_both_paths_count_in_the_connection_limit(nursery: trio.Nursery, tmp_path: Path) -> None:
    app = make_app(tmp_path, max_connections=2)
    url = (await nursery.start(app.serve, "127.0.0.1", 0))[0].replace("http", "ws")
    fast = await RawClient.connect(url + "/ws")  # routed: the fast transport
    asgi = await RawClient.connect(url + "/w%73")  # hypercorn's: the same endpoint, over ASGI
    transports = {type(conn.transport) for conn in app.hub._connections}
    assert transports == {expected_transport(), AsgiTransport}
    for path in ("/ws", "/w%73"):
        refused = await RawClient.connect(url + path, welcome=False)
        await refused.read_until(lambda: refused.rejected is not None)  # noqa: B023
        assert refused.rejected.status_code == 503
    assert app.hub.statistics().connections == 2
    assert not (fast.eof or asgi.eof)


@routed  # hypercorn alone cancels its TCP connections outright
async def test_cancelling_app_serve_closes_its_websockets_and_leaves_a_shared_hub_running(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    app = make_app(tmp_path)
    await nursery.start(app.hub.run)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as server:
            urls = await server.start(app.serve, "127.0.0.1", 0)
            client = await RawClient.connect(urls[0].replace("http", "ws") + "/ws")
            nursery.start_soon(client.read_until, lambda: client.eof)  # answers the close
            start = time.monotonic()
            scope.cancel()
    assert time.monotonic() - start < 3
    with trio.fail_after(5):
        while not client.eof:
            await trio.sleep(0.01)
    assert client.closes == [1001]
    assert app.hub.running and app.hub.statistics().connections == 0
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", int(urls[0].rsplit(":", 1)[1]))


async def test_the_shutdown_trigger_drains_fast_websockets_then_stops_at_once(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    app = make_app(tmp_path)
    stop, stopped = trio.Event(), trio.Event()

    async def serve(task_status: trio.TaskStatus[list[str]]) -> None:
        await app.serve("127.0.0.1", 0, shutdown_trigger=stop.wait, task_status=task_status)
        stopped.set()

    urls = await nursery.start(serve)
    import trio_websocket

    async with trio_websocket.open_websocket_url(urls[0].replace("http", "ws") + "/ws") as ws:
        await receive_json(ws)
        idle = await trio.open_tcp_stream("127.0.0.1", int(urls[0].rsplit(":", 1)[1]))
        await idle.send_all(head(b"GET /healthz HTTP/1.1"))  # then idle, kept alive
        assert await responses(idle, 1) == [(200, b'{"status":"ok"}')]
        start = time.monotonic()
        stop.set()
        await expect_close(ws, 1001, timeout=5)
        with trio.fail_after(3):
            await stopped.wait()
        assert time.monotonic() - start < 1.5  # nothing queued, no drain delay: nothing to wait for
        assert await until_closed(idle) == b""  # the idle keep-alive connection is closed too


async def test_a_unix_metrics_bind(nursery: trio.Nursery, tmp_path: Path) -> None:
    path = tmp_path / "metrics.sock"
    app = make_app(tmp_path)
    app.metrics = MetricsEndpoint(bind=f"unix:{path}")
    main, metrics = await nursery.start(app.serve, "127.0.0.1", 0)
    assert metrics == f"http://unix:{path}"
    found = []
    for request in (head(b"GET /metrics HTTP/1.1"), head(b"GET /ws HTTP/1.1", *WS, KEY.rstrip())):
        async with await trio.open_unix_socket(str(path)) as stream:
            await stream.send_all(request)
            found += await responses(stream, 1)
    [(status, body), (refused, _)] = found
    assert status == 200 and b"modelence_ready 1.0" in body
    assert refused == 403  # no WebSocket there (1008 before accepting)
    port = int(main.rsplit(":", 1)[1])
    async with await trio.open_tcp_stream("127.0.0.1", port) as tcp:
        await tcp.send_all(head(b"GET /metrics HTTP/1.1"))
        assert (await responses(tcp, 1))[0][0] == 404  # only on the metrics bind


async def test_a_busy_metrics_bind_fails_at_once_naming_it(nursery: trio.Nursery, tmp_path: Path) -> None:
    app = make_app(tmp_path)
    with trio.socket.socket() as busy:
        await busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = f"127.0.0.1:{busy.getsockname()[1]}"
        app.metrics = MetricsEndpoint(bind=taken)
        with pytest.raises(OSError) as info:  # unwrapped, as for the app's own port
            await nursery.start(partial(app.serve, "127.0.0.1", 0))
    assert info.value.filename == taken
    assert not app.hub.running
