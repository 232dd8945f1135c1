"""The in-process benchmarks still run (their numbers are printed, never asserted)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from modelence_trio import History


def test_broadcast_cost_runs_and_delivers_every_broadcast() -> None:
    path = Path(__file__).parent.parent / "bench" / "broadcast_cost.py"
    spec = importlib.util.spec_from_file_location("broadcast_cost", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # measure() asserts that each of its broadcasts reached its subscriber.
    for history in (History(), None):
        assert module.measure(history, channels=10, rounds=2, reps=1) > 0
    assert module.measure(History(), channels=10, rounds=2, reps=1, typed=True) > 0


async def test_floor_ratio_runs_and_both_loops_reach_every_client() -> None:
    # measure() asserts that every client got every message of the floor's loop and the hub's.
    path = Path(__file__).parent.parent / "bench" / "floor_ratio.py"
    spec = importlib.util.spec_from_file_location("floor_ratio", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for workload, history in (("w1", True), ("w3", True), ("w3", False)):
        floor, hub = await module.measure(workload, history, clients=5, rounds=4)
        assert floor > 0 and hub > 0


def test_the_presence_storm_runs() -> None:
    # A small storm through the real script: every watcher's count completes.
    bench = Path(__file__).parent.parent / "bench"
    result = subprocess.run(
        [sys.executable, str(bench / "presence_storm.py"), "--watchers", "3", "--joins", "50"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["joins"] == 50 and report["diff frames per watcher (mean, max)"][1] >= 1


def test_the_fanout_bench_runs_with_metrics_scraped() -> None:
    # W1, small, against this commit's server with and without the in-process scrape.
    bench = Path(__file__).parent.parent / "bench"
    options = ["--workloads", "w1", "--n", "5", "--m", "5", "--transports", "trio-websocket"]
    result = subprocess.run(
        [sys.executable, str(bench / "fanout.py"), *options, "--variants", "after,scraped"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = [line for line in result.stdout.splitlines() if line.startswith("w1 ")]
    assert [row.split()[2] for row in rows] == ["after", "scraped"]
    assert all(json.loads(row.split(" ", 4)[4])["lost"] == 0 for row in rows)


def test_the_fanout_bench_runs_the_app_under_app_serve() -> None:
    # W1 and W3, small, against the App as the command serves it: the control
    # endpoint is an HTTP route of the app, the subscribers on the fast transport.
    bench = Path(__file__).parent.parent / "bench"
    options = ["--workloads", "w1,w3", "--n", "5", "--m", "5", "--rounds", "3", "--transports", "app"]
    result = subprocess.run(
        [sys.executable, str(bench / "fanout.py"), *options],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = [line.split(" ", 2) for line in result.stdout.splitlines() if line.startswith(("w1 ", "w3 "))]
    assert [(workload, transport) for workload, transport, _ in rows] == [("w1", "app"), ("w3", "app")]
    assert all(json.loads(report)["lost"] == 0 for _, _, report in rows)
