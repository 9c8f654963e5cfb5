"""What the Redis adapters share: the operations, and requests that wait for other nodes.

A cluster adapter is an :class:`~roomd.rooms.adapter.InMemoryAdapter` for
its own sockets that also publishes each operation not flagged ``local``
(publish first, then deliver locally, as Socket.IO's adapters do), and
applies what other nodes publish with ``local`` set. The operations are
written once here, over abstract wire calls (``_publish_*``,
``new_request_id``) that each protocol's adapter supplies.

Requests that expect answers (fetch_sockets, all_rooms, server-side emits
with replies, broadcasts with acks) are kept by request id until every
other node answered or ``request_timeout`` passed. The number of other
nodes is the number of subscribers of the namespace's request channel,
minus this one. A node that stays silent makes ``fetch_sockets`` and
``all_rooms`` raise :class:`~roomd._errors.ClusterTimeout` carrying the
partial result after ``request_timeout``; nothing waits longer than that.
While Redis is down the count is 1 (this node): every operation is local.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import trio

from .._errors import ClusterTimeout
from ..rooms.adapter import AdapterContext, InMemoryAdapter
from ..rooms.records import BroadcastOptions, Emission, Member, RemoteSocketRecord
from . import wire

if TYPE_CHECKING:
    from .factory import RedisAdapterFactory

logger = logging.getLogger("roomd.cluster")


class PendingRequest:
    """One request waiting for ``expected`` answers from other nodes."""

    __slots__ = ("expected", "answers", "items", "done", "on_answer")

    def __init__(self, expected: int,
                 on_answer: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.expected = expected
        self.answers = 0
        self.items: list[Any] = []
        self.done = trio.Event()
        self.on_answer = on_answer

    def add(self, answer: dict[str, Any], items: list[Any] | None = None) -> None:
        if self.done.is_set():
            return
        self.answers += 1
        if items:
            self.items.extend(items)
        if self.on_answer is not None:
            self.on_answer(answer)
        if self.answers >= self.expected:
            self.done.set()


class PendingAcks:
    """The callbacks of one broadcast with acks sent to other nodes."""

    __slots__ = ("on_count", "on_ack", "acks")

    def __init__(self, on_count: Callable[[int], None],
                 on_ack: Callable[[str, list], None]) -> None:
        self.on_count = on_count
        self.on_ack = on_ack
        self.acks = 0

    def count(self, value: Any) -> None:
        """A node's count of the sockets the broadcast reached there."""
        self.on_count(value if isinstance(value, int) else 0)

    def ack(self, request_id: str, value: Any) -> None:
        # Remote acks carry no socket id (the Node adapters send only the
        # first ack argument); a per-request counter keeps them apart.
        self.acks += 1
        self.on_ack(f"{request_id}:{self.acks}", [value])


def ack_window(opts: Any, default: float) -> float:
    """How long to relay the acks of a broadcast another node asked for: its
    ``opts.flags.timeout`` (milliseconds), at most an hour, else ``default``."""
    flags = opts.get("flags") if isinstance(opts, dict) else None
    timeout = flags.get("timeout") if isinstance(flags, dict) else None
    if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0:
        return min(float(timeout) / 1000, 3600.0)
    return default


def options_local(target: wire.Target) -> BroadcastOptions:
    return BroadcastOptions(target.rooms, target.except_rooms, target.volatile, local=True)


def remote_record(value: Any) -> RemoteSocketRecord | None:
    """A fetch answer's socket, or None when it is not one."""
    if not isinstance(value, dict) or not isinstance(value.get("id"), str):
        return None
    try:
        rooms = wire.room_list(value.get("rooms"))
    except wire.WireError:
        rooms = frozenset()
    handshake = value.get("handshake")
    return RemoteSocketRecord(value["id"], rooms, value.get("data"),
                              handshake if isinstance(handshake, dict) else {})


class RequestStats:
    """Cluster requests of one server, by type, for ``roomd status`` and the metrics."""

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}
        self.request_seconds: dict[str, float] = {}
        self.request_timeouts: dict[str, int] = {}

    def sent(self, kind: str) -> None:
        self.requests[kind] = self.requests.get(kind, 0) + 1

    def waited(self, kind: str, seconds: float, complete: bool) -> None:
        self.request_seconds[kind] = self.request_seconds.get(kind, 0.0) + seconds
        if not complete:
            self.request_timeouts[kind] = self.request_timeouts.get(kind, 0) + 1

    def status(self) -> dict[str, Any]:
        return {"requests": dict(self.requests),
                "request_seconds": {k: round(v, 6) for k, v in self.request_seconds.items()},
                "request_timeouts": dict(self.request_timeouts)}


