"""The client's channel book, sans-IO: no sockets, no Trio."""

from __future__ import annotations

from modelence_trio._client_state import ChannelBook, Rejoined
from modelence_trio.protocol import Join, Joined, JoinError, Left, Message, Since


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
