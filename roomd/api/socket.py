"""A Socket: one client connected to one namespace."""

from __future__ import annotations

import dataclasses
import inspect
import secrets
from collections.abc import Callable, Iterable
from types import CoroutineType
from typing import TYPE_CHECKING, Any

import trio

from .._errors import AckTimeout
from ..protocol import sio
from ..rooms.manager import Member
from ..transport.outbox import OutgoingMessage
from .acks import PendingAck
from .broadcast import BroadcastOperator, _room_names, encode_event

if TYPE_CHECKING:
    from .connection import Connection
    from .namespace import Namespace

Handler = Callable[..., Any]


async def call_handler(handler: Handler, *args: Any) -> Any:
    """Call a sync or async handler and return its result."""
    result = handler(*args)
    if type(result) is CoroutineType or inspect.isawaitable(result):
        result = await result
    return result


@dataclasses.dataclass(frozen=True)
class Handshake:
    """What the client sent when it connected to the namespace."""

    auth: Any
    headers: dict[str, str]
    query: dict[str, str]
    address: str
    time: float
    url: str


class Socket:
    """A client's connection to one namespace.

    Event handlers registered with :meth:`on` receive the event's arguments;
    what an async or sync handler returns becomes the acknowledgement when
    the client asked for one (a tuple is several ack arguments). A handler
    that raises is logged and closes this client's whole connection.
    """

    def __init__(self, namespace: Namespace, connection: Connection, handshake: Handshake) -> None:
        self.id = secrets.token_urlsafe(15)
        self.namespace = namespace
        self.handshake = handshake
        self.data: dict[str, Any] = {}
        self.connected = False
        self._connection = connection
        self._server = namespace.server
        self._member = Member(self.id, namespace.name, connection.session, self)
        self._handlers: dict[str, list[Handler]] | None = None
        self._any: list[Handler] | None = None
        self._acks: dict[int, PendingAck] | None = None

    def __repr__(self) -> str:
        return f"<Socket {self.id} {self.namespace.name}>"

    @property
    def rooms(self) -> set[str]:
        """The rooms this socket is in, its own id included (a copy)."""
        return set(self._member.rooms)

    @property
    def transport(self) -> str:
        return self._connection.session.transport

    # -- handlers -------------------------------------------------------
    def on(self, event: str, handler: Handler | None = None) -> Any:
        """Register a handler for an event (usable as a decorator).

        ``disconnecting`` and ``disconnect`` handlers get the reason.
        """
        def register(fn: Handler) -> Handler:
            if self._handlers is None:
                self._handlers = {}
            self._handlers.setdefault(event, []).append(fn)
            return fn
        return register if handler is None else register(handler)

    def on_any(self, handler: Handler) -> Handler:
        """Register a catch-all handler, called as ``handler(event, *args)``."""
        if self._any is None:
            self._any = []
        self._any.append(handler)
        return handler

    async def _dispatch(self, event: str, args: list, ack_id: int | None) -> None:
        if self._any:
            for handler in self._any:
                await call_handler(handler, event, *args)
        handlers = self._handlers.get(event) if self._handlers else None
        result: Any = None
        handled = False
        if handlers:
            handled = True
            for handler in handlers:
                result = await call_handler(handler, *args)
        for handler in self.namespace._event_handlers(event):
            handled = True
            result = await call_handler(handler, self, *args)
        if ack_id is not None and handled and self.connected:
            if result is None:
                data: list = []
            elif isinstance(result, tuple):
                data = list(result)
            else:
                data = [result]
            await self._send_packet(sio.Packet(sio.PacketType.ACK, self.namespace.name, data,
                                                ack_id))

    async def _emit_reserved(self, event: str, *args: Any) -> None:
        handlers = self._handlers.get(event) if self._handlers else None
        for handler in handlers or ():
            await call_handler(handler, *args)
        for handler in self.namespace._event_handlers(event):
            await call_handler(handler, self, *args)

    # -- sending --------------------------------------------------------
    async def _send_packet(self, packet: sio.Packet) -> None:
        message = OutgoingMessage(sio.encode(packet))
        await self._server._manager.deliver(self._member, message)

    async def emit(self, event: str, *args: Any) -> None:
        """Send an event to this client; returns once it is queued."""
        if not self.connected:
            return
        message = encode_event(self.namespace.name, event, args)
        await self._server._manager.deliver(self._member, message,
                                            tap=self._server._tap_record(event, args, "server"))

    async def emit_with_ack(self, event: str, *args: Any, timeout: float = 30.0) -> Any:
        """Send an event and wait for the client's acknowledgement.

        Returns the ack's arguments (none -> None, one -> the value, several
        -> a tuple). Raises AckTimeout after ``timeout`` seconds, or at once
        when the socket disconnects first.
        """
        ack_id = self._server._next_ack_id()
        pending = PendingAck()
        if self._acks is None:
            self._acks = {}
        self._acks[ack_id] = pending
        try:
            message = encode_event(self.namespace.name, event, args, ack_id)
            await self._server._manager.deliver(self._member, message)
            if self._connection.session.closed:
                pending.value = _DISCONNECTED
                pending.done.set()
            with trio.move_on_after(timeout):
                await pending.done.wait()
            if not pending.done.is_set():
                raise AckTimeout(f"no acknowledgement of {event!r} within {timeout} s")
            if pending.value is _DISCONNECTED:
                raise AckTimeout(f"socket disconnected before acknowledging {event!r}")
            return pending.value
        finally:
            self._acks.pop(ack_id, None)

    def _on_ack(self, ack_id: int, args: list) -> None:
        pending = self._acks.get(ack_id) if self._acks else None
        if pending is not None:
            pending.resolve(args)
        else:
            self._server._broadcast_acks.deliver(ack_id, self.id, args)

    # -- rooms ----------------------------------------------------------
    async def join(self, *rooms: str | Iterable[str]) -> None:
        """Join one or more rooms (names or lists of names)."""
        await self._server._manager.join(self._member, _room_names(rooms))

    async def leave(self, *rooms: str | Iterable[str]) -> None:
        """Leave one or more rooms; leaving a room one is not in is a no-op."""
        await self._server._manager.leave(self._member, _room_names(rooms))

    def _operator(self) -> BroadcastOperator:
        return BroadcastOperator(self._server, self.namespace._target_names,
                                 except_rooms=frozenset((self.id,)))

    def to(self, *rooms: str | Iterable[str]) -> BroadcastOperator:
        """The rooms' sockets except this one."""
        return BroadcastOperator(self._server, self.namespace._target_names,
                                 _room_names(rooms), frozenset((self.id,)))

    in_ = to

    def except_(self, *rooms: str | Iterable[str]) -> BroadcastOperator:
        return self._operator().except_(*rooms)

    @property
    def broadcast(self) -> BroadcastOperator:
        """Every socket of the namespace except this one."""
        return self._operator()

    # -- lifecycle ------------------------------------------------------
    async def disconnect(self, close: bool = False) -> None:
        """Disconnect from this namespace; with ``close``, the whole connection."""
        if close:
            await self._connection.disconnect_all("server namespace disconnect")
            return
        if not self.connected:
            return
        await self._send_packet(sio.Packet(sio.PacketType.DISCONNECT, self.namespace.name))
        await self._connection.close_socket(self, "server namespace disconnect")

    async def _closed(self, reason: str) -> None:
        """Run the disconnect sequence: disconnecting, leave all, disconnect."""
        try:
            await self._emit_reserved("disconnecting", reason)
        finally:
            self.connected = False
            await self._server._manager.remove(self._member)
            self.namespace._sockets.pop(self.id, None)
            self._abandon_acks()
        await self._emit_reserved("disconnect", reason)

    def _abandon_acks(self) -> None:
        """Fail the acks this socket waits for: the connection is gone."""
        for pending in (self._acks or {}).values():
            if not pending.done.is_set():
                pending.value = _DISCONNECTED
                pending.done.set()


_DISCONNECTED = object()
