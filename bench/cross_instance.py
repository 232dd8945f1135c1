"""Two instances on one MongoDB: broadcast-to-delivery latency and throughput across them.

    .venv/bin/python bench/cross_instance.py                    # 1,000 broadcasts/s for 10 s
    .venv/bin/python bench/cross_instance.py --rate 2000 --subscribers 200
    .venv/bin/python bench/cross_instance.py --db-delay 0.02  # a database 40 ms away
    MONGODB_URI=mongodb://... .venv/bin/python bench/cross_instance.py

Starts an nx-27017 wire server (unless ``MONGODB_URI`` is set) and two
``bench/peer_server.py --mongodb-uri`` instances. Subscribers join
``chat:room1`` on instance B; instance A broadcasts there at a fixed rate
(``ServerChannel.broadcast``, as an app would), so every delivery crossed the
database: A's writer stored it, B's poller found it. Prints the latency
(receive time minus the broadcast's timestamp), throughput and any loss,
duplicate or reordering, and the commands each instance sends to the
database per second (counted in the instance by pymongo's command
monitoring), idle (5 s before the run) and under load. With ``--db-delay``
each instance reaches the database through a TCP proxy that delays every
chunk, run in a process of its own: in the load generator's event loop it
would add that loop's own delays to every database request. It asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' TCP proxy
from fanout import fan_out
from loadgen import become_load_generator, cpu_seconds, free_port, pin, running_server, server_stats

from tests.proxy import Proxy


@contextmanager
def mongodb() -> Iterator[str]:
    """``MONGODB_URI``, or an nx-27017 started for the run; a fresh database either way."""
    database = f"bench_{uuid.uuid4().hex[:8]}"
    uri = os.environ.get("MONGODB_URI")
    if uri:
        base, _, query = uri.partition("?")
        yield f"{base.rstrip('/')}/{database}?{query}"
        return
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        server = subprocess.Popen(
            [
                os.path.join(os.path.dirname(sys.executable), "nx-27017"),
                "--db",
                "memory",
                "-p",
                str(port),
                "--log-file",
                f"{folder}/log",
                "--pid-file",
                f"{folder}/pid",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=lambda: pin(None),
        )
        try:
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), 1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            yield f"mongodb://127.0.0.1:{port}/{database}?directConnection=true"
        finally:
            server.terminate()
            server.wait(10)


@contextmanager
def delaying(uri: str, delay: float) -> Iterator[list[str]]:
    """Two URIs for ``uri`` through proxies that add ``delay`` each way, run
    in a child process (this script with ``--proxies``); none without a delay."""
    if not delay:
        yield [uri, uri]
        return
    child = subprocess.Popen(
        [sys.executable, __file__, "--proxies", uri, "--db-delay", str(delay)],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: pin(None),
    )
    try:
        assert child.stdout is not None
        yield json.loads(child.stdout.readline())
    finally:
        child.terminate()
        child.wait(10)


async def serve_proxies(uri: str, delay: float) -> None:
    """The child's side of :func:`delaying`: print the URIs, proxy until killed."""
    async with trio.open_nursery() as nursery:
        proxies = [Proxy(uri, delay=delay) for _ in range(2)]
        for proxy in proxies:
            await nursery.start(proxy.run)
        print(json.dumps([proxy.uri_through() for proxy in proxies]), flush=True)


async def commands(ports: list[int]) -> list[float]:
    """Database commands each instance has sent so far."""
    return [(await server_stats(port))["db_commands"] for port in ports]


async def run(args: argparse.Namespace, uris: list[str]) -> None:
    async with AsyncExitStack() as stack:
        ports, pids = [], []
        for uri in uris:
            options = ["--mongodb-uri", uri, "--poll-interval", str(args.poll_interval)]
            options += ["--ttl", str(args.ttl), *(["--ttl-index"] if args.ttl_index else [])]
            # Not pinned: two instances, the wire server and the load generator share two cores.
            pid, port = await stack.enter_async_context(running_server("tuned", "trio-websocket", *options, cpu=None))
            ports.append(port)
            pids.append(pid)
        await trio.sleep(2)
        marks, cpus = await commands(ports), [cpu_seconds(pid) for pid in pids]
        await trio.sleep(5)
        idle = [(n - mark) / 5 for n, mark in zip(await commands(ports), marks, strict=True)]
        idle_cpu = [(cpu_seconds(pid) - cpu) / 5 for pid, cpu in zip(pids, cpus, strict=True)]
        count = int(args.rate * args.duration)
        query = f"channel=chat:room1&count={count}&rate={args.rate}"
        start, marks, cpus = trio.current_time(), await commands(ports), [cpu_seconds(pid) for pid in pids]
        channels = ["chat:room1"] * args.subscribers
        result = await fan_out(ports[1], pids[1], channels, count, query, control_port=ports[0])
        took = trio.current_time() - start
        busy = [(n - mark) / took for n, mark in zip(await commands(ports), marks, strict=True)]
        busy_cpu = [(cpu_seconds(pid) - cpu) / took for pid, cpu in zip(pids, cpus, strict=True)]
        result["broadcasts/s offered"] = args.rate
        deliveries = result["deliveries/s"]
        assert isinstance(deliveries, int)
        result["broadcasts/s delivered"] = round(deliveries / args.subscribers)
        result["db commands/s idle (A, B)"] = [round(n) for n in idle]
        result["db commands/s under load (A, B)"] = [round(n) for n in busy]
        result["CPU % idle (A, B)"] = [round(100 * n, 1) for n in idle_cpu]
        result["CPU % under load (A, B)"] = [round(100 * n, 1) for n in busy_cpu]
        print(json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000, help="broadcasts per second from instance A")
    parser.add_argument("--duration", type=float, default=10, help="seconds")
    parser.add_argument("--subscribers", type=int, default=100, help="subscribers on instance B")
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--poll-interval", type=float, default=0.05, help="the fan-out's, in seconds")
    parser.add_argument("--ttl", type=float, default=60, help="the fan-out's TTL of stored broadcasts, in seconds")
    parser.add_argument("--ttl-index", action="store_true", help="expire with MongoDB's TTL index, not the purge")
    parser.add_argument("--db-delay", type=float, default=0.0, help="seconds added to each database message, each way")
    parser.add_argument("--proxies", metavar="URI", help=argparse.SUPPRESS)  # the child of delaying()
    args = parser.parse_args()
    if args.proxies:
        trio.run(serve_proxies, args.proxies, args.db_delay)
        return
    become_load_generator()
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} cpus={os.cpu_count()} python={sys.version.split()[0]}", flush=True)
    for _ in range(args.reps):
        with mongodb() as uri, delaying(uri, args.db_delay) as uris:
            trio.run(run, args, uris)


if __name__ == "__main__":
    main()
