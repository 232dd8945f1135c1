"""The README's testing example, kept true by running it."""

from __future__ import annotations

import trio.testing

from modelence_trio import Hub, MemoryAuthenticator, ServerChannel, User
from modelence_trio.testing import open_memory_server


async def test_members_only(autojump_clock: trio.testing.MockClock) -> None:
    room: ServerChannel = ServerChannel("room", can_access=lambda ctx: "member" in ctx.roles)
    auth = MemoryAuthenticator()
    auth.add("t1", User("u1", "ann"), roles=["member"])
    async with open_memory_server(Hub([room], authenticator=auth)) as server:
        async with server.client(token="t1") as ann:
            inbox = ann.messages()
            await ann.join("room:1")
            room.broadcast("1", {"text": "hi"})
            assert (await inbox.receive()).data == {"text": "hi"}
