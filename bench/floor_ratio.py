"""The bare hub against the floor, in one process, on the same sockets.

    .venv/bin/python bench/floor_ratio.py                 # W1 and W3, history on and off
    .venv/bin/python bench/floor_ratio.py --clients 500 --rounds 20

The shared harness's floor peer is a raw selector loop: per message the JSON,
the frame and one ``send`` per subscriber, with nothing else. Here that loop
and ``ServerChannel.broadcast`` take turns, round by round, writing to the
same server-side sockets of real WebSocket connections (the bare hub's
``serve_websocket``; the clients are trio tasks of this process that read and
drop what comes), so the machine's drift and the clients' cost fall on both
alike. W1: one channel, every client joined. W3: a channel per client, one
message each per round. Every client must get every message of both loops.
It prints microseconds per delivery of each and their
ratio (floor / hub: 1.0 is the floor's speed), the synchronous loops only.

What the harness adds on top (a load generator on the other core, which
sleeps whenever the server is slower than it, so each write also pays for
waking it) is not here: this is the server's own cost. It reaches into the
hub's registry and transports (internals) for the sockets: a benchmark, not
an example.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import masked_text

from modelence_trio import Hub, HubConfig, ServerChannel
from modelence_trio._serve import serve_websocket

PAD = "x" * 56
UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
# The floor's encoder, as the harness's p0_floor.py builds it.
floor_dumps = json.JSONEncoder(separators=(",", ":")).encode


def floor_frame(payload: bytes) -> bytes:
    n = len(payload)
    return (bytes((0x81, n)) if n < 126 else struct.pack("!BBH", 0x81, 126, n)) + payload


class FloorConn:
    """p0_floor.py's connection: one non-blocking ``send``, a backlog only when
    the kernel's buffer is full (here never flushed: the clients keep up)."""

    __slots__ = ("out", "sock")

    def __init__(self, fd: int) -> None:
        # A duplicate of the hub's descriptor: the same socket, closed on its own.
        self.sock = socket.socket(fileno=os.dup(fd))
        self.sock.setblocking(False)
        self.out = bytearray()

    def send(self, data: bytes) -> None:
        if self.out:
            self.out += data
            return
        try:
            n = self.sock.send(data)
        except BlockingIOError:
            n = 0
        if n < len(data):
            self.out += data[n:]


async def count_messages(stream: trio.SocketStream, counts: list[int], index: int) -> None:
    """Read the server's (unmasked, unfragmented) frames and count the ``message`` ones."""
    buffer = b""
    while chunk := await stream.receive_some(65536):
        buffer += chunk
        while len(buffer) >= 2:
            length, start = buffer[1] & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    break
                length, start = int.from_bytes(buffer[2:4], "big"), 4
            if len(buffer) < start + length:
                break
            if buffer[start : start + 17] == b'{"type":"message"':
                counts[index] += 1
            buffer = buffer[start + length :]


async def measure(workload: str, history: bool, clients: int, rounds: int) -> tuple[float, float]:
    """Microseconds per delivery: the floor's loop, then the hub's."""
    channel: ServerChannel[Any] = ServerChannel("user") if history else ServerChannel("user", history=None)
    hub = Hub([channel], config=HubConfig(max_connections_per_address=None, max_connections=None))
    counts = [0] * clients  # message frames each client received
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.run)
        port = await nursery.start(serve_websocket, hub, "127.0.0.1", 0)
        for i in range(clients):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(UPGRADE)
            received = b""
            while b"\r\n\r\n" not in received:
                received += await stream.receive_some(65536)
            name = f"user:{i}" if workload == "w3" else "user:all"
            await stream.send_all(masked_text(json.dumps({"type": "join", "channel": name}).encode()))
            while b'"joined"' not in received:
                received += await stream.receive_some(65536)
            nursery.start_soon(count_messages, stream, counts, i)
        await trio.sleep(0.2)
        registry: Any = hub._router.registry  # internals: the server side of each connection
        floor_conns = {
            name: {FloorConn(conn.transport._stream.write_socket.fileno()) for conn in entry.subscribers}
            for name, entry in registry._by_channel.items()
        }
        ids = [str(i) for i in range(clients)] if workload == "w3" else ["all"]
        names = [f"user:{i}" for i in ids]
        floor = hub_time = 0.0
        for seq in range(rounds):
            for turn in ("floor", "hub") if seq % 2 else ("hub", "floor"):
                start = time.perf_counter()
                if turn == "hub":
                    for channel_id in ids:
                        channel.broadcast(channel_id, {"seq": seq, "ts": round(time.time() * 1000, 3), "pad": PAD})
                    hub_time += time.perf_counter() - start
                else:
                    for name in names:
                        data = {"seq": seq, "ts": round(time.time() * 1000, 3), "pad": PAD}
                        wire = floor_frame(floor_dumps({"type": "message", "channel": name, "data": data}).encode())
                        for conn in tuple(floor_conns[name]):
                            conn.send(wire)
                    floor += time.perf_counter() - start
                await trio.sleep(0.01)  # the clients read
        with trio.move_on_after(10):
            while sum(counts) < 2 * clients * rounds:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    for conns in floor_conns.values():
        for conn in conns:
            conn.sock.close()
    # Each client got every message of both loops (none lost, none extra).
    assert counts == [2 * rounds] * clients, f"deliveries missing: {sorted(set(counts))}"
    deliveries = clients * rounds
    return floor / deliveries * 1e6, hub_time / deliveries * 1e6


async def main(clients: int, rounds: int) -> None:
    print(f"{clients} clients, {rounds} rounds each; microseconds per delivery (the floor / the hub = ratio)")
    for workload, history in (("w1", True), ("w3", True), ("w3", False)):
        floor, hub = await measure(workload, history, clients, rounds)
        label = f"{workload.upper()}, history {'on' if history else 'off'}"
        print(f"{label:18} floor {floor:6.2f}  hub {hub:6.2f}  ratio {floor / hub:.2f}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    trio.run(main, args.clients, args.rounds)
