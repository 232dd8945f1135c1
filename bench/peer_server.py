"""modelence-trio as a server for the shared fan-out harness (`jsonws` protocol).

    bench.py --server-cmd "/path/to/.venv/bin/python bench/peer_server.py --port {port}" --server-name modelence-trio
    bench.py --server-cmd ".../python bench/peer_server.py --transport hypercorn --port {port}" ...
    bench.py --server-cmd ".../python bench/peer_server.py --transport app --port {port}" ...

WebSocket clients join `chat:*` or `user:*` channels with protocol v1 (the
harness's join/joined/message frames are a subset of it). A plain HTTP
`GET /bench/broadcast?...` on the same port runs the broadcast loop the
harness's README describes, inside the server, through `ServerChannel.broadcast`,
and answers once it is done. Everything else on the port is the real
`serve_websocket` code path; with `--transport hypercorn` the real `App`
under hypercorn alone (ASGI, as plain `hypercorn` serves it), with the control
endpoint as a route in front of it; with `--transport app` the real `App`
served by `App.serve` (what the `modelence-trio` command runs: WebSockets on
the fast transport, HTTP through hypercorn), the control endpoint an HTTP
route of the app.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import hypercorn.config
import hypercorn.trio
import pymongo
import pymongo.monitoring
import trio

from modelence_trio import App, Hub, HubConfig, Module, MongoFanout, Presence, ServerChannel
from modelence_trio._asgi import Receive, Scope, Send
from modelence_trio._serve import serve_stream

PAD = "x" * 56
HEADERS_END = b"\r\n\r\n"

channels = {"chat": ServerChannel("chat"), "user": ServerChannel("user")}
if "--no-history" in sys.argv:  # the channels as before recovery existed: no offsets kept
    channels = {name: ServerChannel(name, history=None) for name in channels}
if "--presence" in sys.argv:  # every connection to chat:* is a member (bench/presence_storm.py)
    channels["chat"] = ServerChannel("chat", presence=Presence(anonymous=True))


async def run_broadcast(query: dict[str, list[str]]) -> dict[str, Any]:
    count = int(query.get("count", ["0"])[0])
    rate = float(query.get("rate", ["0"])[0])
    if "channel" in query:
        names = [query["channel"][0]]
    else:
        prefix = query.get("prefix", ["user:"])[0]
        names = [f"{prefix}{i}" for i in range(int(query.get("nch", ["0"])[0]))]
    targets = [(channels[name.partition(":")[0]], name.partition(":")[2]) for name in names]
    start = time.time()
    if "spread" in query and rate > 0:  # rate rounds/s, each message of a round at its own moment
        step = 1 / (rate * len(targets))
        for seq in range(count):
            for index, (channel, channel_id) in enumerate(targets):
                wait = start + (seq * len(targets) + index) * step - time.time()
                if wait > 0:
                    await trio.sleep(wait)
                channel.broadcast(channel_id, {"seq": seq, "ts": round(time.time() * 1000, 3), "pad": PAD})
        return {"ok": True, "rounds": count, "messages": count * len(targets), "loop_ms": (time.time() - start) * 1000}
    for seq in range(count):
        if rate > 0:
            wait = start + seq / rate - time.time()
            if wait > 0:
                await trio.sleep(wait)
        for channel, channel_id in targets:
            channel.broadcast(channel_id, {"seq": seq, "ts": round(time.time() * 1000, 3), "pad": PAD})
        if rate <= 0:
            await trio.sleep(0)
    loop_ms = (time.time() - start) * 1000
    return {"ok": True, "rounds": count, "messages": count * len(targets), "loop_ms": loop_ms}


def count_tasks(task: trio.lowlevel.Task) -> int:
    return 1 + sum(count_tasks(child) for nursery in task.child_nurseries for child in nursery.child_tasks)


def _rss_kib() -> int:
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))


class CommandCounter(pymongo.monitoring.CommandListener):
    """Counts the commands the fan-out sends to the database (bench/cross_instance.py)."""

    count = 0

    def started(self, event: pymongo.monitoring.CommandStartedEvent) -> None:
        CommandCounter.count += 1

    def succeeded(self, event: pymongo.monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: pymongo.monitoring.CommandFailedEvent) -> None:
        pass


def stats(hub: Hub, trim: bool = True) -> dict[str, float]:
    """What the soak test watches for growth."""
    gc.collect()  # count what is alive, not garbage the tuned collector has not reached yet
    hub_stats = hub.statistics()
    rss_kib = _rss_kib()
    # Memory the C allocator holds but no object uses (freed, not given back)
    # is not a leak: give it back and measure again to tell the two apart.
    if trim:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
    return {
        "rss_mib_after_trim": round(_rss_kib() / 1024, 1),
        "python_blocks": sys.getallocatedblocks(),
        "open_fds": len(os.listdir("/proc/self/fd")),
        "connections": hub_stats.connections,
        "channels": hub_stats.channels,
        "subscriptions": hub_stats.subscriptions,
        "tasks": count_tasks(root) if (root := trio.lowlevel.current_root_task()) else 0,
        "rss_mib": round(rss_kib / 1024, 1),
        "gc_objects": len(gc.get_objects()),
        "db_commands": CommandCounter.count,
    }


async def handle(hub: Hub, stream: trio.SocketStream) -> None:
    head = b""
    try:
        with trio.fail_after(hub.config.handshake_timeout):
            while HEADERS_END not in head and len(head) < 65536:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    await stream.aclose()
                    return
                head += chunk
    except (trio.TooSlowError, trio.BrokenResourceError):
        await trio.aclose_forcefully(stream)
        return
    target = head.split(b" ", 2)[1].decode("latin-1") if head.count(b" ") >= 2 else "/"
    url = urlsplit(target)
    if url.path.startswith("/bench/"):
        body = b"ok"
        if url.path == "/bench/broadcast":
            body = json.dumps(await run_broadcast(parse_qs(url.query))).encode()
        elif url.path == "/bench/stats":
            body = json.dumps(stats(hub, parse_qs(url.query).get("trim") != ["0"])).encode()
        response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
        response += b"Content-Length: %d\r\n\r\n" % len(body) + body
        try:
            await stream.send_all(response)
        finally:
            await trio.aclose_forcefully(stream)
        return
    await serve_stream(hub, stream, received=head)


#: Every load-generator client comes from loopback: no per-address limit, and as many
#: connections as the open-file limit allows (bench/scale.py holds 19,000).
BENCH_CONFIG = HubConfig(max_connections_per_address=None, max_connections=None)


def tune_gc(gc_mode: str) -> None:
    if gc_mode == "tuned":
        gc.collect()
        gc.freeze()
        gc.set_threshold(100_000, 50, 1000)


async def scrape_every(hub: Hub, seconds: float) -> None:
    """What a Prometheus scraper costs the server: the exposition of ``hub.metrics``
    built every ``seconds`` (``--scrape``), in the server's own Trio thread."""
    from prometheus_client import generate_latest

    while True:
        await trio.sleep(seconds)
        generate_latest(hub.metrics)


