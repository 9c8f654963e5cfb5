"""A Socket: one client connected to one namespace."""

from __future__ import annotations

import dataclasses
import email.utils
import inspect
from collections.abc import Callable, Iterable
from types import CoroutineType
from typing import Any, Protocol

import trio

from .._errors import AckTimeout, EventRefused
from ..protocol import sio
from ..rooms.acks import AckRegistry
from ..rooms.adapter import BroadcastOptions, Emission, InMemoryAdapter, Member
from ..rooms.recovery import RECOVERABLE_REASONS, RestoredSession, SessionRecord
from ..transport.engine import EngineSession
from ..transport.outbox import OutgoingMessage
from .acks import PendingAck
from .broadcast import BroadcastOperator, check_event, room_names

Handler = Callable[..., Any]


class SocketNamespace(Protocol):
    """What a socket needs of its namespace."""

    name: str
    adapter: InMemoryAdapter
    acks: AckRegistry

    def adapters(self) -> tuple[InMemoryAdapter, ...]: ...

    def event_handlers(self, event: str) -> list[Handler]: ...

    def forget(self, socket: Socket) -> None: ...


class SocketConnection(Protocol):
    """What a socket needs of the connection that carries it."""

    session: EngineSession

    async def close_socket(self, socket: Socket, reason: str) -> None: ...

    async def disconnect_all(self, reason: str) -> None: ...


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
    secure: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The handshake as Socket.IO servers exchange it in a cluster."""
        return {"headers": self.headers, "time": email.utils.formatdate(self.time, usegmt=True),
                "address": self.address, "xdomain": "origin" in self.headers,
                "secure": self.secure, "issued": int(self.time * 1000), "url": self.url,
                "query": self.query, "auth": self.auth}


class Socket:
    """A client's connection to one namespace.

    Event handlers registered with :meth:`on` receive the event's arguments;
    what an async or sync handler returns becomes the acknowledgement when
    the client asked for one (a tuple is several ack arguments).
    """

    def __init__(self, namespace: SocketNamespace, connection: SocketConnection,
                 handshake: Handshake, restored: RestoredSession | None = None) -> None:
        self.namespace = namespace
        self.handshake = handshake
        self.connected = False
        self._connection = connection
        self._adapter = adapter = namespace.adapter
        # Connection state recovery: ``pid`` is None when it is off; a
        # restored socket has its old id, pid and data (rooms come back
        # when it registers) and ``recovered`` is True.
        self.recovered = restored is not None
        self._restored = restored
        pid: str | None = None
        if restored is not None:
            self.id = restored.sid
            pid = restored.pid
            self.data: dict[str, Any] = restored.data
        else:
            self.id = sio.new_id()
            self.data = {}
            if adapter.recovery is not None:
                pid = sio.new_id()
        self.pid = pid
        self._member = Member(self.id, namespace.name, connection.session, self, pid)
        self._handlers: dict[str, list[Handler]] | None = None
        self._any: list[Handler] | None = None
        self._acks: dict[int, PendingAck] | None = None
        self._uses: list[Handler] | None = None

    def __repr__(self) -> str:
        return f"<Socket {self.id} {self.namespace.name}>"

    @property
    def rooms(self) -> set[str]:
        """The rooms this socket is in, its own id included (a copy)."""
        return set(self._member.rooms)

    @property
    def transport(self) -> str:
        """"polling" or "websocket" (after an upgrade, "websocket")."""
        return self._connection.session.transport

    @property
    def client_id(self) -> str:
        """Its connection's id, shortened (the sockets of one connection share it)."""
        return self._connection.session.sid[:12]

    def details(self) -> dict[str, Any]:
        """What a cluster fetch reply says of this socket."""
        return {"id": self.id, "handshake": self.handshake.as_dict(),
                "rooms": sorted(self._member.rooms), "data": self.data}

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

    def use(self, middleware: Handler) -> Handler:
        """Add a packet middleware: ``fn(event, args)``, sync or async.

        It runs for each incoming event before any handler. Raising
        :class:`~roomd.EventRefused` refuses the event: no handler runs and,
        when the client asked for an ack, it gets ``{"error": message}``.
        """
        if self._uses is None:
            self._uses = []
        self._uses.append(middleware)
        return middleware

    async def dispatch(self, event: str, args: list, ack_id: int | None) -> None:
        """Run the handlers of one client event; send the ack when asked."""
        if self._uses:
            try:
                for middleware in self._uses:
                    await call_handler(middleware, event, args)
            except EventRefused as refusal:
                if ack_id is not None and self.connected:
                    await self.send_packet(sio.Packet(
                        sio.PacketType.ACK, self.namespace.name, [{"error": refusal.message}],
                        ack_id))
                return
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
        for handler in self.namespace.event_handlers(event):
            handled = True
            result = await call_handler(handler, self, *args)
        if ack_id is not None and handled and self.connected:
            if result is None:
                data: list = []
            elif isinstance(result, tuple):
                data = list(result)
            else:
                data = [result]
            await self.send_packet(sio.Packet(sio.PacketType.ACK, self.namespace.name, data,
                                              ack_id))

    async def emit_reserved(self, event: str, *args: Any) -> None:
        """Run the handlers of a reserved event (``disconnecting``, ``disconnect``)."""
        handlers = self._handlers.get(event) if self._handlers else None
        for handler in handlers or ():
            await call_handler(handler, *args)
        for handler in self.namespace.event_handlers(event):
            await call_handler(handler, self, *args)

    # -- sending --------------------------------------------------------
    async def send_packet(self, packet: sio.Packet) -> None:
        """Send a protocol packet to this client, in order with its events."""
        await self._adapter.send(self._member, OutgoingMessage(sio.encode(packet)))

    async def emit(self, event: str, *args: Any) -> None:
        """Send an event to this client; returns once it is queued.

        Raises TypeError when an argument cannot be encoded.
        """
        if not self.connected:
            return
        check_event(event)
        emission = Emission(self.namespace.name, [event, *args])
        if self.pid is not None:
            # Through the adapter's log (with an offset), so a recovery replays it.
            await self._adapter.broadcast(emission, BroadcastOptions(frozenset((self.id,))))
            return
        await self._adapter.send(self._member, emission.message(), emission)

    async def emit_with_ack(self, event: str, *args: Any, timeout: float = 30.0) -> Any:
        """Send an event and wait for the client's acknowledgement.

        Returns the ack's arguments (none -> None, one -> the value, several
        -> a tuple). Raises AckTimeout after ``timeout`` seconds, or at once
        when the socket disconnects first.
        """
        check_event(event)
        ack_id = self.namespace.acks.next_id()
        pending = PendingAck()
        if self._acks is None:
            self._acks = {}
        self._acks[ack_id] = pending
        try:
            emission = Emission(self.namespace.name, [event, *args])
            await self._adapter.send(self._member, emission.message(ack_id))
            if self._connection.session.closed:
                pending.abandon()
            with trio.move_on_after(timeout):
                await pending.done.wait()
            if not pending.done.is_set():
                self.namespace.acks.timeouts += 1
                raise AckTimeout(f"no acknowledgement of {event!r} within {timeout} s")
            if pending.disconnected:
                raise AckTimeout(f"socket disconnected before acknowledging {event!r}")
            return pending.value
        finally:
            self._acks.pop(ack_id, None)

    def on_ack(self, ack_id: int, args: list) -> None:
        """An ACK from the client: for this socket's own wait, or a broadcast's."""
        self.namespace.acks.received += 1
        pending = self._acks.get(ack_id) if self._acks else None
        if pending is not None:
            pending.resolve(args)
        else:
            self.namespace.acks.deliver(ack_id, self.id, args)

    # -- rooms ----------------------------------------------------------
    async def join(self, *rooms: str | Iterable[str]) -> None:
        """Join one or more rooms (names or lists of names)."""
        await self._adapter.add_all(self._member, room_names(rooms))

    async def leave(self, *rooms: str | Iterable[str]) -> None:
        """Leave one or more rooms; leaving a room one is not in is a no-op."""
        await self._adapter.delete(self._member, room_names(rooms))

    def _operator(self, rooms: frozenset[str] = frozenset()) -> BroadcastOperator:
        return BroadcastOperator(self.namespace.adapters,
                                 BroadcastOptions(rooms, frozenset((self.id,))))

    def to(self, *rooms: str | Iterable[str]) -> BroadcastOperator:
        """The rooms' sockets except this one."""
        return self._operator(room_names(rooms))

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
        await self.send_packet(sio.Packet(sio.PacketType.DISCONNECT, self.namespace.name))
        await self._connection.close_socket(self, "server namespace disconnect")

    async def registered(self) -> None:
        """Make the socket a member of the namespace (its own room included).

        A recovered socket rejoins its rooms and is sent what it missed. The
        socket counts as connected once this returns: the caller queues the
        CONNECT reply at once (no await between), so nothing emitted to a
        connected socket (a ``token_expired``, say) can overtake that reply.
        """
        restored, self._restored = self._restored, None
        await self._adapter.add_member(self._member, restored)
        self.connected = True

    async def give_back_session(self) -> None:
        """Keep a restored session again when the socket was not registered after all
        (a middleware refused it, or the connection closed meanwhile)."""
        restored, self._restored = self._restored, None
        if restored is not None:
            await self._adapter.persist_session(SessionRecord(
                restored.sid, restored.pid, restored.rooms, restored.data, restored.from_seq))

    def connect_reply(self) -> dict[str, Any]:
        """The CONNECT packet's data: the id, and the pid when recovery is on."""
        if self.pid is None:
            return {"sid": self.id}
        return {"sid": self.id, "pid": self.pid}

    async def closed(self, reason: str) -> None:
        """Run the disconnect sequence: disconnecting, leave all, disconnect."""
        try:
            await self.emit_reserved("disconnecting", reason)
        finally:
            self.connected = False
            persist = self.pid is not None and reason in RECOVERABLE_REASONS
            await self._adapter.delete_all(self._member, persist)
            self.namespace.forget(self)
            self.abandon_acks()
        try:
            await self.emit_reserved("disconnect", reason)
        finally:
            # Break the socket <-> member cycle (and handlers closing over the socket)
            # now, so the connection's memory does not wait for the cycle collector.
            self._member.owner = None  # type: ignore[assignment]
            self._handlers = self._any = None

    def abandon_acks(self) -> None:
        """Fail the acks this socket waits for: the connection is gone."""
        for pending in (self._acks or {}).values():
            pending.abandon()
