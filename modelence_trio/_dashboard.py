"""The live dashboard: a page, and its data over the project's own WebSocket protocol.

``App(dashboard_role="ops")`` serves a page at :data:`PAGE_PATH` to users
with that role (off without one), and declares the system channel category
:data:`CATEGORY`, whose one channel :data:`CHANNEL` only that role may join.
While at least one connection is joined to it, the app's lifespan task
delivers a snapshot there every :data:`INTERVAL` seconds; while none is,
nothing is built or sent. A snapshot is the hub's metrics registry as
collected for ``/metrics`` (the same numbers, so the page and Prometheus
never disagree), plus this instance's id and the fan-out's peers; it goes to
this instance's subscribers only (``Router.deliver_local``: not through the
fan-out, and not counted in the numbers it shows). No channel id, user id or
token is in it.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from importlib import resources
from typing import TYPE_CHECKING, Any, NoReturn

import trio

from ._channel import ChannelContext, ServerChannel

if TYPE_CHECKING:
    from ._hub import Hub

__all__ = ["CATEGORY", "CHANNEL", "INTERVAL", "PAGE_PATH", "SCRIPT_PATH", "dashboard_channel", "run_dashboard"]

logger = logging.getLogger("modelence_trio")

PAGE_PATH = "/_modelence/dashboard"
SCRIPT_PATH = "/_modelence/dashboard.js"
#: The system channel category: a valid category (a letter first), so the
#: protocol and both clients need nothing new. An app may not declare it.
CATEGORY = "modelence-dashboard"
CHANNEL = f"{CATEGORY}:live"
#: Seconds between snapshots while someone watches.
INTERVAL = 1.0


def dashboard_channel(role: str) -> ServerChannel[Any]:
    """The system channel: only ``live``, only for connections with ``role``."""

    def may_watch(ctx: ChannelContext) -> bool:
        return ctx.channel_id == "live" and role in ctx.roles

    return ServerChannel(CATEGORY, can_access=may_watch, history=None)


def snapshot(hub: Hub) -> dict[str, Any]:
    """What the page shows, as JSON: every sample of ``hub.metrics`` by name,
    as ``[labels, value]`` pairs, and who this instance is."""
    samples: dict[str, list[Any]] = {}
    for family in hub.metrics.collect():
        for sample in family.samples:
            if math.isfinite(sample.value):
                samples.setdefault(sample.name, []).append([sample.labels, sample.value])
    fanout = hub.fanout
    peers = fanout.statistics().peers if fanout is not None else ()
    return {
        "instance": hub.instance,
        "time": time.time(),
        "started": hub.counters.started,
        "interval": INTERVAL,
        "fanout": None if fanout is None else {"epoch": fanout.epoch, "peers": [[p, round(a, 1)] for p, a in peers]},
        "samples": samples,
    }


async def run_dashboard(hub: Hub, interval: float = INTERVAL) -> NoReturn:
    """Deliver a snapshot to :data:`CHANNEL` every ``interval`` seconds while
    someone is joined to it (the App's lifespan runs it). A snapshot that
    fails is logged and skipped: the dashboard never ends the app."""
    router = hub._router
    while True:
        await trio.sleep(interval)
        if not router.registry.subscribers_of(CHANNEL):
            continue
        try:
            router.deliver_local(CHANNEL, snapshot(hub))
        except Exception:
            logger.exception("dashboard: a snapshot failed; skipped")


@functools.cache
def asset(name: str) -> bytes:
    """``dashboard.html`` or ``dashboard.js``, read once per process."""
    return resources.files("modelence_trio").joinpath("dashboard", name).read_bytes()
