"""Who is on the other end: identities, the authenticator contract, a dev authenticator."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

import attrs

__all__ = ["Authenticator", "DevelopmentAuthenticator", "Identity", "MemoryAuthenticator", "SessionChecker", "User"]


@attrs.frozen
class User:
    """The authenticated user as channels and clients see it.

    ``profile`` carries whatever else the app's user record holds; only ``id``
    and ``handle`` are sent to the client (in the ``welcome`` frame).
    """

    id: str
    handle: str
    profile: Any = None

    def to_wire(self) -> dict[str, str]:
        return {"id": self.id, "handle": self.handle}


def _roles(roles: Iterable[str]) -> tuple[str, ...]:
    return tuple(roles)


@attrs.frozen
class Identity:
    """What an authenticator resolved a token to.

    ``session`` is opaque to modelence-trio: it is handed back to access checks
    and handlers untouched, so apps can keep their own session record there.
    """

    user: User | None = None
    session: Any = None
    roles: tuple[str, ...] = attrs.field(default=(), converter=_roles)

    @property
    def is_anonymous(self) -> bool:
        return self.user is None


class IdentityView:
    """``user``, ``session`` and ``roles`` read through to ``identity``: the
    contexts handed to access checks, publish handlers and methods."""

    identity: Identity

    @property
    def user(self) -> User | None:
        return self.identity.user

    @property
    def session(self) -> Any:
        return self.identity.session

    @property
    def roles(self) -> tuple[str, ...]:
        return self.identity.roles


class Authenticator(Protocol):
    """Resolves a session token presented at the WebSocket handshake.

    Return ``None`` for a token that is unknown, expired or revoked: the
    handshake is then refused with HTTP 401. Raising is treated as the
    authenticator being unavailable (HTTP 503), never as "anonymous".
    """

    async def authenticate(self, token: str) -> Identity | None: ...


@runtime_checkable
class SessionChecker(Protocol):
    """What an authenticator adds to have sessions re-checked while connected.

    The hub calls ``check`` every ``session_check_interval`` for each
    signed-in connection. ``False``: the session ended (expired, revoked),
    and the connection is closed (4001). ``True``: it holds, unchanged. An
    ``Identity``: the session's current user and roles; one without a user
    (disabled, deleted) closes the connection (4001), and changed roles
    re-run the access rule of every joined channel, leaving those that now
    refuse (``left`` with a reason). The reference checks only at connect;
    an authenticator without ``check`` gets the same here.
    """

    async def check(self, identity: Identity) -> bool | Identity: ...


@attrs.define(eq=False)
class MemoryAuthenticator:
    """Tokens held in a dict, for development and tests.

    >>> auth = MemoryAuthenticator()
    >>> auth.add("t-alice", User("u1", "alice"), roles=["member"])
    """

    clock: Callable[[], float] = time.time
    _sessions: dict[str, tuple[Identity, float | None]] = attrs.field(factory=dict, init=False)

    def add(
        self,
        token: str,
        user: User | None,
        *,
        roles: Iterable[str] = (),
        session: Any = None,
        expires_at: float | None = None,
    ) -> Identity:
        """Register ``token``; ``expires_at`` is compared against ``clock()``."""
        if not token:
            raise ValueError("a token must be a non-empty string")
        identity = Identity(user, session if session is not None else {"token": token}, tuple(roles))
        self._sessions[token] = (identity, expires_at)
        return identity

    def revoke(self, token: str) -> None:
        self._sessions.pop(token, None)

    async def check(self, identity: Identity) -> bool:
        """Whether the session behind ``identity`` is still registered and unexpired.

        A linear scan: this authenticator is for development and tests.
        """
        now = self.clock()
        return any(
            known.session is identity.session and (expires_at is None or now < expires_at)
            for known, expires_at in self._sessions.values()
        )

    async def authenticate(self, token: str) -> Identity | None:
        entry = self._sessions.get(token)
        if entry is None:
            return None
        identity, expires_at = entry
        if expires_at is not None and self.clock() >= expires_at:
            return None
        return identity


_HANDLE = re.compile(r"[A-Za-z0-9_.-]{1,32}")


@attrs.frozen
class DevelopmentAuthenticator:
    """Every token is a sign-in as the user of that name: ``?token=ada`` is ada.

    For demos and local development only, where typing a name is the whole
    sign-in: anyone can be anyone. Tokens must be 1-32 letters, digits,
    ``_``, ``.`` or ``-`` (others get 401). ``roles`` gives some names roles.

    >>> DevelopmentAuthenticator(roles={"alice": ["staff"]})
    """

    roles: Mapping[str, Iterable[str]] = attrs.field(factory=dict)

    async def authenticate(self, token: str) -> Identity | None:
        if not _HANDLE.fullmatch(token):
            return None
        return Identity(User(f"dev-{token}", token), {"token": token}, tuple(self.roles.get(token, ())))
