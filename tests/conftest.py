import logging
from collections.abc import Iterator

import pytest

from modelence_trio import _hypercorn, _trio_websocket
from modelence_trio._logs import LOGGERS, RepeatFilter

from .mongo import database, database_name, mongodb_uri

__all__ = ["database", "database_name", "mongodb_uri"]


@pytest.fixture(autouse=True)
def _fast_paths_on() -> Iterator[None]:
    """A test that turns a transport's fast path off (helpers.start_server) gets it back after."""
    before = _trio_websocket.ENABLED, _hypercorn.ENABLED
    yield
    _trio_websocket.ENABLED, _hypercorn.ENABLED = before


@pytest.fixture(autouse=True)
def _fresh_log_folding() -> None:
    """Each test sees its own errors: lines another test logged are not folded into its."""
    for name in LOGGERS:
        for found in logging.getLogger(name).filters:
            if isinstance(found, RepeatFilter):
                found.reset()
