"""A TCP proxy that speaks enough of the MongoDB wire protocol to fake a
failover: there is no replica set here, so the tests produce what a failover
looks like from the client's side instead. A primary that steps down answers
``NotWritablePrimary`` or a retryable error; a write may be applied and its
reply replaced by such an error (the client retries a write that happened);
a connection may be reset in the middle of a query.

Faults are armed by command name (the first key of an OP_MSG body, e.g.
``insert``, ``findAndModify``, ``find``), optionally by collection (that key's
value), for the next N matching commands. Everything else is forwarded
untouched, OP_QUERY handshakes included. The proxy counts what it saw and did,
so a test can check that a fault really happened: a test whose fault never
fired proves nothing.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import socket
import struct
from collections.abc import Iterator
from typing import Any, Literal
from urllib.parse import urlsplit

import attrs
import bson
import trio

__all__ = ["CODE_NAMES", "Fault", "FaultKind", "FaultProxy", "Message", "Frames", "error_reply", "parse"]

OP_MSG = 2013
CHECKSUM_PRESENT = 1 << 0  # OP_MSG flagBits: a CRC-32C follows the sections
MORE_TO_COME = 1 << 1  # the sender will not wait for a reply (requests) / more replies follow (replies)
HEADER = struct.Struct("<iiii")  # messageLength, requestID, responseTo, opCode

#: The server's errors of a replica set failover (their ``codeName``).
CODE_NAMES = {
    10107: "NotWritablePrimary",
    189: "PrimarySteppedDown",
    11602: "InterruptedDueToReplStateChange",
    91: "ShutdownInProgress",
}

#: ``error``: answered by the proxy, the server never sees it. ``apply_then_error``:
#: the server applies it, the client is told it failed. ``reset_before``: the
#: connection is reset instead of forwarding it. ``reset_after``: forwarded, the
#: server's reply awaited (the command did run) and the connection reset
#: instead of passing the reply on.
FaultKind = Literal["error", "apply_then_error", "reset_before", "reset_after"]


@attrs.frozen
class Message:
    """One wire message; ``body`` (the kind-0 section) and ``sequences``
    (kind-1 sections: identifier -> documents) only for OP_MSG."""

    raw: bytes
    request_id: int
    response_to: int
    op_code: int
    flags: int = 0
    body: dict[str, Any] | None = None
    sequences: dict[str, list[dict[str, Any]]] = attrs.field(factory=dict)

    @property
    def command(self) -> str | None:
        return next(iter(self.body), None) if self.body else None

    @property
    def collection(self) -> str | None:
        """The command's target (the value of its first key) when it names a collection."""
        target = self.body[self.command] if self.body and self.command else None
        return target if isinstance(target, str) else None

    @property
    def expects_reply(self) -> bool:
        return not self.flags & MORE_TO_COME


def parse(raw: bytes) -> Message:
    """One whole message (as :class:`Frames` gives them)."""
    length, request_id, response_to, op_code = HEADER.unpack_from(raw)
    if op_code != OP_MSG:
        return Message(raw, request_id, response_to, op_code)
    flags = int.from_bytes(raw[16:20], "little")
    end = length - 4 if flags & CHECKSUM_PRESENT else length
    body: dict[str, Any] | None = None
    sequences: dict[str, list[dict[str, Any]]] = {}
    at = 20
    while at < end:
        kind = raw[at]
        size = int.from_bytes(raw[at + 1 : at + 5], "little")
        if kind == 0:  # one BSON document: its size is its own first int32
            body = bson.decode(raw[at + 1 : at + 1 + size])
        elif kind == 1:  # int32 size (itself included), cstring identifier, documents
            name_end = raw.index(b"\x00", at + 5)
            sequences[raw[at + 5 : name_end].decode()] = bson.decode_all(raw[name_end + 1 : at + 1 + size])
        else:
            raise ValueError(f"OP_MSG section of kind {kind}: not in the protocol this proxy knows")
        at += 1 + size
    return Message(raw, request_id, response_to, op_code, flags, body, sequences)