async def main(
    port: int,
    gc_mode: str,
    mongodb_uri: str | None = None,
    poll_interval: float = 0.05,
    ttl: float = 60,
    ttl_index: bool = False,
    scrape: float = 0.0,
) -> None:
    fanout = None
    if mongodb_uri:
        client: pymongo.MongoClient[Any] = pymongo.MongoClient(
            mongodb_uri,
            event_listeners=[CommandCounter()],
            serverSelectionTimeoutMS=2000,
            connectTimeoutMS=2000,
            socketTimeoutMS=10000,
        )
        fanout = MongoFanout(client, poll_interval=poll_interval, ttl=ttl, ttl_index=ttl_index)
    hub = Hub(channels.values(), config=BENCH_CONFIG, fanout=fanout)
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    tune_gc(gc_mode)
    print(f"modelence-trio peer server on port {port} (gc={gc_mode}, fan-out={bool(fanout)})", flush=True)

    async def handler(stream: trio.SocketStream) -> None:
        await handle(hub, stream)

    async with trio.open_nursery() as nursery:
        # As in production: heartbeats, history sweeps, and the fan-out's writer and poller (ready once it is).
        await nursery.start(hub.run)
        if scrape > 0:
            nursery.start_soon(scrape_every, hub, scrape)
        await trio.serve_listeners(handler, listeners)


