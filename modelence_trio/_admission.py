"""Who may connect: shutdown, the origin policy, capacity, the per-address limit, the token.

Every transport's handshake passes here (through ``Hub.admit``) before it is
accepted, and the HTTP methods endpoint resolves its tokens here too, so
there is one answer to "may this request in, and as whom".
"""

from __future__ import annotations

import collections
import logging
import traceback

import attrs

from ._auth import Authenticator, Identity
from ._config import HubConfig
from ._origins import check_origin
from .protocol import HandshakeRejected

__all__ = ["Admission"]

logger = logging.getLogger("modelence_trio")


class Admission:
    """The admission state of one hub: handshakes held, by client address."""

    def __init__(self, config: HubConfig, authenticator: Authenticator | None) -> None:
        self.config = config
        self.authenticator = authenticator
        #: ``config.max_connections``, clamped to the open-file limit when the hub runs.
        self.max_connections = config.max_connections
        self.admitted = 0  # handshakes held (being authenticated, accepted or served)
        self._per_address: collections.Counter[str] = collections.Counter()

    def check(
        self, headers: list[tuple[bytes, bytes]], client: str | None, *, connections: int, stopping: bool
    ) -> None:
        """Refuse (``HandshakeRejected``) what no token could let in."""
        if stopping:
            raise HandshakeRejected(503, "server shutting down")
        refusal = check_origin(headers, self.config.allowed_origins)
        if refusal is not None:
            raise HandshakeRejected(403, refusal)
        limit = self.max_connections
        if limit is not None and max(self.admitted, connections) >= limit:
            raise HandshakeRejected(503, "server full: too many connections")
        per_address = self.config.max_connections_per_address
        if per_address is not None and client is not None and self._per_address[client] >= per_address:
            raise HandshakeRejected(429, "too many connections from this address")

    def hold(self, client: str | None) -> Held:
        """Count a handshake against the limits from its check to its end, so
        that handshakes arriving together cannot all pass the check
        (``with admission.hold(client):``)."""
        return Held(self, client)

    def release(self, client: str | None) -> None:
        self.admitted -= 1
        if client is not None:
            self._per_address[client] -= 1
            if not self._per_address[client]:
                del self._per_address[client]

    async def identify(self, token: str | None) -> Identity:
        """Resolve a session token (``None``: none presented) to an identity
        with the hub's default roles (``HandshakeRejected`` 401 or 503)."""
        if token is None:
            if self.config.require_user:
                raise HandshakeRejected(401, "authentication required")
            return Identity(None, None, self.config.anonymous_roles)
        if self.authenticator is None:
            raise HandshakeRejected(401, "this server accepts no tokens")
        if not token.isascii():
            try:
                token.encode()
            except UnicodeEncodeError:  # a lone surrogate: no authenticator could have issued it
                raise HandshakeRejected(401, "invalid or expired token") from None
        try:
            identity = await self.authenticator.authenticate(token)
        except Exception as exc:
            # Where it failed, but not its message, which may quote the token.
            where = "".join(traceback.format_tb(exc.__traceback__))
            logger.error("authenticator failed with %s; traceback:\n%s", type(exc).__qualname__, where)
            raise HandshakeRejected(503, "authentication unavailable") from None
        if identity is None:
            raise HandshakeRejected(401, "invalid or expired token")
        return self.with_default_roles(identity)

    def with_default_roles(self, identity: Identity) -> Identity:
        config = self.config
        base = config.anonymous_roles if identity.user is None else config.authenticated_roles
        return attrs.evolve(identity, roles=tuple(dict.fromkeys((*base, *identity.roles))))


class Held:
    """A place held in the connection limits (``Admission.hold``).

    A class rather than a generator-based context manager: it is held for
    a connection's whole life, and a suspended generator's frame would cost
    every open connection several hundred bytes.
    """

    __slots__ = ("_admission", "_client")

    def __init__(self, admission: Admission, client: str | None) -> None:
        self._admission = admission
        self._client = client
        admission.admitted += 1
        if client is not None:
            admission._per_address[client] += 1

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc_info: object) -> None:
        self._admission.release(self._client)
