"""Presence state, sans-IO: the PresenceBook on its own, several books talking
through an in-order bus, and a hypothesis model (members equal the live
joined users)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from modelence_trio import _presence
from modelence_trio._presence import Diff, Member, PresenceBook


def keys(diff: Diff) -> tuple[list[str], list[str]]:
    return [m.key for m in diff.joins], [m.key for m in diff.leaves]


def test_a_user_with_two_connections_is_one_member() -> None:
    book = PresenceBook("a")
    book.join("room:1", "c1", "ann", '{"handle":"ann"}')
    book.join("room:1", "c2", "ann", '{"handle":"ann on her phone"}')
    assert book.count("room:1") == 1
    assert book.members("room:1", 10) == [Member("ann", 2, '{"handle":"ann"}')]  # the first connection's meta
    book.leave("room:1", "c1", "ann")
    assert book.members("room:1", 10) == [Member("ann", 1, '{"handle":"ann on her phone"}')]
    book.leave("room:1", "c2", "ann")
    assert book.count("room:1") == 0 and book.members("room:1", 10) == []


def test_changes_within_a_window_are_one_diff() -> None:
    book = PresenceBook("a")
    book.join("room:1", "c1", "ann")
    book.join("room:1", "c2", "bob")
    book.join("room:1", "c3", "cid")
    book.leave("room:1", "c3", "cid")  # joined and left within the window: in no diff
    book.join("room:2", "c4", "dan")
    diffs = {diff.channel: diff for diff in book.flush()}
    assert keys(diffs["room:1"]) == (["ann", "bob"], [])
    assert diffs["room:1"].count == 2
    assert keys(diffs["room:2"]) == (["dan"], [])
    assert book.flush() == []  # nothing since
    book.leave("room:1", "c1", "ann")
    book.join("room:1", "c5", "ann")  # left and came back: the same member, unchanged
    assert book.flush() == []
    book.leave("room:1", "c2", "bob")
    (diff,) = book.flush()
    assert diff == Diff("room:1", (), (Member("bob", 0, "null"),), 1)


def test_a_changed_connection_count_is_a_join_with_the_new_state() -> None:
    book = PresenceBook("a")
    book.join("room:1", "c1", "ann")
    book.flush()
    book.join("room:1", "c2", "ann")
    (diff,) = book.flush()
    assert diff.joins == (Member("ann", 2, "null"),) and diff.leaves == ()


def test_leaving_what_was_never_joined_changes_nothing() -> None:
    book = PresenceBook("a")
    book.leave("room:1", "c1", "ann")
    book.join("room:1", "c1", "ann")
    book.join("room:1", "c1", "ann")  # the same connection twice: once
    assert book.members("room:1", 5) == [Member("ann", 1, "null")]
    book.leave("room:1", "c2", "ann")
    assert book.count("room:1") == 1


def test_listing_is_capped_and_in_arrival_order() -> None:
    book = PresenceBook("a")
    for n in range(10):
        book.join("room:1", f"c{n}", f"u{n}")
    assert [m.key for m in book.members("room:1", 3)] == ["u0", "u1", "u2"]
    assert book.count("room:1") == 10


class Bus:
    """Every book's messages, delivered to every other book in one order (a fan-out)."""

    def __init__(self, *books: PresenceBook) -> None:
        self.books = list(books)
        self.cut: set[str] = set()  # instances whose messages go nowhere and who read nothing

    def settle(self, now: float = 0.0) -> None:
        """Flush every book and deliver until nobody has anything to say."""
        for _ in range(20):
            sent = False
            for book in self.books:
                book.flush()
                messages, book.outgoing = book.outgoing, []
                if book.instance in self.cut:
                    continue
                for message in messages:
                    sent = True
                    for other in self.books:
                        if other is not book and other.instance not in self.cut:
                            other.receive(message, now)
            if not sent:
                return
        raise AssertionError("the books never went quiet")


def started(*names: str, expiry: float = 15.0) -> tuple[Bus, list[PresenceBook]]:
    books = [PresenceBook(name, expiry=expiry, ask_interval=0.0) for name in names]
    bus = Bus(*books)
    for book in books:
        book.start()
    bus.settle()
    return bus, books


def view(book: PresenceBook, channel: str = "room:1") -> dict[str, int]:
    return {m.key: m.connections for m in book.members(channel, 1000)}


