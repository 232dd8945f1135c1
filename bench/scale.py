"""As many connections as one process may hold: what each costs, at 2,000 to 19,000.

    .venv/bin/python bench/scale.py                         # 2k, 5k, 10k, 19k connections
    .venv/bin/python bench/scale.py --levels 2000,5000      # fewer, quicker

For each level, a fresh ``bench/peer_server.py`` (the bare hub on
trio-websocket, heartbeats at their defaults: a ping every 25 s) pinned to
CPU 0, and load-generator processes on CPU 1, each on a source address of its
own (127.0.0.2, 127.0.0.3, ...: a process may hold at most 20,000
descriptors here, and one address 28,000 ports). Every connection joins
``user:<i mod 1000>`` and ``chat:all``. It prints one line per level and a
projection of the costs to 100,000 connections:

- connect+join rate (connections per second, all load generators together);
- server memory per connection (RSS after all joined minus before, over count);
- idle server CPU (% of a core) over 50 s with every connection open: two
  heartbeat rounds of pings and pongs (one every 25 s) fall into it;
- the time until one broadcast to ``chat:all`` has reached every connection,
  and how long the server's loop took, twice: read by clients that sleep
  until data comes, then by clients that spin (on loopback a write to a
  sleeping client also pays for waking it, which a remote client does not
  cost the server, and which doubled the time at 19,000);
- p50/p99 latency of 1,000 messages/s spread over the 1,000 ``user:*``
  channels for 10 s (each reaches its channel's connections), read by the
  same kind of epoll loop.

It asserts nothing; loopback only, bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from loadgen import PONG, control, cpu_seconds, masked_text, pin, rss_mib, running_server
from loadgen import Subscriber as Conn

HERE = Path(__file__).resolve().parent
CHANNELS = 1000
IDLE_SECONDS = 50  # two heartbeat rounds at the default interval
PER_WORKER = 5000  # connections per load-generator process (each holds one descriptor per connection)


# --- a load-generator process ------------------------------------------------------------


async def open_conn(port: int, source: str, channel: str) -> Conn:
    """One raw WebSocket client (loadgen's, which answers the server's pings)
    from ``source``, joined to ``channel`` and ``chat:all``."""
    conn = Conn()
    await conn.connect(port, channel, "chat:all", source=source)
    return conn


async def worker(port: int, source: str, first: int, count: int) -> None:
    """Holds ``count`` connections (numbered from ``first``); obeys commands on stdin."""
    conns: list[Conn] = []
    stdin = trio.lowlevel.FdStream(os.dup(0))
    lines = b""

    async def reply(obj: dict[str, object]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    async def command() -> str:
        nonlocal lines
        while b"\n" not in lines:
            chunk = await stdin.receive_some(4096)
            if not chunk:  # the coordinator is gone
                return "quit"
            lines += chunk
        line, lines = lines.split(b"\n", 1)
        return line.decode()

    while True:
        what = await command()
        if what == "connect":
            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                limit = trio.CapacityLimiter(200)
                for i in range(first, first + count):
                    nursery.start_soon(_connect_one, conns, limit, port, source, f"user:{i % CHANNELS}")
            await reply({"connected": len(conns), "seconds": time.perf_counter() - start})
        elif what.startswith("read"):
            # Read until each connection got ``expected`` messages (pings answered meanwhile).
            expected, seconds = int(what.split()[1]), float(what.split()[2])
            latencies: list[float] = []
            done_at: list[float] = []
            with trio.move_on_after(seconds):
                async with trio.open_nursery() as nursery:
                    for conn in conns:
                        nursery.start_soon(_drain, conn, expected, latencies, done_at)
            await reply({"complete": len(done_at), "last": max(done_at, default=0.0), "latencies": latencies})
        elif what.startswith("arrival"):
            # When one message reached every connection: read the raw sockets with an
            # epoll loop of its own (a task per connection costs the load generator more
            # per read than the server spends per delivery; this measures the server).
            await reply(_arrival(conns, float(what.split()[1]), spin=what.endswith("spin")))
        elif what.startswith("latency"):
            # Each connection's next ``expected`` messages, read as ``arrival`` reads.
            expected, seconds = int(what.split()[1]), float(what.split()[2])
            await reply(_latencies(conns, expected, seconds))
        elif what.startswith("idle"):
            # Keep answering pings for a while (the heartbeat round).
            with trio.move_on_after(float(what.split()[1])):
                async with trio.open_nursery() as nursery:
                    for conn in conns:
                        nursery.start_soon(_answer_pings, conn)
            await reply({"idle": True})
        elif what == "quit":
            return


async def _connect_one(conns: list[Conn], limit: trio.CapacityLimiter, port: int, source: str, channel: str) -> None:
    async with limit:
        conns.append(await open_conn(port, source, channel))


async def _drain(conn: Conn, expected: int, latencies: list[float], done_at: list[float]) -> None:
    got = 0
    while got < expected:
        for payload in await conn.frames():
            if b'"message"' in payload:
                got += 1
                stamp = json.loads(payload)["data"].get("ts")
                if stamp:
                    latencies.append(time.time() * 1000 - stamp)
    done_at.append(time.time())


def _arrival(conns: list[Conn], seconds: float, spin: bool) -> dict[str, object]:
    """Blocks this worker (it waits for nothing else) until every connection has
    received a ``message`` frame or ``seconds`` passed; the bytes read stay in each
    connection's buffer for its next ``frames()`` (pings included). ``spin``: poll
    without ever sleeping, so no write of the server's has to wake this process
    (on loopback the sender pays for that wake-up; a remote client costs it nothing)."""
    waiting: dict[int, Conn] = {}
    poller = select.epoll()
    for conn in conns:
        assert conn.stream is not None
        if b'"message"' not in conn.buffer:
            fd = conn.stream.socket.fileno()
            waiting[fd] = conn
            poller.register(fd, select.EPOLLIN)
    last, deadline = 0.0, time.monotonic() + seconds
    try:
        while waiting and time.monotonic() < deadline:
            for fd, _ in poller.poll(0 if spin else 0.1, 4096):
                conn = waiting[fd]
                try:
                    conn.buffer += os.read(fd, 262144)
                except BlockingIOError:
                    continue
                if b'"message"' in conn.buffer:
                    last = time.time()
                    poller.unregister(fd)
                    del waiting[fd]
    finally:
        poller.close()
    return {"complete": len(conns) - len(waiting), "last": last}


def _latencies(conns: list[Conn], expected: int, seconds: float) -> dict[str, object]:
    """Blocks this worker until each connection got ``expected`` messages (or
    ``seconds`` passed): their latencies (now minus their ``ts``), pings answered."""
    counts: dict[int, int] = {}
    by_fd: dict[int, Conn] = {}
    latencies: list[float] = []
    poller = select.epoll()
    for conn in conns:
        assert conn.stream is not None
        fd = conn.stream.socket.fileno()
        by_fd[fd], counts[fd] = conn, 0
        poller.register(fd, select.EPOLLIN)
    done, last, deadline = 0, 0.0, time.monotonic() + seconds
    try:
        while done < len(conns) and time.monotonic() < deadline:
            for fd, _ in poller.poll(0.1, 4096):
                conn = by_fd[fd]
                try:
                    conn.buffer += os.read(fd, 262144)
                except BlockingIOError:
                    continue
                now = time.time() * 1000
                payloads, pings = conn.take_frames()
                for payload in pings:
                    os.write(fd, masked_text(payload, PONG))
                for payload in payloads:
                    if b'"message"' in payload and counts[fd] < expected:
                        counts[fd] += 1
                        latencies.append(now - json.loads(payload)["data"]["ts"])
                        if counts[fd] == expected:
                            done, last = done + 1, time.time()
    finally:
        poller.close()
    return {"complete": done, "last": last, "latencies": latencies}


async def _answer_pings(conn: Conn) -> None:
    while True:
        await conn.frames()


# --- the coordinator -----------------------------------------------------------------------


class Workers:
    def __init__(self, port: int, total: int) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        first = 0
        for index, start in enumerate(range(0, total, PER_WORKER)):
            count = min(PER_WORKER, total - start)
            source = f"127.0.0.{index + 2}"
            command = [sys.executable, __file__, "--worker", str(port), source, str(first), str(count)]
            proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            self.procs.append(proc)
            first += count

    async def ask(self, command: str) -> list[dict[str, object]]:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(command + "\n")
            proc.stdin.flush()
        answers = []
        for proc in self.procs:
            assert proc.stdout is not None
            line = await trio.to_thread.run_sync(proc.stdout.readline)
            answers.append(json.loads(line))
        return answers

    def close(self) -> None:
        for proc in self.procs:
            try:
                assert proc.stdin is not None
                proc.stdin.write("quit\n")
                proc.stdin.flush()
            except OSError:
                pass
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


@asynccontextmanager
async def workers(port: int, total: int) -> AsyncIterator[Workers]:
    group = Workers(port, total)
    try:
        yield group
    finally:
        group.close()


async def level(total: int) -> dict[str, float]:
    async with running_server("tuned", "trio-websocket", cpu=0) as (pid, port):
        rss_before = rss_mib(pid)
        async with workers(port, total) as group:
            start = time.perf_counter()
            answers = await group.ask("connect")
            connect_s = time.perf_counter() - start
            connected = sum(int(a["connected"]) for a in answers)  # type: ignore[call-overload]
            await trio.sleep(2)
            rss_after = rss_mib(pid)
            # Idle: 50 s with every connection open: exactly two heartbeat rounds
            # (a ping every 25 s, whatever the phase), pongs included.
            cpu0 = cpu_seconds(pid)
            await group.ask(f"idle {IDLE_SECONDS}")
            idle_cpu = (cpu_seconds(pid) - cpu0) / IDLE_SECONDS
            # One broadcast to everyone: read by blocking clients, then by spinning ones.
            results: list[list[dict[str, object]]] = []

            async def read(expected: int, seconds: float) -> None:
                results.append(await group.ask(f"read {expected} {seconds}"))

            async def to_all(mode: str) -> tuple[int, float, float]:
                """Everyone reached, when the last was (after the request), the server's loop."""
                results.clear()
                async with trio.open_nursery() as nursery:

                    async def arrival() -> None:
                        results.append(await group.ask(f"arrival 30 {mode}"))

                    nursery.start_soon(arrival)
                    await trio.sleep(1)
                    sent = time.time()
                    loop = await control(port, "channel=chat:all&count=1&rate=0")
                reached = sum(int(a["complete"]) for a in results[0])  # type: ignore[call-overload]
                last = max(float(a["last"]) for a in results[0]) - sent  # type: ignore[arg-type]
                results.clear()
                await read(1, 30)  # the broadcast out of the buffers: the next phase starts clean
                return reached, last, loop["loop_ms"] / 1000

            everyone, all_s, loop_s = await to_all("block")
            everyone_spin, all_spin_s, loop_spin_s = await to_all("spin")
            # 1,000 messages/s over the 1,000 user channels, 10 s: each connection gets 10.
            results.clear()
            async with trio.open_nursery() as nursery:

                async def latency() -> None:
                    results.append(await group.ask("latency 10 40"))

                nursery.start_soon(latency)
                await trio.sleep(1)
                await control(port, f"prefix=user:&nch={CHANNELS}&count=10&rate=1&spread=1")
            latencies = sorted(x for a in results[0] for x in a["latencies"])  # type: ignore[attr-defined]
    return {
        "connections": connected,
        "connect+join per s": round(connected / connect_s),
        "KiB per connection": round((rss_after - rss_before) * 1024 / connected, 2),
        "idle CPU % of a core": round(100 * idle_cpu, 2),
        "one broadcast to all s": round(all_s, 3),
        "its server loop s": round(loop_s, 3),
        "to all, clients spinning s": round(all_spin_s, 3),
        "its server loop, clients spinning s": round(loop_spin_s, 3),
        "reached": min(everyone, everyone_spin),
        "p50 ms": round(statistics.median(latencies), 1) if latencies else -1,
        "p99 ms": round(latencies[int(len(latencies) * 0.99)], 1) if latencies else -1,
    }


async def main(levels: list[int]) -> None:
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} cpus={os.cpu_count()} python={sys.version.split()[0]}", flush=True)
    rows = []
    for total in levels:
        row = await level(total)
        rows.append(row)
        print(json.dumps(row), flush=True)
    top = rows[-1]
    factor = 100_000 / top["connections"]
    print(
        json.dumps(
            {
                "projected to 100,000 connections": True,
                "server MiB": round(top["KiB per connection"] * 100_000 / 1024),
                "idle CPU % of a core": round(top["idle CPU % of a core"] * factor, 1),
                "one broadcast to all s": round(top["one broadcast to all s"] * factor, 2),
                "to all, clients spinning s": round(top["to all, clients spinning s"] * factor, 2),
            }
        )
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        pin(1)
        port, source, first, count = sys.argv[2:6]
        trio.run(worker, int(port), source, int(first), int(count))
    else:
        parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--levels", default="2000,5000,10000,19000", help="connection counts, comma-separated")
        args = parser.parse_args()
        trio.run(main, [int(n) for n in args.levels.split(",")])
