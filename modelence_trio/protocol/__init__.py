"""Protocol v1, sans-IO: frames, their JSON codec, channel names and handshake tokens.

Nothing here does I/O or imports trio: the server, the client and any transport
share these functions, and they are tested on their own. protocol.md is the
normative description; this package is its executable form.
"""

from ._codec import (
    DEFAULT_LIMITS,
    Limits,
    encode,
    encode_data,
    encode_message,
    error_reply,
    loads_utf8,
    message_frame,
    parse_client_frame,
    parse_server_frame,
)
from ._errors import CloseCode, ErrorCode, ProtocolError
from ._frames import (
    PROTOCOL_VERSION,
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
    Publish,
    Published,
    Ref,
    ServerFrame,
    Since,
    Welcome,
)
from ._handshake import HandshakeRejected, token_from_cookie, token_from_request
from ._names import DEFAULT_MAX_ID_LENGTH, split_channel, validate_category

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_ID_LENGTH",
    "PROTOCOL_VERSION",
    "ClientFrame",
    "CloseCode",
    "Error",
    "ErrorCode",
    "HandshakeRejected",
    "Join",
    "JoinError",
    "Joined",
    "JsonValue",
    "Leave",
    "Left",
    "Limits",
    "Message",
    "Ping",
    "Pong",
    "ProtocolError",
    "Publish",
    "Published",
    "Ref",
    "ServerFrame",
    "Since",
    "Welcome",
    "encode",
    "encode_data",
    "encode_message",
    "error_reply",
    "loads_utf8",
    "message_frame",
    "parse_client_frame",
    "parse_server_frame",
    "split_channel",
    "token_from_cookie",
    "token_from_request",
    "validate_category",
]
