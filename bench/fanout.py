"""Fan-out benchmark of modelence-trio: W1-W4, self-contained.

    .venv/bin/python bench/fanout.py                  # all workloads
    .venv/bin/python bench/fanout.py --workloads w1,w4 --n 500

Starts ``bench/peer_server.py`` (the real ``serve_websocket`` path) pinned to
CPU 0 and drives it from this process pinned to CPU 1 with a minimal raw
WebSocket client written for the purpose (RFC 6455 framing, no library), so
the numbers measure the server, as far as one Python load generator allows:
watch its CPU column. It prints numbers; it asserts nothing. For the
side-by-side comparison with Node's Socket.IO and the other peers, use the
shared harness (bench/README.md).

W1: 1 channel, N subscribers, M messages as fast as possible.
W2: 1 channel, N subscribers, R messages/s for D seconds (latency).
W3: N connections each on its own channel, K rounds of one message each.
W4: C idle joined connections: server RSS per connection.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import trio

HERE = Path(__file__).resolve().parent
SEQ_TS = re.compile(rb'"seq":(\d+),"ts":([0-9.]+)')
KEY = base64.b64encode(b"modelence-trio-bench").decode()


def pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {cpu})


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def masked_text(payload: bytes) -> bytes:
    mask = b"\x01\x02\x03\x04"
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes((0x81, 0x80 | len(payload))) + mask + body


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

    async def connect(self, port: int, channel: str) -> None:
        self.stream = await trio.open_tcp_stream("127.0.0.1", port)
        request = (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await self.stream.send_all(request.encode())
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += await self.stream.receive_some(65536)
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"handshake refused: {head[:80]!r}")
        await self.stream.send_all(masked_text(json.dumps({"type": "join", "channel": channel}).encode()))
        while True:
            for payload in await self.frames():
                if b'"joined"' in payload:
                    return

    async def frames(self) -> list[bytes]:
        assert self.stream is not None
        data = await self.stream.receive_some(262144)
        if not data:
            raise EOFError("server closed the connection")
        buf = self.buffer + data
        out, pos, size = [], 0, len(buf)
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
            out.append(buf[start : start + length])
            pos = start + length
        self.buffer = buf[pos:]
        return out

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
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(f"GET /bench/broadcast?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
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


async def fan_out(port: int, pid: int, channels: list[str], rounds: int, query: str) -> dict[str, object]:
    subs = await open_subscribers(port, channels)
    await control(port, query.replace(f"count={rounds}", "count=1"))  # warm-up round, not counted
    for sub in subs:
        while sub.unique < 1:
            await sub.receive(1, {"last": 0.0, "deliveries": 0})
        sub.last, sub.unique, sub.latencies = -1, 0, []
    stats = {"last": 0.0, "deliveries": 0.0}
    cpu0, own0 = cpu_seconds(pid), time.process_time()
    start = time.time() * 1000
    with trio.move_on_after(120):
        async with trio.open_nursery() as nursery:
            for sub in subs:
                nursery.start_soon(sub.receive, rounds, stats)
            loop = await control(port, query)
    wall = (stats["last"] - start) / 1000
    server_cpu, own_cpu = cpu_seconds(pid) - cpu0, time.process_time() - own0
    unique = sum(s.unique for s in subs)
    latencies = sorted(x for s in subs for x in s.latencies)
    for sub in subs:
        assert sub.stream is not None
        await sub.stream.aclose()
    return {
        "deliveries/s": round(unique / wall) if wall > 0 else 0,
        "wall s": round(wall, 3),
        "p50 ms": round(statistics.median(latencies), 1) if latencies else None,
        "p99 ms": round(latencies[int(len(latencies) * 0.99)], 1) if latencies else None,
        "max ms": round(latencies[-1], 1) if latencies else None,
        "lost": len(subs) * rounds - unique,
        "dups": sum(s.dups for s in subs),
        "reorders": sum(s.reorders for s in subs),
        "server loop s": round(loop["loop_ms"] / 1000, 2),
        "server CPU %": round(100 * server_cpu / wall) if wall > 0 else None,
        "loadgen CPU %": round(100 * own_cpu / wall) if wall > 0 else None,
    }


async def idle(port: int, pid: int, conns: int) -> dict[str, object]:
    before = rss_mib(pid)
    start = time.perf_counter()
    subs = await open_subscribers(port, [f"user:{i}" for i in range(conns)])
    connect_s = time.perf_counter() - start
    await trio.sleep(2)
    after = rss_mib(pid)
    for sub in subs:
        assert sub.stream is not None
        await sub.stream.aclose()
    return {
        "KiB/conn": round((after - before) * 1024 / conns, 2),
        "RSS MiB before": round(before, 1),
        "RSS MiB after": round(after, 1),
        "connect+join s": round(connect_s, 2),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def run(args: argparse.Namespace) -> None:
    for workload in args.workloads.split(","):
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, str(HERE / "peer_server.py"), "--port", str(port), "--gc", args.gc],
            preexec_fn=lambda: pin(0),
            stdout=subprocess.DEVNULL,
        )
        try:
            for _ in range(100):
                try:
                    (await trio.open_tcp_stream("127.0.0.1", port)).socket.close()
                    break
                except OSError:
                    await trio.sleep(0.05)
            await trio.sleep(0.5)
            n = args.n
            if workload == "w1":
                result = await fan_out(
                    port, server.pid, ["chat:room1"] * n, args.m, f"channel=chat:room1&count={args.m}&rate=0"
                )
            elif workload == "w2":
                count = int(args.rate * args.duration)
                query = f"channel=chat:room1&count={count}&rate={args.rate}"
                result = await fan_out(port, server.pid, ["chat:room1"] * n, count, query)
            elif workload == "w3":
                query = f"prefix=user:&nch={n}&count={args.rounds}&rate=0"
                result = await fan_out(port, server.pid, [f"user:{i}" for i in range(n)], args.rounds, query)
            elif workload == "w4":
                result = await idle(port, server.pid, args.conns)
            else:
                raise SystemExit(f"unknown workload {workload!r}")
            print(workload, json.dumps(result), flush=True)
        finally:
            server.terminate()
            server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="w1,w2,w3,w4")
    parser.add_argument("--n", type=int, default=1000, help="subscribers in W1-W3")
    parser.add_argument("--m", type=int, default=200, help="messages in W1")
    parser.add_argument("--rate", type=float, default=50, help="messages/s in W2")
    parser.add_argument("--duration", type=float, default=10, help="seconds of W2")
    parser.add_argument("--rounds", type=int, default=20, help="rounds in W3")
    parser.add_argument("--conns", type=int, default=5000, help="idle connections in W4")
    parser.add_argument("--gc", choices=["tuned", "default"], default="tuned")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    pin(1)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} cpus={os.cpu_count()} python={sys.version.split()[0]}", flush=True)
    trio.run(run, args)


if __name__ == "__main__":
    main()
