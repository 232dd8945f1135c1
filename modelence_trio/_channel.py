"""Server channels: a category, its access rule, and its optional publish handler."""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic

import attrs
import trio
from typing_extensions import TypeVar

from ._auth import Identity, IdentityView
from ._backend import Receipt
from ._history import History
from ._presence import Presence
from ._typed import InvalidData, structure, unstructure
from .protocol import ProtocolError, split_channel, validate_category
from .protocol._names import valid_channel_id

if TYPE_CHECKING:
    from ._hub import Hub

#: No hub accepts longer ids than this; attached hubs lower it to their ``max_id_length``.
MAX_ID_LENGTH_CEILING = 1 << 20
_MAX_NAMES = 10_000  # channel ids whose check a channel remembers

__all__ = ["AccessCheck", "ChannelContext", "MessageHandler", "PublishRejected", "ServerChannel"]

#: The payload type; unparametrised channels carry ``Any`` JSON.
T = TypeVar("T", default=Any)


class PublishRejected(Exception):
    """Raised by an ``on_message`` handler to refuse a publish with a reason.

    The client gets an ``error`` frame with this message and ``code``
    (default ``publish_rejected``); nothing is logged as a failure. Any other
    exception becomes ``handler_error`` with a generic text, so internals
    never leak to clients.
    """

    def __init__(self, message: str, *, code: str = "publish_rejected") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@attrs.frozen
class ChannelContext(IdentityView):
    """Everything an access check or publish handler may decide on.

    Unlike the reference, the channel id is here, so per-user channels are one
    line: ``lambda ctx: ctx.user is not None and ctx.user.id == ctx.channel_id``.
    """

    identity: Identity
    category: str
    channel_id: str
    connection_id: str

    @property
    def channel(self) -> str:
        return f"{self.category}:{self.channel_id}"


AccessCheck = Callable[[ChannelContext], "bool | Awaitable[bool]"]
MessageHandler = Callable[[ChannelContext, str, T], "Awaitable[None] | None"]


