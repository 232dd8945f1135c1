"""What a hub counts as it works: plain numbers, no I/O, no metrics library.

Each module that sees an event counts it here, in the cheapest way there is:
an integer added to, once per event, and once per *broadcast* on the
broadcast path (never once per delivery: a broadcast to a thousand
subscribers adds a thousand in one step). Nothing here formats, locks or
looks anything up by label; ``_metrics.py`` reads these numbers, with the
sizes the hub holds anyway (connections, the registry, the histories), when
``/metrics`` is scraped or the dashboard takes a snapshot.

Label values are bounded by construction: channel *categories* the app
declared (anything else is :data:`OTHER`), method names the app declared,
close codes and statuses the server itself uses. Never a channel id, a user
id or a token.
"""

from __future__ import annotations

import bisect
import collections
import math
import time

import attrs

__all__ = [
    "CLOSE_LABELS",
    "DELAY_BUCKETS",
    "DURATION_BUCKETS",
    "FRAME_TYPES",
    "JOIN_RESULTS",
    "LEAVE_REASONS",
    "OTHER",
    "POLL_BUCKETS",
    "REFUSAL_STATUSES",
    "Histogram",
    "HistogramSnapshot",
    "HubCounters",
    "MethodCalls",
    "Traffic",
]

#: The label of what the app did not declare (an unknown channel category, an
#: unknown method): it cannot be a category, which starts with a letter.
OTHER = "_other"

#: ``modelence_connections_closed_total{code}``: the codes the server closes
#: with (1009 also when the WebSocket library closed for it), and ``peer`` for
#: a connection the client closed or that dropped.
CLOSE_LABELS = ("1001", "1008", "1009", "1011", "4001", "4002", "4003", "peer")
#: HTTP statuses a handshake is refused with (protocol.md, Authentication).
REFUSAL_STATUSES = (401, 403, 429, 503)
JOIN_RESULTS = ("ok", "access_denied", "unknown_channel", "invalid_channel", "too_many_channels", "rate_limited")
#: ``leave``: the client left; ``revoked``: its access was revoked; ``closed``: its connection ended.
LEAVE_REASONS = ("leave", "revoked", "closed")
#: Client frames by ``type``; ``malformed``: could not be parsed (``bad_frames`` says why);
#: ``too_big``: over ``max_frame_size`` (the connection is closed with 1009).
FRAME_TYPES = ("join", "leave", "message", "ping", "presence", "malformed", "too_big")

#: Seconds: a method call (Prometheus client's default buckets).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
#: Seconds: one poll of the fan-out's database.
POLL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Seconds: from a broadcast's store on one instance to its read on another.
DELAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@attrs.frozen
class HistogramSnapshot:
    """A histogram at one moment: ``counts[i]`` observations at most
    ``bounds[i]`` and above the bound before (the last: above every bound)."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(le, observations <= le)`` for each bound and ``inf``, as Prometheus counts them."""
        total, buckets = 0, []
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            total += count
            buckets.append((bound, total))
        return buckets

    def quantile(self, q: float) -> float | None:
        """The bound of the bucket holding the ``q`` quantile (an upper
        estimate; ``inf`` past the last bound, ``None`` without observations)."""
        total = self.count
        if not total:
            return None
        rank = q * total
        for bound, seen in self.cumulative():
            if seen >= rank:
                return bound
        return math.inf  # pragma: no cover - the last bucket holds every observation


@attrs.define(eq=False)
class Histogram:
    """Observations counted into fixed buckets (no samples kept): bounded memory."""

    bounds: tuple[float, ...]
    counts: list[int] = attrs.field(init=False)
    sum: float = 0.0

    def __attrs_post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self.bounds, tuple(self.counts), self.sum)


@attrs.define(eq=False)
class Traffic:
    """One channel category's broadcasts as delivered here: counted once per
    broadcast (``deliveries`` and ``bytes`` grow by the subscriber count in one step)."""

    broadcasts: int = 0
    deliveries: int = 0
    bytes: int = 0


@attrs.define(eq=False)
class MethodCalls:
    """One method's calls over HTTP: by response status, and how long they took."""

    statuses: collections.Counter[int] = attrs.field(factory=collections.Counter)
    duration: Histogram = attrs.field(factory=lambda: Histogram(DURATION_BUCKETS))


@attrs.define(eq=False)
class HubCounters:
    """Everything one hub counts (see the module's docstring). Mutable, and
    only ever changed from the hub's Trio thread."""

    #: Handshakes accepted (WebSockets opened).
    accepted: int = 0
    #: Handshakes refused, by HTTP status.
    refused: collections.Counter[int] = attrs.field(factory=collections.Counter)
    #: Connections ended, by :data:`CLOSE_LABELS`.
    closed: collections.Counter[str] = attrs.field(factory=collections.Counter)
    #: Joins by (category, result in :data:`JOIN_RESULTS`).
    joins: collections.Counter[tuple[str, str]] = attrs.field(factory=collections.Counter)
    #: Leaves by (category, ``leave`` or ``revoked``); ``closed`` ones are the registry's.
    leaves: collections.Counter[tuple[str, str]] = attrs.field(factory=collections.Counter)
    #: Client frames by :data:`FRAME_TYPES`, and their bytes.
    received: collections.Counter[str] = attrs.field(factory=collections.Counter)
    received_bytes: int = 0
    #: Malformed client frames by error code.
    bad_frames: collections.Counter[str] = attrs.field(factory=collections.Counter)
    #: Frames handed to connections other than broadcasts (welcome, replies,
    #: presence, replays), and their bytes; broadcasts are in ``traffic``.
    sent_frames: int = 0
    sent_bytes: int = 0
    #: Broadcasts by channel category.
    traffic: dict[str, Traffic] = attrs.field(factory=dict)
    #: Method calls by method name (the app's, or :data:`OTHER`).
    methods: dict[str, MethodCalls] = attrs.field(factory=dict)
    #: When counting began (Unix time): the process's start, near enough.
    started: float = attrs.field(factory=time.time)

    def traffic_of(self, category: str) -> Traffic:
        traffic = self.traffic.get(category)
        if traffic is None:
            traffic = self.traffic[category] = Traffic()
        return traffic

    def method_call(self, method: str, status: int, seconds: float) -> None:
        calls = self.methods.get(method)
        if calls is None:
            calls = self.methods[method] = MethodCalls()
        calls.statuses[status] += 1
        calls.duration.observe(seconds)
