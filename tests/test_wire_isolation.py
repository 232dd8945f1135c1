"""Issue 11: one connection's bad frame or fault never reaches another; limits count bytes."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio_websocket

from modelence_trio import HubConfig, ServerChannel
from modelence_trio._history import History, HistoryBook
from modelence_trio.protocol import ProtocolError, parse_client_frame

from .helpers import TRANSPORTS, expect_close, receive_json, request, start_server


@pytest.mark.parametrize(
    "text",
    ['{"type":"join","channel":"chat:\\ud800"}', '{"type":"ping","ref":"\\udfff"}', '{"type":"ping","\\ud800":1}'],
)
def test_codec_refuses_lone_surrogates(text: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(text)
    assert info.value.code == "invalid_json"


def test_codec_keeps_escaped_surrogate_pairs() -> None:
    frame = parse_client_frame('{"type":"join","channel":"chat:\\ud83d\\ude00"}')
    assert getattr(frame, "channel", None) == "chat:\U0001f600"


def test_unencodable_broadcast_leaves_no_history() -> None:
    book = HistoryBook()
    with pytest.raises(ValueError, match="surrogate"):
        book.record("chat:a", {"text": "\ud800"}, History(), 0.0)
    assert len(book) == 0 and book.last == 0
    book.record("chat:a", {"text": "ok"}, History(), 0.0)
    assert book.last == 1


async def _joined(url: str, nursery: trio.Nursery) -> trio_websocket.WebSocketConnection:
    ws = await trio_websocket.connect_websocket_url(nursery, url)
    await receive_json(ws)  # welcome
    assert (await request(ws, {"type": "join", "channel": "chat:room"}))["type"] == "joined"
    return ws


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_lone_surrogate_frame_hurts_nobody(nursery: trio.Nursery, transport: str) -> None:
    chat: ServerChannel[Any] = ServerChannel("chat")
    url, hub = await start_server(nursery, transport, [chat])
    bystander = await _joined(url, nursery)
    attacker = await _joined(url, nursery)
    await attacker.send_message('{"type":"join","channel":"chat:\\ud800","ref":"\\ud800"}')
    assert (await receive_json(attacker))["code"] == "invalid_json"
    chat.broadcast("room", {"n": 1})
    assert (await receive_json(bystander))["data"] == {"n": 1}
    assert (await receive_json(attacker))["data"] == {"n": 1}
    late = await _joined(url, nursery)  # new handshakes still accepted
    await late.aclose()
    assert hub.statistics().connections >= 2


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_size_limit_counts_bytes(nursery: trio.Nursery, transport: str) -> None:
    chat: ServerChannel[Any] = ServerChannel("chat")
    url, _ = await start_server(nursery, transport, [chat], config=HubConfig(max_frame_size=64 * 1024))
    ws = await _joined(url, nursery)
    # 30,000 characters, 90,000 bytes: over the 64 KiB limit in bytes only.
    await ws.send_message(json.dumps({"type": "ping", "ref": "€" * 30_000}, ensure_ascii=False))
    await expect_close(ws, 1009)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_handler_fault_ends_only_that_connection(
    nursery: trio.Nursery, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modelence_trio._hub as hub_module

    real = parse_client_frame

    def faulty(message: str | bytes, **kwargs: Any) -> Any:
        if message == "boom":
            raise RuntimeError("injected fault")
        return real(message, **kwargs)

    monkeypatch.setattr(hub_module, "parse_client_frame", faulty)
    chat: ServerChannel[Any] = ServerChannel("chat")
    url, hub = await start_server(nursery, transport, [chat])
    healthy = [await _joined(url, nursery) for _ in range(50)]
    victim = await _joined(url, nursery)
    await victim.send_message("boom")
    await expect_close(victim, 1011)
    for n in range(3):
        chat.broadcast("room", {"n": n})
        for ws in healthy:
            assert (await receive_json(ws))["data"] == {"n": n}
    assert hub.statistics().connections == 50
    for ws in healthy:
        assert await request(ws, {"type": "ping", "ref": 7}) == {"type": "pong", "ref": 7}


async def test_slow_consumer_close_lands_on_a_frame_boundary(nursery: trio.Nursery) -> None:
    # A raw client (wsproto parses every byte it receives) stops reading
    # while 16 KB broadcasts pile up; the server cuts it off with 4002. Every
    # byte before the close must parse as whole frames, then the close.
    import wsproto
    from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

    from modelence_trio import Hub, serve_websocket

    chat: ServerChannel[Any] = ServerChannel("chat", history=None)
    hub = Hub([chat], config=HubConfig(outbound_queue_bytes=256 * 1024, heartbeat_interval=None))
    port = await nursery.start(serve_websocket, hub, "127.0.0.1", 0)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    texts: list[str] = []
    parts: list[str] = []
    closes: list[CloseConnection] = []

    async def read_until(done: Any) -> None:
        with trio.fail_after(15):
            while not done():
                data = await stream.receive_some(65536)
                if not data:
                    return
                client.receive_data(data)
                for event in client.events():
                    if isinstance(event, TextMessage):
                        parts.append(event.data)
                        if event.message_finished:
                            texts.append("".join(parts))
                            parts.clear()
                    elif isinstance(event, CloseConnection):
                        closes.append(event)
                        await stream.send_all(client.send(event.response()))
                    elif not isinstance(event, AcceptConnection):
                        raise AssertionError(f"unexpected {event!r}")

    await stream.send_all(client.send(Request(host="127.0.0.1", target="/ws")))
    await read_until(lambda: texts)  # welcome
    await stream.send_all(client.send(TextMessage('{"type":"join","channel":"chat:big"}')))
    await read_until(lambda: len(texts) >= 2)
    assert json.loads(texts[1])["type"] == "joined"
    pad = "z" * 16_000
    sent = 0
    while hub.statistics().subscriptions and sent < 5000:
        chat.broadcast("big", {"i": sent, "pad": pad})
        sent += 1
        if sent % 10 == 0:
            await trio.sleep(0)
    assert hub.statistics().subscriptions == 0, "never cut off"
    await read_until(lambda: False)  # to EOF
    assert [c.code for c in closes] == [4002]
    messages = [json.loads(text) for text in texts[2:]]
    assert [m["data"]["i"] for m in messages] == list(range(len(messages)))
    assert all(m["data"]["pad"] == pad for m in messages)
