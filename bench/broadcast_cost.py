"""The cost of one broadcast in process, without sockets: what the hub does per call.

``chat.broadcast`` to one of 1,000 channels with one subscriber each (a stand-in
that only counts what it is handed), with the channel's history on and off,
and on a typed channel (``payload=Delivery``, an attrs class turned into JSON
by cattrs) beside the untyped one with the same data; prints the best of 7
repetitions of 20,000 broadcasts, in microseconds per broadcast. Compare two commits with ``PYTHONPATH=<worktree> python
bench/broadcast_cost.py``; the machine is shared and noisy, so compare within
one sitting. It reaches into the hub's registry (an internal) to subscribe
the stand-ins: a benchmark, not an example.
"""

from __future__ import annotations

import time
from typing import Any

import attrs
import trio

from modelence_trio import History, Hub, ServerChannel


@attrs.frozen
class Delivery:
    seq: int
    ts: float
    pad: str


class _Counting:
    def __init__(self) -> None:
        self.received = 0
        self.delivered_frames = self.delivered_bytes = 0

    def send(self, frame: Any) -> None:
        self.received += 1

    def send_many(self, frames: list[Any]) -> None:
        self.received += len(frames)


def measure(
    history: History | None, channels: int = 1000, rounds: int = 20, reps: int = 7, typed: bool = False
) -> float:
    channel: ServerChannel[Any] = ServerChannel("user", history=history, payload=Delivery if typed else None)
    hub = Hub([channel])
    registry = hub._router.registry
    subscribers = [_Counting() for _ in range(channels)]
    for i, subscriber in enumerate(subscribers):
        registry.subscribe(subscriber, f"user:{i}")
    ids = [str(i) for i in range(channels)]
    data: Any = {"seq": 1, "ts": 1733300000.123, "pad": "x" * 50}
    if typed:
        data = Delivery(**data)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(rounds):
            for channel_id in ids:
                channel.broadcast(channel_id, data)
        best = min(best, (time.perf_counter() - start) / (rounds * channels))
    assert sum(s.received for s in subscribers) == reps * rounds * channels
    return best * 1e6


async def main() -> None:
    print(f"history on:  {measure(History()):.2f} us per broadcast")
    print(f"history off: {measure(None):.2f} us per broadcast")
    print(f"typed (history on): {measure(History(), typed=True):.2f} us per broadcast")


if __name__ == "__main__":
    trio.run(main)
