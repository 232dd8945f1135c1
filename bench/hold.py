"""Hold many joined connections on one instance, broadcast to them, report the cost.

    .venv/bin/python bench/hold.py --conns 5000 --messages 10

Every connection joins ``chat:all``; the server then broadcasts
``--messages`` messages to it, as fast as it can. Prints the time to connect
and join them all, server RSS per connection, the time until every connection
had every message, and any loss. Raises the descriptor limit for itself.
"""

from __future__ import annotations

import argparse
import json
import time

import trio
from loadgen import Subscriber, become_load_generator, control, open_subscribers, rss_mib, running_server, server_stats


async def main(conns: int, messages: int) -> None:
    async with running_server() as (pid, port):
        before = rss_mib(pid)
        start = time.perf_counter()
        subs: list[Subscriber] = await open_subscribers(port, ["chat:all"] * conns)
        connect_s = time.perf_counter() - start
        await trio.sleep(2)
        after = rss_mib(pid)
        stats = await server_stats(port)
        counters = {"last": 0.0, "deliveries": 0.0}
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for sub in subs:
                nursery.start_soon(sub.receive, messages, counters)
            await control(port, f"channel=chat:all&count={messages}&rate=0")
        deliver_s = time.perf_counter() - start
        print(
            json.dumps(
                {
                    "connections": conns,
                    "connect+join s": round(connect_s, 2),
                    "server RSS MiB before/after": [round(before, 1), round(after, 1)],
                    "KiB per joined connection": round((after - before) * 1024 / conns, 2),
                    "server tasks": stats["tasks"],
                    "broadcast messages": messages,
                    "all delivered after s": round(deliver_s, 2),
                    "lost": conns * messages - sum(s.unique for s in subs),
                    "dups+reorders": sum(s.dups + s.reorders for s in subs),
                }
            )
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conns", type=int, default=5000)
    parser.add_argument("--messages", type=int, default=10)
    args = parser.parse_args()
    become_load_generator()
    trio.run(main, args.conns, args.messages)