class ServerChannel(Generic[T]):
    """One channel category served to clients, e.g. ``ServerChannel("chat")``.

    Args:
        category: the part of channel names before the first ``:``.
        can_access: decides each join; sync or async; ``None`` admits everyone.
            An exception counts as a denial (and is logged), never as a crash.
        on_message: handles client publishes into this category; without it,
            clients get ``error`` ``publish_not_allowed``.
        history: how many recent messages per channel each hub keeps so that
            reconnecting clients recover what they missed (``join`` with
            ``since``); ``None`` keeps none.
        presence: who is in each channel of this category, shared by every
            instance (:class:`Presence`; docs/presence.md); ``None``: none.
        payload: an attrs class: ``broadcast`` takes its instances (sent as
            JSON objects through cattrs), and client publishes are checked
            against it before ``on_message`` gets them as instances (a bad one
            is answered with ``error`` ``invalid_data`` naming the fields).
            ``None``: any JSON. mypy checks ``broadcast`` against it::

                chat = ServerChannel("chat", payload=ChatMessage)
                chat.broadcast("lobby", ChatMessage(author="ann", text="hi"))

    A channel delivers through every :class:`Hub` built with it (normally one).
    """

    def __init__(
        self,
        category: str,
        can_access: AccessCheck | None = None,
        on_message: MessageHandler[T] | None = None,
        *,
        history: History | None = History(),
        presence: Presence | None = None,
        payload: type[T] | None = None,
    ) -> None:
        self.category = validate_category(category)
        self.history = history
        self.presence = presence
        self.payload = payload
        self.can_access = can_access
        self.on_message = on_message
        # Weak, so a Hub that is gone stops receiving; a tuple, because
        # iterating it is the broadcast hot path (a WeakSet costs 1.5 us).
        self._hubs: tuple[weakref.ref[Hub], ...] = ()
        self._max_id_length = MAX_ID_LENGTH_CEILING
        #: Channel ids already checked, and their names: a broadcast's check is then one lookup.
        self._names: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"ServerChannel({self.category!r})"

    def broadcast(self, channel_id: str, data: T) -> None:
        """Send ``data`` to every connection joined to ``category:channel_id``.

        A plain call, usable from any task: it encodes once, queues for each
        subscriber and returns without waiting for any of them. From a thread
        outside Trio (a ``trio.to_thread`` worker, or any other thread) it
        hands the call to the running hub's Trio thread and returns once it
        is done there.

        Raises:
            TypeError: ``data`` is not JSON-serializable.
            ValueError: ``channel_id`` is not a valid channel id (its length
                bounded by the hubs' ``HubConfig.max_id_length``).
            RuntimeError: no Hub serves this channel.
            FanoutOverflow: (a RuntimeError) local subscribers got it, but
                other instances cannot: MongoDB has been unreachable for
                longer than the fan-out's buffer holds.
        """
        if not trio.lowlevel.in_trio_run() and self._broadcast_from_thread(channel_id, data):
            return
        # An id checked before is one lookup here (``_name`` checks and remembers).
        name = self._names.get(channel_id) if type(channel_id) is str else None
        if name is None:
            name = self._name(channel_id)
        if self.payload is not None:
            data = self._to_wire(data)
        delivered = False
        for ref in self._hubs:
            hub = ref()
            if hub is not None:
                hub.broadcast(self, name, data)
                delivered = True
        if not delivered:
            raise RuntimeError(f"{self!r} is not part of any Hub; build a Hub with it first")

    async def broadcast_stored(self, channel_id: str, data: T) -> None:
        """:meth:`broadcast`, returning once the fan-out has stored it.

        For code that must not acknowledge a broadcast that a crash of this
        instance could still lose (a method that answers 200 only once the
        message will reach the other instances): ``broadcast`` returns while
        the broadcast waits in memory to be stored; this waits for the
        store. Without a fan-out there is nothing to store: it returns at
        once. Local subscribers get it at once, as with ``broadcast``. If the
        caller is cancelled, the broadcast is still stored.

        Raises:
            FanoutNotStored: the backend cannot store it (MongoDB: what BSON
                cannot hold), or the hub stopped first. Logged and counted too.
            TypeError: as :meth:`broadcast` (and its ``ValueError``,
                ``RuntimeError`` and ``FanoutOverflow``).
        """
        name = self._name(channel_id)
        if self.payload is not None:
            data = self._to_wire(data)
        receipts = []
        for ref in self._hubs:
            hub = ref()
            if hub is not None:
                receipt = Receipt()
                hub.broadcast(self, name, data, receipt)
                receipts.append(receipt)
        if not receipts:
            raise RuntimeError(f"{self!r} is not part of any Hub; build a Hub with it first")
        for receipt in receipts:
            await receipt.wait()

    def _to_wire(self, data: T) -> Any:
        """What a broadcast sends: the data itself, or a payload instance as JSON data."""
        payload = self.payload
        if payload is None:
            return data
        if not isinstance(data, payload):
            raise TypeError(f"{self!r} broadcasts {payload.__name__} instances, not {type(data).__name__}")
        return unstructure(data)

    def _name(self, channel_id: str) -> str:
        """Check a channel id and remember it (``broadcast`` looks it up first)."""
        names = self._names
        name = f"{self.category}:{channel_id}"
        if not valid_channel_id(channel_id, self._max_id_length):
            try:
                split_channel(name, max_id_length=self._max_id_length)
            except ProtocolError as exc:
                raise ValueError(exc.message) from None
            raise ValueError(f"invalid channel id {channel_id!r}")
        if len(names) >= _MAX_NAMES:
            names.clear()  # bounded: forgotten all at once, then checked again
        names[channel_id] = name
        return name

    def _broadcast_from_thread(self, channel_id: str, data: T) -> bool:
        """Called outside Trio: run the broadcast in the Trio thread of a
        running hub and say so; with none running (no connections anywhere),
        ``False``: it runs right here."""
        for ref in self._hubs:
            hub = ref()
            token = hub.trio_token if hub is not None else None
            if token is not None:
                trio.from_thread.run_sync(self.broadcast, channel_id, data, trio_token=token)
                return True
        return False

    def _attach(self, hub: Hub) -> None:
        """Deliver through ``hub`` too (again: its config changed)."""
        hubs = [h for h in (ref() for ref in self._hubs) if h is not None and h is not hub] + [hub]
        self._hubs = tuple(weakref.ref(h) for h in hubs)
        # Ids are bounded by the strictest hub: every hub must accept what broadcast does.
        self._max_id_length = min(h.config.max_id_length for h in hubs)
        self._names.clear()  # checked against the old bound

    async def _allows(self, ctx: ChannelContext) -> bool:
        if self.can_access is None:
            return True
        verdict = self.can_access(ctx)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        return verdict is True

    async def _handle(self, ctx: ChannelContext, data: Any) -> None:
        assert self.on_message is not None
        if self.payload is not None:
            try:
                data = structure(data, self.payload)
            except InvalidData as exc:
                raise PublishRejected(str(exc), code="invalid_data") from None
        result = self.on_message(ctx, ctx.channel_id, data)
        if inspect.isawaitable(result):
            await result
