"""The broadcast operator: ``to`` / ``in_`` / ``except_`` / ``volatile`` chains.

An operator is immutable: each chained call returns a new one, so
``io.to("a")`` can be kept and reused. It is built on the adapters of the
namespaces it covers, as Socket.IO's BroadcastOperator is built on the
namespace's adapter: with a cluster adapter every terminal operation
(``emit``, ``fetch_sockets``, ...) reaches the whole cluster.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import trio

from .._errors import AckTimeout, ClusterTimeout, RoomdError
from ..rooms.adapter import BroadcastOptions, Emission, InMemoryAdapter, RemoteSocketRecord
from .acks import AckCollector

RESERVED_EVENTS = frozenset({"connect", "connect_error", "disconnect", "disconnecting",
                             "newListener", "removeListener"})

Adapters = Callable[[], Iterable[InMemoryAdapter]]
_NO_OPTIONS = BroadcastOptions()


class FetchedSocket(Protocol):
    """What ``fetch_sockets`` returns: a local Socket or a RemoteSocket."""

    id: str
    data: Any

    @property
    def rooms(self) -> set[str]: ...

    async def emit(self, event: str, *args: Any) -> None: ...

    async def join(self, *rooms: str | Iterable[str]) -> None: ...

    async def leave(self, *rooms: str | Iterable[str]) -> None: ...

    async def disconnect(self, close: bool = False) -> None: ...


def room_names(rooms: tuple[str | Iterable[str], ...]) -> frozenset[str]:
    """Room arguments (names or iterables of names) as one set."""
    if len(rooms) == 1 and type(rooms[0]) is str:
        return frozenset(rooms)  # type: ignore[arg-type]
    names: set[str] = set()
    for room in rooms:
        if isinstance(room, str):
            names.add(room)
        else:
            names.update(room)
    return frozenset(names)


def check_event(event: Any) -> None:
    """Raise when ``event`` cannot be emitted (not a string, or reserved)."""
    if not isinstance(event, str):
        raise TypeError("the event name must be a string")
    if event in RESERVED_EVENTS:
        raise RoomdError(f"{event!r} is a reserved event name")


class BroadcastOperator:
    """A set of target sockets: rooms, excluded rooms and flags, over adapters.

    ``adapters`` is a callable so a dynamic namespace family targets the
    children that exist when the operation runs.
    """

    __slots__ = ("_adapters", "_opts")

    def __init__(self, adapters: Adapters, opts: BroadcastOptions = _NO_OPTIONS) -> None:
        self._adapters = adapters
        self._opts = opts

    def _with(self, **changes: Any) -> BroadcastOperator:
        return BroadcastOperator(self._adapters, dataclasses.replace(self._opts, **changes))

    def to(self, *rooms: str | Iterable[str]) -> BroadcastOperator:
        """Also target these rooms (a union: each socket gets the event once)."""
        return self._with(rooms=self._opts.rooms | room_names(rooms))

    in_ = to

    def except_(self, *rooms: str | Iterable[str]) -> BroadcastOperator:
        """Leave out the sockets of these rooms."""
        return self._with(except_rooms=self._opts.except_rooms | room_names(rooms))

    @property
    def volatile(self) -> BroadcastOperator:
        """Drop the event for sockets that are not ready to take it."""
        return self._with(volatile=True)

    @property
    def local(self) -> BroadcastOperator:
        """Only the sockets of this node, even with a cluster adapter."""
        return self._with(local=True)

    async def emit(self, event: str, *args: Any) -> None:
        """Send an event to every target socket; returns once it is queued.

        Raises TypeError when an argument cannot be encoded, before anything
        is sent.
        """
        check_event(event)
        opts = self._opts
        for adapter in self._adapters():
            await adapter.broadcast(Emission(adapter.namespace, [event, *args]), opts)

    async def emit_counted(self, event: str, *args: Any, source: str = "server") -> int:
        """Emit, and return how many sockets of this node it was queued for.

        ``source`` is what ``roomd tail`` shows as the emitter.
        """
        check_event(event)
        recipients = 0
        for adapter in self._adapters():
            emission = Emission(adapter.namespace, [event, *args], source)
            recipients += await adapter.broadcast_count(emission, self._opts)
        return recipients

    async def emit_with_ack(self, event: str, *args: Any, timeout: float) -> list[Any]:
        """Send an event to every target socket and gather their acks.

        Returns one reply per socket (a single ack argument as itself,
        several as a tuple). Raises AckTimeout, carrying the replies that
        did arrive, when some socket (or node) has not answered within
        ``timeout`` seconds.
        """
        check_event(event)
        replies: list[Any] = []
        deadline = trio.current_time() + timeout
        for adapter in self._adapters():
            collector = AckCollector(await adapter.server_count())
            emission = Emission(adapter.namespace, [event, *args])
            stop = await adapter.broadcast_with_ack(emission, self._opts, collector.add_count,
                                                    collector.add_reply)
            try:
                with trio.move_on_at(deadline):
                    await collector.complete.wait()
            finally:
                stop()
            replies.extend(collector.replies.values())
            if not collector.complete.is_set():
                adapter.context.acks.timeouts += 1
                raise AckTimeout(f"{collector.missing()} socket(s) did not acknowledge "
                                 f"{event!r} within {timeout} s", replies)
        return replies

    async def fetch_sockets(self) -> list[FetchedSocket]:
        """The target sockets: this node's as Socket, other nodes' as RemoteSocket."""
        found: list[FetchedSocket] = []
        for adapter in self._adapters():
            try:
                records = await adapter.fetch_sockets(self._opts)
            except ClusterTimeout as exc:
                # Some node did not answer: the partial result, as sockets too.
                exc.replies = found + [_fetched(adapter, r) for r in exc.replies]
                raise
            found.extend(_fetched(adapter, record) for record in records)
        return found

    async def sockets_join(self, *rooms: str | Iterable[str]) -> None:
        """Make every target socket join the rooms."""
        names = room_names(rooms)
        for adapter in self._adapters():
            await adapter.add_sockets(self._opts, names)

    async def sockets_leave(self, *rooms: str | Iterable[str]) -> None:
        """Make every target socket leave the rooms."""
        names = room_names(rooms)
        for adapter in self._adapters():
            await adapter.del_sockets(self._opts, names)

    async def disconnect_sockets(self, close: bool = False) -> None:
        """Disconnect every target socket (and its whole connection with ``close``)."""
        for adapter in self._adapters():
            await adapter.disconnect_sockets(self._opts, close)


def _fetched(adapter: InMemoryAdapter, record: Any) -> FetchedSocket:
    """A local Member's Socket, or a RemoteSocket for another node's socket."""
    if isinstance(record, RemoteSocketRecord):
        return RemoteSocket(adapter, record)
    return record.owner


class RemoteSocket:
    """A socket connected to another node of the cluster.

    It has the socket's id, rooms, data and handshake as they were when it
    was fetched; ``emit``, ``join``, ``leave`` and ``disconnect`` act on it
    through the cluster.
    """

    __slots__ = ("id", "_rooms", "data", "handshake", "_operator")

    def __init__(self, adapter: InMemoryAdapter, record: RemoteSocketRecord) -> None:
        self.id = record.id
        self._rooms = record.rooms
        self.data = record.data
        self.handshake = record.handshake
        self._operator = BroadcastOperator(lambda: (adapter,),
                                           BroadcastOptions(rooms=frozenset((record.id,))))

    def __repr__(self) -> str:
        return f"<RemoteSocket {self.id}>"

    @property
    def rooms(self) -> set[str]:
        """The socket's rooms when it was fetched (a copy)."""
        return set(self._rooms)

    async def emit(self, event: str, *args: Any) -> None:
        await self._operator.emit(event, *args)

    async def join(self, *rooms: str | Iterable[str]) -> None:
        await self._operator.sockets_join(*rooms)

    async def leave(self, *rooms: str | Iterable[str]) -> None:
        await self._operator.sockets_leave(*rooms)

    async def disconnect(self, close: bool = False) -> None:
        await self._operator.disconnect_sockets(close)
