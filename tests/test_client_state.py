"""The client's protocol engine and channel book, sans-IO: no sockets, no Trio."""

from __future__ import annotations

from modelence_trio import Backoff
from modelence_trio._client_state import ChannelBook, ClientSession, Delivery, Ignored, Notice, Rejoined, Reply
from modelence_trio.protocol import Join, Joined, JoinError, Left, Message, Pong, Since, encode


def test_positions_come_from_the_join_then_from_messages() -> None:
    book = ChannelBook()
    book.joined_now("chat:a", Joined("chat:a", 1, None, 5, "e"))
    book.joined_now("chat:b", Joined("chat:b", 2))  # a channel without history: no position
    assert book.rejoin_plan() == [Join("chat:a", since=Since(5, "e")), Join("chat:b")]
    book.message(Message("chat:a", "x", 9, "e"))
    book.message(Message("chat:z", "y", 99, "e"))  # not joined: ignored
    assert book.rejoin_plan()[0] == Join("chat:a", since=Since(9, "e"))
    assert book.joined == {"chat:a", "chat:b"}


def test_rejoin_answers() -> None:
    book = ChannelBook()
    for channel in ("chat:a", "chat:b", "chat:c"):
        book.joined_now(channel, Joined(channel, 1, None, 5, "e"))
    a, b, c = book.rejoin_plan()
    assert book.rejoined(a, Joined("chat:a", 2, True, 7, "e")) is Rejoined.OK
    assert book.rejoined(b, Joined("chat:b", 3, False, 40, "e2")) is Rejoined.GAP
    assert book.rejoined(c, JoinError("chat:c", "access_denied", "no", 4)) is Rejoined.REFUSED
    assert book.joined == {"chat:a", "chat:b"}
    # After a gap, the next re-join starts from the position the server gave.
    assert book.rejoin_plan() == [Join("chat:a", since=Since(5, "e")), Join("chat:b", since=Since(40, "e2"))]


def test_a_rejoin_without_a_position_takes_the_joined_one() -> None:
    book = ChannelBook()
    book.joined_now("chat:a", Joined("chat:a", 1))
    (join,) = book.rejoin_plan()
    assert book.rejoined(join, Joined("chat:a", 2, None, 12, "e")) is Rejoined.OK
    assert book.rejoin_plan() == [Join("chat:a", since=Since(12, "e"))]


def test_leaving_by_app_or_by_server_ends_rejoins() -> None:
    book = ChannelBook()
    for channel in ("chat:a", "chat:b", "chat:c"):
        book.joined_now(channel, Joined(channel, 1))
    book.leave("chat:a")
    book.left_by_server(Left("chat:b", None, "access revoked"))
    assert book.rejoin_plan() == [Join("chat:c")]


def test_session_matches_replies_to_their_waiters() -> None:
    session = ClientSession[str]()
    first, second = session.request("join a"), session.request("ping")
    assert second == first + 1
    assert session.receive(encode(Pong(second))) == Reply(Pong(second), "ping")
    assert sorted(session.waiting()) == ["join a", "ping"]
    session.forget(second)
    # A reply to a request given up on answers nothing; not worth a warning.
    assert session.receive(encode(Pong(second))) == Ignored("an unexpected Pong frame")
    assert session.waiting() == ["join a"]


def test_session_reads_deliveries_notices_and_garbage() -> None:
    session = ClientSession[None]()
    session.book.joined_now("chat:a", Joined("chat:a", 1, None, 5, "e"))
    message = Message("chat:a", {"n": 1}, 6, "e")
    assert session.receive(encode(message)) == Delivery(message)
    assert session.book.rejoin_plan() == [Join("chat:a", since=Since(6, "e"))]  # the position moved
    left = Left("chat:a", None, "access revoked")
    assert session.receive(encode(left)) == Notice(left)
    assert session.book.joined == frozenset()  # the server's leave: not re-joined
    garbage = session.receive("{not json")
    assert isinstance(garbage, Ignored) and garbage.malformed


def test_session_reconnect_schedule_is_its_backoff() -> None:
    session = ClientSession[None](Backoff(initial=0.5, maximum=10.0, jitter=0.0))
    assert [session.reconnect_delay(n) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
