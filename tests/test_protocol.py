"""The sans-IO protocol on its own: no trio, no sockets."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol

from modelence_trio._wire import Outgoing
from modelence_trio.protocol import (
    DEFAULT_MAX_ID_LENGTH,
    Error,
    ErrorCode,
    Join,
    Joined,
    JoinError,
    Leave,
    Left,
    Limits,
    Message,
    Ping,
    Pong,
    ProtocolError,
    Publish,
    Published,
    Since,
    Welcome,
    encode,
    encode_data,
    encode_message,
    error_reply,
    message_frame,
    parse_client_frame,
    parse_server_frame,
    split_channel,
    validate_category,
)

# --- encoding: every frame type, both directions ----------------------------------


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (Join("chat:a", 1), {"type": "join", "channel": "chat:a", "ref": 1}),
        (Join("chat:a"), {"type": "join", "channel": "chat:a"}),
        (Leave("chat:a", "x"), {"type": "leave", "channel": "chat:a", "ref": "x"}),
        (Publish("chat:a", {"t": 1}, 3), {"type": "message", "channel": "chat:a", "data": {"t": 1}, "ref": 3}),
        (Ping(4), {"type": "ping", "ref": 4}),
        (
            Welcome("c1", {"id": "u", "handle": "h"}, ("admin",)),
            {
                "type": "welcome",
                "protocol": 1,
                "connection": "c1",
                "user": {"id": "u", "handle": "h"},
                "roles": ["admin"],
            },
        ),
        (Welcome("c2", None), {"type": "welcome", "protocol": 1, "connection": "c2", "user": None, "roles": []}),
        (Joined("chat:a", 1), {"type": "joined", "channel": "chat:a", "ref": 1}),
        (Left("chat:a", 2), {"type": "left", "channel": "chat:a", "ref": 2}),
        (
            JoinError("chat:a", "access_denied", "Access denied", 1),
            {"type": "join_error", "channel": "chat:a", "error": "Access denied", "code": "access_denied", "ref": 1},
        ),
        (Message("chat:a", [1, "two", None]), {"type": "message", "channel": "chat:a", "data": [1, "two", None]}),
        (Published("chat:a", 9), {"type": "published", "channel": "chat:a", "ref": 9}),
        (Pong(4), {"type": "pong", "ref": 4}),
        (Error("invalid_json", "bad", None), {"type": "error", "error": "bad", "code": "invalid_json"}),
    ],
)
def test_encode_gives_one_object_type_first(frame: Any, expected: dict[str, Any]) -> None:
    text = encode(frame)
    decoded = json.loads(text)
    assert decoded == expected
    assert next(iter(decoded)) == "type"


@pytest.mark.parametrize(
    "frame",
    [Join("chat:a", 1), Leave("x:y", "r"), Publish("a:b", {"k": [1, 2.5]}, None), Ping(7), Ping()],
)
def test_client_frames_round_trip(frame: Any) -> None:
    assert parse_client_frame(encode(frame)) == frame


@pytest.mark.parametrize(
    "frame",
    [
        Welcome("c", {"id": "1", "handle": "a"}, ("r",)),
        Joined("a:b", 1),
        Left("a:b", "z"),
        JoinError("a:b", "unknown_channel", "no", 2),
        Message("a:b", {"x": None}),
        Published("a:b", 5),
        Pong(1),
        Error("not_joined", "join first", 3),
    ],
)
def test_server_frames_round_trip(frame: Any) -> None:
    assert parse_server_frame(encode(frame)) == frame


def test_server_frame_parser_ignores_unknown_fields() -> None:
    text = '{"type":"message","channel":"a:b","data":1,"offset":17,"epoch":"e1","shard":3}'
    assert parse_server_frame(text) == Message("a:b", 1, 17, "e1")


def test_offsets_and_recovery_fields_round_trip() -> None:
    message = Message("chat:a", {"t": 1}, 42, "ep-1")
    assert encode(message) == '{"type":"message","channel":"chat:a","data":{"t":1},"offset":42,"epoch":"ep-1"}'
    assert parse_server_frame(encode(message)) == message
    assert encode(Message("chat:a", 1)) == '{"type":"message","channel":"chat:a","data":1}'  # no history: no offset
    join = Join("chat:a", 7, Since(41, "ep-1"))
    assert json.loads(encode(join)) == {
        "type": "join",
        "channel": "chat:a",
        "since": {"offset": 41, "epoch": "ep-1"},
        "ref": 7,
    }
    assert parse_client_frame(encode(join)) == join
    assert parse_server_frame(encode(Joined("chat:a", 7, True))) == Joined("chat:a", 7, True)
    assert "recovered" not in encode(Joined("chat:a"))  # a join without since


@pytest.mark.parametrize(
    "since",
    [
        5,
        "x",
        {"offset": -1, "epoch": "e"},
        {"offset": 1},
        {"offset": True, "epoch": "e"},
        {"offset": 1, "epoch": "e" * 65},
    ],
)
def test_bad_since_is_a_join_error(since: object) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(json.dumps({"type": "join", "channel": "chat:a", "since": since, "ref": 3}))
    reply = error_reply(info.value)
    assert reply == JoinError("chat:a", "invalid_field", info.value.message, 3)


def test_client_frame_parser_ignores_unknown_fields() -> None:
    assert parse_client_frame('{"type":"join","channel":"a:b","extra":[1]}') == Join("a:b")


def test_encode_message_rejects_non_json() -> None:
    with pytest.raises(TypeError, match="not JSON-serializable"):
        encode_message("a:b", {1, 2})
    with pytest.raises(TypeError, match="not JSON-serializable"):
        encode_message("a:b", float("nan"))


def test_message_frame_wraps_data_encoded_once() -> None:
    body = encode_data("a:b", {"n": [1, "ü"]})
    for offset, epoch in ((None, None), (7, "e1")):
        text = message_frame("a:b", body, offset, epoch)
        assert text == encode_message("a:b", {"n": [1, "ü"]}, offset, epoch)
        assert parse_server_frame(text) == Message("a:b", {"n": [1, "ü"]}, offset, epoch)
    with pytest.raises(TypeError, match="not JSON-serializable"):
        encode_data("a:b", {1, 2})


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["chat:a", "chat:é", 'user:"q"', "x:\\"]),
            st.none() | st.integers(min_value=0, max_value=2**53),
            st.sampled_from(["e1", "e2", "ü"]),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_message_frames_are_the_json_they_stand_for(frames: list[tuple[str, int | None, str]]) -> None:
    # The remembered channel heads and epoch tail never change a byte: each frame is
    # exactly the compact JSON of its fields, whatever came before it.
    for channel, offset, epoch in frames:
        fields: dict[str, object] = {"type": "message", "channel": channel, "data": {"n": [1, "ü"]}}
        if offset is not None:
            fields |= {"offset": offset, "epoch": epoch}
        expected = json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
        assert message_frame(channel, encode_data(channel, {"n": [1, "ü"]}), offset, epoch) == expected


def test_encode_message_keeps_unicode() -> None:
    assert json.loads(encode_message("chat:é", "ü☃")) == {"type": "message", "channel": "chat:é", "data": "ü☃"}


# --- every error path ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "code", "ref"),
    [
        ("not json", ErrorCode.INVALID_JSON, None),
        ("", ErrorCode.INVALID_JSON, None),
        ("[1,2]", ErrorCode.INVALID_FRAME, None),
        ('"join"', ErrorCode.INVALID_FRAME, None),
        ("{}", ErrorCode.INVALID_FIELD, None),
        ('{"type":5,"ref":1}', ErrorCode.INVALID_FIELD, 1),
        ('{"type":"subscribe","ref":2}', ErrorCode.UNKNOWN_TYPE, 2),
        ('{"type":"join","ref":3}', ErrorCode.INVALID_FIELD, 3),
        ('{"type":"join","channel":7,"ref":"r"}', ErrorCode.INVALID_FIELD, "r"),
        ('{"type":"join","channel":"nocolon","ref":4}', ErrorCode.INVALID_CHANNEL, 4),
        ('{"type":"leave","channel":"a:","ref":5}', ErrorCode.INVALID_CHANNEL, 5),
        ('{"type":"message","channel":"a:b","ref":6}', ErrorCode.INVALID_FIELD, 6),
        ('{"type":"message","channel":":b","data":1}', ErrorCode.INVALID_CHANNEL, None),
        ('{"type":"ping","ref":true}', ErrorCode.INVALID_FIELD, None),
        ('{"type":"ping","ref":1.5}', ErrorCode.INVALID_FIELD, None),
        ('{"type":"ping","ref":9007199254740993}', ErrorCode.INVALID_FIELD, None),
        ('{"type":"ping","ref":{"a":1}}', ErrorCode.INVALID_FIELD, None),
        ("[" * 100_000 + "]" * 100_000, ErrorCode.INVALID_JSON, None),
    ],
)
def test_bad_client_frames(text: str, code: ErrorCode, ref: Any) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(text)
    assert info.value.code == code
    assert info.value.ref == ref


def test_binary_frames_are_refused() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(b'{"type":"ping"}')
    assert info.value.code == ErrorCode.BINARY_FRAME


def test_ref_length_is_bounded() -> None:
    parse_client_frame(json.dumps({"type": "ping", "ref": "x" * 128}))
    with pytest.raises(ProtocolError):
        parse_client_frame(json.dumps({"type": "ping", "ref": "x" * 129}))
    with pytest.raises(ProtocolError):
        parse_client_frame(json.dumps({"type": "ping", "ref": "x" * 11}), limits=Limits(max_ref_length=10))


def test_a_bad_join_channel_is_answered_with_join_error() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_frame('{"type":"join","channel":"bad","ref":1}')
    reply = error_reply(info.value)
    assert isinstance(reply, JoinError)
    assert (reply.channel, reply.code, reply.ref) == ("bad", "invalid_channel", 1)


def test_other_bad_frames_are_answered_with_error() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_frame('{"type":"leave","channel":"bad","ref":1}')
    reply = error_reply(info.value)
    assert isinstance(reply, Error)
    assert (reply.code, reply.ref) == ("invalid_channel", 1)


@pytest.mark.parametrize(
    "text",
    [
        "nope",
        "{}",
        '{"type":"welcome","connection":"c","user":3,"roles":[],"protocol":1}',
        '{"type":"welcome","connection":"c","user":null,"roles":[1],"protocol":1}',
        '{"type":"joined"}',
        '{"type":"bogus"}',
    ],
)
def test_bad_server_frames(text: str) -> None:
    with pytest.raises(ProtocolError):
        parse_server_frame(text)


# --- channel names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("chat:room1", ("chat", "room1")),
        ("a:b:c", ("a", "b:c")),
        ("notifications:user 456", ("notifications", "user 456")),
    ],
)
def test_split_channel(name: str, expected: tuple[str, str]) -> None:
    assert split_channel(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "chat",
        "chat:",
        ":id",
        "1chat:x",
        "ch at:x",
        "chat:a\nb",
        "chat:\x00",
        "chat:\x7f",
        "chat:\x85",
        "chat:" + "x" * (DEFAULT_MAX_ID_LENGTH + 1),
        "c" * 65 + ":x",
    ],
)
def test_invalid_channel_names(name: str) -> None:
    with pytest.raises(ProtocolError) as info:
        split_channel(name)
    assert info.value.code == ErrorCode.INVALID_CHANNEL


def test_validate_category() -> None:
    assert validate_category("chat") == "chat"
    with pytest.raises(ValueError, match="invalid channel category"):
        validate_category("chat:room")


# --- properties ----------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)
refs = st.none() | st.integers(-(2**53), 2**53) | st.text(max_size=128)
channel_ids = st.text(min_size=1, max_size=DEFAULT_MAX_ID_LENGTH).filter(
    lambda s: not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in s)
)
channels = st.builds(
    lambda cat, cid: f"{cat}:{cid}", st.from_regex(r"[A-Za-z][A-Za-z0-9_.-]{0,20}", fullmatch=True), channel_ids
)
client_frames = st.one_of(
    st.builds(Join, channels, refs),
    st.builds(Leave, channels, refs),
    st.builds(Publish, channels, json_values, refs),
    st.builds(Ping, refs),
)


@given(client_frames)
def test_valid_client_frames_round_trip(frame: Any) -> None:
    assert parse_client_frame(encode(frame)) == frame


@given(st.builds(Message, channels, json_values))
def test_deliveries_round_trip(frame: Message) -> None:
    assert parse_server_frame(encode(frame)) == frame


@given(st.text())
def test_arbitrary_text_raises_only_protocol_errors(text: str) -> None:
    with contextlib.suppress(ProtocolError):
        parse_client_frame(text)


@given(json_values)
def test_arbitrary_json_raises_only_protocol_errors(value: Any) -> None:
    with contextlib.suppress(ProtocolError):
        parse_client_frame(json.dumps(value))


@given(
    st.dictionaries(
        st.sampled_from(["type", "channel", "data", "ref"]),
        json_values | st.sampled_from(["join", "leave", "message", "ping", "chat:a"]),
    )
)
def test_arbitrary_objects_raise_only_protocol_errors(value: dict[str, Any]) -> None:
    try:
        frame = parse_client_frame(json.dumps(value))
    except ProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)
    else:
        assert value["type"] in {"join", "leave", "message", "ping"}
        assert parse_client_frame(encode(frame)) == frame


def test_nesting_depth_is_bounded() -> None:
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(json.dumps({"type": "message", "channel": "a:b", "data": deep, "ref": 3}))
    assert (info.value.code, info.value.ref) == (ErrorCode.TOO_DEEP, 3)
    wide = [[1]] * 100  # many brackets, shallow: accepted
    assert parse_client_frame(json.dumps({"type": "message", "channel": "a:b", "data": wide})) == Publish("a:b", wide)
    shallow = json.dumps({"type": "message", "channel": "a:b", "data": deep})
    assert parse_client_frame(shallow, limits=Limits(max_depth=50)) == Publish("a:b", deep)


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 1023, 1024, 1025, 65535, 65536, 70000])
@pytest.mark.parametrize("char", ["a", "é", "💬"])
def test_outgoing_frames_are_what_wsproto_sends(length: int, char: str) -> None:
    # The header comes from a table under 1 KiB of payload and is packed above it:
    # either way, byte for byte the server text frame wsproto would write.
    text = char * (length // len(char.encode()))
    frame = Outgoing.from_text(text)
    assert frame.text == text
    assert frame.wire == FrameProtocol(client=False, extensions=[]).send_data(text, fin=True)
    assert frame == Outgoing(text, frame.wire)  # built as attrs builds it
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        frame.wire = b""  # type: ignore[misc]
