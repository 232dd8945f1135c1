"""An app with typed channels and methods, for the TypeScript generator's tests
(tests/test_typescript.py runs ``modelence-trio typescript tests.typed_app:app``)."""

from __future__ import annotations

import enum
from typing import Any, Literal

import attrs

from modelence_trio import App, MethodContext, Module, ServerChannel


class Mood(enum.Enum):
    HAPPY = "happy"
    GRUMPY = "grumpy"


@attrs.frozen
class Author:
    handle: str
    staff: bool = False


@attrs.frozen
class ChatMessage:
    text: str
    author: Author
    at: float
    tags: list[str] = attrs.Factory(list)
    mood: Mood | None = None
    replies: tuple[ChatMessage, ...] = ()


@attrs.frozen
class SendArgs:
    room: str
    text: str
    priority: Literal["low", "high"] = "low"


def send(args: SendArgs, ctx: MethodContext) -> ChatMessage:
    return ChatMessage(args.text, Author("ann"), 0.0)


async def rooms(args: dict[str, Any], ctx: MethodContext) -> list[str]:
    return ["lobby"]


def ping(args: dict[str, Any], ctx: MethodContext) -> dict[str, int]:
    return {"pong": 1}


chat: ServerChannel[ChatMessage] = ServerChannel("chat", payload=ChatMessage)
news: ServerChannel[Any] = ServerChannel("news")
app = App([Module("chat", channels=[chat, news], mutations={"send": send}, queries={"rooms": rooms, "ping": ping})])
