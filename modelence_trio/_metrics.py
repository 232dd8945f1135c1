"""A hub's Prometheus metrics: one registry per hub, read when scraped.

Nothing here runs while the hub works. :class:`HubCollector` turns, at
scrape time, what the hub counts anyway (``HubCounters``, the registry's
sizes, the histories, the fan-out's and the presence book's statistics) into
metric families; ``prometheus_client`` writes the exposition format. Each
hub has its own ``CollectorRegistry`` (``Hub.metrics``), with the process and
garbage-collector collectors, so that several hubs in one process (tests
run hundreds) never share or collide.

Labels are bounded: channel *categories* the app declared (else ``_other``),
the app's method names (else ``_other``), the server's own close codes and
statuses. No channel id, user id or token is ever a label or a value.
README.md (Observability) lists every metric.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn

import hypercorn.config
import hypercorn.trio
import trio
from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from ._counters import CLOSE_LABELS, FRAME_TYPES, JOIN_RESULTS, LEAVE_REASONS, OTHER, REFUSAL_STATUSES
from ._counters import HistogramSnapshot as Snapshot
from ._methods import HttpResponse

if TYPE_CHECKING:
    from ._hub import Hub

__all__ = ["HubCollector", "QUEUE_BUCKETS", "hub_registry", "render_metrics", "serve_metrics"]

logger = logging.getLogger("modelence_trio")

#: Bytes queued for one connection (``modelence_outbound_queue_bytes``): the
#: default bound of a queue is 1 MiB (``HubConfig.outbound_queue_bytes``).
QUEUE_BUCKETS = (0, 1024, 16 * 1024, 64 * 1024, 256 * 1024, 1024 * 1024)

try:
    from importlib.metadata import version as _version

    VERSION = _version("modelence-trio")
except Exception:  # pragma: no cover - not installed as a distribution
    VERSION = "unknown"


def hub_registry(hub: Hub) -> CollectorRegistry:
    """A new registry holding ``hub``'s collector and the process's."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(HubCollector(hub))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def _counter(name: str, documentation: str, labels: Iterable[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, labels=list(labels))


def _gauge(name: str, documentation: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels))


def _le(bound: float) -> str:
    """A bucket's ``le`` label."""
    return "+Inf" if bound == math.inf else repr(float(bound))


def _histogram(
    name: str, documentation: str, labels: list[str], series: Iterable[tuple[list[str], Snapshot]]
) -> Metric:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for values, snapshot in series:
        buckets = [(_le(bound), float(count)) for bound, count in snapshot.cumulative()]
        family.add_metric(values, buckets, snapshot.sum)
    return family


