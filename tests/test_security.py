"""Issue 12: origins checked, methods hardened, limits that hold under abuse."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket

from modelence_trio import App, HubConfig, Identity, MemoryAuthenticator, MethodContext, Module, ServerChannel, User
from modelence_trio._origins import origin_allowed, validate_origins

from .helpers import ALL_PATHS, TRANSPORTS, RawClient, receive_json, start_server
from .test_app import http

# --- the origin policy, sans-IO -----------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "ok"),
    [
        ("http://127.0.0.1:8000", "127.0.0.1:8000", (), True),  # the server's own origin
        ("http://127.0.0.1:8000", "127.0.0.1:9000", (), False),
        ("http://evil.example", "127.0.0.1:8000", (), False),
        ("null", "127.0.0.1:8000", (), False),
        ("null", "127.0.0.1:8000", ("https://app.example.com",), False),
        ("HTTPS://App.Example.com", "x", ("https://app.example.com",), True),
        ("https://app.example.com", "x", ("https://*.example.com",), True),
        ("https://a.b.example.com", "x", ("https://*.example.com",), True),
        ("https://example.com", "x", ("https://*.example.com",), False),  # the apex is not a subdomain
        ("https://evilexample.com", "x", ("https://*.example.com",), False),
        ("https://example.com.evil.io", "x", ("https://*.example.com",), False),
        ("http://app.example.com", "x", ("https://*.example.com",), False),  # the scheme counts
        ("https://app.example.com:8443", "x", ("https://*.example.com",), False),  # so does the port
        ("https://app.example.com:8443", "x", ("https://*.example.com:8443",), True),
        ("null", "x", ("*",), True),
        ("http://evil.example", "x", ("*",), True),
    ],
)
def test_origin_policy(origin: str, host: str, allowed: tuple[str, ...], ok: bool) -> None:
    assert origin_allowed(origin, host, validate_origins(allowed)) is ok


@pytest.mark.parametrize("bad", ["example.com", "ftp://example.com", "https://ex*ample.com", "https://a.com/path"])
def test_bad_allowed_origins_are_refused_with_a_clear_error(bad: str) -> None:
    with pytest.raises(ValueError, match="allowed origin"):
        HubConfig(allowed_origins=(bad,))


# --- the origin policy at the handshake, on both transports --------------------------


def _auth() -> MemoryAuthenticator:
    auth = MemoryAuthenticator()
    auth.add("cookie-token-123", User("1", "ann"))
    return auth


async def _handshake(url: str, nursery: trio.Nursery, headers: list[tuple[str, str]]) -> int:
    """The HTTP status of a WebSocket handshake with these headers (101: accepted)."""
    extra = [(name.encode(), value.encode()) for name, value in headers]
    try:
        async with trio_websocket.open_websocket_url(url, extra_headers=extra) as ws:
            await receive_json(ws)
    except trio_websocket.ConnectionRejected as exc:
        return exc.status_code
    return 101


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_cross_site_handshakes_are_refused(nursery: trio.Nursery, transport: str) -> None:
    url, _ = await start_server(nursery, transport, [ServerChannel("chat")], authenticator=_auth())
    own = url.replace("ws://", "http://").removesuffix("/ws")
    cookie = ("Cookie", "authToken=cookie-token-123")
    assert await _handshake(url, nursery, [cookie, ("Origin", "http://evil.example")]) == 403
    assert await _handshake(url, nursery, [cookie, ("Origin", "null")]) == 403
    assert await _handshake(url, nursery, [cookie, ("Origin", own)]) == 101
    assert await _handshake(url, nursery, [cookie]) == 101  # not a browser: no Origin


@pytest.mark.parametrize("transport", ALL_PATHS)
async def test_a_browser_learns_of_a_refused_token_from_a_close_frame(nursery: trio.Nursery, transport: str) -> None:
    # A page cannot read a refused handshake's HTTP status: with an Origin (a
    # browser) a bad token is accepted and closed at once with 4001 and the
    # reason, before any other frame; without one, it is still HTTP 401.
    url, hub = await start_server(nursery, transport, [ServerChannel("chat")], authenticator=_auth())
    own = url.replace("ws://", "http://").removesuffix("/ws")
    page = await RawClient.connect(url + "?token=nope", headers=[("Origin", own)], welcome=False)
    await page.read_until(lambda: page.closes or page.eof)
    assert page.accepted is not None and page.texts == []
    assert (page.closes, page.close_reasons) == ([4001], ["invalid or expired token"])
    program = await RawClient.connect(url + "?token=nope", welcome=False)
    await program.read_until(lambda: program.rejected is not None or program.eof)
    assert program.rejected is not None and program.rejected.status_code == 401 and program.closes == []
    assert hub.statistics().connections == 0


async def test_a_refused_browser_socket_counts_in_the_limits_until_closed(nursery: trio.Nursery) -> None:
    # A page whose token is refused gets an accepted socket closed with 4001;
    # if it never answers the close, that socket holds its place in the
    # per-address limit until close_timeout, like any other.
    config = HubConfig(max_connections_per_address=1, close_timeout=1.0)
    url, _ = await start_server(
        nursery, "trio-websocket", [ServerChannel("chat")], authenticator=_auth(), config=config
    )
    own = url.replace("ws://", "http://").removesuffix("/ws")
    silent = await RawClient.connect(url + "?token=nope", headers=[("Origin", own)], welcome=False)  # never reads
    await trio.sleep(0.2)
    assert await _handshake(url, nursery, []) == 429  # the refused socket still holds the address's place
    await trio.sleep(1.5)  # close_timeout passed: the place is free
    assert await _handshake(url, nursery, []) == 101
    await silent.stream.aclose()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_allowed_origins_are_configurable(nursery: trio.Nursery, transport: str) -> None:
    config = HubConfig(allowed_origins=("https://*.example.com",))
    url, _ = await start_server(nursery, transport, [ServerChannel("chat")], config=config)
    assert await _handshake(url, nursery, [("Origin", "https://app.example.com")]) == 101
    assert await _handshake(url, nursery, [("Origin", "https://example.com.evil.io")]) == 403


# --- per-address connection limit --------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_connections_per_address_are_limited(nursery: trio.Nursery, transport: str) -> None:
    config = HubConfig(max_connections_per_address=2, heartbeat_interval=None)
    url, hub = await start_server(nursery, transport, [ServerChannel("chat")], config=config)
    first = await trio_websocket.connect_websocket_url(nursery, url)
    second = await trio_websocket.connect_websocket_url(nursery, url)
    for ws in (first, second):
        await receive_json(ws)
    assert await _handshake(url, nursery, []) == 429
    await first.aclose()
    with trio.fail_after(10):
        while hub.statistics().connections > 1:
            await trio.sleep(0.01)
    assert await _handshake(url, nursery, []) == 101  # a place is free again


# --- methods ---------------------------------------------------------------------------


def whoami(args: dict[str, Any], ctx: MethodContext) -> Any:
    return ctx.user.handle if ctx.user else None


async def _app(nursery: trio.Nursery, tmp_path: Path | None = None, **options: Any) -> str:
    auth = MemoryAuthenticator()
    auth.add("cookie-token-123", User("1", "ann"))
    app = App([Module("t", queries={"whoami": whoami})], authenticator=auth, static_dir=tmp_path, **options)
    urls = await nursery.start(app.serve, "127.0.0.1", 0)
    return str(urls[0])


async def test_methods_accept_a_bearer_token(nursery: trio.Nursery) -> None:
    base = await _app(nursery)
    url = base + "/api/_internal/method/t.whoami"
    reply = await http(url, {"args": {}}, headers={"Authorization": "Bearer cookie-token-123"})
    assert (reply.status, reply.json()) == (200, {"data": "ann"})
    # The header wins over the body, and a bad one is never a silent anonymous call.
    reply = await http(url, {"args": {}, "authToken": "cookie-token-123"}, headers={"Authorization": "Bearer nope"})
    assert reply.status == 401
    reply = await http(url, {"args": {}}, headers={"Authorization": "Basic abc"})
    assert reply.status == 401


async def test_methods_refuse_cookie_calls_from_other_origins(nursery: trio.Nursery) -> None:
    base = await _app(nursery)
    url = base + "/api/_internal/method/t.whoami"
    cookie = {"Cookie": "authToken=cookie-token-123"}
    reply = await http(url, {"args": {}}, headers={**cookie, "Origin": "http://evil.example"})
    assert reply.status == 403
    assert reply.headers["x-modelence-error-code"] == "origin_not_allowed"
    reply = await http(url, {"args": {}}, headers={**cookie, "Origin": base})
    assert (reply.status, reply.json()) == (200, {"data": "ann"})
    # An explicit token is the caller's own: no cookie, no cross-site risk.
    reply = await http(url, {"args": {}, "authToken": "cookie-token-123"}, headers={"Origin": "http://evil.example"})
    assert (reply.status, reply.json()) == (200, {"data": "ann"})


@pytest.mark.parametrize(
    ("raw", "code"),
    [(b"[" * 100_000, "too_deep"), (b'{"args": {"n": ' + b"9" * 5000 + b"}}", "invalid_request")],
)
async def test_hostile_bodies_get_400_without_a_traceback(
    nursery: trio.Nursery, raw: bytes, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    base = await _app(nursery)
    reply = await http(base + "/api/_internal/method/t.whoami", raw=raw)
    assert reply.status == 400
    assert reply.headers["x-modelence-error-code"] == code
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_methods_are_rate_limited_per_caller(nursery: trio.Nursery) -> None:
    base = await _app(nursery, methods_per_second=5)
    url = base + "/api/_internal/method/t.whoami"
    statuses = [(await http(url, {"args": {}})).status for _ in range(10)]  # a burst of 2 x 5
    assert statuses == [200] * 10
    reply = await http(url, {"args": {}})
    assert reply.status == 429
    assert int(reply.headers["retry-after"]) >= 1
    # Another caller (a signed-in user) has its own budget.
    reply = await http(url, {"args": {}}, headers={"Authorization": "Bearer cookie-token-123"})
    assert reply.status == 200


async def test_a_body_that_never_finishes_gets_408(nursery: trio.Nursery) -> None:
    base = await _app(nursery, request_timeout=0.5)
    port = int(base.rsplit(":", 1)[1])
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        b"POST /api/_internal/method/t.whoami HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    with trio.fail_after(10):
        answer = await stream.receive_some(4096)
    assert answer.startswith(b"HTTP/1.1 408")


# --- static files ----------------------------------------------------------------------


async def test_static_files_are_hardened(nursery: trio.Nursery, tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<h1>hi</h1>")
    (tmp_path / ".env").write_text("SECRET=1")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("[core]")
    big = bytes(range(256)) * 8192  # 2 MiB, sent in chunks
    (tmp_path / "big.bin").write_bytes(big)
    base = await _app(nursery, tmp_path)
    for path in ["/%00", "/" + "a" * 301, "/.env", "/.git/config", "/a/../.env", "/%2e%65nv"]:
        reply = await http(base + path, method="GET")
        assert reply.status == 404, path
        assert reply.headers["x-content-type-options"] == "nosniff"
    reply = await http(base + "/big.bin", method="GET")
    assert reply.status == 200 and reply.body == big
    assert reply.headers["content-length"] == str(len(big))
    assert reply.headers["x-content-type-options"] == "nosniff"
    etag = reply.headers["etag"]
    assert "last-modified" in reply.headers
    reply = await http(base + "/", method="GET", headers={"If-None-Match": etag})
    assert reply.status == 200  # another file, another tag
    reply = await http(base + "/big.bin", method="GET", headers={"If-None-Match": etag})
    assert reply.status == 304 and reply.body == b""
    method_reply = await http(base + "/api/_internal/method/t.whoami", {"args": {}})
    assert method_reply.headers["x-content-type-options"] == "nosniff"


# --- tokens never reach the log ----------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_tokens_never_reach_the_log(
    nursery: trio.Nursery, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url, _ = await start_server(nursery, transport, [ServerChannel("chat")], authenticator=_auth())
    # A wsproto client, which logs nothing: every record is the server's.
    assert await _quiet_handshake(url + "?token=cookie-token-123", []) == 101
    assert await _quiet_handshake(url + "?token=wrong-token-456", []) == 401
    assert await _quiet_handshake(url, [(b"Authorization", b"Bearer wrong-token-789")]) == 401
    text = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert caplog.records  # the server did log (connections opened and refused)
    for secret in ("cookie-token-123", "wrong-token-456", "wrong-token-789"):
        assert secret not in text


async def _quiet_handshake(url: str, headers: list[tuple[bytes, bytes]]) -> int:
    from urllib.parse import urlsplit

    import wsproto
    from wsproto.events import AcceptConnection, RejectConnection, Request

    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    async with await trio.open_tcp_stream(parts.hostname, parts.port) as stream:
        client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        await stream.send_all(client.send(Request(host=parts.netloc, target=target, extra_headers=headers)))
        with trio.fail_after(10):
            while True:
                data = await stream.receive_some(65536)
                assert data, "the server closed without answering"
                client.receive_data(data)
                for event in client.events():
                    if isinstance(event, AcceptConnection):
                        return 101
                    if isinstance(event, RejectConnection):
                        return event.status_code


# --- sessions whose user changes while connected ----------------------------------------


class _Directory:
    """An authenticator whose users' roles (and existence) change under it."""

    def __init__(self) -> None:
        self.roles: dict[str, tuple[str, ...]] = {"t-ann": ("member",), "t-bob": ("member",)}

    async def authenticate(self, token: str) -> Identity | None:
        if token not in self.roles:
            return None
        return Identity(User(token, token.removeprefix("t-")), {"token": token}, self.roles[token])

    async def check(self, identity: Identity) -> bool | Identity:
        token = identity.session["token"]
        if token not in self.roles:
            return Identity(None, identity.session, ())  # the user is gone
        return Identity(identity.user, identity.session, self.roles[token])


