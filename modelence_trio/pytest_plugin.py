"""modelence-trio's pytest plugin: ``async def`` tests under Trio, and fixtures
for a hub served in memory.

pytest loads it by itself wherever modelence-trio is installed (the
``pytest11`` entry point); it needs pytest-trio, which the ``testing`` extra
brings: ``pip install "modelence-trio[testing]"``. Then, with no
configuration:

- every ``async def`` test runs under Trio, as with pytest-trio's
  ``trio_mode``, unless another plugin claimed it (a test marked ``asyncio``
  or ``anyio`` is left alone). ``pytest -p no:modelence_trio`` turns the
  plugin off.
- pytest-trio's fixtures are there: ``autojump_clock`` (virtual time: sleeps,
  heartbeats and timeouts take none), ``mock_clock``, ``nursery``.
- ``modelence_server`` is a running :class:`~modelence_trio.testing.MemoryServer`
  for the hub your ``modelence_hub`` fixture returns (define it in the test
  module or a ``conftest.py``: ``return app.hub`` for an ``App``), and
  ``modelence_client`` an anonymous client connected to it; for a signed-in
  one, ``async with modelence_server.client(token=...) as client``.

Example::

    @pytest.fixture
    def modelence_hub() -> Hub:
        return Hub([ServerChannel("chat")])

    async def test_join(autojump_clock, modelence_client):
        await modelence_client.join("chat:lobby")
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import AsyncIterator

import pytest

from ._client import Client
from ._hub import Hub
from .testing import MemoryServer, open_memory_server

__all__ = ["modelence_client", "modelence_hub", "modelence_server"]

#: Markers of the async test runners whose tests are theirs, not ours.
OTHER_RUNNERS = ("trio", "asyncio", "anyio")


def _have_pytest_trio() -> bool:
    return importlib.util.find_spec("pytest_trio") is not None


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every unclaimed ``async def`` test ``trio`` (pytest-trio runs it)."""
    if not _have_pytest_trio():
        return
    for item in items:
        if not isinstance(item, pytest.Function) or any(item.get_closest_marker(m) for m in OTHER_RUNNERS):
            continue
        function = getattr(item.obj, "hypothesis", None)
        test = function.inner_test if function is not None else item.obj
        if inspect.iscoroutinefunction(test):
            item.add_marker(pytest.mark.trio)


@pytest.fixture
def modelence_hub() -> Hub:
    """The hub ``modelence_server`` serves: define this fixture yourself."""
    pytest.fail(
        "modelence_server needs your hub: define a fixture named modelence_hub that returns it "
        "(a Hub, or app.hub for an App), in the test module or a conftest.py",
        pytrace=False,
    )


@pytest.fixture
def _modelence_runner() -> None:
    """Set up before the async fixtures: says what to install when nothing can run them."""
    if not _have_pytest_trio():
        pytest.fail('modelence-trio\'s fixtures need pytest-trio: pip install "modelence-trio[testing]"', pytrace=False)


@pytest.fixture
async def modelence_server(_modelence_runner: None, modelence_hub: Hub) -> AsyncIterator[MemoryServer]:
    """``modelence_hub`` running and served in memory for the test (the real
    handshake and framing over memory streams; see ``modelence_trio.testing``)."""
    async with open_memory_server(modelence_hub) as server:
        yield server


@pytest.fixture
async def modelence_client(modelence_server: MemoryServer) -> AsyncIterator[Client]:
    """An anonymous client connected to ``modelence_server``."""
    async with modelence_server.client() as client:
        yield client