def test_every_instance_sees_every_member() -> None:
    bus, (a, b, c) = started("a", "b", "c")
    a.join("room:1", "a1", "ann", '"A"')
    b.join("room:1", "b1", "ann", '"B"')
    c.join("room:1", "c1", "cid")
    bus.settle()
    for book in (a, b, c):
        assert view(book) == {"ann": 2, "cid": 1}
    # The meta of a member on several instances: the local one, else the smallest instance's.
    assert [m.meta for m in c.members("room:1", 5) if m.key == "ann"] == ['"A"']
    assert [m.meta for m in b.members("room:1", 5) if m.key == "ann"] == ['"B"']
    b.leave("room:1", "b1", "ann")
    bus.settle()
    assert view(c) == {"ann": 1, "cid": 1}


def test_a_late_instance_gets_the_others_state() -> None:
    bus, (a, _) = started("a", "b")
    a.join("room:1", "a1", "ann")
    bus.settle()
    late = PresenceBook("z", ask_interval=0.0)
    bus.books.append(late)
    late.start()
    bus.settle()
    assert view(late) == {"ann": 1}


def test_a_lost_delta_is_noticed_by_the_next_beat(monkeypatch: pytest.MonkeyPatch) -> None:
    bus, (a, b) = started("a", "b")
    a.join("room:1", "a1", "ann")
    a.flush()
    a.outgoing.clear()  # the delta is lost (a gap given up on, an overflowing buffer)
    bus.settle()
    assert view(b) == {}
    a.beat()
    bus.settle()  # b sees version 1 where it has 0: asks a for its state
    assert view(b) == {"ann": 1}


def test_states_travel_in_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_presence, "ENTRIES_PER_MESSAGE", 3)
    bus, (a, b) = started("a", "b")
    for n in range(10):
        a.join("room:1", f"a{n}", f"u{n}")
    a.flush()
    a.outgoing.clear()  # lost: b learns it all from a state
    a._state_due = True
    a.flush()
    parts = [m for m in a.outgoing if m["kind"] == "state"]
    assert [m["part"] for m in parts] == [0, 1, 2, 3] and parts[-1]["last"]
    bus.settle()
    assert len(view(b)) == 10
    # A transfer whose first part is missed is asked for again, never half-applied.
    a._state_due = True
    a.flush()
    a.outgoing.pop(0)
    bus.settle()
    assert len(view(b)) == 10


def test_a_silent_instance_expires_and_one_saying_goodbye_leaves_at_once() -> None:
    bus, (a, b, c) = started("a", "b", "c", expiry=15.0)
    a.join("room:1", "a1", "ann")
    c.join("room:1", "c1", "cid")
    bus.settle(now=0.0)
    assert view(b) == {"ann": 1, "cid": 1}
    bus.cut.add("c")  # crashed: it says nothing more
    for now in (5.0, 10.0, 15.0):
        a.beat()
        bus.settle(now)
        assert b.expire(now) == []
    assert b.expire(15.1) == ["c"]
    (diff,) = b.flush()
    assert keys(diff) == ([], ["cid"]) and diff.count == 1
    a.bye()
    bus.settle(16.0)
    assert view(b) == {}


def test_an_instance_back_from_a_partition_is_reconciled() -> None:
    bus, (a, b) = started("a", "b", expiry=15.0)
    a.join("room:1", "a1", "ann")
    a.join("room:1", "a2", "bob")
    bus.settle(0.0)
    bus.cut.add("a")  # a cannot reach the database: what it says is held (here: lost) meanwhile
    a.leave("room:1", "a2", "bob")
    a.join("room:1", "a3", "cid")
    bus.settle(1.0)
    assert view(a) == {"ann": 1, "cid": 1}  # a's own members are not lost on a
    b.beat()
    bus.settle(20.0)
    assert b.expire(20.0) == ["a"] and a.expire(20.0) == ["b"]
    assert view(b) == {}
    bus.cut.clear()
    a.beat()
    bus.settle(21.0)  # b does not know a any more: asks, a sends its state
    assert view(b) == {"ann": 1, "cid": 1}  # bob, who left meanwhile, is not back