async def test_role_changes_while_connected_are_applied(autojump_clock: trio.testing.MockClock) -> None:
    from modelence_trio import Hub
    from modelence_trio.testing import open_memory_server

    members = ServerChannel("members", can_access=lambda ctx: "member" in ctx.roles)
    lobby = ServerChannel("lobby")
    directory = _Directory()
    hub = Hub([members, lobby], authenticator=directory, config=HubConfig(session_check_interval=10))
    async with open_memory_server(hub) as server, trio.open_nursery() as nursery:
        ann = await server.dial(nursery, [(b"Authorization", b"Bearer t-ann")])
        bob = await server.dial(nursery, [(b"Authorization", b"Bearer t-bob")])
        for ws in (ann, bob):
            await receive_json(ws)
            for channel in ("members:1", "lobby:1"):
                await ws.send_message(f'{{"type":"join","channel":"{channel}"}}')
                assert (await receive_json(ws))["type"] == "joined"
        directory.roles["t-ann"] = ()  # ann is no longer a member
        del directory.roles["t-bob"]  # bob's account is gone
        assert await receive_json(ann, timeout=30) == {
            "type": "left",
            "channel": "members:1",
            "reason": "access revoked",
        }
        try:
            await bob.get_message()
        except trio_websocket.ConnectionClosed as exc:
            assert exc.reason is not None and exc.reason.code == 4001
        else:
            raise AssertionError("bob should have been closed")
        members.broadcast("1", "members only")
        lobby.broadcast("1", "everyone")
        assert (await receive_json(ann))["data"] == "everyone"  # still joined where allowed
        nursery.cancel_scope.cancel()