class BenchApp(App):
    """The App with the control endpoint as one more HTTP route."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/bench/"):
            await super().__call__(scope, receive, send)
            return
        body = b"ok"
        if scope["path"] == "/bench/broadcast":
            body = json.dumps(await run_broadcast(parse_qs(scope["query_string"].decode()))).encode()
        elif scope["path"] == "/bench/stats":
            body = json.dumps(stats(self.hub)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def main_app(port: int, gc_mode: str, scrape: float = 0.0) -> None:
    """The App served by `App.serve`, as the `modelence-trio` command serves it."""
    app = BenchApp([Module("bench", channels=channels.values())], config=BENCH_CONFIG, websocket_path="/")
    tune_gc(gc_mode)
    print(f"modelence-trio peer server (App.serve) on port {port} (gc={gc_mode})", flush=True)
    async with trio.open_nursery() as nursery:
        if scrape > 0:
            nursery.start_soon(scrape_every, app.hub, scrape)
        await nursery.start(app.serve, "127.0.0.1", port)


async def main_hypercorn(port: int, gc_mode: str, scrape: float = 0.0) -> None:
    """The same, with the App under hypercorn: what `modelence-trio` and
    `hypercorn --worker-class trio` run."""
    app = App(
        [Module("bench", channels=channels.values())], config=BENCH_CONFIG, websocket_path="/"
    )  # the harness dials "/"

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/bench/"):
            await app(scope, receive, send)
            return
        body = b"ok"
        if scope["path"] == "/bench/broadcast":
            body = json.dumps(await run_broadcast(parse_qs(scope["query_string"].decode()))).encode()
        elif scope["path"] == "/bench/stats":
            body = json.dumps(stats(app.hub)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    config = hypercorn.config.Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.backlog = 4096
    tune_gc(gc_mode)
    print(f"modelence-trio peer server (hypercorn) on port {port} (gc={gc_mode})", flush=True)
    async with trio.open_nursery() as nursery:
        if scrape > 0:
            nursery.start_soon(scrape_every, app.hub, scrape)
        await hypercorn.trio.serve(asgi, config, mode="asgi")  # type: ignore[arg-type]
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--gc", choices=["default", "tuned"], default="tuned")
    parser.add_argument("--transport", choices=["trio-websocket", "hypercorn", "app"], default="trio-websocket")
    parser.add_argument("--mongodb-uri", help="share broadcasts with other instances through this MongoDB")
    parser.add_argument("--no-history", action="store_true", help="channels keep no recovery history (no offsets)")
    parser.add_argument("--poll-interval", type=float, default=0.05, help="fan-out poll interval, seconds")
    parser.add_argument("--ttl", type=float, default=60, help="fan-out TTL of stored broadcasts, seconds")
    parser.add_argument("--ttl-index", action="store_true", help="expire them with MongoDB's TTL index")
    parser.add_argument("--presence", action="store_true", help="chat:* channels have presence (anonymous members)")
    parser.add_argument(
        "--scrape", type=float, default=0.0, metavar="SECONDS", help="build the /metrics exposition every SECONDS"
    )
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        if args.transport == "hypercorn":
            trio.run(main_hypercorn, args.port, args.gc, args.scrape)
        elif args.transport == "app":
            trio.run(main_app, args.port, args.gc, args.scrape)
        else:
            trio.run(
                main, args.port, args.gc, args.mongodb_uri, args.poll_interval, args.ttl, args.ttl_index, args.scrape
            )
