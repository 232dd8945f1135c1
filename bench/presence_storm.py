"""A join storm on one presence channel: what watchers receive, and what it costs.

    .venv/bin/python bench/presence_storm.py                      # 100 watchers, then 5,000 joins
    .venv/bin/python bench/presence_storm.py --joins 2000 --watchers 50

Starts ``bench/peer_server.py --presence`` (``chat:*`` has presence, every
connection a member) pinned to CPU 0 and drives it from CPU 1 with raw
WebSocket clients: ``--watchers`` connections join ``chat:room`` and read
its ``presence_state`` and ``presence_diff`` frames; then ``--joins`` more
connections join it as fast as the load generator can (100 handshakes at
once). Prints how long the storm took, the ``presence_diff`` frames each
watcher received (and per second), how long until every watcher's state was
complete (its member count reached the total), and the server's CPU during
the storm. ``--baseline`` runs the same storm on ``user:room``, a channel
without presence (the watchers then only time it): the difference is what
presence costs. It asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import trio
from loadgen import Subscriber, become_load_generator, cpu_seconds, open_subscribers, running_server


class Watcher:
    """A subscriber that keeps the channel's member count from presence frames."""

    def __init__(self, sub: Subscriber) -> None:
        self.sub = sub
        self.count = 0
        self.diffs = 0
        self.complete_at = 0.0

    async def watch(self, total: int) -> None:
        while self.count < total:
            for payload in await self.sub.frames():
                frame = json.loads(payload)
                if frame.get("type") == "presence_diff":
                    self.diffs += 1
                if frame.get("type") in ("presence_state", "presence_diff"):
                    self.count = frame["count"]
        self.complete_at = time.perf_counter()


async def main(watchers: int, joins: int, baseline: bool) -> None:
    channel = "user:room" if baseline else "chat:room"
    async with running_server("tuned", "trio-websocket", "--presence") as (pid, port):
        watching = [Watcher(sub) for sub in await open_subscribers(port, [channel] * watchers)]
        total = watchers + joins
        cpu_before = cpu_seconds(pid)
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            if not baseline:
                for watcher in watching:
                    nursery.start_soon(watcher.watch, total)
            storm = await open_subscribers(port, [channel] * joins)
            storm_s = time.perf_counter() - start
        if baseline:
            cpu_s = cpu_seconds(pid) - cpu_before
            print(
                json.dumps(
                    {
                        "baseline (no presence)": True,
                        "joins": joins,
                        "storm s": round(storm_s, 2),
                        "server CPU s": round(cpu_s, 2),
                    }
                )
            )
            return
        complete_s = max(w.complete_at for w in watching) - start
        cpu_s = cpu_seconds(pid) - cpu_before
        diffs = [w.diffs for w in watching]
        print(
            json.dumps(
                {
                    "watchers": watchers,
                    "joins": joins,
                    "storm (connect+join) s": round(storm_s, 2),
                    "every watcher complete after s": round(complete_s, 2),
                    "diff frames per watcher (mean, max)": [round(statistics.mean(diffs), 1), max(diffs)],
                    "diff frames per watcher per s": round(statistics.mean(diffs) / complete_s, 1),
                    "server CPU s (per s of storm)": [round(cpu_s, 2), round(cpu_s / complete_s, 2)],
                }
            )
        )
        del storm


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--joins", type=int, default=5000)
    parser.add_argument("--baseline", action="store_true", help="the same storm on a channel without presence")
    args = parser.parse_args()
    become_load_generator()
    trio.run(main, args.watchers, args.joins, args.baseline)
