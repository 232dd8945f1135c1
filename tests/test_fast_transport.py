"""trio-websocket's fast path at the level of tasks and bytes: one task per
connection, heartbeats without a task per ping, and a request head that a
router already read."""

from __future__ import annotations

import os
import socket

import attrs
import pytest
import trio
import trio.testing
import wsproto
import wsproto.connection
from wsproto.events import AcceptConnection, Pong, Request, TextMessage

from modelence_trio import Hub, HubConfig, ServerChannel, _trio_websocket
from modelence_trio._serve import serve_stream, serve_websocket
from modelence_trio.protocol import CloseCode

from .helpers import RawClient, StepCounter

CONFIG = HubConfig(max_connections_per_address=None)


def tasks_under(task: trio.lowlevel.Task) -> list[trio.lowlevel.Task]:
    return [task, *(t for nursery in task.child_nurseries for child in nursery.child_tasks for t in tasks_under(child))]


def every_task() -> list[trio.lowlevel.Task]:
    root = trio.lowlevel.current_root_task()
    assert root is not None
    return tasks_under(root)


def all_tasks() -> int:
    return len(every_task())


async def test_each_connection_is_one_task_and_heartbeats_add_none(nursery: trio.Nursery) -> None:
    assert _trio_websocket.ENABLED
    config = attrs.evolve(CONFIG, heartbeat_interval=0.05, heartbeat_timeout=1.0)
    hub = Hub([ServerChannel("chat")], config=config)
    port = await nursery.start(serve_websocket, hub, "127.0.0.1", 0)
    await trio.sleep(0.1)
    before = all_tasks()
    clients = [await RawClient.connect(f"ws://127.0.0.1:{port}/ws") for _ in range(20)]
    for client in clients:
        await client.send_text('{"type": "join", "channel": "chat:a"}')
        await client.read_until(lambda c=client: len(c.texts) >= 2)
    assert all_tasks() - before == 20
    # Several heartbeat rounds: each ping goes out whole (no writer task), and
    # the pongs (RawClient answers pings) keep every connection open.
    pings = [0] * len(clients)
    for _ in range(5):
        async with trio.open_nursery() as readers:
            for index, client in enumerate(clients):
                readers.start_soon(_answer_pings_for, client, 0.1, pings, index)
        assert all_tasks() - before == 20
    assert min(pings) >= 3  # heartbeats did run meanwhile
    assert hub.statistics().connections == 20
    assert not any(client.closes for client in clients)


async def test_pongs_wake_no_connection_task(nursery: trio.Nursery) -> None:
    # The hub's reader reads each whole pong itself (the heartbeat's idle cost).
    config = attrs.evolve(CONFIG, heartbeat_interval=0.05, heartbeat_timeout=1.0)
    hub = Hub([ServerChannel("chat")], config=config)
    port = await nursery.start(serve_websocket, hub, "127.0.0.1", 0)
    await trio.sleep(0.1)
    before = set(every_task())
    clients = [await RawClient.connect(f"ws://127.0.0.1:{port}/ws") for _ in range(10)]
    for client in clients:
        await client.send_text('{"type": "join", "channel": "chat:a"}')
        await client.read_until(lambda c=client: len(c.texts) >= 2)
    # Each connection's task has sent its `joined`; let it park again before counting.
    await trio.testing.wait_all_tasks_blocked()
    steps = StepCounter(set(every_task()) - before)
    assert len(steps.tasks) == 10  # one per connection
    pings = [0] * len(clients)
    trio.lowlevel.add_instrument(steps)
    try:
        for _ in range(5):
            async with trio.open_nursery() as readers:
                for index, client in enumerate(clients):
                    readers.start_soon(_answer_pings_for, client, 0.1, pings, index)
    finally:
        trio.lowlevel.remove_instrument(steps)
    assert min(pings) >= 3  # every connection answered pings, and stays open
    assert hub.statistics().connections == 10
    assert steps.count == 0
    # A message still wakes its connection's task, and is answered.
    await clients[0].send_text('{"type": "join", "channel": "chat:b"}')
    await clients[0].read_until(lambda: any('"chat:b"' in text for text in clients[0].texts))


@pytest.mark.parametrize("last", ["close frame", "pong"])
async def test_a_client_whose_last_bytes_and_hang_up_arrive_together_is_gone_at_once(
    nursery: trio.Nursery, last: str
) -> None:
    # Its last frame and its TCP FIN in one edge of the hub's reader: the end is
    # read too, long before any heartbeat could notice the silence.
    hub = Hub([ServerChannel("chat")], config=CONFIG)
    port = await nursery.start(serve_websocket, hub, "127.0.0.1", 0)
    client = await RawClient.connect(f"ws://127.0.0.1:{port}/ws")
    await client.send_text('{"type": "join", "channel": "chat:a"}')
    await client.read_until(lambda: len(client.texts) >= 2)
    await trio.testing.wait_all_tasks_blocked()  # the connection's task is parked
    event = wsproto.events.CloseConnection(1000) if last == "close frame" else Pong(b"12345678")
    sock = client.stream.socket
    os.write(sock.fileno(), client.ws.send(event))  # no checkpoint in between: one edge
    sock.shutdown(socket.SHUT_WR)
    with trio.fail_after(2):
        while hub.statistics().connections:
            await trio.sleep(0.01)