class HubCollector(Collector):
    """Reads one hub when its registry is collected (scraped)."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def describe(self) -> Iterable[Metric]:
        return ()  # the families depend on the hub's fan-out and presence: read at each collect

    def collect(self) -> Iterator[Metric]:
        hub = self._hub
        yield from self._connections(hub)
        yield from self._channels(hub)
        yield from self._frames(hub)
        yield from self._methods(hub)
        yield from self._fanout(hub)
        yield from self._presence(hub)
        ready = _gauge("modelence_ready", "1 while the hub is ready for traffic (/readyz answers 200), else 0")
        ready.add_metric([], 1.0 if hub.readiness().ready else 0.0)
        yield ready
        info = _gauge("modelence_build_info", "Always 1; the modelence-trio version as a label", ["version"])
        info.add_metric([VERSION], 1.0)
        yield info

    @staticmethod
    def _connections(hub: Hub) -> Iterator[Metric]:
        counters = hub.counters
        connections = list(hub._connections)
        gauge = _gauge("modelence_connections", "WebSocket connections open now")
        gauge.add_metric([], float(len(connections)))
        yield gauge
        accepted = _counter("modelence_connections_accepted", "WebSocket handshakes accepted")
        accepted.add_metric([], float(counters.accepted))
        yield accepted
        refused = _counter("modelence_connections_refused", "WebSocket handshakes refused, by HTTP status", ["status"])
        for status in sorted({*REFUSAL_STATUSES, *counters.refused}):
            refused.add_metric([str(status)], float(counters.refused[status]))
        yield refused
        closed = _counter(
            "modelence_connections_closed",
            "WebSocket connections ended, by the server's close code (peer: the client closed or went away)",
            ["code"],
        )
        for label in sorted({*CLOSE_LABELS, *counters.closed}):
            closed.add_metric([label], float(counters.closed[label]))
        yield closed
        # Each connection's queue, at this moment: a distribution, not a total over time.
        bounds, counts, total = QUEUE_BUCKETS, [0] * (len(QUEUE_BUCKETS) + 1), 0
        for conn in connections:
            queued = conn.queued_bytes
            total += queued
            for i, bound in enumerate(bounds):
                if queued <= bound:
                    counts[i] += 1
                    break
            else:
                counts[-1] += 1
        cumulative, buckets = 0, []
        for le, count in zip((*bounds, math.inf), counts, strict=True):
            cumulative += count
            buckets.append((_le(le), float(cumulative)))
        yield GaugeHistogramMetricFamily(
            "modelence_outbound_queue_bytes",
            "Bytes queued for each connection now (the batch being written included)",
            buckets=buckets,
            gsum_value=float(total),
        )

    @staticmethod
    def _channels(hub: Hub) -> Iterator[Metric]:
        router, counters = hub._router, hub.counters
        registry = router.registry
        categories = sorted(router.channels)
        channels = _gauge("modelence_channels", "Channels with at least one subscriber here, by category", ["category"])
        subscriptions = _gauge("modelence_subscriptions", "Subscriptions (joins) held now, by category", ["category"])
        broadcasts = _counter(
            "modelence_broadcasts", "Broadcasts delivered to this instance's subscribers, by category", ["category"]
        )
        deliveries = _counter(
            "modelence_deliveries", "Broadcast frames handed to connections, by category", ["category"]
        )
        for category in categories:
            traffic = counters.traffic_of(category)
            channels.add_metric([category], float(registry.channels_by_category[category]))
            subscriptions.add_metric([category], float(registry.subscriptions_by_category[category]))
            broadcasts.add_metric([category], float(traffic.broadcasts))
            deliveries.add_metric([category], float(traffic.deliveries))
        yield from (channels, subscriptions, broadcasts, deliveries)
        joins = _counter("modelence_joins", "Joins by category and result", ["category", "result"])
        for category in [*categories, OTHER]:
            results = JOIN_RESULTS if category != OTHER else ("unknown_channel", "invalid_channel")
            for result in results:
                joins.add_metric([category, result], float(counters.joins[category, result]))
        yield joins
        leaves = _counter(
            "modelence_leaves",
            "Subscriptions ended, by category and reason (leave, revoked: access revoked, closed: connection ended)",
            ["category", "reason"],
        )
        for category in categories:
            for reason in LEAVE_REASONS:
                count = (
                    registry.dropped_by_category[category] if reason == "closed" else counters.leaves[category, reason]
                )
                leaves.add_metric([category, reason], float(count))
        yield leaves
        histories = router.histories
        entries = _gauge("modelence_history_entries", "Messages kept for recovery, on every channel")
        entries.add_metric([], float(histories.entries))
        size = _gauge("modelence_history_bytes", "Bytes of the messages kept for recovery, as they are sent")
        size.add_metric([], float(histories.bytes))
        yield from (entries, size)

    @staticmethod
    def _frames(hub: Hub) -> Iterator[Metric]:
        counters = hub.counters
        received = _counter("modelence_received_frames", "Client frames received, by type", ["type"])
        for kind in FRAME_TYPES:
            received.add_metric([kind], float(counters.received[kind]))
        yield received
        received_bytes = _counter("modelence_received_bytes", "Bytes (UTF-8) of client frames received")
        received_bytes.add_metric([], float(counters.received_bytes))
        yield received_bytes
        bad = _counter("modelence_bad_frames", "Malformed client frames, by error code", ["code"])
        for code, count in sorted(counters.bad_frames.items()):
            bad.add_metric([str(code)], float(count))
        yield bad
        traffic = counters.traffic.values()
        sent = _counter(
            "modelence_sent_frames", "Frames handed to connections: broadcast deliveries, replies, presence, replays"
        )
        sent.add_metric([], float(counters.sent_frames + sum(t.deliveries for t in traffic)))
        sent_bytes = _counter(
            "modelence_sent_bytes",
            "Bytes of frames handed to connections (a connection cut off as a slow consumer drops what it had queued)",
        )
        sent_bytes.add_metric([], float(counters.sent_bytes + sum(t.bytes for t in traffic)))
        yield from (sent, sent_bytes)

    @staticmethod
    def _methods(hub: Hub) -> Iterator[Metric]:
        methods = hub.counters.methods
        calls = _counter("modelence_method_calls", "Method calls over HTTP, by method and status", ["method", "status"])
        for name, stats in sorted(methods.items()):
            for status, count in sorted(stats.statuses.items()):
                calls.add_metric([name, str(status)], float(count))
        yield calls
        yield _histogram(
            "modelence_method_duration_seconds",
            "Time to answer a method call (authentication included), by method",
            ["method"],
            (([name], stats.duration.snapshot()) for name, stats in sorted(methods.items())),
        )

    @staticmethod
    def _fanout(hub: Hub) -> Iterator[Metric]:
        fanout = hub.fanout
        if fanout is None:
            return
        stats = fanout.statistics()
        for name, value, documentation in (
            ("published", stats.stored, "This instance's broadcasts stored for the other instances"),
            ("received", stats.delivered, "Other instances' broadcasts read and delivered here"),
            ("gaps_skipped", stats.skipped, "Sequence numbers given up on (reserved, never stored in time)"),
            ("duplicates_dropped", stats.duplicates, "Broadcasts read twice (stored twice) and dropped"),
            ("dropped", stats.dropped, "Broadcasts not sent to other instances: the outage buffer was full"),
            ("unstorable", stats.unstorable, "Broadcasts the database cannot hold (refused alone)"),
            ("write_failures", stats.write_failures, "Failed writes to the database (retried)"),
            ("read_failures", stats.read_failures, "Failed polls of the database (retried)"),
            ("resets", stats.resets, "Times the database was found reset (a new sequence)"),
        ):
            counter = _counter(f"modelence_fanout_{name}", documentation)
            counter.add_metric([], float(value))
            yield counter
        pending = _gauge("modelence_fanout_pending", "Broadcasts held for the other instances (the outage buffer)")
        pending.add_metric([], float(stats.pending))
        reachable = _gauge("modelence_fanout_reachable", "1 while the fan-out reaches its database, else 0")
        reachable.add_metric([], 0.0 if stats.outage_since is not None else 1.0)
        peers = _gauge("modelence_fanout_peers", "Other instances read from in the last minute")
        peers.add_metric([], float(sum(1 for _, age in stats.peers if age <= 60)))
        yield from (pending, reachable, peers)
        if stats.poll_seconds is not None:
            yield _histogram(
                "modelence_fanout_poll_duration_seconds",
                "Time one poll of the database took",
                [],
                [([], stats.poll_seconds)],
            )
        if stats.delay_seconds is not None:
            yield _histogram(
                "modelence_fanout_delay_seconds",
                "From a broadcast's store by another instance (its createdAt) to its read here",
                [],
                [([], stats.delay_seconds)],
            )

    @staticmethod
    def _presence(hub: Hub) -> Iterator[Metric]:
        with_presence = sorted(c.category for c in hub._router.channels.values() if c.presence is not None)
        if not with_presence:
            return
        counts = hub._tracker.book.members_by_category()
        members = _gauge("modelence_presence_members", "Presence members, on every instance, by category", ["category"])
        for category in with_presence:
            members.add_metric([category], float(counts.get(category, 0)))
        yield members


def render_metrics(registry: CollectorRegistry, accept: str = "") -> tuple[bytes, str]:
    """The exposition of ``registry`` for a request's ``Accept`` header: the
    body and its content type (OpenMetrics when asked for, else Prometheus text)."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type


