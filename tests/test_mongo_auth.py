"""The Modelence session authenticator against collections seeded the way the
reference writes them (over real sockets to nx-27017 or MONGODB_URI)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import secrets
from typing import Any

import pytest
import trio
from bson import ObjectId
from pymongo.database import Database

from modelence_trio import Hub, HubConfig, Identity, MongoSessionAuthenticator, ServerChannel
from modelence_trio.protocol import HandshakeRejected

NOW = datetime.datetime.now(datetime.UTC)
LATER = NOW + datetime.timedelta(days=7)
EARLIER = NOW - datetime.timedelta(minutes=1)


def new_token() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def seed(db: Database[dict[str, Any]]) -> dict[str, str]:
    """Users and sessions as Modelence stores them; returns the raw tokens by case."""
    active, disabled, deleted = ObjectId(), ObjectId(), ObjectId()
    db["_modelenceUsers"].insert_many(
        [
            {
                "_id": active,
                "handle": "ann",
                "status": "active",
                "roles": ["admin"],
                "firstName": "Ann",
                "createdAt": NOW,
                "authMethods": {},
            },
            {"_id": disabled, "handle": "dis", "status": "disabled", "roles": ["admin"], "createdAt": NOW},
            {"_id": deleted, "handle": "del", "status": "deleted", "roles": [], "createdAt": NOW},
        ]
    )
    tokens = {name: new_token() for name in ("valid", "expired", "disabled", "deleted", "anonymous")}
    tokens["legacy"] = new_token()
    tokens["hex"] = secrets.token_hex(32)  # a 64-hex raw token, stored raw: must never match
    sessions = db["_modelenceSessions"]
    for name, user in (("valid", active), ("disabled", disabled), ("deleted", deleted), ("anonymous", None)):
        sessions.insert_one({"authToken": sha(tokens[name]), "createdAt": NOW, "expiresAt": LATER, "userId": user})
    sessions.insert_one({"authToken": sha(tokens["expired"]), "createdAt": NOW, "expiresAt": EARLIER, "userId": active})
    sessions.insert_one({"authToken": tokens["legacy"], "createdAt": NOW, "expiresAt": LATER, "userId": active})
    sessions.insert_one({"authToken": tokens["hex"], "createdAt": NOW, "expiresAt": LATER, "userId": active})
    return tokens


@pytest.fixture
async def setup(database: Database[dict[str, Any]]) -> tuple[Hub, dict[str, str], Database[dict[str, Any]]]:
    tokens = await trio.to_thread.run_sync(seed, database)
    config = HubConfig(authenticated_roles=["user"], anonymous_roles=["guest"])
    hub = Hub([ServerChannel("chat")], authenticator=MongoSessionAuthenticator(database), config=config)
    return hub, tokens, database


async def test_valid_token(setup: tuple[Hub, dict[str, str], Any]) -> None:
    hub, tokens, _ = setup
    identity = await hub.identify(tokens["valid"])
    assert identity.user is not None
    assert identity.user.handle == "ann"
    assert identity.roles == ("user", "admin")
    assert identity.user.profile["firstName"] == "Ann"


async def test_legacy_raw_token(setup: tuple[Hub, dict[str, str], Any]) -> None:
    hub, tokens, _ = setup
    identity = await hub.identify(tokens["legacy"])
    assert identity.user is not None and identity.user.handle == "ann"


@pytest.mark.parametrize("case", ["expired", "hex"])
async def test_refused(setup: tuple[Hub, dict[str, str], Any], case: str) -> None:
    hub, tokens, _ = setup
    with pytest.raises(HandshakeRejected) as info:
        await hub.identify(tokens[case])
    assert info.value.status == 401


async def test_unknown_token_is_refused_not_anonymous(setup: tuple[Hub, dict[str, str], Any]) -> None:
    hub, _, _ = setup
    with pytest.raises(HandshakeRejected):
        await hub.identify(new_token())


async def test_hash_of_a_valid_token_cannot_be_replayed(setup: tuple[Hub, dict[str, str], Any]) -> None:
    hub, tokens, _ = setup
    with pytest.raises(HandshakeRejected):
        await hub.identify(sha(tokens["valid"]))  # what a database leak would show


@pytest.mark.parametrize("case", ["disabled", "deleted", "anonymous"])
async def test_no_user(setup: tuple[Hub, dict[str, str], Any], case: str) -> None:
    hub, tokens, _ = setup
    identity = await hub.identify(tokens[case])
    assert identity.user is None
    assert identity.roles == ("guest",)
    assert identity.session["authToken"] == sha(tokens[case])


async def test_session_check_sees_logout_and_expiry(setup: tuple[Hub, dict[str, str], Any]) -> None:
    hub, tokens, database = setup
    auth = hub.authenticator
    assert isinstance(auth, MongoSessionAuthenticator)
    identity = await hub.identify(tokens["valid"])
    assert await auth.check(identity)
    sessions = database["_modelenceSessions"]
    await trio.to_thread.run_sync(
        lambda: sessions.update_one({"authToken": sha(tokens["valid"])}, {"$set": {"expiresAt": EARLIER}})
    )
    assert not await auth.check(identity)
    await trio.to_thread.run_sync(lambda: sessions.delete_one({"authToken": sha(tokens["valid"])}))
    assert not await auth.check(identity)


async def test_session_check_rereads_the_user(setup: tuple[Hub, dict[str, str], Any]) -> None:
    hub, tokens, database = setup
    auth = hub.authenticator
    assert isinstance(auth, MongoSessionAuthenticator)
    identity = await hub.identify(tokens["valid"])
    assert identity.user is not None
    users = database["_modelenceUsers"]
    user_id = ObjectId(identity.user.id)
    await trio.to_thread.run_sync(lambda: users.update_one({"_id": user_id}, {"$set": {"roles": ["editor"]}}))
    current = await auth.check(identity)
    assert isinstance(current, Identity) and current.roles == ("editor",)
    await trio.to_thread.run_sync(lambda: users.update_one({"_id": user_id}, {"$set": {"status": "disabled"}}))
    current = await auth.check(identity)
    assert isinstance(current, Identity) and current.user is None  # the hub closes such a connection (4001)


async def test_a_lone_surrogate_token_is_401_not_503(setup: tuple[Hub, dict[str, str], Any]) -> None:
    hub, _, _ = setup
    auth = hub.authenticator
    assert isinstance(auth, MongoSessionAuthenticator)
    assert await auth.authenticate("\ud800") is None
    with pytest.raises(HandshakeRejected) as info:
        await hub.identify("abc\ud800")
    assert info.value.status == 401