class RedisAdapterBase(InMemoryAdapter, abc.ABC):
    """The request bookkeeping and the local application of remote operations.

    A protocol's adapter provides the wire calls marked abstract below.
    """

    mode = ""  # "classic" / "sharded"
    uid = ""   # this node's id in the protocol, set by the subclass

    def __init__(self, namespace: str, context: AdapterContext,
                 factory: RedisAdapterFactory) -> None:
        super().__init__(namespace, context)
        self.factory = factory
        self.link = factory.link
        self.request_timeout = factory.request_timeout
        self.channels = wire.Channels(factory.key, namespace)
        self.requests: dict[str, PendingRequest] = {}
        self.ack_requests: dict[str, PendingAcks] = {}

    # -- broadcasting: publish to the other nodes, then deliver here --------------------
    @abc.abstractmethod
    async def _publish_broadcast(self, emission: Emission, opts: BroadcastOptions) -> None:
        """Put a broadcast on the wire in this mode's format."""

    async def broadcast(self, emission: Emission, opts: BroadcastOptions) -> None:
        if not opts.local:
            await self._publish_broadcast(emission, opts)
        await super().broadcast(emission, opts)

    async def broadcast_count(self, emission: Emission, opts: BroadcastOptions) -> int:
        if not opts.local:
            await self._publish_broadcast(emission, opts)
        return await super().broadcast_count(emission, opts)

    def status(self) -> dict[str, Any]:
        return {"adapter": "redis", "mode": self.mode, "uid": self.uid,
                "requests_waiting": len(self.requests) + len(self.ack_requests)}

    # -- to be provided by the protocol ----------------------------------------------
    @abc.abstractmethod
    async def count_channel_subscribers(self) -> int | None:
        """The subscribers of the channel every node of this namespace listens to; None
        while Redis does not answer."""

    @abc.abstractmethod
    def new_request_id(self) -> str:
        """A request id in this protocol's format."""

    @abc.abstractmethod
    async def _publish_broadcast_with_ack(self, emission: Emission, request_id: str,
                                          opts: dict[str, Any]) -> None:
        """Put a broadcast whose acks the other nodes relay on the wire (``opts``: its
        encoded options, with the ack timeout in the flags)."""

    @abc.abstractmethod
    async def _publish_fetch_sockets(self, opts: BroadcastOptions, request_id: str) -> None:
        """Ask the other nodes for their sockets that ``opts`` selects."""

    @abc.abstractmethod
    async def _publish_sockets_join(self, opts: BroadcastOptions, rooms: list[str]) -> None:
        """Have the other nodes' sockets that ``opts`` selects join ``rooms``."""

    @abc.abstractmethod
    async def _publish_sockets_leave(self, opts: BroadcastOptions, rooms: list[str]) -> None:
        """Have the other nodes' sockets that ``opts`` selects leave ``rooms``."""

    @abc.abstractmethod
    async def _publish_disconnect_sockets(self, opts: BroadcastOptions, close: bool) -> None:
        """Have the other nodes disconnect their sockets that ``opts`` selects."""

    @abc.abstractmethod
    async def _publish_server_side_emit(self, args: list, request_id: str | None) -> None:
        """Send a server-side event to the other nodes (with a request id: answer it)."""

    # -- the operations: publish (unless local), then do it here ------------------------
    async def broadcast_with_ack(self, emission: Emission, opts: BroadcastOptions,
                                 on_count: Callable[[int], None],
                                 on_ack: Callable[[str, list], None]) -> Callable[[], None]:
        request_id = None
        if not opts.local:
            emission.parts()  # an argument that cannot be encoded fails before anything is sent
            request_id = self.new_request_id()
            self.ack_requests[request_id] = PendingAcks(on_count, on_ack)
            self.factory.stats.sent("broadcast_with_ack")
            flags = {"timeout": int(self.request_timeout * 1000)}
            await self._publish_broadcast_with_ack(emission, request_id, wire.encode_opts(
                opts.rooms, opts.except_rooms, opts.volatile, flags))
        try:
            stop_local = await super().broadcast_with_ack(emission, opts, on_count, on_ack)
        except BaseException:
            if request_id is not None:
                self.ack_requests.pop(request_id, None)
            raise

        def stop() -> None:
            stop_local()
            if request_id is not None:
                self.ack_requests.pop(request_id, None)
        return stop

    async def fetch_sockets(self, opts: BroadcastOptions) -> list[Member | RemoteSocketRecord]:
        local = await super().fetch_sockets(opts)
        if opts.local:
            return local
        others = await self.server_count() - 1
        if others <= 0:
            return local
        request_id = self.new_request_id()
        request = self.requests[request_id] = PendingRequest(others)
        self.factory.stats.sent("fetch_sockets")
        await self._publish_fetch_sockets(opts, request_id)
        return await self.gather_sockets(request_id, request, local)

    async def add_sockets(self, opts: BroadcastOptions, rooms: Iterable[str]) -> None:
        rooms = list(rooms)
        if not opts.local:
            await self._publish_sockets_join(opts, rooms)
        await super().add_sockets(opts, rooms)

    async def del_sockets(self, opts: BroadcastOptions, rooms: Iterable[str]) -> None:
        rooms = list(rooms)
        if not opts.local:
            await self._publish_sockets_leave(opts, rooms)
        await super().del_sockets(opts, rooms)

    async def disconnect_sockets(self, opts: BroadcastOptions, close: bool) -> None:
        if not opts.local:
            await self._publish_disconnect_sockets(opts, close)
        await super().disconnect_sockets(opts, close)

    async def server_side_emit(self, args: list,
                               on_reply: Callable[[list], None] | None = None) -> int:
        """Send to the other nodes; with ``on_reply``, return how many will answer (each
        answer's ``data`` is relayed)."""
        if on_reply is None:
            await self._publish_server_side_emit(args, None)
            return 0
        others = await self.server_count() - 1
        if others <= 0:
            return 0
        request_id = self.new_request_id()
        self.requests[request_id] = PendingRequest(
            others, lambda answer: on_reply([answer.get("data")]))
        self.factory.stats.sent("server_side_emit")
        await self._publish_server_side_emit(args, request_id)
        self.expire_later("server_side_emit", request_id, self.requests[request_id])
        return others

    # -- shared operations -----------------------------------------------------------
    async def server_count(self) -> int:
        """The nodes serving this namespace (this one included); 1 while Redis is down."""
        count = await self.count_channel_subscribers()
        return max(1, count) if count is not None else 1

    async def wait_answers(self, kind: str, request_id: str, request: PendingRequest) -> bool:
        """Wait up to request_timeout for every answer; True when all came."""
        start = trio.current_time()
        try:
            with trio.move_on_after(self.request_timeout):
                await request.done.wait()
        finally:
            self.requests.pop(request_id, None)
        self.factory.stats.waited(kind, trio.current_time() - start, request.done.is_set())
        return request.done.is_set()

    def expire_later(self, kind: str, request_id: str, request: PendingRequest) -> None:
        """Forget a request once answered or after request_timeout (replies go to a callback)."""
        async def expire() -> None:
            await self.wait_answers(kind, request_id, request)
        self.factory.spawn(expire)

    def spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        self.factory.spawn(fn)

    def timed_out(self, what: str, request: PendingRequest, partial: list[Any]) -> ClusterTimeout:
        return ClusterTimeout(
            f"{self.namespace}: {what}: {request.expected - request.answers} of "
            f"{request.expected} other node(s) did not answer within {self.request_timeout} s",
            partial)

    async def gather_sockets(self, request_id: str, request: PendingRequest,
                             local: list[Member | RemoteSocketRecord]
                             ) -> list[Member | RemoteSocketRecord]:
        complete = await self.wait_answers("fetch_sockets", request_id, request)
        found = list(local)
        seen = {record.id for record in local}
        for value in request.items:
            record = remote_record(value)
            if record is not None and record.id not in seen:
                seen.add(record.id)
                found.append(record)
        if not complete:
            raise self.timed_out("fetch_sockets", request, found)
        return found

    # -- applying what other nodes asked for -----------------------------------------------
    async def apply_broadcast(self, data: list, target: wire.Target) -> None:
        await InMemoryAdapter.broadcast(self, Emission(self.namespace, data, "cluster"),
                                        options_local(target))

    async def apply_broadcast_with_ack(self, data: list, target: wire.Target, timeout: float,
                                       on_count: Callable[[int], None],
                                       on_ack: Callable[[Any], None]) -> None:
        """Broadcast to this node's sockets; relay the count, then each ack's first argument."""
        def ack(_socket_id: str, args: list) -> None:
            on_ack(args[0] if args else None)

        stop = await InMemoryAdapter.broadcast_with_ack(
            self, Emission(self.namespace, data, "cluster"), options_local(target), on_count, ack)

        async def close_later() -> None:
            try:
                await trio.sleep(timeout)
            finally:
                stop()
        self.spawn(close_later)

    async def apply_join(self, target: wire.Target, rooms: Any) -> None:
        await InMemoryAdapter.add_sockets(self, options_local(target), wire.room_list(rooms))

    async def apply_leave(self, target: wire.Target, rooms: Any) -> None:
        await InMemoryAdapter.del_sockets(self, options_local(target), wire.room_list(rooms))

    def apply_disconnect(self, target: wire.Target, close: bool) -> None:
        # Each disconnect awaits the socket's own sequence: not in the subscriber task.
        async def run() -> None:
            await InMemoryAdapter.disconnect_sockets(self, options_local(target), close)
        self.spawn(run)

    async def local_details(self, target: wire.Target) -> list[dict[str, Any]]:
        members = await InMemoryAdapter.fetch_sockets(self, options_local(target))
        return [m.owner.details() for m in members if isinstance(m, Member)]

    def apply_server_event(self, data: Any, reply: Callable[[list], None] | None) -> None:
        handler = self.context.on_server_event
        if handler is None or not isinstance(data, list) or not data:
            return
        namespace = self.namespace

        async def run() -> None:
            await handler(namespace, list(data), reply)
        self.spawn(run)


def first(args: list) -> Any:
    """The one value a server-side emit reply or an ack relays (the Node adapters' rule)."""
    return args[0] if args else None
