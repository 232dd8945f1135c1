"""Join a chat room and print what arrives; lines typed on stdin are posted.

.venv/bin/python examples/chat_client.py ws://127.0.0.1:8000/ws --token alice --room lobby
"""

from __future__ import annotations

import argparse
import sys

import trio

from modelence_trio import ClientChannel, ClientMessage, RequestFailed, open_client


def show(message: ClientMessage[dict[str, object]]) -> None:
    print(f"[{message.channel}] {message.data.get('from')}: {message.data.get('text')}", flush=True)


async def main(url: str, token: str | None, room: str, say: str | None) -> None:
    chat: ClientChannel[dict[str, object]] = ClientChannel("chat", show)
    async with open_client(url, token=token, channels=[chat]) as client:
        assert client.welcome is not None
        print(f"connected as {client.welcome.user or 'anonymous'}; joined chat:{room}", flush=True)
        await chat.join(room)
        if say is not None:
            try:
                await chat.publish(room, {"text": say})
            except RequestFailed as exc:
                print(f"not sent: {exc}", flush=True)
            await trio.sleep(0.2)
            return
        stdin = trio.wrap_file(sys.stdin)
        async for line in stdin:
            if line.strip():
                try:
                    await chat.publish(room, {"text": line.strip()})
                except RequestFailed as exc:
                    print(f"not sent: {exc}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--token")
    parser.add_argument("--room", default="lobby")
    parser.add_argument("--say", help="post one message and exit")
    args = parser.parse_args()
    trio.run(main, args.url, args.token, args.room, args.say)
