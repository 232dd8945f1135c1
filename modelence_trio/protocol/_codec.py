"""Text <-> frames for protocol v1. Pure functions: no I/O, no clock, no trio.

Parsing never raises anything but ``ProtocolError`` for bad input, whatever
the input, so transports can answer bad frames and keep the connection open.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NoReturn

import attrs

from ._errors import ErrorCode, ProtocolError
from ._frames import (
    Call,
    ClientFrame,
    Error,
    Join,
    Joined,
    JoinError,
    JsonValue,
    Leave,
    Left,
    Message,
    Ping,
    Pong,
    PresenceDiff,
    PresenceMember,
    PresenceQuery,
    PresenceState,
    Publish,
    Published,
    Ref,
    Result,
    ServerFrame,
    Since,
    Welcome,
)
from ._names import DEFAULT_MAX_ID_LENGTH, split_channel

__all__ = [
    "Limits",
    "encode",
    "encode_data",
    "encode_message",
    "error_reply",
    "has_lone_surrogate",
    "loads_utf8",
    "message_frame",
    "parse_client_frame",
    "parse_server_frame",
    "presence_diff_frame",
    "presence_state_frame",
    "result_frame",
]

_MAX_SAFE_INT = 2**53  # the largest integer every JavaScript client reads exactly
MAX_EPOCH_LENGTH = 64


@attrs.frozen
class Limits:
    """Bounds applied while parsing untrusted client frames."""

    max_id_length: int = DEFAULT_MAX_ID_LENGTH
    max_ref_length: int = 128
    #: Deepest nesting of arrays and objects accepted in a frame.
    max_depth: int = 32


DEFAULT_LIMITS = Limits()


def _not_json(value: object) -> NoReturn:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
if _c_make_encoder is not None:
    # ``JSONEncoder.encode`` builds a new C encoder on every call; building it
    # once saves a third of the cost of encoding a small message. No cycle
    # markers: a cyclic value ends in RecursionError, which callers catch.
    _encoder = _c_make_encoder(None, _not_json, json.encoder.encode_basestring, None, ":", ",", False, False, False)

    def _dumps(value: Any) -> str:
        return "".join(_encoder(value, 0))

else:  # pragma: no cover - interpreters without the C accelerator
    _dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode  # type: ignore[assignment]


def encode_data(channel: str, data: JsonValue) -> str:
    """A broadcast's data as JSON text: what the hub encodes once per broadcast
    and what every fan-out backend carries (``message_frame`` wraps it).

    Raises:
        TypeError: ``data`` is not JSON (a set, a datetime, NaN, a cycle...).
    """
    try:
        return _dumps(data)
    except (TypeError, ValueError, RecursionError) as exc:
        raise TypeError(f"broadcast data for {channel!r} is not JSON-serializable: {exc}") from None


def message_frame(channel: str, body: str, offset: int | None = None, epoch: str | None = None) -> str:
    """The ``message`` frame around data already encoded by ``encode_data``:
    string assembly, so an offset never costs a second encoding of the data
    (and the channel's and the epoch's JSON are remembered, not encoded for
    every broadcast)."""
    head = _message_heads.get(channel)
    if head is None:
        if len(_message_heads) >= _MAX_REMEMBERED:
            _message_heads.clear()
        head = _message_heads[channel] = '{"type":"message","channel":' + _dumps(channel) + ',"data":'
    if offset is None:
        return head + body + "}"
    global _epoch_tail
    if _epoch_tail[0] != epoch:
        _epoch_tail = (epoch, ',"epoch":' + _dumps(epoch) + "}")
    return f'{head}{body},"offset":{int(offset)}{_epoch_tail[1]}'


_MAX_REMEMBERED = 10_000  # channel names whose frame head is kept (then forgotten all at once)
_message_heads: dict[str, str] = {}
_epoch_tail: tuple[str | None, str] = ("", "")


def encode_message(channel: str, data: JsonValue, offset: int | None = None, epoch: str | None = None) -> str:
    """Encode a delivery; the broadcast hot path, called once per broadcast.

    Raises:
        TypeError: ``data`` is not JSON (a set, a datetime, NaN, a cycle...).
    """
    return message_frame(channel, encode_data(channel, data), offset, epoch)


#: A presence member as the server holds it: key, connections, metadata as JSON text.
EncodedMember = tuple[str, int, str]


def _members(members: Iterable[EncodedMember]) -> str:
    return (
        "["
        + ",".join(
            '{"key":' + _dumps(key) + ',"connections":' + str(int(connections)) + ',"meta":' + meta + "}"
            for key, connections, meta in members
        )
        + "]"
    )


def result_frame(data: str, ref: Ref) -> str:
    """A ``result`` frame around a method's result already encoded as JSON text."""
    text = '{"type":"result","data":' + data
    return text + ("}" if ref is None else ',"ref":' + _dumps(ref) + "}")


