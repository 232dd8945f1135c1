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
duplicate or reordering, and the requests each instance sends to the
database per second, idle (5 s before the run) and under load. Each
instance reaches the database through a TCP proxy that counts them and can
add a delay. It asserts nothing.
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
from loadgen import become_load_generator, free_port, pin, running_server

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


async def run(args: argparse.Namespace, uri: str) -> None:
    async with AsyncExitStack() as stack:
        nursery = await stack.enter_async_context(trio.open_nursery())
        # Each instance reaches the database through its own proxy: it adds
        # --db-delay each way and counts the requests (client-to-server chunks).
        proxies = [Proxy(uri, delay=args.db_delay) for _ in range(2)]
        for proxy in proxies:
            await nursery.start(proxy.run)
        ports, pids = [], []
        for proxy in proxies:
            options = ["--mongodb-uri", proxy.uri_through(), "--poll-interval", str(args.poll_interval)]
            options += ["--ttl", str(args.ttl), *(["--ttl-index"] if args.ttl_index else [])]
            # Not pinned: two instances, the wire server and the load generator share two cores.
            pid, port = await stack.enter_async_context(running_server("tuned", "trio-websocket", *options, cpu=None))
            ports.append(port)
            pids.append(pid)
        await trio.sleep(2)
        marks = [proxy.requests for proxy in proxies]
        await trio.sleep(5)
        idle = [(proxy.requests - mark) / 5 for proxy, mark in zip(proxies, marks, strict=True)]
        count = int(args.rate * args.duration)
        query = f"channel=chat:room1&count={count}&rate={args.rate}"
        start, marks = trio.current_time(), [proxy.requests for proxy in proxies]
        channels = ["chat:room1"] * args.subscribers
        result = await fan_out(ports[1], pids[1], channels, count, query, control_port=ports[0])
        took = trio.current_time() - start
        busy = [(proxy.requests - mark) / took for proxy, mark in zip(proxies, marks, strict=True)]
        result["broadcasts/s offered"] = args.rate
        deliveries = result["deliveries/s"]
        assert isinstance(deliveries, int)
        result["broadcasts/s delivered"] = round(deliveries / args.subscribers)
        result["db requests/s idle (A, B)"] = [round(n) for n in idle]
        result["db requests/s under load (A, B)"] = [round(n) for n in busy]
        print(json.dumps(result), flush=True)
        nursery.cancel_scope.cancel()


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
    args = parser.parse_args()
    become_load_generator()
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} cpus={os.cpu_count()} python={sys.version.split()[0]}", flush=True)
    for _ in range(args.reps):
        with mongodb() as uri:
            trio.run(run, args, uri)


if __name__ == "__main__":
    main()
