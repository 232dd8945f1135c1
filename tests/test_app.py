"""The App over real HTTP (hypercorn): methods, the served client, static files,
and the errors an app author gets for a bad declaration."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from modelence_trio import (
    App,
    HubConfig,
    MemoryAuthenticator,
    MethodContext,
    MethodError,
    Module,
    ServerChannel,
    User,
)


@attrs.frozen
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


def _http(url: str, data: bytes | None, headers: dict[str, str], method: str) -> Reply:
    req = urllib.request.Request(url, data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return Reply(response.status, response.read(), {k.lower(): v for k, v in response.headers.items()})
    except urllib.error.HTTPError as error:
        return Reply(error.code, error.read(), {k.lower(): v for k, v in error.headers.items()})


async def http(
    url: str,
    body: object = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> Reply:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": "application/json", **(headers or {})}
    return await trio.to_thread.run_sync(_http, url, data, headers, method)


calls: list[tuple[dict[str, Any], MethodContext]] = []


def greet(args: dict[str, Any], ctx: MethodContext) -> dict[str, Any]:
    calls.append((args, ctx))
    if not isinstance(args.get("name"), str):
        raise MethodError("'name' must be a string")
    return {"hello": args["name"], "user": ctx.user.handle if ctx.user else None, "roles": list(ctx.roles)}


async def slow_sum(args: dict[str, Any], ctx: MethodContext) -> int:
    await trio.sleep(0)
    return sum(args["numbers"])


def broken(args: dict[str, Any], ctx: MethodContext) -> None:
    raise RuntimeError("secret internals")


@pytest.fixture
async def base(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[str]:
    (tmp_path / "index.html").write_text("<h1>hi</h1>")
    (tmp_path / "app.js").write_text("console.log(1)")
    auth = MemoryAuthenticator()
    auth.add("alice-token", User("1", "alice"), roles=["staff"])
    auth.add("bob-token", User("2", "bob"))
    module = Module("demo", mutations={"greet": greet, "broken": broken}, queries={"sum": slow_sum})
    app = App(
        [module],
        authenticator=auth,
        config=HubConfig(authenticated_roles=["user"], anonymous_roles=["guest"]),
        static_dir=tmp_path,
        max_request_size=1000,
    )
    urls = await nursery.start(app.serve, "127.0.0.1", 0)
    calls.clear()
    yield urls[0]


async def test_a_good_call(base: str) -> None:
    reply = await http(f"{base}/api/_internal/method/demo.greet", {"args": {"name": "x"}, "authToken": "bob-token"})
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == {"data": {"hello": "x", "user": "bob", "roles": ["user"]}}


async def test_async_query_and_anonymous_caller(base: str) -> None:
    reply = await http(f"{base}/api/_internal/method/demo.sum", {"args": {"numbers": [1, 2, 3]}})
    assert reply.json() == {"data": 6}
    await http(f"{base}/api/_internal/method/demo.greet", {"args": {"name": "x"}, "clientInfo": {"w": 1}})
    _, ctx = calls[-1]
    assert ctx.user is None
    assert ctx.roles == ("guest",)
    assert ctx.client_info == {"w": 1}
    assert ctx.method == "demo.greet"


async def test_validation_error_is_400_with_code(base: str) -> None:
    reply = await http(f"{base}/api/_internal/method/demo.greet", {"args": {"name": 5}})
    assert reply.status == 400
    assert reply.body == b"'name' must be a string"
    assert reply.headers["x-modelence-error-code"] == "invalid_arguments"


async def test_unknown_method_is_404(base: str) -> None:
    for name in ("demo.nope", "nope.greet", "greet", ""):
        reply = await http(f"{base}/api/_internal/method/{name}", {"args": {}})
        assert reply.status == 404, name
        assert reply.headers["x-modelence-error-code"] == "unknown_method"


async def test_cookie_token_beats_body_token(base: str) -> None:
    reply = await http(
        f"{base}/api/_internal/method/demo.greet",
        {"args": {"name": "x"}, "authToken": "bob-token"},
        headers={"Cookie": "authToken=alice-token"},
    )
    assert reply.json()["data"]["user"] == "alice"
    assert reply.json()["data"]["roles"] == ["user", "staff"]


async def test_bad_tokens_are_401_not_anonymous(base: str) -> None:
    for token_place in ({"authToken": "nope"}, {}):
        headers = {"Cookie": "authToken=nope"} if not token_place else {}
        reply = await http(
            f"{base}/api/_internal/method/demo.greet", {"args": {"name": "x"}, **token_place}, headers=headers
        )
        assert reply.status == 401
        assert reply.headers["x-modelence-error-code"] == "invalid_token"
    assert calls == []  # the method never ran


async def test_unexpected_exception_is_500_without_details(base: str, caplog: pytest.LogCaptureFixture) -> None:
    reply = await http(f"{base}/api/_internal/method/demo.broken", {"args": {}})
    assert reply.status == 500
    assert reply.body == b"internal error"
    assert reply.headers["x-modelence-error-code"] == "internal_error"
    assert "secret internals" in caplog.text  # logged on the server, not sent


@pytest.mark.parametrize(
    ("raw", "headers", "status", "code"),
    [
        (b"{not json", {}, 400, "invalid_request"),
        (b"[1, 2]", {}, 400, "invalid_request"),
        (b'{"args": [1]}', {}, 400, "invalid_arguments"),
        (b'{"args": {}, "authToken": 5}', {}, 400, "invalid_request"),
        (b'{"args": {}}', {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
    ],
)
async def test_bad_requests(base: str, raw: bytes, headers: dict[str, str], status: int, code: str) -> None:
    reply = await http(f"{base}/api/_internal/method/demo.greet", raw=raw, headers=headers)
    assert (reply.status, reply.headers["x-modelence-error-code"]) == (status, code)


async def test_limits_and_verbs(base: str) -> None:
    too_big = await http(f"{base}/api/_internal/method/demo.greet", {"args": {"name": "x" * 2000}})
    assert too_big.status == 413
    get = await http(f"{base}/api/_internal/method/demo.greet", method="GET")
    assert get.status == 405


async def test_client_and_static_files(base: str) -> None:
    client = await http(f"{base}/_modelence/modelence.js", method="GET")
    assert client.status == 200
    assert client.headers["content-type"].startswith("text/javascript")
    assert b"export function startWebsockets" in client.body
    types = await http(f"{base}/_modelence/modelence.d.ts", method="GET")
    assert b"export function callMethod" in types.body
    index = await http(f"{base}/", method="GET")
    assert (index.status, index.body) == (200, b"<h1>hi</h1>")
    assert (await http(f"{base}/app.js", method="GET")).headers["content-type"].startswith("text/javascript")
    for path in ("/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/missing.html"):
        assert (await http(f"{base}{path}", method="GET")).status == 404, path
    assert (await http(f"{base}/", {"x": 1})).status == 405


def test_declaration_errors_are_clear() -> None:
    chat = ServerChannel("chat")
    with pytest.raises(ValueError, match="'chat' is declared by module 'a' and by module 'b'"):
        App([Module("a", channels=[chat]), Module("b", channels=[ServerChannel("chat")])])
    with pytest.raises(ValueError, match="two modules are named 'a'"):
        App([Module("a"), Module("a")])
    with pytest.raises(ValueError, match=r"\['go'\] as both a mutation and a query"):
        Module("a", mutations={"go": greet}, queries={"go": greet})
    with pytest.raises(ValueError, match="module name"):
        Module("a.b")
    with pytest.raises(ValueError, match="method name"):
        Module("a", mutations={"x.y": greet})
    with pytest.raises(ValueError, match="4xx or 5xx"):
        MethodError("x", status=200)


async def test_a_method_call_under_way_at_shutdown_is_answered(nursery: trio.Nursery) -> None:
    started = trio.Event()

    async def slow(args: dict[str, Any], ctx: MethodContext) -> str:
        started.set()
        await trio.sleep(0.5)
        return "done"

    app = App([Module("slow", mutations={"call": slow})])
    stop = trio.Event()
    served = trio.Event()

    async def serve(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        await app.serve("127.0.0.1", 0, shutdown_trigger=stop.wait, task_status=task_status)
        served.set()

    urls = await nursery.start(serve)
    replies: list[Reply] = []

    async def call() -> None:
        replies.append(await http(f"{urls[0]}/api/_internal/method/slow.call", {"args": {}}))

    async with trio.open_nursery() as calls:
        calls.start_soon(call)
        await started.wait()
        stop.set()  # the server stops only once the call is answered
    assert (replies[0].status, replies[0].json()) == (200, {"data": "done"})
    with trio.fail_after(5):
        await served.wait()