def presence_state_frame(
    channel: str, count: int, members: Iterable[EncodedMember] | None, truncated: bool = False, ref: Ref = None
) -> str:
    """A ``presence_state`` frame, by string assembly around metadata
    encoded once per member (``members`` ``None``: a counts-only channel)."""
    text = '{"type":"presence_state","channel":' + _dumps(channel) + ',"count":' + str(int(count))
    if members is not None:
        text += ',"members":' + _members(members) + ',"truncated":' + ("true" if truncated else "false")
    if ref is not None:
        text += ',"ref":' + _dumps(ref)
    return text + "}"


def presence_diff_frame(
    channel: str,
    count: int,
    joins: Iterable[EncodedMember] | None,
    leaves: Iterable[EncodedMember] | None,
    truncated: bool = False,
) -> str:
    """A ``presence_diff`` frame (``joins``/``leaves`` ``None``: counts only)."""
    text = '{"type":"presence_diff","channel":' + _dumps(channel) + ',"count":' + str(int(count))
    if joins is not None and leaves is not None:
        text += ',"joins":' + _members(joins) + ',"leaves":' + _members(leaves)
        text += ',"truncated":' + ("true" if truncated else "false")
    return text + "}"


def _encoded(members: tuple[PresenceMember, ...] | None) -> list[EncodedMember] | None:
    if members is None:
        return None
    return [(m.key, m.connections, _dumps(m.meta)) for m in members]


def encode(frame: ClientFrame | ServerFrame) -> str:
    """Encode any frame as one JSON object, ``type`` first and ``ref`` only when set."""
    if isinstance(frame, Message):
        return encode_message(frame.channel, frame.data, frame.offset, frame.epoch)
    try:
        if isinstance(frame, PresenceState):
            members = _encoded(frame.members)
            return presence_state_frame(frame.channel, frame.count, members, frame.truncated, frame.ref)
        if isinstance(frame, PresenceDiff):
            joins, leaves = _encoded(frame.joins), _encoded(frame.leaves)
            return presence_diff_frame(frame.channel, frame.count, joins, leaves, frame.truncated)
    except (TypeError, ValueError, RecursionError) as exc:
        raise TypeError(f"frame {frame!r} is not JSON-serializable: {exc}") from None
    wire_type, fields = _ENCODERS[type(frame)]
    obj: dict[str, Any] = {"type": wire_type}
    for name in fields:
        obj[name] = getattr(frame, name)
    if isinstance(frame, Welcome):
        obj["roles"] = list(frame.roles)
    elif isinstance(frame, Join):
        if frame.since is not None:
            obj["since"] = {"offset": frame.since.offset, "epoch": frame.since.epoch}
        if frame.last is not None:
            obj["last"] = frame.last
    elif isinstance(frame, Joined):
        if frame.recovered is not None:
            obj["recovered"] = frame.recovered
        if frame.offset is not None:
            obj["offset"], obj["epoch"] = frame.offset, frame.epoch
    elif isinstance(frame, Left) and frame.reason is not None:
        obj["reason"] = frame.reason
    elif isinstance(frame, Error) and frame.status is not None:
        obj["status"] = frame.status
    ref = getattr(frame, "ref", None)
    if ref is not None:
        obj["ref"] = ref
    try:
        return _dumps(obj)
    except (TypeError, ValueError, RecursionError) as exc:
        raise TypeError(f"frame {frame!r} is not JSON-serializable: {exc}") from None


