"""Session tokens of an existing Modelence database (``_modelenceSessions``,
``_modelenceUsers``), as ../shared/reference/modelence.md describes them."""

from __future__ import annotations

import datetime
import hashlib
import re
from typing import TYPE_CHECKING, Any

import trio

from ._auth import Identity, User
from ._fanout import database_of

if TYPE_CHECKING:
    from ._fanout import MongoTarget

__all__ = ["MongoSessionAuthenticator"]

SESSIONS = "_modelenceSessions"
USERS = "_modelenceUsers"
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_INACTIVE = ("disabled", "deleted")


def _aware(moment: datetime.datetime) -> datetime.datetime:
    # pymongo returns naive UTC datetimes unless the client is tz_aware.
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


class MongoSessionAuthenticator:
    """Resolves Modelence session tokens against its MongoDB collections.

    A token is looked up by its SHA-256 hex digest (how Modelence stores it),
    then, for tokens from before hashing, by the raw value; never by the raw
    value when the token is itself 64 hex characters, so a leaked hash cannot
    be replayed as a token. An expired session is refused (401); a disabled or
    deleted user, or a session without a user, is anonymous (``user`` None)
    with the session kept. Roles: the user document's ``roles`` (the hub adds
    the app's defaults). Unlike the reference, an unknown token is refused
    rather than turned into a fresh anonymous session. Sessions and their
    users are re-read while connected (``check``): a logout, an expiry or a
    disabled user closes the connection, and changed roles take effect.
    """

    def __init__(self, database: MongoTarget, *, threads: int = 4) -> None:
        """``database``: a ``Database``, a ``MongoClient`` or a URI, as for ``MongoFanout``."""
        database = database_of(database)
        self._sessions = database[SESSIONS]
        self._users = database[USERS]
        self._limiter = trio.CapacityLimiter(threads)

    async def authenticate(self, token: str) -> Identity | None:
        return await trio.to_thread.run_sync(self._authenticate, token, limiter=self._limiter)

    async def check(self, identity: Identity) -> bool | Identity:
        """The session's current identity (its user re-read: a disabled or
        deleted user has none, and roles may have changed), or ``False`` once
        the session is gone or expired."""
        session = identity.session
        if not isinstance(session, dict) or "_id" not in session:
            return True  # not one of ours
        return await trio.to_thread.run_sync(self._current, session["_id"], limiter=self._limiter)

    def _authenticate(self, token: str) -> Identity | None:
        try:
            digest = hashlib.sha256(token.encode()).hexdigest()
        except UnicodeEncodeError:  # a lone surrogate: never a token Modelence issued
            return None
        session = self._sessions.find_one({"authToken": digest})
        if session is None and not _HEX64.fullmatch(token):
            session = self._sessions.find_one({"authToken": token})  # legacy: stored raw
        if session is None or self._expired(session):
            return None
        return self._identity(session)

    def _current(self, session_id: Any) -> Identity | bool:
        session = self._sessions.find_one({"_id": session_id})
        if session is None or self._expired(session):
            return False
        return self._identity(session)

    def _identity(self, session: dict[str, Any]) -> Identity:
        user_doc = None
        if session.get("userId") is not None:
            user_doc = self._users.find_one({"_id": session["userId"]})
        if user_doc is None or user_doc.get("status") in _INACTIVE:
            return Identity(None, session, ())
        user = User(str(user_doc["_id"]), str(user_doc.get("handle", "")), user_doc)
        roles = tuple(str(role) for role in user_doc.get("roles") or ())
        return Identity(user, session, roles)

    @staticmethod
    def _expired(session: dict[str, Any]) -> bool:
        expires = session.get("expiresAt")
        if isinstance(expires, str):
            # nx-27017 (the wire server of the tests) turns a date written by $set into a string.
            try:
                expires = datetime.datetime.fromisoformat(expires)
            except ValueError:
                return True  # unreadable: do not trust the session
        if not isinstance(expires, datetime.datetime):
            return False  # no expiry
        return _aware(expires) <= datetime.datetime.now(datetime.UTC)
