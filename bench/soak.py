"""Soak: clients connect, join, leave and disconnect continuously while broadcasts run.

    .venv/bin/python bench/soak.py --minutes 10

``--workers`` client loops each repeat: connect, join 1-3 random channels of
``user:0..49``, stay for a random moment while broadcasts arrive, leave one,
disconnect. Meanwhile the server broadcasts to all 50 channels 20 times a
second. Prints the server's connections, tasks, RSS and live objects after a
warm-up and at the end, once every client has gone; neither tasks nor
connections may grow, and memory should not. Stops by itself.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import trio
from loadgen import Subscriber, become_load_generator, control, masked_text, running_server, server_stats

CHANNELS = 50


async def client_loop(port: int, deadline: float, counts: dict[str, int]) -> None:
    rng = random.Random()
    while trio.current_time() < deadline:
        sub = Subscriber()
        channels = rng.sample(range(CHANNELS), rng.randint(1, 3))
        try:
            await sub.connect(port, f"user:{channels[0]}")
            assert sub.stream is not None
            for extra in channels[1:]:
                await sub.stream.send_all(_join(f"user:{extra}"))
            with trio.move_on_after(rng.uniform(0.05, 0.5)):
                while True:
                    counts["frames"] += len(await sub.frames())
            await sub.stream.send_all(_leave(f"user:{channels[-1]}"))
            counts["cycles"] += 1
        except Exception as exc:  # counted and reported, never hidden
            counts["errors"] += 1
            counts[f"error {type(exc).__name__}"] = counts.get(f"error {type(exc).__name__}", 0) + 1
        finally:
            if sub.stream is not None:
                await sub.stream.aclose()


def _join(channel: str) -> bytes:
    return masked_text(json.dumps({"type": "join", "channel": channel}).encode())


def _leave(channel: str) -> bytes:
    return masked_text(json.dumps({"type": "leave", "channel": channel}).encode())


async def broadcaster(port: int, deadline: float) -> None:
    while trio.current_time() < deadline:
        await control(port, f"prefix=user:&nch={CHANNELS}&count=20&rate=20")


async def report_every_minute(port: int, deadline: float, samples: list[dict[str, float]]) -> None:
    began = trio.current_time()
    while trio.current_time() + 60 < deadline:
        await trio.sleep(60)
        sample = await server_stats(port, trim=False)  # nothing given back between samples
        sample["minute"] = round((trio.current_time() - began) / 60)
        samples.append(sample)
        print("during", json.dumps(sample), flush=True)


def flatness(samples: list[dict[str, float]]) -> dict[str, float]:
    """How flat RSS was over the second half of the run: (max - min) / mean, in %."""
    half = samples[len(samples) // 2 :]
    out: dict[str, float] = {}
    for key in ("rss_mib",):
        values = [sample[key] for sample in half]
        if values:
            out[f"{key} second half: min"] = min(values)
            out[f"{key} second half: max"] = max(values)
            out[f"{key} second half: spread %"] = round(100 * (max(values) - min(values)) / statistics.mean(values), 1)
    return out


async def settle(port: int) -> dict[str, float]:
    for _ in range(50):
        if (await server_stats(port))["connections"] == 0:
            break
        await trio.sleep(0.2)
    # Trio drops a finished timeout from its deadline heap when the deadline
    # passes; wait out the last connections' handshake timeouts (10 s).
    await trio.sleep(11)
    return await server_stats(port)


async def main(minutes: float, workers: int, gc_mode: str) -> None:
    counts = {"cycles": 0, "frames": 0, "errors": 0}
    samples: list[dict[str, float]] = []
    # The hub runs its background work (heartbeats, history sweeps) as in production.
    async with running_server(gc_mode, "trio-websocket") as (_, port):
        # Warm-up: one short round so that caches and pools exist at "start".
        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(client_loop, port, trio.current_time() + 5, counts)
            nursery.start_soon(broadcaster, port, trio.current_time() + 5)
        start_stats = await settle(port)
        print("start", json.dumps(start_stats), flush=True)
        began = time.monotonic()
        deadline = trio.current_time() + minutes * 60
        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(client_loop, port, deadline, counts)
            nursery.start_soon(broadcaster, port, deadline)
            nursery.start_soon(report_every_minute, port, deadline, samples)
        end_stats = await settle(port)
        print("end  ", json.dumps(end_stats), flush=True)
        print(
            json.dumps(
                {
                    "minutes": round((time.monotonic() - began) / 60, 1),
                    "workers": workers,
                    **counts,
                    "tasks growth": end_stats["tasks"] - start_stats["tasks"],
                    "rss growth MiB": round(end_stats["rss_mib"] - start_stats["rss_mib"], 1),
                    "rss growth after malloc_trim MiB": round(
                        end_stats["rss_mib_after_trim"] - start_stats["rss_mib_after_trim"], 1
                    ),
                    "python blocks growth": end_stats["python_blocks"] - start_stats["python_blocks"],
                    "open fds growth": end_stats["open_fds"] - start_stats["open_fds"],
                    "live objects growth": end_stats["gc_objects"] - start_stats["gc_objects"],
                    **flatness(samples),
                }
            )
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--workers", type=int, default=200)
    parser.add_argument(
        "--gc", choices=["default", "tuned"], default="default", help="the server's collector (default: Python's own)"
    )
    args = parser.parse_args()
    become_load_generator()
    trio.run(main, args.minutes, args.workers, args.gc)