_ENCODERS: dict[type, tuple[str, tuple[str, ...]]] = {
    Join: ("join", ("channel",)),
    Leave: ("leave", ("channel",)),
    Publish: ("message", ("channel", "data")),
    Ping: ("ping", ()),
    PresenceQuery: ("presence", ("channel",)),
    Call: ("call", ("method", "args")),
    Result: ("result", ("data",)),
    Welcome: ("welcome", ("protocol", "connection", "user", "roles")),
    Joined: ("joined", ("channel",)),
    Left: ("left", ("channel",)),
    JoinError: ("join_error", ("channel", "error", "code")),
    Published: ("published", ("channel",)),
    Pong: ("pong", ()),
    Error: ("error", ("error", "code")),
}


# --- parsing --------------------------------------------------------------------


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion (the input is untrusted)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = item.values()
        elif not isinstance(item, list):
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in item)
    return deepest


#: A JSON escape of a UTF-16 surrogate: the only way JSON text that is valid
#: UTF-8 can decode to a string that is not (a lone ``"\\ud800"``).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def has_lone_surrogate(value: Any) -> bool:
    """Whether parsed JSON holds a string (or key) that cannot be encoded as
    UTF-8. Iterative: the input is untrusted."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def loads_utf8(text: str) -> Any:
    """``json.loads`` that also refuses escaped lone surrogates, so that
    everything it returns can be encoded again (to a frame, to BSON). The
    scan for the escape keeps the walk off the path of ordinary text.

    Raises:
        ValueError: not JSON, or a string that is not valid Unicode.
    """
    value = json.loads(text)
    if _SURROGATE_ESCAPE.search(text) and has_lone_surrogate(value):
        raise ValueError("a string holds a lone UTF-16 surrogate, which is not valid Unicode")
    return value


def _load(text: str | bytes) -> dict[str, Any]:
    if not isinstance(text, str):
        raise ProtocolError(ErrorCode.BINARY_FRAME, "binary frames are not supported; send JSON text")
    try:
        obj = loads_utf8(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, f"frame is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.INVALID_FRAME, "a frame must be a JSON object")
    return obj


def _ref(obj: Mapping[str, Any], limits: Limits) -> Ref:
    ref = obj.get("ref")
    if ref is None:
        return None
    if isinstance(ref, str):
        if len(ref) <= limits.max_ref_length:
            return ref
    elif isinstance(ref, int) and not isinstance(ref, bool) and -_MAX_SAFE_INT <= ref <= _MAX_SAFE_INT:
        return ref
    raise ProtocolError(
        ErrorCode.INVALID_FIELD,
        f"'ref' must be a string of at most {limits.max_ref_length} characters or an integer within +-2**53",
    )


def _string(obj: Mapping[str, Any], key: str, ref: Ref) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        problem = "is missing" if key not in obj else "must be a string"
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"field {key!r} {problem}", ref=ref)
    return value


def _channel(obj: Mapping[str, Any], ref: Ref, limits: Limits) -> str:
    name = _string(obj, "channel", ref)
    try:
        split_channel(name, max_id_length=limits.max_id_length)
    except ProtocolError as exc:
        exc.ref = ref
        raise
    return name


def _since(obj: Mapping[str, Any], ref: Ref) -> Since | None:
    since = obj.get("since")
    if since is None:
        return None
    offset = since.get("offset") if isinstance(since, dict) else None
    epoch = since.get("epoch") if isinstance(since, dict) else None
    if (
        not isinstance(offset, int)
        or isinstance(offset, bool)
        or not 0 <= offset <= _MAX_SAFE_INT
        or not isinstance(epoch, str)
        or len(epoch) > MAX_EPOCH_LENGTH
    ):
        raise ProtocolError(
            ErrorCode.INVALID_FIELD,
            f'\'since\' must be {{"offset": <integer >= 0>, "epoch": <string of at most {MAX_EPOCH_LENGTH}>}}',
            ref=ref,
        )
    return Since(offset, epoch)


#: The most a join may ask for with ``last`` (a server gives at most what its history holds).
MAX_LAST = 10_000


def _last(obj: Mapping[str, Any], ref: Ref) -> int | None:
    last = obj.get("last")
    if last is None:
        return None
    if not isinstance(last, int) or isinstance(last, bool) or not 0 <= last <= MAX_LAST:
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"'last' must be an integer from 0 to {MAX_LAST}", ref=ref)
    return last


def _parse_join(obj: Mapping[str, Any], ref: Ref, limits: Limits) -> ClientFrame:
    channel = _channel(obj, ref, limits)
    try:
        since, last = _since(obj, ref), _last(obj, ref)
    except ProtocolError as exc:
        exc.channel = channel
        raise
    return Join(channel, ref, since, last)


def _parse_leave(obj: Mapping[str, Any], ref: Ref, limits: Limits) -> ClientFrame:
    return Leave(_channel(obj, ref, limits), ref)


def _parse_publish(obj: Mapping[str, Any], ref: Ref, limits: Limits) -> ClientFrame:
    channel = _channel(obj, ref, limits)
    if "data" not in obj:
        raise ProtocolError(ErrorCode.INVALID_FIELD, "field 'data' is missing", ref=ref)
    return Publish(channel, obj["data"], ref)


def _parse_ping(obj: Mapping[str, Any], ref: Ref, limits: Limits) -> ClientFrame:
    return Ping(ref)


def _parse_presence(obj: Mapping[str, Any], ref: Ref, limits: Limits) -> ClientFrame:
    return PresenceQuery(_channel(obj, ref, limits), ref)


#: ``module.method``: the names an App's methods have (at most 200 characters).
_METHOD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*\.[A-Za-z][A-Za-z0-9_\-]*")


def _parse_call(obj: Mapping[str, Any], ref: Ref, limits: Limits) -> ClientFrame:
    method = _string(obj, "method", ref)
    if len(method) > 200 or not _METHOD_NAME.fullmatch(method):
        raise ProtocolError(ErrorCode.INVALID_FIELD, "'method' must be a name like 'module.method'", ref=ref)
    args = obj.get("args", {})
    if not isinstance(args, dict):
        raise ProtocolError(ErrorCode.INVALID_FIELD, "'args' must be a JSON object", ref=ref)
    return Call(method, args, ref)


_CLIENT_PARSERS: dict[str, Callable[[Mapping[str, Any], Ref, Limits], ClientFrame]] = {
    "join": _parse_join,
    "leave": _parse_leave,
    "message": _parse_publish,
    "ping": _parse_ping,
    "presence": _parse_presence,
    "call": _parse_call,
}


def parse_client_frame(text: str | bytes, *, limits: Limits = DEFAULT_LIMITS) -> ClientFrame:
    """Parse one WebSocket message from a client.

    Unknown fields are ignored so that newer clients can talk to older servers.

    Raises:
        ProtocolError: for anything that is not a valid client frame; its
            ``ref`` is set whenever the frame's own ``ref`` was readable, and its
            ``frame_type`` tells which frame type it was meant to be.
    """
    obj = _load(text)
    ref = _ref(obj, limits)
    # Counting brackets first keeps the walk off the path of ordinary frames.
    assert isinstance(text, str)
    if text.count("[") + text.count("{") > limits.max_depth and _depth(obj) > limits.max_depth:
        raise ProtocolError(ErrorCode.TOO_DEEP, f"the frame nests deeper than {limits.max_depth} levels", ref=ref)
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(ErrorCode.INVALID_FIELD, "field 'type' is missing or not a string", ref=ref)
    parser = _CLIENT_PARSERS.get(kind)
    if parser is None:
        shown = kind if len(kind) <= 40 else kind[:37] + "..."
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown frame type {shown!r}", ref=ref)
    try:
        return parser(obj, ref, limits)
    except ProtocolError as exc:
        exc.frame_type = kind
        raise


def error_reply(error: ProtocolError) -> JoinError | Error:
    """The frame that answers a rejected client frame.

    A join with a malformed channel name gets ``join_error`` (so a client
    waiting on that join sees the refusal); everything else gets ``error``.
    """
    if error.frame_type == "join" and error.channel is not None:
        return JoinError(error.channel, error.code.value, error.message, error.ref)
    return Error(error.code.value, error.message, error.ref)


# --- server frames, for clients ------------------------------------------------


def _any_ref(obj: Mapping[str, Any]) -> Ref:
    ref = obj.get("ref")
    return ref if isinstance(ref, (str, int)) and not isinstance(ref, bool) else None


def _position(obj: Mapping[str, Any]) -> tuple[int, str] | tuple[None, None]:
    offset, epoch = obj.get("offset"), obj.get("epoch")
    if isinstance(offset, int) and not isinstance(offset, bool) and isinstance(epoch, str):
        return offset, epoch
    return None, None


def _count(obj: Mapping[str, Any]) -> int:
    count = obj.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ProtocolError(ErrorCode.INVALID_FIELD, "field 'count' must be an integer >= 0")
    return count


def _member_list(obj: Mapping[str, Any], key: str) -> tuple[PresenceMember, ...] | None:
    """A list of members, or ``None`` when the field is absent (counts only)."""
    if key not in obj:
        return None
    items = obj[key]
    if not isinstance(items, list):
        raise ProtocolError(ErrorCode.INVALID_FIELD, f"field {key!r} must be a list of members")
    members = []
    for item in items:
        name = item.get("key") if isinstance(item, dict) else None
        connections = item.get("connections") if isinstance(item, dict) else None
        if not isinstance(name, str) or not isinstance(connections, int) or isinstance(connections, bool):
            raise ProtocolError(ErrorCode.INVALID_FIELD, f"a member in {key!r} needs a string 'key' and 'connections'")
        members.append(PresenceMember(name, connections, item.get("meta")))
    return tuple(members)


def parse_server_frame(text: str | bytes) -> ServerFrame:
    """Parse one message from the server (the client's side of the protocol).

    Raises:
        ProtocolError: malformed frame or unknown ``type``; clients are expected
            to log and skip such frames.
    """
    obj = _load(text)
    kind = obj.get("type")
    ref = _any_ref(obj)
    try:
        if kind == "message":
            return Message(_string(obj, "channel", ref), obj.get("data"), *_position(obj))
        if kind == "joined":
            recovered = obj.get("recovered")
            recovered = recovered if isinstance(recovered, bool) else None
            return Joined(_string(obj, "channel", ref), ref, recovered, *_position(obj))
        if kind == "left":
            reason = obj.get("reason")
            return Left(_string(obj, "channel", ref), ref, reason if isinstance(reason, str) else None)
        if kind == "join_error":
            return JoinError(_string(obj, "channel", ref), _string(obj, "code", ref), _string(obj, "error", ref), ref)
        if kind == "pong":
            return Pong(ref)
        if kind == "published":
            return Published(_string(obj, "channel", ref), ref)
        if kind == "error":
            status = obj.get("status")
            status = status if isinstance(status, int) and not isinstance(status, bool) else None
            return Error(_string(obj, "code", ref), _string(obj, "error", ref), ref, status)
        if kind == "result":
            return Result(obj.get("data"), ref)
        if kind == "presence_state":
            channel, count, members = _string(obj, "channel", ref), _count(obj), _member_list(obj, "members")
            return PresenceState(channel, count, members, obj.get("truncated") is True, ref)
        if kind == "presence_diff":
            channel, count = _string(obj, "channel", ref), _count(obj)
            joins, leaves = _member_list(obj, "joins"), _member_list(obj, "leaves")
            if (joins is None) != (leaves is None):
                raise ProtocolError(ErrorCode.INVALID_FIELD, "a presence_diff has both 'joins' and 'leaves' or neither")
            return PresenceDiff(channel, count, joins, leaves, obj.get("truncated") is True)
        if kind == "welcome":
            user = obj.get("user")
            roles = obj.get("roles")
            protocol = obj.get("protocol")
            if user is not None and not isinstance(user, dict):
                raise ProtocolError(ErrorCode.INVALID_FIELD, "field 'user' must be an object or null")
            if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
                raise ProtocolError(ErrorCode.INVALID_FIELD, "field 'roles' must be a list of strings")
            if not isinstance(protocol, int):
                raise ProtocolError(ErrorCode.INVALID_FIELD, "field 'protocol' must be an integer")
            return Welcome(_string(obj, "connection", ref), user, tuple(roles), protocol)
    except ProtocolError as exc:
        exc.frame_type = str(kind)
        raise
    raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown frame type {kind!r}", ref=ref)
