"""Several instances as one server: broadcasts shared through one MongoDB collection.

Each broadcast is delivered to local subscribers at once and its data (as
JSON text, encoded once by the hub) queued here; a writer task stores queued broadcasts in ``_modelenceSocketio`` with a
sequence number reserved atomically in a counter document, and a poller task
in every instance reads new documents in sequence order and delivers those
of other instances (in the ordered mode: all of them, its own included, with
their sequence numbers as offsets, for recovery across instances).
docs/fanout.md explains the design: why a sequence and not ObjectIds, what
order is guaranteed, what happens on gaps, outages, restarts and expiry.

pymongo blocks, so every database call runs in a worker thread
(``trio.to_thread``) under one capacity limiter: the event loop never waits
on the database.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import itertools
import json
import logging
import random
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import attrs
import bson
import bson.errors
import pymongo
import pymongo.errors
import trio
from bson import ObjectId

from ._backend import (
    FanoutNotStored,
    FanoutOverflow,
    FanoutSink,
    FanoutStatistics,
    Receipt,
    deliver_stored,
    peer_ages,
)
from ._counters import DELAY_BUCKETS, POLL_BUCKETS, Histogram
from ._sequencer import Sequencer, Stored
from ._util import Backoff
from .protocol import encode_data

if TYPE_CHECKING:
    from typing import TypeAlias

    from pymongo.collection import Collection
    from pymongo.database import Database

    #: Where a MongoDB backend lives: a URI, a client or a database.
    MongoTarget: TypeAlias = str | pymongo.MongoClient[Any] | Database[Any]

__all__ = ["FanoutNotStored", "FanoutOverflow", "FanoutStatistics", "MongoFanout", "database_of"]

logger = logging.getLogger("modelence_trio.fanout")

COLLECTION = "_modelenceSocketio"  # the reference's name
COUNTERS = "_modelenceSocketioCounters"
INDEX_OPTIONS_CONFLICT = (85, 86)  # IndexOptionsConflict, IndexKeySpecsConflict
DUPLICATE_KEY = 11000
MAX_DOCUMENT = 16 * 1024 * 1024 - 16 * 1024  # MongoDB's BSON limit, with room for the insert command


@attrs.define
class _Pending:
    channel: str
    body: str  # the data as JSON text: an immutable snapshot, decoded to BSON when stored
    number: int  # the message id is origin-number, stable across retries: receivers drop a message stored twice
    receipt: Receipt | None = None  # broadcast_stored waits on it


@attrs.define
class _Outage:
    """One task's view of a MongoDB outage: the backoff between its retries,
    a log line when the outage starts and one when it is over."""

    backoff: Backoff
    attempts: int = 0
    since: float | None = None

    async def failed(self, message: str, *args: object) -> None:
        if self.since is None:
            self.since = trio.current_time()
            logger.warning(message, *args)
        await trio.sleep(self.backoff.delay(self.attempts))
        self.attempts += 1

    def over(self, message: str, *args: object) -> None:
        """Log ``message % (seconds the outage lasted, *args)``, if there was one."""
        if self.since is not None:
            logger.warning(message, trio.current_time() - self.since, *args)
            self.since, self.attempts = None, 0


class _CounterBehind(Exception):
    """The counter handed out numbers already used (its document was removed,
    or the database reset): it was moved on to ``moved_to``; store again."""

    def __init__(self, moved_to: int, renewed: bool) -> None:
        super().__init__(moved_to)
        self.moved_to = moved_to
        self.renewed = renewed  # the epoch too: nobody can tell what was handed out


@attrs.frozen
class _Epoch:
    """The name of one sequence, and when it was made (Unix time, per the
    instance that made it; ``None``: made before epochs had a time)."""

    value: str
    since: float | None

    def newer_than(self, other: _Epoch | None) -> bool:
        return other is None or (self.since is not None and (other.since is None or self.since > other.since))


@attrs.frozen
class _Stored:
    """What one store did: the broadcasts refused alone (and why), and the
    highest sequence number it reserved."""

    refused: list[tuple[_Pending, str]]
    reserved: int


@attrs.frozen
class _Probe:
    """What the database says about the sequence, read in one check."""

    epoch: str | None  # None: the epoch document is gone
    counter: int  # the last number handed out (0: the counter document is gone)
    newest: int  # the highest number stored (0: none)
    indexed: bool  # the seq and TTL indexes are there


def database_of(target: MongoTarget) -> Database[Any]:
    """The database to use from a URI (a new client with timeouts that notice
    an outage in seconds; the URI's database, or ``modelence``), a client
    (its default database, or ``modelence``) or a database (itself)."""
    if isinstance(target, str):
        target = pymongo.MongoClient(
            target, serverSelectionTimeoutMS=2000, connectTimeoutMS=2000, socketTimeoutMS=10000
        )
    if isinstance(target, pymongo.MongoClient):
        return target.get_default_database("modelence")
    return target


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class MongoFanout:
    """The MongoDB fan-out of one instance. Give it to a ``Hub`` (or an ``App``
    via ``mongodb``); the hub runs it and feeds it every broadcast.

    Args:
        database: where the collections live: a ``Database``, a
            ``MongoClient`` (its default database, or ``modelence``) or a URI
            (see :func:`database_of`). One client may serve the fan-out, the
            session authenticator and the app's own code. Give it short
            timeouts (``serverSelectionTimeoutMS``) so an outage is noticed in
            seconds; a URI gets them.
        ttl: seconds a stored broadcast is kept: every instance removes older
            ones every quarter of it (a range delete on ``createdAt``), so
            documents live between ``ttl`` and about 1.3 ``ttl`` (``ttl`` + 1.25 s below 4 s).
        ttl_index: let MongoDB expire them instead, with a TTL index on
            ``createdAt`` (the reference's way: expiry goes on while every
            instance is down). Off by default: some servers (nx-27017) purge
            TTL collections on every read, which makes each poll scan the
            collection (docs/fanout.md, Measured).
        poll_interval: seconds between polls when there is nothing new.
        busy_poll_interval: seconds between polls while they find new
            broadcasts (at most ``poll_interval``): under traffic the next
            broadcast is found sooner, at the price of more queries only
            while there is traffic.
        batch_size: documents per insert and per poll; a full poll batch is
            followed at once by the next poll.
        max_pending: broadcasts held while the database is unreachable; past
            it ``broadcast`` raises :class:`FanoutOverflow`.
        gap_timeout: seconds the poller waits for a sequence number that was
            reserved but is not visible yet, before giving up on it.
        threads: database calls running at once (worker threads).
        probe_interval: seconds between checks that the database is still the
            one prepared (its epoch, its counter, its indexes), so that a
            reset, a restore or a new cluster is noticed within that time.
        reset_margin: after a reset, broadcasts stored up to this many
            seconds before the old sequence was last seen are delivered too
            (room for clock differences between instances); older ones
            (a restored backup's) are not replayed.
        ordered: deliver every broadcast, this instance's own included, in
            the shared sequence, whose numbers are then the messages'
            offsets: a client recovers what it missed on any instance
            (``join`` with ``since``). The price: an instance's own
            broadcasts reach its subscribers after a round trip through
            MongoDB instead of at once, and not at all while it is
            unreachable (they are held, then delivered). Off by default.
        drain_timeout: when the hub stops, seconds it may take to store what
            is still held (a graceful stop loses nothing while MongoDB answers).
    """

    def __init__(
        self,
        database: MongoTarget,
        *,
        ttl: float = 60.0,
        ttl_index: bool = False,
        poll_interval: float = 0.05,
        busy_poll_interval: float = 0.01,
        batch_size: int = 500,
        max_pending: int = 10_000,
        gap_timeout: float = 2.0,
        threads: int = 4,
        retry_initial: float = 0.1,
        retry_maximum: float = 2.0,
        probe_interval: float = 1.0,
        reset_margin: float = 5.0,
        ordered: bool = False,
        drain_timeout: float = 2.0,
    ) -> None:
        self.database = database = database_of(database)
        self.ordered = ordered
        self.epoch: str | None = None  # the collection's, once prepared
        self._epoch: _Epoch | None = None  # the same, with its time
        self._reserved = 0  # the highest sequence number this instance's writer reserved
        self.ttl = ttl
        self.ttl_index = ttl_index
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self.max_pending = max_pending
        self.gap_timeout = gap_timeout
        self.retry = Backoff(initial=retry_initial, maximum=retry_maximum)
        self.probe_interval = probe_interval
        self.busy_poll_interval = min(busy_poll_interval, poll_interval)
        self.reset_margin = reset_margin
        self.drain_timeout = drain_timeout
        self.origin = secrets.token_hex(8)
        self._collection: Collection[Any] = database[COLLECTION]
        self._counters: Collection[Any] = database[COUNTERS]
        self._limiter = trio.CapacityLimiter(threads)
        self._pending: collections.deque[_Pending] = collections.deque()
        self._wake = trio.Event()
        self._ids = itertools.count()
        # Ordered: the bodies of our own broadcasts, by message id, until the
        # poller reads them back, so that they are not encoded a second time.
        self._echo: dict[str, str] = {}
        self._sequence = Sequencer(self.origin, ordered=ordered, gap_timeout=gap_timeout, memory=max_pending)
        self._stored = self._delivered = self._skipped = self._dropped = self._unstorable = 0
        self._write_failures = self._read_failures = self._resets = self._duplicates = 0
        self._poll_seconds = Histogram(POLL_BUCKETS)
        self._delay_seconds = Histogram(DELAY_BUCKETS)
        # The writer's and the poller's outages (the start-up's is its own: the hub is not ready then).
        self._write_outage = _Outage(self.retry)
        self._read_outage = _Outage(self.retry)
        self._closed = False  # close() has run: nothing published now will be stored
        self._seen_at = _utcnow()  # when the sequence was last confirmed to be the one prepared

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> MongoFanout:
        """Connect to ``uri`` (its database, or ``modelence``) with timeouts fit for outages."""
        return cls(database_of(uri), **options)

    # --- called by the hub ------------------------------------------------------------

    def publish(self, channel: str, body: str, receipt: Receipt | None = None) -> None:
        """Queue a broadcast (``body``: its data as JSON text) for the other
        instances (ordered: for every instance, this one included)."""
        if len(self._pending) >= self.max_pending:
            self._dropped += 1
            logger.error(
                "fan-out buffer full (%d broadcasts waiting for MongoDB): %s not sent to other instances "
                "(%d dropped so far)",
                self.max_pending,
                channel,
                self._dropped,
            )
            where = "not delivered" if self.ordered else "delivered locally only"
            raise FanoutOverflow(f"{channel}: {where}; MongoDB unreachable and buffer full")
        if self._closed:
            self._dropped += 1
            logger.error("fan-out: a broadcast to %s after the hub stopped is not sent to other instances", channel)
            if receipt is not None:
                receipt.failed("the hub stopped before the broadcast was stored")
            return
        number = next(self._ids)
        self._pending.append(_Pending(channel, body, number, receipt))
        if self.ordered:  # before it is stored: the poller may read it back before the writer resumes
            self._remember_echo(f"{self.origin}-{number}", body)
        self._wake.set()

    def statistics(self) -> FanoutStatistics:
        outages = [o.since for o in (self._write_outage, self._read_outage) if o.since is not None]
        return FanoutStatistics(
            len(self._pending),
            self._stored,
            self._delivered,
            self._skipped,
            self._dropped,
            self._write_failures,
            self._read_failures,
            self._sequence.last_seq,
            self._unstorable,
            self._resets,
            self._duplicates,
            min(outages, default=None),
            self._poll_seconds.snapshot(),
            self._delay_seconds.snapshot(),
            peer_ages(self._sequence.peers),
        )

    async def run(self, sink: FanoutSink, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        """Prepare the collections, then store and poll until cancelled,
        delivering into ``sink``. ``nursery.start(fanout.run, sink)`` returns
        once the sequence is ready. Broadcasts queued before the database is
        reachable wait."""
        self._closed = False  # a hub may run again after a stop
        epoch, last_seq = await self._retrying("prepare the collections", self._prepare)
        # Both set here, in Trio's thread, at once: nobody sees one without the other.
        self._begin(sink, epoch, last_seq)
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write_forever)
            if not self.ttl_index:
                nursery.start_soon(self._purge_forever)
            await self._poll_forever(sink)
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        """Once ``run`` has ended (the hub is stopping): store what is still
        held, for at most ``drain_timeout`` seconds, so that a graceful stop
        loses no broadcast of the last moments; then fail the receipts of
        what could not be stored and say how many were lost. The hub calls
        it shielded from cancellation."""
        with trio.move_on_after(self.drain_timeout):
            while self._pending:
                batch = list(itertools.islice(self._pending, self.batch_size))
                try:
                    result: _Stored = await self._db(self._store, batch, self._floor(), self._epoch)
                except _CounterBehind:
                    continue
                except pymongo.errors.PyMongoError:
                    break
                self._settle(batch, result)
        self._closed = True
        if self._pending:
            self._dropped += len(self._pending)
            logger.error(
                "fan-out: %d broadcast(s) held for other instances could not be stored before the hub "
                "stopped (MongoDB unreachable); other instances do not get them",
                len(self._pending),
            )
        for item in self._pending:  # nobody waits for them in vain
            if item.receipt is not None:
                item.receipt.failed("the hub stopped before the broadcast was stored")
        self._pending.clear()

    async def history(self, channel: str, after: int, upto: int) -> list[tuple[int, str]] | None:
        """The stored broadcasts of ``channel`` with ``after < seq <= upto``, in
        order, or ``None`` when some of them may be gone (expired) or the
        database cannot be read: the collection is the history within its TTL."""

        def read() -> list[tuple[int, str]] | None:
            found = list(
                self._collection.find({"channel": channel, "seq": {"$gt": after, "$lte": upto}}).sort("seq", 1)
            )
            # The oldest left *after* the read: if it is not past ``after``,
            # nothing the read needed had expired before it ended (expiry
            # removes the oldest first).
            oldest = self._collection.find_one(sort=[("seq", 1)], projection={"seq": 1})
            if oldest is None or int(oldest["seq"]) > after + 1:
                return None  # what followed ``after`` may have expired
            seen: set[str] = set()
            result = []
            for doc in found:
                if doc.get("mid") not in seen:  # a batch stored twice: the first copy, as the poller does
                    seen.add(str(doc.get("mid")))
                    result.append((int(doc["seq"]), encode_data(channel, doc.get("data"))))
            return result

        try:
            result: list[tuple[int, str]] | None = await self._db(read)
        except (pymongo.errors.PyMongoError, bson.errors.BSONError, TypeError) as exc:
            logger.warning("fan-out: cannot read the history of %s: %s", channel, exc)
            return None
        return result

    # --- database calls (worker threads) ------------------------------------------------

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter, abandon_on_cancel=True)

    def _prepare(self) -> tuple[_Epoch, int]:
        self._ensure_indexes()
        # Start after what is already there: an instance that starts late or
        # restarts does not replay old broadcasts as new.
        return self._ensure_epoch(), self._start_point()

    def _start_point(self) -> int:
        """The last number used: the counter's, or the highest stored when
        the counter is behind (its document removed)."""
        return max(self._counter(), self._newest())

    def _counter(self) -> int:
        """The last sequence number handed out (0: the counter is gone)."""
        counter = self._counters.find_one({"_id": COLLECTION})
        return int(counter["seq"]) if counter else 0

    def _newest(self) -> int:
        """The highest sequence number stored (0: none)."""
        newest = self._collection.find_one(sort=[("seq", -1)], projection={"seq": 1})
        return int(newest["seq"]) if newest else 0

    def _ensure_indexes(self) -> None:
        self._collection.create_index("seq", unique=True)
        if not self.ttl_index:
            try:
                self._collection.create_index("createdAt")  # for the purge's range delete
            except pymongo.errors.OperationFailure as exc:
                if exc.code not in INDEX_OPTIONS_CONFLICT:
                    raise
                # A TTL index is there (the reference's, or ttl_index=True before): it expires documents too.
            return
        try:
            self._collection.create_index("createdAt", expireAfterSeconds=int(self.ttl))
        except pymongo.errors.OperationFailure as exc:
            if exc.code not in INDEX_OPTIONS_CONFLICT:
                raise
            # An index on createdAt with other options (another TTL): replace it, as the reference does.
            logger.info("replacing the TTL index on %s.createdAt (%s)", COLLECTION, exc)
            self._collection.drop_index("createdAt_1")
            self._collection.create_index("createdAt", expireAfterSeconds=int(self.ttl))

    def _purge(self) -> None:
        cutoff = _utcnow() - datetime.timedelta(seconds=self.ttl)
        self._collection.delete_many({"createdAt": {"$lt": cutoff}})

    def _read_epoch(self) -> _Epoch | None:
        doc = self._counters.find_one({"_id": "epoch"})
        if doc is None:
            return None
        since = doc.get("since")
        return _Epoch(str(doc["value"]), float(since) if isinstance(since, int | float) else None)

    def _ensure_epoch(self, replacing: _Epoch | None = None) -> _Epoch:
        """The epoch names this collection's sequence: the first instance
        makes it, and the first to see it void (``replacing``) renews it;
        the others adopt what it made (the replacement is conditional)."""
        if replacing is not None:
            renewed = {"value": secrets.token_hex(6), "since": time.time()}
            self._counters.update_one({"_id": "epoch", "value": replacing.value}, {"$set": renewed})
        with contextlib.suppress(pymongo.errors.DuplicateKeyError):
            self._counters.insert_one({"_id": "epoch", "value": secrets.token_hex(6), "since": time.time()})
        epoch = self._read_epoch()
        assert epoch is not None
        return epoch

    def _probe(self) -> _Probe:
        # The newest document first, then the counter: numbers are reserved
        # before they are stored, so a healthy counter read later is never behind.
        newest = self._newest()
        found = {doc["_id"]: doc for doc in self._counters.find({"_id": {"$in": ["epoch", COLLECTION]}})}
        by_key = {info["key"][0][0]: info for info in self._collection.index_information().values()}
        return _Probe(
            str(found["epoch"]["value"]) if "epoch" in found else None,
            int(found[COLLECTION]["seq"]) if COLLECTION in found else 0,
            newest,
            bool(by_key.get("seq", {}).get("unique")) and "createdAt" in by_key,
        )

    def _restart_after_reset(self, old: _Epoch | None, cutoff: datetime.datetime) -> tuple[_Epoch, int]:
        """Prepare the reset database again and say where its new sequence
        starts: before the first broadcast stored since ``cutoff``.

        The epoch found is renewed unless it is newer than ``old`` (another
        instance renewed it, or this is a new cluster's): ours kept with the
        sequence gone back, or an older one (a restored backup's), would let
        offsets of another time pass for offsets of this one."""
        self._ensure_indexes()
        found = self._read_epoch()
        epoch = found if found is not None and found.newer_than(old) else self._ensure_epoch(replacing=found)
        first = self._collection.find_one({"createdAt": {"$gte": cutoff}}, sort=[("seq", 1)], projection={"seq": 1})
        return epoch, int(first["seq"]) - 1 if first else self._start_point()

    def _repair_counter(self, newest: int) -> None:
        """The counter is behind the collection (its document was removed):
        move it past what is stored, so no number is handed out twice."""
        self._counters.update_one({"_id": COLLECTION}, {"$max": {"seq": newest}}, upsert=True)

    def _counter_went_back(self, floor: int, epoch: _Epoch | None) -> _CounterBehind:
        """A reservation handed out numbers up to ``floor``, which were used
        before. Move the counter past what is stored and past ``floor``. When
        nothing stored reaches ``floor`` (the old documents expired or were
        dropped), nobody can tell how far other instances have read, so the
        epoch is renewed too: every instance then restarts its reading as
        after a reset (conditional on ``epoch``: once, by whoever sees it first)."""
        newest = self._newest()
        moved_to = max(newest, floor)
        self._repair_counter(moved_to)
        renewed = False
        if newest < floor and epoch is not None:
            renewed = self._ensure_epoch(replacing=epoch) != epoch
        return _CounterBehind(moved_to, renewed)

    def _store(self, batch: list[_Pending], floor: int, epoch: _Epoch | None) -> _Stored:
        """Store ``batch`` under numbers above ``floor`` (every number this
        instance reserved or read so far). Broadcasts the database cannot
        hold are refused alone: those BSON cannot encode (an integer beyond
        8 bytes, a NUL in a key, over 16 MiB) before any number is reserved
        for them, those it refuses (``writeErrors``) when inserted; the rest
        of the batch is stored either way."""
        now = _utcnow()
        docs: list[dict[str, Any]] = []
        kept: list[_Pending] = []
        refused: list[tuple[_Pending, str]] = []
        for item in batch:
            doc = {
                "_id": ObjectId(),
                "seq": 0,
                "channel": item.channel,
                "data": json.loads(item.body),
                "origin": self.origin,
                "mid": f"{self.origin}-{item.number}",
                "createdAt": now,
            }
            try:
                too_large = len(bson.encode(doc)) > MAX_DOCUMENT
            except (bson.errors.BSONError, OverflowError):
                too_large = True
            if too_large:
                refused.append((item, "BSON holds at most 16 MiB, integers of at most 8 bytes and no NUL in keys"))
            else:
                docs.append(doc)
                kept.append(item)
        if not docs:
            return _Stored(refused, 0)
        # Reserve len(docs) sequence numbers, then insert. A failed insert is
        # retried with new numbers (the old ones become a gap the pollers
        # skip); the message ids are kept, so a batch stored twice (the first
        # insert succeeded but its reply was lost) is delivered once.
        counter = self._counters.find_one_and_update(
            {"_id": COLLECTION},
            {"$inc": {"seq": len(docs)}},
            upsert=True,
            return_document=pymongo.ReturnDocument.AFTER,
        )
        assert counter is not None  # upsert, and the document after the update
        last = int(counter["seq"])
        first = last - len(docs) + 1
        if first <= floor:
            # Numbers handed out before: the counter went back (its document
            # removed). Pollers are past them and would skip these broadcasts.
            raise self._counter_went_back(floor, epoch)
        for i, doc in enumerate(docs):
            doc["seq"] = first + i
        try:
            self._collection.insert_many(docs, ordered=False)
        except pymongo.errors.BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(error.get("code") == DUPLICATE_KEY for error in errors):
                # A number already taken: the counter went back (a reset, a
                # removed counter). Move it on; the batch is stored again with
                # new numbers (what did go in is dropped as a copy by its id).
                raise self._counter_went_back(floor, epoch) from exc
            # The rest went in (unordered insert); write concern errors alone
            # leave every document written on the primary.
            for error in errors:
                refused.append((kept[error["index"]], f"MongoDB refused it: {error.get('errmsg')}"))
            if exc.details.get("writeConcernErrors"):
                logger.warning("fan-out: stored without the write concern: %s", exc.details["writeConcernErrors"][0])
        return _Stored(refused, last)

    def _read(self, after: int) -> list[dict[str, Any]]:
        cursor = self._collection.find({"seq": {"$gt": after}}).sort("seq", 1).limit(self.batch_size)
        return list(cursor)

    # --- the two tasks ------------------------------------------------------------------

    async def _retrying(self, what: str, fn: Callable[[], Any]) -> Any:
        outage = _Outage(self.retry)
        while True:
            try:
                result = await self._db(fn)
            except pymongo.errors.PyMongoError as exc:
                await outage.failed("MongoDB unreachable, cannot %s (retrying): %s", what, exc)
                continue
            outage.over("MongoDB reachable again after %.1f s: %s", what)
            return result

    async def _write_forever(self) -> NoReturn:
        outage = self._write_outage
        while True:
            if not self._pending:
                self._wake = trio.Event()
                await self._wake.wait()
            batch = list(itertools.islice(self._pending, self.batch_size))
            try:
                result: _Stored = await self._db(self._store, batch, self._floor(), self._epoch)
            except _CounterBehind as behind:
                logger.warning(
                    "fan-out: the sequence counter went back; moved to %d%s",
                    behind.moved_to,
                    " and the epoch renewed (older broadcasts are gone): every instance restarts its reading"
                    if behind.renewed
                    else "",
                )
                continue
            except pymongo.errors.PyMongoError as exc:
                self._write_failures += 1
                await outage.failed(
                    "MongoDB %s: holding broadcasts for other instances (%d waiting, room for %d): %s",
                    "refused the write" if isinstance(exc, pymongo.errors.OperationFailure) else "unreachable",
                    len(self._pending),
                    self.max_pending,
                    exc,
                )
                continue
            self._settle(batch, result)
            outage.over(
                "MongoDB reachable again after %.1f s: stored the held broadcasts (%d still waiting)",
                len(self._pending),
            )

    def _floor(self) -> int:
        """Every number this instance reserved or read: a new reservation must be above it."""
        return max(self._reserved, self._sequence.last_seq)

    def _settle(self, batch: list[_Pending], result: _Stored) -> None:
        """``batch`` (the head of the queue) was stored, but for ``result.refused``."""
        self._reserved = max(self._reserved, result.reserved)
        refused = {id(item): why for item, why in result.refused}
        for item in batch:
            self._pending.popleft()
            if item.receipt is not None and id(item) not in refused:
                item.receipt.stored()
        self._stored += len(batch) - len(refused)
        for item, why in result.refused:
            if item.receipt is not None:
                item.receipt.failed(f"MongoDB cannot store it ({why})")
            self._echo.pop(f"{self.origin}-{item.number}", None)
            self._unstorable += 1
            logger.error(
                "fan-out: a broadcast to %s cannot be stored in MongoDB (%s); %s gets it (%d such so far)",
                item.channel,
                why,
                "no instance" if self.ordered else "no other instance",
                self._unstorable,
            )

    async def _poll_forever(self, sink: FanoutSink) -> NoReturn:
        outage = self._read_outage
        sequence = self._sequence
        next_probe = trio.current_time() + self.probe_interval
        while True:
            try:
                if trio.current_time() >= next_probe or outage.since is not None:
                    # After an outage, check before reading on: the database that came back may be a new one.
                    await self._check_database(sink)
                    next_probe = trio.current_time() + self.probe_interval
                started = time.perf_counter()
                docs: list[dict[str, Any]] = await self._db(self._read, sequence.last_seq)
                self._poll_seconds.observe(time.perf_counter() - started)
            except (pymongo.errors.PyMongoError, bson.errors.BSONError) as exc:  # InvalidBSON: read again
                self._read_failures += 1
                await outage.failed("MongoDB unreachable: no broadcasts from other instances until it is back: %s", exc)
                continue
            outage.over("MongoDB reachable again after %.1f s: resuming after sequence %d", sequence.last_seq)
            self._observe_delays(docs)
            step = sequence.feed(map(self._stored_doc, docs), trio.current_time())
            self._duplicates += step.duplicates
            if step.skipped:
                self._skipped += step.skipped
                logger.warning(
                    "fan-out: gave up on %d sequence number(s) (gap), now at %d", step.skipped, sequence.last_seq
                )
            self._delivered += deliver_stored(step.deliver, sink, ordered=self.ordered)
            if step.waiting or len(docs) < self.batch_size:
                # Traffic (docs came): the next ones are likely stored already or soon: look again sooner.
                await trio.sleep(self.poll_interval if not docs else self.busy_poll_interval)

    async def _purge_forever(self) -> NoReturn:
        """Remove what is older than ``ttl``, every quarter of it (jittered,
        so that instances take turns); an outage is the other tasks' to report."""
        interval = max(1.0, self.ttl / 4)
        while True:
            await trio.sleep(interval * random.uniform(0.75, 1.25))
            with contextlib.suppress(pymongo.errors.PyMongoError):
                await self._db(self._purge)

    async def _check_database(self, sink: FanoutSink) -> None:
        """Notice a database that is not the one prepared any more, and carry on with it."""
        probe: _Probe = await self._db(self._probe)
        last = self._sequence.last_seq
        if probe.epoch != self.epoch:
            why = "its epoch is gone" if probe.epoch is None else "its epoch changed"
        elif max(probe.counter, probe.newest) < last:
            why = f"its sequence went back from {last} to {max(probe.counter, probe.newest)}"
        else:
            if probe.counter < probe.newest:
                logger.warning("fan-out: the sequence counter is behind the collection; moved to %d", probe.newest)
                await self._db(self._repair_counter, probe.newest)
            if not probe.indexed:
                logger.warning(
                    "fan-out: the indexes of %s were missing (collection recreated); created again", COLLECTION
                )
                await self._db(self._ensure_indexes)
            self._seen_at = _utcnow()
            return
        self._resets += 1
        cutoff = self._seen_at - datetime.timedelta(seconds=self.reset_margin)
        epoch, start = await self._db(self._restart_after_reset, self._epoch, cutoff)
        logger.warning(
            "fan-out: the database was reset (%s; reset %d): new epoch %s, delivering what was stored since, "
            "from sequence %d on; offsets of the old epoch cannot be recovered",
            why,
            self._resets,
            epoch.value,
            start + 1,
        )
        self._begin(sink, epoch, start)
        self._reserved = 0  # the old sequence's: numbers of the new one are checked against what is read
        self._seen_at = _utcnow()

    def _begin(self, sink: FanoutSink, epoch: _Epoch, last_seq: int) -> None:
        """Read the sequence ``epoch`` on after ``last_seq``."""
        self._epoch, self.epoch = epoch, epoch.value
        self._sequence.start(last_seq)
        sink.start_sequence(epoch.value, last_seq)

    def _observe_delays(self, docs: list[dict[str, Any]]) -> None:
        """How long other instances' broadcasts took from their store
        (``createdAt``, their clock) to this read (this one's)."""
        now = time.time()
        origin, observe = self.origin, self._delay_seconds.observe
        for doc in docs:
            created = doc.get("createdAt")
            if doc.get("origin") != origin and isinstance(created, datetime.datetime):
                if created.tzinfo is None:  # pymongo's default: naive, in UTC
                    created = created.replace(tzinfo=datetime.UTC)
                observe(max(0.0, now - created.timestamp()))

    def _remember_echo(self, mid: str, body: str) -> None:
        self._echo[mid] = body
        if len(self._echo) > 2 * self.max_pending:  # held, plus stored but not read back yet (or lost to a gap)
            del self._echo[next(iter(self._echo))]

    def _stored_doc(self, doc: dict[str, Any]) -> Stored:
        mid = doc.get("mid")
        mid = mid if isinstance(mid, str) else None
        return Stored(
            int(doc["seq"]),
            str(doc.get("channel")),
            doc.get("data"),
            str(doc.get("origin")),
            mid,
            self._echo.pop(mid, None) if mid is not None and self._echo else None,
        )