async def _answer_pings_for(client: RawClient, seconds: float, pings: list[int], index: int) -> None:
    with trio.move_on_after(seconds):
        while (events := await client.next_events()) is not None:  # close codes noted
            for event in events:
                if isinstance(event, wsproto.events.Ping):
                    pings[index] += 1
                    await client.stream.send_all(client.ws.send(event.response()))


async def fast_heartbeats(nursery: trio.Nursery) -> tuple[Hub, RawClient]:
    """A hub pinging every 0.1 s (pong due within 0.3 s), and one client connected to it."""
    config = attrs.evolve(CONFIG, heartbeat_interval=0.1, heartbeat_timeout=0.3)
    hub = Hub([ServerChannel("chat")], config=config)
    port = await nursery.start(serve_websocket, hub, "127.0.0.1", 0)
    return hub, await RawClient.connect(f"ws://127.0.0.1:{port}/ws")


async def test_a_pong_with_another_payload_does_not_answer_the_ping(nursery: trio.Nursery) -> None:
    _hub, client = await fast_heartbeats(nursery)
    with trio.fail_after(5):
        while not client.closes and not client.eof:
            # Unsolicited pongs (allowed by RFC 6455), never the ping's payload.
            await client.stream.send_all(client.ws.send(Pong(payload=b"not yours")))
            with trio.move_on_after(0.05):
                await client.next_events()  # notes the close
    assert client.closes == [CloseCode.HEARTBEAT_TIMEOUT]


async def test_a_request_head_already_read_is_read_again(nursery: trio.Nursery) -> None:
    # A router reads the head to choose the transport, and hands it over with the stream.
    hub = Hub([ServerChannel("chat")], config=CONFIG)
    await nursery.start(hub.run)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def route(stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(7)  # in pieces
        await serve_stream(hub, stream, received=head)

    await nursery.start(trio.serve_listeners, route, listeners)
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(client.send(Request(host=f"127.0.0.1:{port}", target="/ws")))
    texts: list[str] = []
    accepted = False
    with trio.fail_after(5):
        while len(texts) < 2:
            client.receive_data(await stream.receive_some(65536))
            for event in client.events():
                if isinstance(event, AcceptConnection):
                    accepted = True
                    await stream.send_all(client.send(TextMessage('{"type": "join", "channel": "chat:a"}')))
                elif isinstance(event, TextMessage):
                    texts.append(event.data)
    assert accepted
    assert '"welcome"' in texts[0] and '"joined"' in texts[1]
    await stream.aclose()


async def test_a_pong_of_the_same_size_with_the_wrong_payload_does_not_answer(nursery: trio.Nursery) -> None:
    # 8 bytes, like the server's ping payloads: the shortcut for whole pongs must compare them.
    _hub, client = await fast_heartbeats(nursery)
    with trio.fail_after(5):
        while not client.closes and not client.eof:
            for event in await client.next_events() or []:
                if isinstance(event, wsproto.events.Ping):
                    wrong = bytes(b ^ 0xFF for b in event.payload)
                    assert len(wrong) == 8
                    await client.stream.send_all(client.ws.send(Pong(payload=wrong)))
    assert client.closes == [CloseCode.HEARTBEAT_TIMEOUT]


async def test_a_pong_split_or_sent_with_a_message_still_answers(nursery: trio.Nursery) -> None:
    # Not the shortcut's shape (one whole pong alone): wsproto reads it.
    hub, client = await fast_heartbeats(nursery)
    pongs = 0
    with trio.move_on_after(1.5):
        while True:
            events = await client.next_events()
            assert events is not None, "the server closed the connection"
            for event in events:
                assert not isinstance(event, wsproto.events.CloseConnection), event
                if isinstance(event, wsproto.events.Ping):
                    pong = client.ws.send(event.response())
                    if pongs % 2:
                        await client.stream.send_all(pong[:5])
                        await trio.sleep(0.01)
                        await client.stream.send_all(pong[5:])
                    else:
                        await client.stream.send_all(pong + client.ws.send(TextMessage('{"type":"ping"}')))
                    pongs += 1
    assert pongs >= 6
    assert hub.statistics().connections == 1


def test_the_pong_shortcut_reads_a_masked_pong_as_wsproto_does() -> None:
    client = wsproto.connection.Connection(wsproto.ConnectionType.CLIENT)
    for payload in (b"\x00" * 8, b"\x01\x02\x03\x04\x05\x06\x07\x08", bytes(range(250, 256)) + b"ab"):
        frame = client.send(Pong(payload=payload))  # masked with a random key
        assert frame[:2] == _trio_websocket._PONG_HEAD and len(frame) == _trio_websocket._PONG_SIZE
        pong = _trio_websocket._Pong()
        pong.expect(payload)
        assert pong.answered_by(frame) and pong.is_set()
        assert not pong.answered_by(frame)  # answered once
        other = _trio_websocket._Pong()
        other.expect(bytes(b ^ 1 for b in payload))
        assert not other.answered_by(frame) and not other.is_set()
