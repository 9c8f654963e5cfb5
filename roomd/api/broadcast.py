"""The broadcast operator: ``to`` / ``in_`` / ``except_`` / ``volatile`` chains.

An operator is immutable: each chained call returns a new one, so
``io.to("a")`` can be kept and reused. Its terminal operations (``emit``,
``fetch_sockets``, ...) go to the RoomManager.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import trio

from .._errors import AckTimeout, RoomdError
from ..protocol import sio
from ..rooms.manager import Target
from ..transport.outbox import OutgoingMessage

if TYPE_CHECKING:
    from .server import Server
    from .socket import Socket

RESERVED_EVENTS = frozenset({"connect", "connect_error", "disconnect", "disconnecting",
                             "newListener", "removeListener"})


def _room_names(rooms: tuple[str | Iterable[str], ...]) -> frozenset[str]:
    if len(rooms) == 1 and type(rooms[0]) is str:
        return frozenset(rooms)
    names: set[str] = set()
    for room in rooms:
        if isinstance(room, str):
            names.add(room)
        else:
            names.update(room)
    return frozenset(names)


def encode_event(namespace: str, event: str, args: tuple, ack_id: int | None = None
                 ) -> OutgoingMessage:
    """Encode an event once, for any number of recipients."""
    if not isinstance(event, str):
        raise TypeError("the event name must be a string")
    if event in RESERVED_EVENTS:
        raise RoomdError(f"{event!r} is a reserved event name")
    return OutgoingMessage(sio.encode_event(namespace, [event, *args], ack_id))


class BroadcastOperator:
    """A set of target sockets: namespaces, rooms, excluded rooms, flags.

    ``namespaces`` is a callable so a dynamic namespace family targets the
    children that exist when the operation runs.
    """

    __slots__ = ("_server", "_namespaces", "_rooms", "_except", "_volatile")

    def __init__(self, server: Server, namespaces: Callable[[], tuple[str, ...]],
                 rooms: frozenset[str] = frozenset(), except_rooms: frozenset[str] = frozenset(),
                 volatile: bool = False) -> None:
        self._server = server
        self._namespaces = namespaces
        self._rooms = rooms
        self._except = except_rooms
        self._volatile = volatile

    def _with(self, rooms: frozenset[str] | None = None, except_rooms: frozenset[str] | None = None,
              volatile: bool | None = None) -> BroadcastOperator:
        return BroadcastOperator(
            self._server, self._namespaces,
            self._rooms if rooms is None else rooms,
            self._except if except_rooms is None else except_rooms,
            self._volatile if volatile is None else volatile)

    def to(self, *rooms: str | Iterable[str]) -> BroadcastOperator:
        """Also target these rooms (a union: each socket gets the event once)."""
        return self._with(rooms=self._rooms | _room_names(rooms))

    in_ = to

    def except_(self, *rooms: str | Iterable[str]) -> BroadcastOperator:
        """Leave out the sockets of these rooms."""
        return self._with(except_rooms=self._except | _room_names(rooms))

    @property
    def volatile(self) -> BroadcastOperator:
        """Drop the event for sockets that are not ready to take it."""
        return self._with(volatile=True)

    def _target(self) -> Target:
        return Target(self._namespaces(), self._rooms, self._except)

    async def emit(self, event: str, *args: Any) -> None:
        """Send an event to every target socket; returns once it is queued."""
        await self._emit(event, args)

    async def _emit(self, event: str, args: tuple, source: str = "server",
                    count: bool = False) -> int:
        """Emit; with ``count``, wait for the manager and return the recipients."""
        recipients = 0
        for namespace in self._namespaces():
            message = encode_event(namespace, event, args)
            delivered = await self._server._manager.broadcast(
                Target((namespace,), self._rooms, self._except), message,
                volatile=self._volatile, tap=self._server._tap_record(event, args, source),
                wait=count)
            recipients += len(delivered or ())
        return recipients

    async def emit_with_ack(self, event: str, *args: Any, timeout: float) -> list[Any]:
        """Send an event to every target socket and gather their acks.

        Returns one reply per socket (a single ack argument as itself,
        several as a tuple). Raises AckTimeout, carrying the replies that
        did arrive, when some socket has not answered within ``timeout``.
        """
        server = self._server
        replies: list[Any] = []
        for namespace in self._namespaces():
            ack_id = server._next_ack_id()
            collector = server._broadcast_acks.open(ack_id)
            try:
                message = encode_event(namespace, event, args, ack_id)
                recipients = await server._manager.broadcast(
                    Target((namespace,), self._rooms, self._except), message,
                    volatile=self._volatile, tap=server._tap_record(event, args, "server"),
                    wait=True)
                collector.expect(member.id for member in recipients or ())
                with trio.move_on_after(timeout):
                    await collector.complete.wait()
                replies.extend(collector.replies.values())
                if not collector.complete.is_set():
                    raise AckTimeout(f"{len(collector.missing())} socket(s) did not acknowledge "
                                     f"{event!r} within {timeout} s", replies)
            finally:
                server._broadcast_acks.close(ack_id)
        return replies

    async def fetch_sockets(self) -> list[Socket]:
        """The target sockets of this process."""
        members = await self._server._manager.select(self._target())
        return [member.owner for member in members]

    async def sockets_join(self, *rooms: str | Iterable[str]) -> None:
        """Make every target socket join the rooms."""
        await self._server._manager.join_target(self._target(), _room_names(rooms))

    async def sockets_leave(self, *rooms: str | Iterable[str]) -> None:
        """Make every target socket leave the rooms."""
        await self._server._manager.leave_target(self._target(), _room_names(rooms))

    async def disconnect_sockets(self, close: bool = False) -> None:
        """Disconnect every target socket (and its whole connection with ``close``)."""
        for socket in await self.fetch_sockets():
            await socket.disconnect(close)
