"""The server over real sockets, driven by a plain WebSocket client (not ours).

Every scenario runs against both transports (trio-websocket, and ASGI under
hypercorn): they share one core, and these tests hold them to it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio_websocket

from modelence_trio import ChannelContext, HubConfig, MemoryAuthenticator, ServerChannel, User

from .helpers import ALL_PATHS, receive_json, request, send_json, start_server


@pytest.fixture(params=ALL_PATHS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def chat() -> ServerChannel[object]:
    def can_access(ctx: ChannelContext) -> bool:
        return ctx.channel_id != "private"

    return ServerChannel("chat", can_access=can_access, on_message=lambda ctx, cid, data: None)


@pytest.fixture
def auth() -> MemoryAuthenticator:
    auth = MemoryAuthenticator()
    auth.add("alice-token", User("u1", "alice"), roles=["member"])
    auth.add("old-token", User("u2", "bob"), expires_at=0)
    return auth


@pytest.fixture
async def url(
    nursery: trio.Nursery, transport: str, chat: ServerChannel[object], auth: MemoryAuthenticator
) -> AsyncIterator[str]:
    config = HubConfig(authenticated_roles=["user"])
    url, _ = await start_server(nursery, transport, [chat], authenticator=auth, config=config)
    yield url


async def test_welcome_anonymous(url: str) -> None:
    async with trio_websocket.open_websocket_url(url) as ws:
        welcome = await receive_json(ws)
    assert welcome["type"] == "welcome"
    assert welcome["protocol"] == 1
    assert welcome["user"] is None
    assert welcome["roles"] == []
    assert isinstance(welcome["connection"], str) and welcome["connection"]


async def test_welcome_authenticated_by_query_token(url: str) -> None:
    async with trio_websocket.open_websocket_url(url + "?token=alice-token") as ws:
        welcome = await receive_json(ws)
    assert welcome["user"] == {"id": "u1", "handle": "alice"}
    assert welcome["roles"] == ["user", "member"]


async def test_welcome_authenticated_by_header(url: str) -> None:
    headers = [(b"Authorization", b"Bearer alice-token")]
    async with trio_websocket.open_websocket_url(url, extra_headers=headers) as ws:
        assert (await receive_json(ws))["user"]["handle"] == "alice"


@pytest.mark.parametrize("suffix", ["?token=nope", "?token=old-token", "?token="])
async def test_bad_token_is_refused_with_401(url: str, suffix: str) -> None:
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with trio_websocket.open_websocket_url(url + suffix):
            pass  # pragma: no cover
    assert info.value.status_code == 401
    assert info.value.body


async def test_join_message_leave(url: str, chat: ServerChannel[object]) -> None:
    async with trio_websocket.open_websocket_url(url) as ws:
        await receive_json(ws)
        joined = await request(ws, {"type": "join", "channel": "chat:room1", "ref": 1})
        start, epoch = joined.pop("offset"), joined.pop("epoch")
        assert joined == {"type": "joined", "channel": "chat:room1", "ref": 1}
        assert isinstance(start, int) and isinstance(epoch, str) and epoch
        chat.broadcast("room1", {"text": "hi"})
        chat.broadcast("room2", {"text": "not for you"})
        chat.broadcast("room1", {"text": "again"})
        first, second = await receive_json(ws), await receive_json(ws)
        assert first == {
            "type": "message",
            "channel": "chat:room1",
            "data": {"text": "hi"},
            "offset": start + 1,
            "epoch": epoch,
        }
        # Offsets increase per channel (one counter per hub: room2's message took start + 2).
        assert second == {
            "type": "message",
            "channel": "chat:room1",
            "data": {"text": "again"},
            "offset": start + 3,
            "epoch": epoch,
        }
        assert await request(ws, {"type": "leave", "channel": "chat:room1", "ref": "two"}) == {
            "type": "left",
            "channel": "chat:room1",
            "ref": "two",
        }
        chat.broadcast("room1", {"text": "after leave"})
        assert await request(ws, {"type": "ping", "ref": 3}) == {"type": "pong", "ref": 3}


@pytest.mark.parametrize(
    ("channel", "code"),
    [
        ("chat:private", "access_denied"),
        ("news:today", "unknown_channel"),
        ("chatroom", "invalid_channel"),
        ("chat:", "invalid_channel"),
        ("chat:a\u0007b", "invalid_channel"),
    ],
)
async def test_join_errors(url: str, channel: str, code: str) -> None:
    async with trio_websocket.open_websocket_url(url) as ws:
        await receive_json(ws)
        reply = await request(ws, {"type": "join", "channel": channel, "ref": 9})
        assert reply["type"] == "join_error"
        assert reply["channel"] == channel
        assert reply["code"] == code
        assert reply["ref"] == 9
        assert reply["error"]
        if code == "access_denied":
            assert reply["error"] == "Access denied"
        # The connection is still usable.
        assert await request(ws, {"type": "ping", "ref": 1}) == {"type": "pong", "ref": 1}


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("garbage", "invalid_json"),
        ("[1]", "invalid_frame"),
        ('{"type":"dance","ref":1}', "unknown_type"),
        ('{"type":"join","ref":1}', "invalid_field"),
        ('{"type":"leave","channel":"chat","ref":1}', "invalid_channel"),
        ('{"type":"message","channel":"chat:x","data":1,"ref":1}', "not_joined"),
    ],
)
async def test_bad_frames_get_error_and_connection_survives(url: str, frame: str, code: str) -> None:
    async with trio_websocket.open_websocket_url(url) as ws:
        await receive_json(ws)
        await ws.send_message(frame)
        reply = await receive_json(ws)
        assert reply["type"] == "error"
        assert reply["code"] == code
        assert reply["error"]
        assert await request(ws, {"type": "ping", "ref": 2}) == {"type": "pong", "ref": 2}


async def test_binary_frame_gets_error(url: str) -> None:
    async with trio_websocket.open_websocket_url(url) as ws:
        await receive_json(ws)
        await ws.send_message(b"\x00\x01")
        assert (await receive_json(ws))["code"] == "binary_frame"
        assert await request(ws, {"type": "ping"}) == {"type": "pong"}


async def test_a_bad_client_does_not_disturb_another(url: str, chat: ServerChannel[object]) -> None:
    async with trio_websocket.open_websocket_url(url) as good, trio_websocket.open_websocket_url(url) as bad:
        await receive_json(good)
        await receive_json(bad)
        await request(good, {"type": "join", "channel": "chat:r"})
        for junk in ["{", "[]", '{"type":null}', "\u0000", '{"type":"join","channel":"x"}']:
            await bad.send_message(junk)
        chat.broadcast("r", 1)
        assert (await receive_json(good))["data"] == 1


async def test_publish_from_client(nursery: trio.Nursery, transport: str) -> None:
    received: list[tuple[str, object]] = []
    echo = ServerChannel("echo", on_message=lambda ctx, cid, data: received.append((cid, data)))
    plain = ServerChannel("plain")
    url, _ = await start_server(nursery, transport, [echo, plain])
    async with trio_websocket.open_websocket_url(url) as ws:
        await receive_json(ws)
        await request(ws, {"type": "join", "channel": "echo:1"})
        await request(ws, {"type": "join", "channel": "plain:1"})
        reply = await request(ws, {"type": "message", "channel": "echo:1", "data": {"a": 1}, "ref": 5})
        assert reply == {"type": "published", "channel": "echo:1", "ref": 5}
        assert received == [("1", {"a": 1})]
        reply = await request(ws, {"type": "message", "channel": "plain:1", "data": 1, "ref": 6})
        assert reply["code"] == "publish_not_allowed"
        assert reply["ref"] == 6


async def test_oversized_frame_is_closed_with_1009(nursery: trio.Nursery, transport: str) -> None:
    url, _ = await start_server(nursery, transport, [ServerChannel("chat")], config=HubConfig(max_frame_size=1000))
    async with trio_websocket.open_websocket_url(url) as ws:
        await receive_json(ws)
        await send_json(ws, {"type": "ping", "ref": "x" * 2000})
        with pytest.raises(trio_websocket.ConnectionClosed) as info, trio.fail_after(5):
            await ws.get_message()
        assert info.value.reason is not None and info.value.reason.code == 1009


async def test_require_user_refuses_anonymous(nursery: trio.Nursery, transport: str) -> None:
    config = HubConfig(require_user=True)
    url, _ = await start_server(
        nursery, transport, [ServerChannel("chat")], authenticator=MemoryAuthenticator(), config=config
    )
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with trio_websocket.open_websocket_url(url):
            pass  # pragma: no cover
    assert info.value.status_code == 401


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([(b"Authorization", b"Basic YWxpY2U6cHc=")], 401),  # malformed: not Bearer
        ([(b"Authorization", b"Bearer")], 401),  # no token after the scheme
        ([(b"Authorization", b"Bearer unknown")], 401),
        ([(b"Authorization", b"Bearer old-token")], 401),  # expired
        ([(b"Cookie", b"authToken=")], 401),
        ([(b"Cookie", b"authToken=nope")], 401),
    ],
)
async def test_bad_credentials_at_the_handshake(url: str, headers: list[tuple[bytes, bytes]], status: int) -> None:
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with trio_websocket.open_websocket_url(url, extra_headers=headers):
            pass  # pragma: no cover
    assert info.value.status_code == status
    # The server carries on.
    async with trio_websocket.open_websocket_url(url) as ws:
        assert (await receive_json(ws))["type"] == "welcome"


async def test_header_beats_cookie_when_they_disagree(url: str) -> None:
    good_header = [(b"Authorization", b"Bearer alice-token"), (b"Cookie", b"authToken=nope")]
    async with trio_websocket.open_websocket_url(url, extra_headers=good_header) as ws:
        assert (await receive_json(ws))["user"]["handle"] == "alice"
    bad_header = [(b"Authorization", b"Bearer nope"), (b"Cookie", b"authToken=alice-token")]
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with trio_websocket.open_websocket_url(url, extra_headers=bad_header):
            pass  # pragma: no cover
    assert info.value.status_code == 401


async def test_cookie_alone_authenticates(url: str) -> None:
    async with trio_websocket.open_websocket_url(url, extra_headers=[(b"Cookie", b"authToken=alice-token")]) as ws:
        assert (await receive_json(ws))["user"]["id"] == "u1"


async def test_joining_twice_and_leaving_unjoined_are_idempotent(url: str) -> None:
    async with trio_websocket.open_websocket_url(url) as ws:
        await receive_json(ws)
        assert (await request(ws, {"type": "join", "channel": "chat:a", "ref": 1}))["type"] == "joined"
        assert (await request(ws, {"type": "join", "channel": "chat:a", "ref": 2}))["type"] == "joined"
        assert await request(ws, {"type": "leave", "channel": "chat:zzz", "ref": 3}) == {
            "type": "left",
            "channel": "chat:zzz",
            "ref": 3,
        }


async def test_a_client_that_stops_reading_is_dropped_and_others_carry_on(
    nursery: trio.Nursery, transport: str
) -> None:
    chat: ServerChannel[object] = ServerChannel("chat")
    url, hub = await start_server(nursery, transport, [chat], config=HubConfig(outbound_queue_size=32))
    async with trio_websocket.open_websocket_url(url) as good:
        # The slow client: a real handshake and a join, then it never reads again.
        stream = await trio.open_tcp_stream("127.0.0.1", int(url.split(":")[2].split("/")[0]))
        await stream.send_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        response = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in response:
                response += await stream.receive_some(4096)
        assert response.startswith(b"HTTP/1.1 101")
        join = b'{"type":"join","channel":"chat:a"}'
        await stream.send_all(bytes([0x81, 0x80 | len(join)]) + b"\0\0\0\0" + join)  # masked with a zero key
        await receive_json(good)
        await request(good, {"type": "join", "channel": "chat:a"})
        with trio.fail_after(10):
            while hub.statistics().subscriptions < 2:
                await trio.sleep(0.01)
        pad = "x" * 10_000
        received = 0
        with trio.fail_after(30):
            for seq in range(3000):  # 30 MB: far more than the slow client's socket buffers hold
                chat.broadcast("a", {"seq": seq, "pad": pad})
                while received <= seq:
                    assert (await receive_json(good))["data"]["seq"] == received
                    received += 1
        # The slow client was cut off (its queue overflowed); the good one got everything.
        assert received == 3000
        assert hub.statistics().subscriptions == 1
        assert hub.statistics().connections == 1
        await stream.aclose()
