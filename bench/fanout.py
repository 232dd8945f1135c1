"""Fan-out benchmark of modelence-trio: W1-W4, self-contained.

    .venv/bin/python bench/fanout.py                  # all workloads
    .venv/bin/python bench/fanout.py --workloads w1,w4 --n 500
    .venv/bin/python bench/fanout.py --workloads w1,w3 --variants before,after,scraped --before /tmp/base \
        --reps 5                                      # metrics: another commit, this one, scraped every 1 s

Starts ``bench/peer_server.py`` (the real ``serve_websocket`` path; with
``--transports app`` the App under ``App.serve``, with ``hypercorn`` the App
under hypercorn alone) pinned to CPU 0 and drives it from this process pinned to CPU 1 with a minimal raw
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
import json
import os
import statistics
import sys
import time
from pathlib import Path

import trio
from loadgen import become_load_generator, control, cpu_seconds, open_subscribers, rss_mib, running_server


async def fan_out(
    port: int, pid: int, channels: list[str], rounds: int, query: str, control_port: int | None = None
) -> dict[str, object]:
    """Subscribers on ``port``; the broadcasts run in the server on ``control_port`` (default: the same)."""
    control_port = control_port or port
    subs = await open_subscribers(port, channels)
    await control(control_port, query.replace(f"count={rounds}", "count=1"))  # warm-up round, not counted
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
            loop = await control(control_port, query)
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


#: ``--variants``: which server each run starts. ``before``: ``--before``'s checkout
#: (another commit); ``after``: this one; ``scraped``: this one, building its
#: ``/metrics`` exposition every second (``peer_server.py --scrape 1``).
VARIANTS = ("after", "before", "scraped")


async def run(args: argparse.Namespace) -> None:
    variants = args.variants.split(",")
    if unknown := set(variants) - set(VARIANTS):
        raise SystemExit(f"unknown variants {sorted(unknown)}: choose from {VARIANTS}")
    if "before" in variants and args.before is None:
        raise SystemExit("--variants before needs --before DIR (a checkout of the commit to compare with)")
    for rep in range(args.reps):  # rep -> workload -> transport -> variant: drift hits every variant alike
        for workload in args.workloads.split(","):
            for transport in args.transports.split(","):
                for variant in variants:
                    await run_one(args, workload, transport, variant, rep)


async def run_one(
    args: argparse.Namespace, workload: str, transport: str, variant: str = "after", rep: int = 0
) -> None:
    root = Path(args.before) if variant == "before" else None
    extra = ("--scrape", "1") if variant == "scraped" else ()
    async with running_server(args.gc, transport, *extra, root=root) as (pid, port):
        n = args.n
        if workload == "w1":
            result = await fan_out(port, pid, ["chat:room1"] * n, args.m, f"channel=chat:room1&count={args.m}&rate=0")
        elif workload == "w2":
            count = int(args.rate * args.duration)
            query = f"channel=chat:room1&count={count}&rate={args.rate}"
            result = await fan_out(port, pid, ["chat:room1"] * n, count, query)
        elif workload == "w3":
            query = f"prefix=user:&nch={n}&count={args.rounds}&rate=0"
            result = await fan_out(port, pid, [f"user:{i}" for i in range(n)], args.rounds, query)
        elif workload == "w4":
            result = await idle(port, pid, args.conns)
        else:
            raise SystemExit(f"unknown workload {workload!r}")
        label = f"{variant} rep{rep}" if args.variants != "after" else ""
        print(workload, transport, *([label] if label else []), json.dumps(result), flush=True)


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
    parser.add_argument(
        "--transports",
        default="trio-websocket,app,hypercorn",
        help="comma-separated: trio-websocket (the bare hub), app (the App under App.serve), hypercorn (the App "
        "under hypercorn alone)",
    )
    parser.add_argument("--variants", default="after", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--before", metavar="DIR", help="a checkout of the commit the 'before' variant runs")
    parser.add_argument("--reps", type=int, default=1, help="repetitions of everything, interleaved")
    args = parser.parse_args()
    become_load_generator()
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} cpus={os.cpu_count()} python={sys.version.split()[0]}", flush=True)
    trio.run(run, args)


if __name__ == "__main__":
    main()
