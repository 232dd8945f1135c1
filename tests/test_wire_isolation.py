"""Issue 11: one connection's bad frame or fault never reaches another; limits count bytes."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio_websocket

from modelence_trio import Hub, HubConfig, ServerChannel
from modelence_trio._history import History, HistoryBook
from modelence_trio.protocol import ProtocolError, encode_data, parse_client_frame
from modelence_trio.testing import MemoryBus, MemoryFanout

from .helpers import ALL_PATHS, TRANSPORTS, RawClient, expect_close, receive_json, request, start_server


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
        book.record("chat:a", encode_data("chat:a", {"text": "\ud800"}), History(), 0.0)
    assert len(book) == 0 and book.last == 0
    book.record("chat:a", encode_data("chat:a", {"text": "ok"}), History(), 0.0)
    assert book.last == 1


async def _joined(url: str, nursery: trio.Nursery) -> trio_websocket.WebSocketConnection:
    ws = await trio_websocket.connect_websocket_url(nursery, url)
    await receive_json(ws)  # welcome
    assert (await request(ws, {"type": "join", "channel": "chat:room"}))["type"] == "joined"
    return ws


@pytest.mark.parametrize("transport", ALL_PATHS)
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


@pytest.mark.parametrize("transport", ALL_PATHS)
async def test_size_limit_counts_bytes(nursery: trio.Nursery, transport: str) -> None:
    chat: ServerChannel[Any] = ServerChannel("chat")
    url, _ = await start_server(nursery, transport, [chat], config=HubConfig(max_frame_size=64 * 1024))
    ws = await _joined(url, nursery)
    # 30,000 characters, 90,000 bytes: over the 64 KiB limit in bytes only.
    await ws.send_message(json.dumps({"type": "ping", "ref": "€" * 30_000}, ensure_ascii=False))
    await expect_close(ws, 1009)


@pytest.mark.parametrize("transport", ALL_PATHS)
async def test_handler_fault_ends_only_that_connection(
    nursery: trio.Nursery, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modelence_trio._session as session_module

    real = parse_client_frame

    def faulty(message: str | bytes, **kwargs: Any) -> Any:
        if message == "boom":
            raise RuntimeError("injected fault")
        return real(message, **kwargs)

    monkeypatch.setattr(session_module, "parse_client_frame", faulty)
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


@pytest.mark.parametrize("transport", ALL_PATHS)
async def test_slow_consumer_close_lands_on_a_frame_boundary(nursery: trio.Nursery, transport: str) -> None:
    # A raw client (wsproto parses every byte it receives) stops reading
    # while 16 KB broadcasts pile up; the server cuts it off with 4002. Every
    # byte before the close must parse as whole frames, then the close.
    chat: ServerChannel[Any] = ServerChannel("chat", history=None)
    config = HubConfig(outbound_queue_bytes=256 * 1024, heartbeat_interval=None)
    url, hub = await start_server(nursery, transport, [chat], config=config)
    client = await RawClient.connect(url)
    await client.send_text('{"type":"join","channel":"chat:big"}')
    await client.read_until(lambda: len(client.texts) >= 2)
    assert json.loads(client.texts[1])["type"] == "joined"
    pad = "z" * 16_000
    sent = 0
    while hub.statistics().subscriptions and sent < 5000:
        chat.broadcast("big", {"i": sent, "pad": pad})
        sent += 1
        if sent % 10 == 0:
            await trio.sleep(0)
    assert hub.statistics().subscriptions == 0, "never cut off"
    await client.read_until(lambda: False)  # to EOF
    assert client.closes == [4002]
    messages = [json.loads(text) for text in client.texts[2:]]
    assert [m["data"]["i"] for m in messages] == list(range(len(messages)))
    assert all(m["data"]["pad"] == pad for m in messages)


@pytest.mark.parametrize("transport", ALL_PATHS)
async def test_close_handshake_completes_at_once(nursery: trio.Nursery, transport: str) -> None:
    # The server closes (1009: 90,000 bytes over a 64 KiB limit); the client
    # answers; the server must then close TCP at once, not after close_timeout.
    chat: ServerChannel[Any] = ServerChannel("chat")
    config = HubConfig(max_frame_size=64 * 1024, close_timeout=60, heartbeat_interval=None)
    url, hub = await start_server(nursery, transport, [chat], config=config)
    client = await RawClient.connect(url)
    await client.send_text(json.dumps({"type": "ping", "ref": "€" * 30_000}, ensure_ascii=False))
    await client.read_until(lambda: client.closes, timeout=10)
    assert client.closes == [1009]
    await client.read_until(lambda: False, timeout=10)  # EOF long before close_timeout's 60 s
    assert client.eof
    with trio.fail_after(10):
        while hub.statistics().connections:
            await trio.sleep(0.01)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_permessage_deflate_is_not_negotiated(nursery: trio.Nursery, transport: str) -> None:
    from wsproto.extensions import PerMessageDeflate

    url, _ = await start_server(nursery, transport, [ServerChannel("chat")])
    client = await RawClient.connect(url, extensions=[PerMessageDeflate()])
    assert client.accepted is not None
    assert client.accepted.extensions == []


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_endless_oversize_message_is_dropped_and_tcp_closed(
    nursery: trio.Nursery, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One message that never ends: past the limit the server closes with
    # 1009, holds none of what keeps coming, and closes TCP within
    # close_timeout although the client never answers the close.
    from wsproto.events import TextMessage

    from modelence_trio import _hypercorn

    streams: list[_hypercorn.HypercornStream] = []
    real_attach = _hypercorn.attach

    def attach(*args: Any) -> _hypercorn.HypercornStream | None:
        stream = real_attach(*args)
        if stream is not None:
            streams.append(stream)
        return stream

    monkeypatch.setattr(_hypercorn, "attach", attach)
    config = HubConfig(max_frame_size=64 * 1024, close_timeout=1, heartbeat_interval=None)
    url, hub = await start_server(nursery, transport, [ServerChannel("chat")], config=config)
    client = await RawClient.connect(url)
    chunk = client.ws.send(TextMessage("x" * 65536, message_finished=False))
    broken = False
    with trio.fail_after(20):
        for _ in range(8 * 1024 * 1024 // len(chunk)):  # 8 MiB, far past the 64 KiB limit
            try:
                await client.stream.send_all(chunk)
            except trio.BrokenResourceError:
                broken = True  # the server closed TCP while we still sent
                break
            chunk = client.ws.send(TextMessage("x" * 65536, message_finished=False))
    if not broken:
        # Read the close without answering it, to EOF.
        with trio.fail_after(10):
            while await client.stream.receive_some(65536):
                pass
    with trio.fail_after(10):
        while hub.statistics().connections:
            await trio.sleep(0.01)
    if transport == "hypercorn":
        assert len(streams) == 1
        assert streams[0].buffered == 0  # nothing of what followed the limit is kept


async def test_cancelling_one_server_leaves_a_shared_hub_serving(nursery: trio.Nursery) -> None:
    from modelence_trio import App, Module, serve_websocket

    chat: ServerChannel[Any] = ServerChannel("chat")
    app = App([Module("test", channels=[chat])], config=HubConfig(heartbeat_interval=None))
    hub: Hub = app.hub
    await nursery.start(hub.run)
    with pytest.raises(RuntimeError, match="already running"):
        await hub.run()
    urls = await nursery.start(app.serve, "127.0.0.1", 0)
    on_app = await _joined(urls[0].replace("http://", "ws://") + "/ws", nursery)
    with trio.CancelScope() as server_scope:
        async with trio.open_nursery() as server_nursery:
            port = await server_nursery.start(serve_websocket, hub, "127.0.0.1", 0)
            on_port = await _joined(f"ws://127.0.0.1:{port}/ws", nursery)
            chat.broadcast("room", {"n": 1})
            assert (await receive_json(on_port))["data"] == {"n": 1}
            server_scope.cancel()
    await expect_close(on_port, 1001)  # that server's connection, politely
    assert hub.running
    chat.broadcast("room", {"n": 2})
    assert (await receive_json(on_app))["data"] == {"n": 1}
    assert (await receive_json(on_app))["data"] == {"n": 2}
    assert await request(on_app, {"type": "ping", "ref": 1}) == {"type": "pong", "ref": 1}
    assert hub.statistics().connections == 1


@pytest.mark.parametrize("transport", ["trio-websocket-public", "hypercorn-public"])
async def test_public_fallback_is_taken_with_one_warning(
    nursery: trio.Nursery, transport: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelence_trio import _hypercorn, _trio_websocket

    monkeypatch.setattr(_trio_websocket, "_warned", False)
    monkeypatch.setattr(_hypercorn, "_warned", False)
    chat: ServerChannel[Any] = ServerChannel("chat")
    url, _ = await start_server(nursery, transport, [chat])
    clients = [await _joined(url, nursery) for _ in range(3)]
    chat.broadcast("room", {"n": 1})
    for ws in clients:
        assert (await receive_json(ws))["data"] == {"n": 1}
    warnings = [r.getMessage() for r in caplog.records if "fast path off" in r.getMessage()]
    assert len(warnings) == 1
    assert "MODELENCE_TRIO_PUBLIC_API" in warnings[0]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_consumer_that_never_reads_is_aborted_not_corrupted(nursery: trio.Nursery, transport: str) -> None:
    # Cut off while the socket is full and never read again: the frame under
    # way cannot be finished within close_timeout, so TCP is aborted. What the
    # client finds in its buffers afterwards is whole frames, then at most an
    # unfinished one, and no close frame inside a frame.
    chat: ServerChannel[Any] = ServerChannel("chat", history=None)
    config = HubConfig(outbound_queue_bytes=256 * 1024, heartbeat_interval=None, close_timeout=0.5)
    url, hub = await start_server(nursery, transport, [chat], config=config)
    client = await RawClient.connect(url)
    await client.send_text('{"type":"join","channel":"chat:big"}')
    await client.read_until(lambda: len(client.texts) >= 2)
    pad = "z" * 16_000
    sent = 0
    while hub.statistics().subscriptions and sent < 20_000:
        chat.broadcast("big", {"i": sent, "pad": pad})
        sent += 1
        await trio.sleep(0.001)  # steadily: the socket fills before the queue overflows
    assert hub.statistics().subscriptions == 0, "never cut off"
    with trio.fail_after(15):
        while hub.statistics().connections:
            await trio.sleep(0.05)  # the server gave up within close_timeout
    await trio.sleep(2)  # well past close_timeout: the write under way must have been abandoned
    await client.read_until(lambda: False)  # now read all that is buffered, to EOF
    assert client.eof
    assert client.closes in ([], [4002])
    messages = [json.loads(text) for text in client.texts[2:]]
    assert [m["data"]["i"] for m in messages] == list(range(len(messages)))


async def test_pings_crossing_pongs_never_break_a_connection(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    # Server heartbeats every 20 ms while clients ping the server as fast as
    # they can: the server's pongs and pings meet in the send path.
    from wsproto.events import Ping

    config = HubConfig(heartbeat_interval=0.02, heartbeat_timeout=5)
    url, _ = await start_server(nursery, "trio-websocket", [ServerChannel("chat")], config=config)

    async def client() -> None:
        c = await RawClient.connect(url)
        lock = trio.Lock()

        async def pinger() -> None:
            while True:
                async with lock:
                    await c.stream.send_all(c.ws.send(Ping(b"x")))
                await trio.sleep(0.001)

        async with trio.open_nursery() as inner:
            inner.start_soon(pinger)
            with trio.move_on_after(2):
                while True:
                    events = await c.next_events()
                    assert events is not None, "the server closed the connection"
                    for event in events:
                        if isinstance(event, Ping):
                            async with lock:
                                await c.stream.send_all(c.ws.send(event.response()))
            inner.cancel_scope.cancel()

    async with trio.open_nursery() as clients:
        for _ in range(20):
            clients.start_soon(client)
    assert not [r for r in caplog.records if r.exc_info], "a connection failed"


async def test_a_heartbeat_ping_queued_during_a_write_is_sent(nursery: trio.Nursery) -> None:
    # A burst is being written (the socket full) when the heartbeat round
    # comes; then the connection goes idle. The ping must still go out, or
    # the healthy client is dropped with 4003.
    chat: ServerChannel[Any] = ServerChannel("chat", history=None)
    config = HubConfig(
        heartbeat_interval=1.0, heartbeat_timeout=2.0, outbound_queue_bytes=64 << 20, outbound_queue_size=100_000
    )
    url, hub = await start_server(nursery, "trio-websocket", [chat], config=config)
    started = trio.current_time()
    client = await RawClient.connect(url)
    await client.send_text('{"type":"join","channel":"chat:big"}')
    await client.read_until(lambda: len(client.texts) >= 2)
    pad = "z" * 100_000
    await trio.sleep_until(started + 0.8)
    for i in range(60):
        chat.broadcast("big", {"i": i, "pad": pad})
    await trio.sleep_until(started + 1.5)  # the writer is blocked on the full socket at the round
    await client.read_until(lambda: len(client.texts) >= 62)
    with trio.move_on_after(4):
        await client.read_until(lambda: False, timeout=5)  # idle; read_until answers pings
    assert client.closes == [] and not client.eof
    assert hub.statistics().connections == 1


async def _two_instances(
    nursery: trio.Nursery, transport: str, config: HubConfig
) -> tuple[ServerChannel[Any], RawClient, Hub]:
    """A served instance with a raw client joined to ``chat:big``, and the
    channel of another instance on the same in-memory fan-out, whose
    broadcasts reach the client in batches (one write per batch)."""
    bus = MemoryBus()
    here: ServerChannel[Any] = ServerChannel("chat", history=None)
    url, hub = await start_server(nursery, transport, [here], config=config, fanout=MemoryFanout(bus))
    there: ServerChannel[Any] = ServerChannel("chat", history=None)
    await nursery.start(Hub([there], fanout=MemoryFanout(bus)).run)
    client = await RawClient.connect(url)
    await client.send_text('{"type":"join","channel":"chat:big"}')
    await client.read_until(lambda: len(client.texts) >= 2)
    assert json.loads(client.texts[1])["type"] == "joined"
    return there, client, hub


@pytest.mark.parametrize("transport", ALL_PATHS)
async def test_fanout_batches_arrive_as_whole_frames(nursery: trio.Nursery, transport: str) -> None:
    # Another instance's broadcasts, read in batches of up to 500, go out as
    # one write per batch: the raw client parses every frame, in order.
    there, client, _ = await _two_instances(nursery, transport, HubConfig(heartbeat_interval=None))
    for i in range(300):  # no checkpoint: one batch
        there.broadcast("big", {"i": i, "pad": "p" * (i % 50)})
    await client.read_until(lambda: len(client.texts) >= 302)
    assert [json.loads(text)["data"]["i"] for text in client.texts[2:]] == list(range(300))


@pytest.mark.parametrize("transport", ALL_PATHS)
async def test_slow_consumer_of_fanout_batches_closes_on_a_frame_boundary(
    nursery: trio.Nursery, transport: str
) -> None:
    # As the slow consumer test above, with the broadcasts from another
    # instance (4 KB each, so a batch's joined write fits under its 64 KiB cap).
    config = HubConfig(outbound_queue_bytes=256 * 1024, heartbeat_interval=None)
    there, client, hub = await _two_instances(nursery, transport, config)
    pad = "q" * 4000
    sent = 0
    while hub.statistics().subscriptions and sent < 20_000:
        for _ in range(12):
            there.broadcast("big", {"i": sent, "pad": pad})
            sent += 1
        await trio.sleep(0)
    assert hub.statistics().subscriptions == 0, "never cut off"
    await client.read_until(lambda: False)  # to EOF
    assert client.closes == [4002]
    messages = [json.loads(text) for text in client.texts[2:]]
    assert [m["data"]["i"] for m in messages] == list(range(len(messages)))
    assert all(m["data"]["pad"] == pad for m in messages)
