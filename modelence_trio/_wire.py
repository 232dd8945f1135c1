"""Server-to-client WebSocket frames, encoded once per message.

A broadcast to a thousand subscribers sends the same bytes a thousand times:
server frames are not masked (RFC 6455, 5.1), so the frame header and payload
are computed here once and every transport that writes raw bytes shares them.
Pure code: no I/O.
"""

from __future__ import annotations

import struct

import attrs

__all__ = ["Outgoing", "check_sendable", "message_size", "text_frame_header"]

_FIN_TEXT = 0x81
_pack_16 = struct.Struct("!BBH").pack
#: The headers of frames under 1 KiB, built once (one is needed per broadcast,
#: and most broadcasts are that small): 2 bytes under 126, then 4.
_HEADERS = [bytes((_FIN_TEXT, length)) for length in range(126)] + [
    _pack_16(_FIN_TEXT, 126, length) for length in range(126, 1024)
]


def text_frame_header(length: int) -> bytes:
    """The header of a final, unmasked text frame carrying ``length`` payload bytes."""
    if length < 1024:
        return _HEADERS[length]
    if length < 1 << 16:
        return _pack_16(_FIN_TEXT, 126, length)
    return struct.pack("!BBQ", _FIN_TEXT, 127, length)


def message_size(message: str | bytes) -> int:
    """A received message's size in bytes of UTF-8, as every limit counts it
    (protocol.md); encoding only when the character count leaves it open."""
    if isinstance(message, bytes) or message.isascii():
        return len(message)
    return len(message.encode("utf-8", "surrogatepass"))


_SURROGATE = "a lone UTF-16 surrogate, which cannot be sent as UTF-8"


def check_sendable(text: str) -> str:
    """``text``, if it can be sent; ``ValueError`` for a lone surrogate (what
    ``Outgoing.from_text`` refuses), so a caller refuses it before any state changes."""
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise ValueError(f"the frame holds {_SURROGATE}") from None
    return text


@attrs.frozen
class Outgoing:
    """One frame on its way to clients: the text for message-level transports
    (ASGI), the complete wire bytes for byte-level ones. Shared, never copied,
    by every subscriber's queue."""

    text: str
    wire: bytes

    @classmethod
    def from_text(cls, text: str) -> Outgoing:
        """Raises ``ValueError`` for text that is not valid Unicode (a lone
        surrogate): callers encode before they change any state."""
        try:
            payload = text.encode()
        except UnicodeEncodeError:
            raise ValueError(f"the frame holds {_SURROGATE}") from None
        length = len(payload)
        # One per broadcast, so spelled out: the header table read inline, and
        # the slots filled directly (attrs' frozen __init__ goes through
        # object.__setattr__, at twice the cost).
        frame = _new(cls)
        _set_text(frame, text)
        _set_wire(frame, (_HEADERS[length] if length < 1024 else text_frame_header(length)) + payload)
        return frame


_new = object.__new__
_set_text = Outgoing.__dict__["text"].__set__
_set_wire = Outgoing.__dict__["wire"].__set__
