"""protocol.md's example session, played against a real hub frame by frame:
what it shows is what the server sends today (offsets and the epoch of the
default history included)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import trio

from modelence_trio import ChannelContext, Hub, MemoryAuthenticator, ServerChannel, User
from modelence_trio.testing import open_memory_server

from .helpers import receive_json, send_json

PROTOCOL = Path(__file__).resolve().parent.parent / "protocol.md"
#: The example's handler stamps its messages with this time (a real one would use time.time()).
AT = 1796000000.1


def example_session() -> list[tuple[str, dict[str, Any]]]:
    """The ``C:``/``S:`` frames of protocol.md's "Example session", in order."""
    text = PROTOCOL.read_text()
    block = text.split("\n## Example session\n", 1)[1].split("```\n", 1)[1].split("```", 1)[0]
    return [(m[1], json.loads(m[2])) for m in re.finditer(r"^([CS]): (\{.*\})$", block, re.MULTILINE)]


async def test_the_example_session_is_what_the_server_sends(autojump_clock: trio.abc.Clock) -> None:
    def publish(ctx: ChannelContext, channel_id: str, data: Any) -> None:
        assert ctx.user is not None
        chat.broadcast(channel_id, {"from": ctx.user.handle, "text": data["text"], "at": AT})

    chat: ServerChannel[Any] = ServerChannel("chat", on_message=publish)  # the default history: offsets
    private: ServerChannel[Any] = ServerChannel("private", can_access=lambda ctx: False)
    auth = MemoryAuthenticator()
    auth.add("alice", User("1", "alice"))
    session = example_session()
    assert [side for side, _ in session][:3] == ["S", "C", "S"], "the session starts with the welcome"
    async with open_memory_server(Hub([chat, private], authenticator=auth)) as server, trio.open_nursery() as nursery:
        ws = await server.dial(nursery, [(b"authorization", b"Bearer alice")])
        got: list[tuple[str, dict[str, Any]]] = []
        for side, frame in session:
            if side == "C":
                got.append(("C", frame))
                await send_json(ws, frame)
            else:
                got.append(("S", await receive_json(ws)))
        with trio.move_on_after(1):
            extra = await receive_json(ws)
            raise AssertionError(f"the server sent more than the example shows: {extra}")
        nursery.cancel_scope.cancel()
    assert placeholders(got, session) == session


def placeholders(got: list[tuple[str, dict[str, Any]]], example: list[tuple[str, dict[str, Any]]]) -> Any:
    """``got`` with its random values (the connection id, the epoch) replaced
    by the example's, each only where the example has one too."""
    names: dict[str, set[str]] = {"connection": set(), "epoch": set()}
    for _, frame in got:
        for key in names:
            if key in frame:
                names[key].add(frame[key])
    assert all(len(values) == 1 for values in names.values() if values), names  # one connection, one epoch
    shown = {key: {f[key] for _, f in example if key in f} for key in names}
    assert all(len(values) <= 1 for values in shown.values()), shown
    swap = {next(iter(names[key])): next(iter(shown[key])) for key in names if names[key] and shown[key]}
    return [(side, {k: swap.get(v, v) if k in names else v for k, v in frame.items()}) for side, frame in got]
