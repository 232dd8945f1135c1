"""modelence-trio: real-time channels over WebSockets, on Trio.

Server side: declare :class:`ServerChannel` objects and methods in
:class:`Module` objects, collect them in an :class:`App` (an ASGI app, for
hypercorn or ``modelence-trio``), or build a bare :class:`Hub` and serve it
with :func:`serve_websocket`; call ``channel.broadcast(id, data)`` from
anywhere in the app. Client side:
:func:`open_client`. In-memory deterministic tests: :mod:`modelence_trio.testing`.
The wire protocol is in :mod:`modelence_trio.protocol` and protocol.md.
"""

from ._app import App, Module
from ._auth import Authenticator, DevelopmentAuthenticator, Identity, MemoryAuthenticator, SessionChecker, User
from ._channel import ChannelContext, PublishRejected, ServerChannel
from ._client import (
    AuthenticationFailed,
    Backoff,
    Client,
    ClientChannel,
    ClientClosed,
    ClientError,
    ClientMessage,
    ConnectionLost,
    JoinRefused,
    MethodFailed,
    PresenceSnapshot,
    RequestFailed,
    open_client,
)
from ._config import HubConfig
from ._fanout import FanoutNotStored, FanoutOverflow, FanoutStatistics, MongoFanout
from ._history import History
from ._hub import Hub, HubStatistics, Readiness
from ._methods import MethodContext, MethodError
from ._metrics import serve_metrics
from ._mongo_auth import MongoSessionAuthenticator
from ._ops import MetricsEndpoint
from ._presence import Presence
from ._serve import serve_websocket
from .protocol import CloseCode, ErrorCode, PresenceMember

__all__ = [
    "App",
    "AuthenticationFailed",
    "Authenticator",
    "Backoff",
    "ChannelContext",
    "Client",
    "ClientChannel",
    "ClientClosed",
    "ClientError",
    "ClientMessage",
    "CloseCode",
    "ConnectionLost",
    "DevelopmentAuthenticator",
    "ErrorCode",
    "FanoutNotStored",
    "FanoutOverflow",
    "FanoutStatistics",
    "History",
    "Hub",
    "HubConfig",
    "HubStatistics",
    "Identity",
    "JoinRefused",
    "MemoryAuthenticator",
    "MethodContext",
    "MethodError",
    "MethodFailed",
    "MetricsEndpoint",
    "Module",
    "MongoFanout",
    "MongoSessionAuthenticator",
    "Presence",
    "PresenceMember",
    "PresenceSnapshot",
    "PublishRejected",
    "Readiness",
    "RequestFailed",
    "ServerChannel",
    "SessionChecker",
    "User",
    "open_client",
    "serve_metrics",
    "serve_websocket",
]

__version__ = "0.1.0"
