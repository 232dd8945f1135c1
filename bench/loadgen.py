"""The raw WebSocket load generator the bench scripts share.

A minimal RFC 6455 client (no library) that joins a channel and checks every
delivery's ``seq`` for loss, duplicates and reordering, plus helpers to start
``peer_server.py`` pinned to a CPU and to read a process's CPU time and RSS.
"""

from __future__ import annotations

import base64
import json
import os
import re
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
SEQ_TS = re.compile(rb'"seq":(\d+),"ts":([0-9.]+)')
KEY = base64.b64encode(b"modelence-trio-bench").decode()


def become_load_generator() -> None:
    """Raise this process's descriptor limit and move it to CPU 1 (the server gets CPU 0)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    pin(1)


def pin(cpu: int | None) -> None:
    """Run on CPU ``cpu`` only, or on every CPU (``None``: undo an inherited pinning)."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)) if cpu is None else {cpu})


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def masked_text(payload: bytes, opcode: int = 0x1) -> bytes:
    mask = b"\x01\x02\x03\x04"
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + body


PING, PONG = 0x9, 0xA


class Subscriber:
    """One raw WebSocket client: joins, then checks seq order and records latency."""

    def __init__(self) -> None:
        self.stream: trio.SocketStream | None = None
        self.buffer = b""
        self.last = -1
        self.unique = 0
        self.dups = 0
        self.reorders = 0
        self.latencies: list[float] = []

    async def connect(self, port: int, channel: str, *more: str, source: str | None = None) -> None:
        """Handshake, join ``channel`` (and ``more``), wait for every ``joined``;
        ``source``: the local address to connect from (several spread the ports)."""
        if source is None:
            self.stream = await trio.open_tcp_stream("127.0.0.1", port)
        else:
            sock = trio.socket.socket()
            await sock.bind((source, 0))
            await sock.connect(("127.0.0.1", port))
            self.stream = trio.SocketStream(sock)
        request = (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await self.stream.send_all(request.encode())
        while b"\r\n\r\n" not in self.buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("server closed the connection during the handshake")
            self.buffer += data
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"handshake refused: {head[:80]!r}")
        joins = [json.dumps({"type": "join", "channel": name}).encode() for name in (channel, *more)]
        await self.stream.send_all(b"".join(masked_text(frame) for frame in joins))
        joined = 0
        while joined < len(joins):
            joined += sum(b'"joined"' in payload for payload in await self.frames())

    async def frames(self) -> list[bytes]:
        """The payloads of the next whole frames (read first when none is buffered),
        pings answered; empty when only pings came."""
        assert self.stream is not None
        out, pings = self.take_frames()
        while not out and not pings:
            data = await self.stream.receive_some(262144)
            if not data:
                raise EOFError("server closed the connection")
            self.buffer += data
            out, pings = self.take_frames()
        for payload in pings:
            await self.stream.send_all(masked_text(payload, PONG))
        return out

    def take_frames(self) -> tuple[list[bytes], list[bytes]]:
        """Take the whole frames out of the buffer: other payloads, and pings'."""
        buf = self.buffer
        out, pings, pos, size = [], [], 0, len(buf)
        while size - pos >= 2:
            length = buf[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length, start = int.from_bytes(buf[pos + 2 : pos + 4], "big"), pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length, start = int.from_bytes(buf[pos + 2 : pos + 10], "big"), pos + 10
            if size < start + length:
                break
            if buf[pos] & 0x0F == PING:  # the server's heartbeat: answer it, or runs past a minute end in 4003
                pings.append(buf[start : start + length])
            else:
                out.append(buf[start : start + length])
            pos = start + length
        self.buffer = buf[pos:]
        return out, pings

    async def receive(self, expected: int, stats: dict[str, float]) -> None:
        while self.unique < expected:
            payloads = await self.frames()
            now = time.time() * 1000
            for payload in payloads:
                match = SEQ_TS.search(payload)
                if match is None:
                    continue
                seq = int(match[1])
                if seq > self.last:
                    self.last = seq
                    self.unique += 1
                    self.latencies.append(now - float(match[2]))
                elif seq == self.last:
                    self.dups += 1
                else:
                    self.reorders += 1
            stats["last"] = now
            stats["deliveries"] += len(payloads)


async def control(port: int, query: str) -> dict[str, float]:
    """Run a broadcast loop in the server (see peer_server.py); returns when it is done."""
    return await http_get(port, f"/bench/broadcast?{query}")


async def http_get(port: int, target: str) -> dict[str, float]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    await stream.aclose()
    result: dict[str, float] = json.loads(data.split(b"\r\n\r\n", 1)[1])
    return result


async def open_subscribers(port: int, channels: list[str]) -> list[Subscriber]:
    subscribers = [Subscriber() for _ in channels]
    limit = trio.CapacityLimiter(100)

    async def one(sub: Subscriber, channel: str) -> None:
        async with limit:
            await sub.connect(port, channel)

    async with trio.open_nursery() as nursery:
        for sub, channel in zip(subscribers, channels, strict=True):
            nursery.start_soon(one, sub, channel)
    return subscribers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def running_server(
    gc_mode: str = "tuned",
    transport: str = "trio-websocket",
    *extra: str,
    cpu: int | None = 0,
    root: Path | None = None,
) -> AsyncIterator[tuple[int, int]]:
    """Run ``peer_server.py`` on a free port, pinned to ``cpu`` (``None``: not
    pinned); yields its pid and port once it accepts connections, and stops it afterwards.
    ``root``: another checkout (another commit), whose ``bench/peer_server.py``
    runs with that checkout's ``modelence_trio`` (``PYTHONPATH``)."""
    port = free_port()
    env = None if root is None else {**os.environ, "PYTHONPATH": str(root)}
    server = subprocess.Popen(
        [
            sys.executable,
            str((root / "bench" if root is not None else HERE) / "peer_server.py"),
            "--port",
            str(port),
            "--gc",
            gc_mode,
            "--transport",
            transport,
            *extra,
        ],
        preexec_fn=lambda: pin(cpu),
        stdout=subprocess.DEVNULL,
        env=env,
    )
    try:
        for _ in range(200):
            try:
                (await trio.open_tcp_stream("127.0.0.1", port)).socket.close()
                break
            except OSError:
                await trio.sleep(0.05)
        await trio.sleep(0.5)
        yield server.pid, port
    finally:
        server.terminate()
        server.wait(10)


async def server_stats(port: int, *, trim: bool = True) -> dict[str, float]:
    """The server's own view: connections, subscriptions, tasks, RSS.
    ``trim``: also give freed C-allocator memory back and measure again
    (``rss_mib_after_trim``); that changes the process, so a run whose RSS
    is watched over time asks without it."""
    return await http_get(port, "/bench/stats" if trim else "/bench/stats?trim=0")
