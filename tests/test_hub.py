"""Hub construction, broadcast errors and the registry, without any connection."""

from __future__ import annotations

import pytest

from modelence_trio import Hub, HubConfig, Identity, MemoryAuthenticator, ServerChannel, User
from modelence_trio._registry import Registry
from modelence_trio.protocol import HandshakeRejected


def test_duplicate_categories_are_refused() -> None:
    with pytest.raises(ValueError, match="share the category 'chat'"):
        Hub([ServerChannel("chat"), ServerChannel("chat")])


def test_invalid_category_is_refused_at_declaration() -> None:
    with pytest.raises(ValueError, match="invalid channel category"):
        ServerChannel("chat:room")


def test_broadcast_errors_at_the_call_site() -> None:
    chat: ServerChannel = ServerChannel("chat")
    with pytest.raises(RuntimeError, match="not part of any Hub"):
        chat.broadcast("a", 1)
    hub = Hub([chat])  # noqa: F841  (a channel delivers through the hubs that are alive)
    with pytest.raises(TypeError, match="not JSON-serializable"):
        chat.broadcast("a", {"when": object()})
    with pytest.raises(ValueError, match="empty"):
        chat.broadcast("", 1)
    chat.broadcast("a", 1)  # no subscribers: fine


async def test_authenticate_merges_default_roles() -> None:
    auth = MemoryAuthenticator()
    auth.add("t", User("1", "a"), roles=["admin", "user"])
    hub = Hub([], authenticator=auth, config=HubConfig(authenticated_roles=["user"], anonymous_roles=["guest"]))
    identity = await hub.authenticate("/ws?token=t", [])
    assert identity.roles == ("user", "admin")
    assert (await hub.authenticate("/ws", [])) == Identity(None, None, ("guest",))


async def test_authenticator_failure_is_503_not_anonymous() -> None:
    class Broken:
        async def authenticate(self, token: str) -> Identity | None:
            raise ConnectionError("database down")

    hub = Hub([], authenticator=Broken())
    with pytest.raises(HandshakeRejected) as info:
        await hub.authenticate("/ws?token=t", [])
    assert info.value.status == 503


async def test_token_without_authenticator_is_401() -> None:
    with pytest.raises(HandshakeRejected) as info:
        await Hub([]).authenticate("/ws?token=t", [])
    assert info.value.status == 401


class Sink:
    def __init__(self) -> None:
        self.got: list[str] = []
        self.delivered_frames = self.delivered_bytes = 0

    def send(self, frame: str) -> None:
        self.got.append(frame)

    def send_many(self, frames: list[str]) -> None:
        self.got.extend(frames)


def test_registry_both_directions() -> None:
    registry = Registry()
    a, b = Sink(), Sink()
    assert registry.subscribe(a, "x:1")
    assert not registry.subscribe(a, "x:1")
    registry.subscribe(a, "x:2")
    registry.subscribe(b, "x:1")
    assert registry.deliver("x:1", "m") == 2
    assert registry.unsubscribe(a, "x:1")
    assert not registry.unsubscribe(a, "x:1")
    assert registry.deliver("x:1", "n") == 1
    assert (a.got, b.got) == (["m"], ["m", "n"])
    registry.drop(a)
    registry.drop(b)
    assert registry.statistics().channels == 0
    assert registry.statistics().subscriptions == 0
    assert registry.channels_of(a) == frozenset()