async def _ops_app(hub: Hub, scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app answering ``/metrics``, ``/healthz`` and ``/readyz`` for a bare hub."""
    from ._ops import MetricsEndpoint, healthz, metrics_response, readyz

    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path, verb = scope["path"], scope["method"]
    if verb not in ("GET", "HEAD"):
        response = HttpResponse(405, b"method not allowed", ((b"allow", b"GET, HEAD"),))
    elif path == "/metrics":
        response = await metrics_response(hub, MetricsEndpoint(), path, list(scope.get("headers", [])))
    elif path == "/healthz":
        response = healthz()
    elif path == "/readyz":
        response = readyz(hub)
    else:
        response = HttpResponse(404, b"not found")
    headers = [*response.headers, (b"content-length", str(len(response.body)).encode())]
    if not any(name == b"content-type" for name, _ in headers):
        headers.append((b"content-type", b"text/plain; charset=utf-8"))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if verb == "HEAD" else response.body})


async def serve_metrics(
    hub: Hub,
    host: str = "127.0.0.1",
    port: int = 9100,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve a bare hub's ``/metrics``, ``/healthz`` and ``/readyz`` over
    HTTP on ``host:port`` (hypercorn, in this Trio program) until cancelled.

    ``urls = await nursery.start(serve_metrics, hub, "127.0.0.1", 9100)``
    returns the URLs once it listens (port 0 picks a free one). It answers
    anyone who reaches the address: bind it to loopback or to an interface
    only your scraper reaches. An ``App`` serves these paths itself (README,
    Observability).
    """
    config = hypercorn.config.Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    await hypercorn.trio.serve(
        partial(_ops_app, hub),
        config,
        mode="asgi",
        task_status=task_status,
    )
    raise AssertionError("unreachable: serve returns only when cancelled")  # pragma: no cover
