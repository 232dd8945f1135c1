"""The per-connection protocol session, sans-IO: no sockets, no Trio, the time passed in."""

from __future__ import annotations

import json

from modelence_trio._session import Answer, Close, Session, SessionLimits
from modelence_trio.protocol import CloseCode, Error, JoinError, Limits, Ping, Publish


def test_a_good_frame_comes_out_parsed() -> None:
    session = Session(SessionLimits())
    assert session.receive('{"type":"ping","ref":1}', now=0.0) == Ping(1)
    assert session.receive('{"type":"message","channel":"chat:a","data":[1]}', now=0.0) == Publish("chat:a", [1])


def test_the_size_limit_counts_bytes() -> None:
    session = Session(SessionLimits(max_frame_size=100))
    text = json.dumps({"type": "ping", "ref": "€" * 40}, ensure_ascii=False)  # 53 characters, 133 bytes
    assert len(text) < 100
    assert session.receive(text, now=0.0) == Close(CloseCode.MESSAGE_TOO_BIG, "message over 100 bytes")


def test_malformed_frames_are_answered_until_too_many_in_the_window() -> None:
    session = Session(SessionLimits(bad_frame_limit=3, bad_frame_window=10.0))
    answers = [session.receive("{nope", now=float(t)) for t in range(4)]
    assert all(isinstance(a, Answer) and a.frame.code == "invalid_json" for a in answers)
    assert [a.then_close for a in answers if isinstance(a, Answer)] == [
        None,
        None,
        None,
        Close(CloseCode.POLICY_VIOLATION, "too many malformed frames"),
    ]


def test_malformed_frames_spread_out_are_tolerated() -> None:
    session = Session(SessionLimits(bad_frame_limit=3, bad_frame_window=10.0))
    for t in range(0, 200, 11):  # one every 11 s: never more than one per window
        answer = session.receive("[]", now=float(t))
        assert isinstance(answer, Answer) and answer.then_close is None


def test_parse_limits_apply() -> None:
    session = Session(SessionLimits(parse=Limits(max_id_length=4)))
    answer = session.receive('{"type":"join","channel":"chat:toolong","ref":5}', now=0.0)
    assert isinstance(answer, Answer) and isinstance(answer.frame, JoinError)
    assert answer.frame.code == "invalid_channel" and answer.frame.ref == 5


def test_joins_are_bounded_by_count_and_rate() -> None:
    session = Session(SessionLimits(joins_per_second=1.0, max_channels_per_connection=10))
    full = session.admit_join("chat:a", 1, joined=10, now=0.0)
    assert isinstance(full, JoinError) and full.code == "too_many_channels"
    assert session.admit_join("chat:a", 1, joined=0, now=0.0) is None  # a burst of two
    assert session.admit_join("chat:b", 2, joined=1, now=0.0) is None
    limited = session.admit_join("chat:c", 3, joined=2, now=0.0)
    assert isinstance(limited, JoinError) and limited.code == "rate_limited" and limited.ref == 3
    assert session.admit_join("chat:c", 3, joined=2, now=1.0) is None  # a second later, one more


def test_publishes_are_rate_limited() -> None:
    session = Session(SessionLimits(publishes_per_second=2.0))
    assert [session.admit_publish(n, now=0.0) is None for n in range(5)] == [True, True, True, True, False]
    refusal = session.admit_publish(9, now=0.0)
    assert isinstance(refusal, Error) and refusal.code == "rate_limited" and refusal.ref == 9
    unlimited = Session(SessionLimits(publishes_per_second=None))
    assert all(unlimited.admit_publish(n, now=0.0) is None for n in range(1000))