def test_malformed_messages_are_refused_whole() -> None:
    book = PresenceBook("a")
    message: Any
    for message in (
        [],
        {"instance": "b", "kind": "delta"},
        {"instance": "b", "kind": "state", "version": 0, "part": 0, "entries": "x"},
        {"instance": "b", "kind": "state", "version": 0, "part": 0, "entries": [["room:1", "ann", 1, "{"]]},
        {"instance": "b", "kind": "state", "version": 0, "part": 0, "entries": [["room:1", "ann", -1, None]]},
        {"instance": "b", "kind": "beat", "version": 0, "x": 1} | {"kind": "nonsense"},
    ):
        with pytest.raises(ValueError):
            book.receive(message, 0.0)
    ok: Any = {"instance": "b", "kind": "state", "version": 0, "part": 0, "last": True}
    entries = [["room:1", "ann", 1, "null"], ["room:1", "bob", 1, "{"]]  # one bad entry: none applied
    with pytest.raises(ValueError):
        book.receive(ok | {"entries": entries}, 0.0)
    assert book.count("room:1") == 0


class PresenceModel(RuleBasedStateMachine):
    """Three instances, users connecting and leaving on any of them, messages
    flowing in order; an instance may crash. Once the books have talked and
    the silent ones expired, every live book lists exactly the users with a
    connection on a live instance, with their connection counts."""

    def __init__(self) -> None:
        super().__init__()
        self.bus, self.books = started("a", "b", "c", expiry=15.0)
        self.now = 0.0
        self.live: dict[tuple[str, str], str] = {}  # (instance, connection) -> user
        self.crashed: set[str] = set()
        self.serial = 0

    def _book(self, index: int) -> PresenceBook:
        return self.books[index]

    @rule(index=st.integers(0, 2), user=st.sampled_from(["ann", "bob", "cid", "dan"]))
    def connect(self, index: int, user: str) -> None:
        book = self._book(index)
        if book.instance in self.crashed:
            return
        self.serial += 1
        connection = f"{book.instance}-{self.serial}"
        book.join("room:1", connection, user)
        self.live[book.instance, connection] = user

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        instance, connection = data.draw(st.sampled_from(sorted(self.live)))
        if instance in self.crashed:
            return
        user = self.live.pop((instance, connection))
        next(b for b in self.books if b.instance == instance).leave("room:1", connection, user)

    @rule()
    def talk(self) -> None:
        self.now += 1.0
        self.bus.settle(self.now)

    @precondition(lambda self: len(self.crashed) < 2)
    @rule(index=st.integers(0, 2))
    def crash(self, index: int) -> None:
        self.crashed.add(self._book(index).instance)
        self.bus.cut.add(self._book(index).instance)

    @rule(index=st.integers(0, 2))
    def lose_what_is_unsent(self, index: int) -> None:
        book = self._book(index)
        book.flush()
        book.outgoing.clear()

    @rule()
    def converges(self) -> None:
        # Beat and expire until it settles: what the hub's timers do.
        now = self.now
        for _ in range(2):
            now += 16.0
            for book in self.books:
                if book.instance not in self.crashed:
                    book.beat()
            self.bus.settle(now)
            for book in self.books:
                book.expire(now)
            self.bus.settle(now)
        expected: dict[str, int] = {}
        for (instance, _), user in self.live.items():
            if instance not in self.crashed:
                expected[user] = expected.get(user, 0) + 1
        for book in self.books:
            if book.instance not in self.crashed:
                assert view(book) == expected, book.instance
        self.now = now

    def teardown(self) -> None:
        self.converges()  # every run ends checked, whatever its last step


PresenceModel.TestCase.settings = settings(max_examples=60, stateful_step_count=25, deadline=None)
test_presence_model = PresenceModel.TestCase


def test_a_lost_state_is_noticed_too() -> None:
    # A sync makes an instance send its state, with the changes of the window
    # in it instead of a delta; a replica that misses that state must notice.
    bus, (a, _b, c) = started("a", "b", "c")
    a.join("room:1", "a1", "ann")
    bus.settle()
    a.join("room:1", "a2", "bob")
    a.receive({"kind": "sync", "instance": "b"}, 0.0)  # a new instance asks everyone
    a.flush()
    a.outgoing.clear()  # the state is lost (a gap given up on)
    bus.settle()
    assert view(c) == {"ann": 1}
    a.beat()
    bus.settle()
    assert view(c) == {"ann": 1, "bob": 1}


def test_a_join_and_leave_within_a_window_leave_nothing_behind() -> None:
    # A delta of a member that joined and left before the flush: nothing to
    # keep, not even an empty channel (a client could make many).
    bus, (a, c) = started("a", "c")
    for n in range(100):
        a.join(f"room:{n}", "a1", "ann")
        a.leave(f"room:{n}", "a1", "ann")
    bus.settle()
    assert c._replicas["a"].members == {}
    assert c._before == {} and c._counts == {}
