"""Every transport passes modelence_trio.testing.check_transport (issue 13)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio_websocket

from modelence_trio import Authenticator, Hub, HubConfig, ServerChannel
from modelence_trio._client import Dialer
from modelence_trio.testing import check_transport, open_memory_server

from .helpers import ALL_PATHS, start_server


def _socket_server(transport: str) -> Any:
    async def serve(
        nursery: trio.Nursery, channels: Sequence[ServerChannel[Any]], auth: Authenticator | None, config: HubConfig
    ) -> tuple[Hub, Dialer]:
        url, hub = await start_server(nursery, transport, channels, authenticator=auth, config=config)

        async def dial(nursery: trio.Nursery, headers: list[tuple[bytes, bytes]]) -> trio_websocket.WebSocketConnection:
            return await trio_websocket.connect_websocket_url(nursery, url, extra_headers=headers)

        return hub, dial

    return serve


async def _memory_server(
    nursery: trio.Nursery, channels: Sequence[ServerChannel[Any]], auth: Authenticator | None, config: HubConfig
) -> tuple[Hub, Dialer]:
    hub = Hub(channels, authenticator=auth, config=config)

    async def run(task_status: trio.TaskStatus[Dialer]) -> None:
        async with open_memory_server(hub) as server:
            task_status.started(server.dialer())
            await trio.sleep_forever()

    return hub, await nursery.start(run)


@pytest.mark.parametrize("transport", ["memory", *ALL_PATHS])
async def test_every_transport_conforms(transport: str) -> None:
    await check_transport(_memory_server if transport == "memory" else _socket_server(transport))


async def test_the_check_can_fail() -> None:
    # A server that answers pings with the wrong ref is caught, by name.
    async def broken(
        nursery: trio.Nursery, channels: Sequence[ServerChannel[Any]], auth: Authenticator | None, config: HubConfig
    ) -> tuple[Hub, Dialer]:
        hub, dial = await _memory_server(nursery, channels, auth, config)

        async def dial_without_reading(nursery: trio.Nursery, headers: list[tuple[bytes, bytes]]) -> Any:
            ws = await dial(nursery, headers)
            await ws.send_message('{"type":"ping","ref":"x"}')  # its pong arrives before what the check expects
            return ws

        return hub, dial_without_reading

    with pytest.raises(AssertionError, match="transport conformance"):
        await check_transport(broken)