class Frames:
    """Whole wire messages out of a byte stream: one message may come in
    several reads, one read may hold several messages."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._buffer += data
        while len(self._buffer) >= HEADER.size:
            length = int.from_bytes(self._buffer[:4], "little")
            if length < HEADER.size:
                raise ValueError(f"a wire message of {length} bytes: shorter than its header")
            if len(self._buffer) < length:
                return
            message = bytes(self._buffer[:length])
            del self._buffer[:length]
            yield message


_reply_ids = itertools.count(1 << 30)  # far from the server's own request ids


@attrs.define(eq=False)
class Fault:
    """A fault for the next ``times`` commands named ``command`` (on
    ``collection``, if given). ``fired`` counts those it did; ``done`` is set
    once it did them all. ``replaced`` holds the server's real replies that
    ``apply_then_error`` hid from the client (proof the command ran).
    ``document``: the reply to send instead of the failover error (say, an
    ``insert`` whose ``writeErrors`` refuse one document)."""

    command: str
    kind: FaultKind = "error"
    collection: str | None = attrs.field(default=None, kw_only=True)
    times: int = attrs.field(default=1, kw_only=True)
    code: int = attrs.field(default=10107, kw_only=True)
    labels: tuple[str, ...] = attrs.field(default=(), kw_only=True)
    document: dict[str, Any] | None = attrs.field(default=None, kw_only=True)
    taken: int = attrs.field(default=0, init=False)  # commands matched (fired, or awaiting their reply)
    fired: int = attrs.field(default=0, init=False)
    replaced: list[dict[str, Any]] = attrs.field(factory=list, init=False)
    done: trio.Event = attrs.field(factory=trio.Event, init=False)

    def takes(self, message: Message) -> bool:
        if self.taken >= self.times or message.command != self.command:
            return False
        return self.collection is None or message.collection == self.collection

    def reply(self, response_to: int) -> bytes:
        """The OP_MSG a server in failover would answer with (or ``document``)."""
        if self.document is not None:
            return error_reply(response_to, self.document)
        name = CODE_NAMES.get(self.code, "UnknownError")
        document: dict[str, Any] = {"ok": 0.0, "errmsg": f"{name} (injected by the test proxy)", "code": self.code}
        document["codeName"] = name
        if self.labels:
            document["errorLabels"] = list(self.labels)
        return error_reply(response_to, document)


def error_reply(response_to: int, document: dict[str, Any]) -> bytes:
    payload = struct.pack("<I", 0) + b"\x00" + bson.encode(document)  # flagBits 0, one kind-0 section
    return HEADER.pack(HEADER.size + len(payload), next(_reply_ids), response_to, OP_MSG) + payload


@attrs.define(eq=False)
class _Link:
    """One proxied connection: both sockets, and the replies a fault waits for."""

    client: trio.SocketStream
    server: trio.SocketStream
    scope: trio.CancelScope
    to_client: trio.Lock = attrs.field(factory=trio.Lock)  # both pipes write to the client
    on_reply: dict[int, Fault] = attrs.field(factory=dict)  # request id -> the fault awaiting its reply

    async def send_to_client(self, data: bytes) -> None:
        async with self.to_client:
            await self.client.send_all(data)

    def reset(self) -> None:
        """Close both sockets with a TCP reset (SO_LINGER 0), not a polite FIN."""
        for stream in (self.client, self.server):
            with contextlib.suppress(OSError):
                stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.scope.cancel()


class FaultProxy:
    """Forwards TCP to a MongoDB wire server, injecting the armed faults.

    ``seen`` counts the OP_MSG commands by name, ``seen_in`` by (name,
    collection), ``injected`` the faults by kind: what a client library did by
    itself (a retry is one more command seen) can be told from what the code
    under test did."""

    def __init__(self, uri: str) -> None:
        where = urlsplit(uri)
        self.target = (where.hostname or "127.0.0.1", where.port or 27017)
        self.uri = uri
        self.port = 0
        self.faults: list[Fault] = []
        self.seen: collections.Counter[str] = collections.Counter()
        self.seen_in: collections.Counter[tuple[str, str]] = collections.Counter()
        self.injected: collections.Counter[str] = collections.Counter()

    def add(self, *faults: Fault) -> None:
        """Arm ``faults``; one command meets at most one, the first armed that takes it."""
        self.faults.extend(faults)

    def uri_through(self) -> str:
        where = urlsplit(self.uri)
        netloc = where.netloc.rsplit("@", 1)
        netloc[-1] = f"127.0.0.1:{self.port}"
        return where._replace(netloc="@".join(netloc)).geturl()

    async def run(self, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._handle, listeners, task_status=task_status)

    async def _handle(self, client: trio.SocketStream) -> None:
        try:
            server = await trio.open_tcp_stream(*self.target)
        except OSError:
            await trio.aclose_forcefully(client)
            return
        try:
            async with trio.open_nursery() as nursery:
                link = _Link(client, server, nursery.cancel_scope)
                nursery.start_soon(self._upstream, link)
                nursery.start_soon(self._downstream, link)
        finally:
            await trio.aclose_forcefully(server)
            await trio.aclose_forcefully(client)

    def _fault_for(self, message: Message) -> Fault | None:
        command = message.command
        if command is None:
            return None  # not OP_MSG (the OP_QUERY handshake): forwarded untouched
        self.seen[command] += 1
        if message.collection is not None:
            self.seen_in[command, message.collection] += 1
        if not message.expects_reply:
            return None  # moreToCome: the client waits for no reply, so none can be faked
        for fault in self.faults:
            if fault.takes(message):
                fault.taken += 1
                return fault
        return None

    def _fired(self, fault: Fault) -> None:
        fault.fired += 1
        self.injected[fault.kind] += 1
        if fault.fired >= fault.times:
            fault.done.set()

    async def _upstream(self, link: _Link) -> None:
        """Client to server, message by message."""
        frames = Frames()
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await link.client.receive_some(65536):
                forward = bytearray()
                for raw in frames.feed(data):
                    message = parse(raw)
                    fault = self._fault_for(message)
                    if fault is None or fault.kind in ("apply_then_error", "reset_after"):
                        if fault is not None:
                            link.on_reply[message.request_id] = fault
                        forward += raw
                        continue
                    if forward:
                        await link.server.send_all(bytes(forward))
                        forward.clear()
                    self._fired(fault)
                    if fault.kind == "reset_before":
                        link.reset()
                        return
                    await link.send_to_client(fault.reply(message.request_id))
                if forward:
                    await link.server.send_all(bytes(forward))
        link.scope.cancel()  # one side ended: so does the connection

    async def _downstream(self, link: _Link) -> None:
        """Server to client; a reply a fault waits for is replaced (or the connection reset)."""
        frames = Frames()
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await link.server.receive_some(65536):
                forward = bytearray()
                for raw in frames.feed(data):
                    fault = link.on_reply.pop(HEADER.unpack_from(raw)[2], None) if link.on_reply else None
                    if fault is None:
                        forward += raw
                        continue
                    self._fired(fault)
                    if fault.kind == "reset_after":
                        if forward:
                            await link.send_to_client(bytes(forward))
                        link.reset()
                        return
                    reply = parse(raw)
                    fault.replaced.append(reply.body or {})
                    forward += fault.reply(reply.response_to)
                if forward:
                    await link.send_to_client(bytes(forward))
        link.scope.cancel()
