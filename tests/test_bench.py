"""The in-process benchmarks still run (their numbers are printed, never asserted)."""

from __future__ import annotations

import importlib.util
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
