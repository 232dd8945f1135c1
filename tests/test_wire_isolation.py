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
