"""Channel names: ``category:id``.

The category selects the server-side channel (and so its access rule); the id
is free-form text chosen by the app. Both are bounded so that a client cannot
make the server keep arbitrarily large keys.
"""

from __future__ import annotations

import re

from ._errors import ErrorCode, ProtocolError

__all__ = ["MAX_CATEGORY_LENGTH", "DEFAULT_MAX_ID_LENGTH", "split_channel", "validate_category"]

MAX_CATEGORY_LENGTH = 64
DEFAULT_MAX_ID_LENGTH = 256

_CATEGORY = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
# C0 controls, DEL and C1 controls: invisible in logs and UIs, so refused.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def validate_category(category: str) -> str:
    """Raise ``ValueError`` unless ``category`` is a valid channel category.

    Used when a server channel is declared, so a typo fails at start-up rather
    than as a stream of ``unknown_channel`` replies.
    """
    if not isinstance(category, str) or not _CATEGORY.fullmatch(category):
        raise ValueError(
            f"invalid channel category {category!r}: it must start with a letter and"
            f" hold at most {MAX_CATEGORY_LENGTH} letters, digits, '_', '-' or '.'"
        )
    return category


def valid_channel_id(channel_id: str, max_id_length: int = DEFAULT_MAX_ID_LENGTH) -> bool:
    """The cheap yes/no check the broadcast path uses; ``split_channel`` says why not."""
    return isinstance(channel_id, str) and 0 < len(channel_id) <= max_id_length and not _CONTROL.search(channel_id)


def split_channel(name: str, *, max_id_length: int = DEFAULT_MAX_ID_LENGTH) -> tuple[str, str]:
    """Split ``category:id``, raising ``ProtocolError(invalid_channel)`` if malformed.

    The category is the part before the first ``:``; the id is everything after
    it and may itself contain ``:``.
    """
    category, sep, channel_id = name.partition(":")
    if not sep:
        raise _invalid(name, "a channel name must be 'category:id'")
    if not _CATEGORY.fullmatch(category):
        raise _invalid(name, "the category must be a short identifier (letters, digits, _ - .)")
    if not channel_id:
        raise _invalid(name, "the channel id must not be empty")
    if len(channel_id) > max_id_length:
        raise _invalid(name, f"the channel id is longer than {max_id_length} characters")
    if _CONTROL.search(channel_id):
        raise _invalid(name, "the channel id must not contain control characters")
    return category, channel_id


def _invalid(name: str, why: str) -> ProtocolError:
    shown = name if len(name) <= 80 else name[:77] + "..."
    return ProtocolError(ErrorCode.INVALID_CHANNEL, f"{why}: {shown!r}", channel=shown)
