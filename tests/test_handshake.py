"""Where the token comes from (pure functions)."""

from __future__ import annotations

import pytest

from modelence_trio.protocol import HandshakeRejected, token_from_request


def test_no_token() -> None:
    assert token_from_request("/ws", [(b"Host", b"x")]) is None


def test_query_token() -> None:
    assert token_from_request("/ws?a=1&token=abc", []) == "abc"


def test_bearer_header() -> None:
    assert token_from_request("/ws", [(b"authorization", b"Bearer  tok ")]) == "tok"


def test_cookie() -> None:
    assert token_from_request("/ws", [(b"Cookie", b"theme=dark; authToken=ck; x=y")]) == "ck"


def test_header_beats_query_beats_cookie() -> None:
    headers = [(b"Cookie", b"authToken=from-cookie"), (b"Authorization", b"Bearer from-header")]
    assert token_from_request("/ws?token=from-query", headers) == "from-header"
    assert token_from_request("/ws?token=from-query", headers[:1]) == "from-query"
    assert token_from_request("/ws", headers[:1]) == "from-cookie"


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/ws", [(b"Authorization", b"Basic dXNlcjpwYXNz")]),
        ("/ws", [(b"Authorization", b"Bearer")]),
        ("/ws", [(b"Authorization", b"Bearer   ")]),
        ("/ws?token=", []),
        ("/ws", [(b"Cookie", b"authToken=")]),
    ],
)
def test_malformed_or_empty_credentials_are_401(target: str, headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(HandshakeRejected) as info:
        token_from_request(target, headers)
    assert info.value.status == 401
