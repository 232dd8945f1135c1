"""A small chat server on the embedded default: one process, no database.

Run it, then connect with ``examples/chat_client.py`` (or any WebSocket client
speaking protocol.md). Tokens ``alice`` and ``bob`` are development users;
connections without a token are anonymous and may only read ``chat:lobby``.
"""

from __future__ import annotations

import argparse
import logging
import time

import trio

from modelence_trio import (
    ChannelContext,
    Hub,
    MemoryAuthenticator,
    PublishRejected,
    ServerChannel,
    User,
    serve_websocket,
)


def can_access(ctx: ChannelContext) -> bool:
    # Everyone may read the lobby; other rooms need a signed-in user, and
    # "private:<user id>" rooms only their owner.
    if ctx.channel_id == "lobby":
        return True
    return ctx.user is not None


def on_message(ctx: ChannelContext, room: str, data: object) -> None:
    if ctx.user is None:
        raise PublishRejected("sign in to post", code="sign_in_required")
    if not isinstance(data, dict) or not isinstance(data.get("text"), str) or not data["text"].strip():
        raise PublishRejected("a chat message is {'text': <non-empty string>}")
    chat.broadcast(room, {"from": ctx.user.handle, "text": data["text"][:2000], "at": time.time()})


chat: ServerChannel[dict[str, object]] = ServerChannel("chat", can_access=can_access, on_message=on_message)
private: ServerChannel[dict[str, object]] = ServerChannel(
    "private", can_access=lambda ctx: ctx.user is not None and ctx.user.id == ctx.channel_id
)


def build_hub() -> Hub:
    auth = MemoryAuthenticator()
    auth.add("alice", User("1", "alice"))
    auth.add("bob", User("2", "bob"))
    return Hub([chat, private], authenticator=auth)


async def announce_time() -> None:
    """Something to watch: the server posts the time to the lobby every 10 s."""
    while True:
        chat.broadcast("lobby", {"from": "server", "text": time.strftime("it is %H:%M:%S"), "at": time.time()})
        await trio.sleep(10)


async def main(host: str, port: int) -> None:
    hub = build_hub()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve_websocket, hub, host, port)
        print(f"modelence-trio chat example listening on ws://{host}:{bound}/ws", flush=True)
        print(f"  try: .venv/bin/python examples/chat_client.py ws://{host}:{bound}/ws --token alice", flush=True)
        nursery.start_soon(announce_time)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        trio.run(main, args.host, args.port)
    except KeyboardInterrupt:
        print("stopped")