# --- open files ---------------------------------------------------------------------


def test_max_connections_is_clamped_below_the_open_file_limit(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from modelence_trio import _resources

    caplog.set_level("INFO", logger="modelence_trio")
    monkeypatch.setattr(_resources, "raise_open_file_limit", lambda: 1024)
    assert _resources.connection_limit(10_000) == 1024 - _resources.DESCRIPTOR_RESERVE
    assert _resources.connection_limit(500) == 500
    warnings = [r.getMessage() for r in caplog.records if "open files" in r.getMessage()]
    assert len(warnings) == 1 and "960" in warnings[0]
    # Unclamped, the start-up still says how many connections it can hold.
    said = [r.getMessage() for r in caplog.records if "open-file limit" in r.getMessage()]
    assert said == ["open-file limit 1024: room for 960 connections; serving at most 500 (max_connections)"]


def test_the_soft_open_file_limit_is_raised_to_the_hard_one() -> None:
    import resource

    from modelence_trio._resources import raise_open_file_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        assert raise_open_file_limit() == (None if hard == resource.RLIM_INFINITY else hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_accept_errors_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    from modelence_trio._resources import quiet_accept_errors

    quiet_accept_errors()
    quiet_accept_errors()  # idempotent: one filter
    accept_log = logging.getLogger("trio.serve_listeners")
    for _ in range(100):
        accept_log.error("accept returned %s (%s); retrying in %s seconds", "EMFILE", "Too many open files", 0.1)
    assert len([r for r in caplog.records if r.name == "trio.serve_listeners"]) <= 1


def test_the_cli_adds_allowed_origins_and_names_a_bad_one() -> None:
    from modelence_trio._cli import allow_origins
    from modelence_trio._startup import StartupError

    app = App([Module("t", queries={"whoami": whoami})])
    allow_origins(app, ["", " https://app.example.com ", "https://*.example.org"])
    assert app.hub.config.allowed_origins == ("https://app.example.com", "https://*.example.org")
    with pytest.raises(StartupError, match=r"allowed origin 'app\.example\.com'"):
        allow_origins(app, ["app.example.com"])
    assert app.hub.config.allowed_origins == ("https://app.example.com", "https://*.example.org")


async def test_a_failing_authenticator_does_not_log_the_token(caplog: pytest.LogCaptureFixture) -> None:
    from modelence_trio import Hub
    from modelence_trio.protocol import HandshakeRejected

    class Failing:
        async def authenticate(self, token: str) -> Identity | None:
            raise KeyError(token)  # an authenticator's own error may well quote it

    hub = Hub([ServerChannel("chat")], authenticator=Failing())
    with pytest.raises(HandshakeRejected) as info:
        await hub.identify("secret-token-42")
    assert info.value.status == 503
    text = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "KeyError" in text and "authenticate" in text  # where it failed is logged
    assert "secret-token-42" not in text


class _SlowAuthenticator:
    """Takes its time, so that handshakes arriving together overlap."""

    async def authenticate(self, token: str) -> Identity | None:
        await trio.sleep(1.0)
        return Identity(User(token, token), None, ())


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_simultaneous_handshakes_cannot_pass_the_limits_together(nursery: trio.Nursery, transport: str) -> None:
    config = HubConfig(max_connections=3, max_connections_per_address=None, heartbeat_interval=None)
    url, _ = await start_server(
        nursery, transport, [ServerChannel("chat")], authenticator=_SlowAuthenticator(), config=config
    )
    statuses: list[int] = []

    async def one(n: int) -> None:
        statuses.append(await _quiet_handshake(url, [(b"Authorization", f"Bearer u{n}".encode())]))

    async with trio.open_nursery() as handshakes:
        for n in range(20):
            handshakes.start_soon(one, n)
    assert sorted(statuses) == [101] * 3 + [503] * 17
    per_address = HubConfig(max_connections_per_address=2, heartbeat_interval=None)
    url, _ = await start_server(
        nursery, transport, [ServerChannel("chat")], authenticator=_SlowAuthenticator(), config=per_address
    )
    statuses.clear()
    async with trio.open_nursery() as handshakes:
        for n in range(10):
            handshakes.start_soon(one, n)
    assert sorted(statuses) == [101] * 2 + [429] * 8


async def test_a_handshake_under_way_when_its_server_stops_is_refused(nursery: trio.Nursery) -> None:
    from modelence_trio import Hub, serve_websocket

    hub = Hub([ServerChannel("chat")], config=HubConfig(heartbeat_interval=None))
    await nursery.start(hub.run)  # shared: the server does not own it
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as server:
            port = await server.start(serve_websocket, hub, "127.0.0.1", 0)
            stream = await trio.open_tcp_stream("127.0.0.1", port)  # connected, handshake not sent yet
            await trio.sleep(0.1)
            scope.cancel()
            import wsproto
            from wsproto.events import RejectConnection, Request

            client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
            await stream.send_all(client.send(Request(host=f"127.0.0.1:{port}", target="/ws")))
            status = None
            with trio.CancelScope(shield=True), trio.fail_after(5):
                while status is None:
                    data = await stream.receive_some(65536)
                    assert data, "closed without an answer"
                    client.receive_data(data)
                    for event in client.events():
                        if isinstance(event, RejectConnection):
                            status = event.status_code
            assert status == 503
    assert hub.running and hub.statistics().connections == 0
