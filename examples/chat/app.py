"""The chat example: rooms, a name, messages through a validated mutation,
a staff-only room guarded by access control, and who is online in each room
(presence: the same on every instance).

Run it with ``.venv/bin/modelence-trio examples.chat.app:app`` (or
``hypercorn --worker-class trio examples.chat.app:app``) and open
http://127.0.0.1:8000/ in two browser windows. Signing in is typing a name
(the development authenticator: anyone can be anyone); ``alice`` is staff,
and staff may watch the live dashboard:
http://127.0.0.1:8000/_modelence/dashboard?token=alice.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import attrs

from modelence_trio import (
    App,
    ChannelContext,
    DevelopmentAuthenticator,
    History,
    HubConfig,
    MethodContext,
    MethodError,
    Module,
    Presence,
    ServerChannel,
)

#: Rooms the page lists; any other id is a room too (``chat:<anything>``).
ROOMS = {"lobby": "Lobby", "random": "Random", "staff": "Staff only"}
MAX_TEXT = 500


def can_access(ctx: ChannelContext) -> bool:
    """Anyone may read any room except ``staff``, which needs the staff role.
    The decision sees the channel id: the reference's access checks cannot."""
    return ctx.channel_id != "staff" or "staff" in ctx.roles


@attrs.frozen
class ChatMessage:
    """What the room gets (``modelence-trio typescript examples.chat.app:app`` types it for pages)."""

    author: str
    text: str
    at: float


@attrs.frozen
class SendMessage:
    """The arguments of ``chat.sendMessage``: checked before it runs (400 naming the field)."""

    room: str
    text: str


def member(ctx: ChannelContext) -> dict[str, Any]:
    """What the others see of a member: decided here, never by the page."""
    assert ctx.user is not None  # anonymous visitors read, but are not members
    return {"handle": ctx.user.handle, "staff": "staff" in ctx.roles}


chat = ServerChannel(
    "chat",
    can_access=can_access,
    presence=Presence(meta=member),
    payload=ChatMessage,
    history=History(size=200, max_age=3600),  # a room's recent messages, shown on entering it
)


def send_message(args: SendMessage, ctx: MethodContext) -> ChatMessage:
    if not 1 <= len(args.room) <= 64:
        raise MethodError("'room' must be 1 to 64 characters")
    if not args.text.strip():
        raise MethodError("'text' must not be empty")
    if len(args.text) > MAX_TEXT:
        raise MethodError(f"'text' may be at most {MAX_TEXT} characters")
    if ctx.user is None:
        raise MethodError("sign in to post", status=401, code="sign_in_required")
    if args.room == "staff" and "staff" not in ctx.roles:
        raise MethodError("only staff may post in the staff room", status=403, code="access_denied")
    message = ChatMessage(ctx.user.handle, args.text.strip(), time.time())
    chat.broadcast(args.room, message)
    return message


def rooms(args: dict[str, Any], ctx: MethodContext) -> list[dict[str, Any]]:
    return [{"id": room, "title": title, "private": room == "staff"} for room, title in ROOMS.items()]


app = App(
    [Module("chat", channels=[chat], mutations={"sendMessage": send_message}, queries={"rooms": rooms})],
    authenticator=DevelopmentAuthenticator(roles={"alice": ["staff"]}),
    config=HubConfig(authenticated_roles=["user"]),
    static_dir=Path(__file__).parent / "static",
    dashboard_role="staff",
)
