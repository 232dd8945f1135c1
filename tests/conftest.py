from collections.abc import Iterator

import pytest

from modelence_trio import _hypercorn, _trio_websocket

from .mongo import database, database_name, mongodb_uri

__all__ = ["database", "database_name", "mongodb_uri"]


@pytest.fixture(autouse=True)
def _fast_paths_on() -> Iterator[None]:
    """A test that turns a transport's fast path off (helpers.start_server) gets it back after."""
    before = _trio_websocket.ENABLED, _hypercorn.ENABLED
    yield
    _trio_websocket.ENABLED, _hypercorn.ENABLED = before
