"""One client connection at the Socket.IO level: namespaces over one session.

The task reading the transport decodes each message (:meth:`Connection.on_message`).
ACKs are resolved there at once, so a handler may await an acknowledgement
from its own client. Over a WebSocket, an EVENT with nothing queued ahead of
it and no handler running is handled right there, in the reader's task
(:meth:`Connection._run_inline`): a handler that does not wait (a broadcast,
usually) then costs no task switch. One that waits goes on in that task while
the read loop is handed to a new one (``transport.engine``'s ``hand_off``).
Every other packet, and every packet of a long-polling session (whose
handler would hold the POST's answer), is queued and handled by worker
tasks that exist only while there is work: an idle connection costs no task.
A worker that handled an EVENT stays parked for about a second
(``WORKER_LINGER``) before it exits, so a client that keeps emitting wakes
it instead of paying for a new task per event (docs/performance.md, issue
12); a connection that only connected or went quiet holds none.

Ordering: packets are taken from the queue in arrival order, and a handler
runs until its first ``await`` before the next packet is taken, so handlers
start in arrival order (as in Socket.IO). A handler that awaits does not
hold up the next event: while every worker is inside a handler, another
worker is started, up to ``max_concurrent_handlers`` per connection (a
handler left waiting by a hand-off counts as one); beyond that the reader
stops reading (the client's TCP window fills) instead of queueing without
bound. With ``max_concurrent_handlers=1`` each handler finishes before the
next starts.

A malformed packet closes this connection only. A handler's exception is
logged with its traceback and sends no ack; the connection stays, unless
the server was made with ``disconnect_on_handler_error``.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

import outcome
import trio

from .._errors import ConnectRefused, ProtocolError
from ..protocol import sio
from ..rooms.adapter import InMemoryAdapter
from ..rooms.manager import RoomManager
from ..rooms.recovery import RestoredSession
from ..transport.engine import EngineSession
from ..transport.outbox import OutgoingMessage
from ..transport.timers import Timers
from .broadcast import RESERVED_EVENTS
from .namespace import Namespace
from .socket import Handshake, Socket

logger = logging.getLogger("roomd.api")

CLEANUP_TIMEOUT = 10.0
QUEUE_LIMIT = 64
# Seconds an idle worker stays parked after an EVENT (it exits between one and
# two of them after the last packet).
WORKER_LINGER = 1.0
# The queue also holds at most maxPayload bytes of wire data (any one packet
# is let in when the queue is empty): docs/limits.md counts on it.


_NO_QUEUE: collections.deque = collections.deque(maxlen=0)  # shared, always empty


@types.coroutine
def _resume(coro: Coroutine[Any, Any, None], trap: Any) -> Generator[Any, Any, None]:
    """Go on driving ``coro``, which yielded ``trap``, in the current task.

    Each trap goes to trio as this task's, and what trio sends back (or
    throws: a Cancelled, a KeyboardInterrupt) goes into ``coro``.
    """
    while True:
        try:
            value = yield trap
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                trap = coro.throw(exc)
            except StopIteration:
                return
        else:
            try:
                trap = coro.send(value)
            except StopIteration:
                return


class ConnectionCounters:
    """Counts kept by every connection of a server, read at scrape time."""

    __slots__ = ("events_received", "handler_errors", "connect_errors")

    def __init__(self) -> None:
        self.events_received = 0  # client EVENTs
        self.handler_errors = 0  # handlers that raised (each is logged)
        self.connect_errors = 0  # CONNECT_ERROR replies (unknown namespace, middleware)


class IdleWorkers:
    """Connections whose worker is parked after an EVENT, and the sweep that ends them.

    One timer entry serves every connection: each sweep, every
    ``WORKER_LINGER`` seconds while anything is parked, ends the workers that
    were already parked at the sweep before (so a worker lingers between one
    and two periods after its last packet).
    """

    def __init__(self, timers: Timers) -> None:
        self._timers = timers
        self._parked: dict[Connection, int] = {}  # -> the sweep count when it parked
        self._sweeps = 0
        self._scheduled = False

    def add(self, connection: Connection) -> None:
        self._parked[connection] = self._sweeps
        if not self._scheduled:
            self._scheduled = True
            self._timers.call_later(WORKER_LINGER, self._sweep)

    def discard(self, connection: Connection) -> None:
        self._parked.pop(connection, None)

    def _sweep(self) -> None:
        self._sweeps += 1
        expired = [c for c, parked_at in self._parked.items() if parked_at < self._sweeps - 1]
        for connection in expired:
            connection.end_idle_worker()  # discards it
        self._scheduled = bool(self._parked)
        if self._scheduled:
            self._timers.call_later(WORKER_LINGER, self._sweep)


@dataclasses.dataclass(frozen=True)
class ConnectionContext:
    """What every connection of a server is handed.

    ``resolve_namespace(name, auth)`` finds (or, for a dynamic family,
    creates) a namespace, None when there is none; ``spawn`` starts a task
    in the server's nursery; ``live`` holds the open connections by sid.
    """

    resolve_namespace: Callable[[str, Any], Awaitable[Namespace | None]]
    spawn: Callable[[Callable[[], Awaitable[None]]], None]
    live: dict[str, Connection]
    timers: Timers
    connect_timeout: float
    max_concurrent_handlers: int = 16
    disconnect_on_handler_error: bool = False
    counters: ConnectionCounters = dataclasses.field(default_factory=ConnectionCounters)
    manager: RoomManager | None = None  # told of each client message (RoomManager.new_turn)
    idle_workers: IdleWorkers | None = None  # None: a worker exits when its queue is empty


async def restore_session(adapter: InMemoryAdapter, auth: Any) -> RestoredSession | None:
    """The session a CONNECT's ``auth {pid, offset}`` asks back, if it can be recovered."""
    if adapter.recovery is None or not isinstance(auth, dict):
        return None
    pid = auth.get("pid")
    if not isinstance(pid, str):
        return None
    offset = auth.get("offset")
    return await adapter.restore_session(pid, offset if isinstance(offset, str) else None)


class Connection:
    """The namespaces one Engine.IO session is connected to (its SessionHandler)."""

    def __init__(self, session: EngineSession, context: ConnectionContext) -> None:
        self.context = context
        self.session = session
        self.sockets: dict[str, Socket] = {}
        self.decoder = sio.Decoder(max_bytes=session.engine.options.max_payload)
        self.ever_connected = False
        # Made for the first packet and dropped when the last worker is done: an idle
        # connection holds no queue (600 bytes each; docs/performance.md, issue 12).
        self._queue: collections.deque[tuple[sio.Packet, int]] = _NO_QUEUE
        # Wire bytes of the client's input held here (counted in the engine's budget).
        self._queued_bytes = 0
        self._handling_bytes = 0
        self._incoming = 0  # of the binary packet being decoded (its attachments)
        self._queue_bytes = session.engine.options.max_payload
        self._workers = 0
        self._starting = 0  # workers started or woken that have not taken a packet yet
        self._parked: trio.lowlevel.Task | None = None  # a worker waiting for packets
        self._room: trio.Event | None = None
        self._cleaned = False
        context.live[session.sid] = self
        context.timers.call_later_weak(context.connect_timeout, self.check_connected)

    async def on_message(self, data: str | bytes,
                         hand_off: Callable[[], None] | None = None) -> None:
        """Decode one message; raises ProtocolError when it is malformed.

        With ``hand_off`` (the WebSocket reader), an EVENT that nothing is ahead of
        runs here, in the reader's task (``_run_inline``).
        """
        if hand_off is None:
            manager = self.context.manager
            if manager is not None:
                manager.new_turn()  # the reader was woken: the scheduler ran since the last cast
        packet = self.decoder.feed(data)
        if packet is None:
            self._incoming += len(data)
            return
        size, self._incoming = self._incoming + len(data), 0
        kind = packet.type
        if kind is sio.PacketType.ACK or kind is sio.PacketType.BINARY_ACK:
            socket = self.sockets.get(packet.namespace)
            if socket is not None and packet.id is not None:
                socket.on_ack(packet.id, packet.data)
            return
        if kind is sio.PacketType.EVENT or kind is sio.PacketType.BINARY_EVENT:
            self.context.counters.events_received += 1
            name = packet.data[0]
            if name in RESERVED_EVENTS:
                raise ProtocolError(f"{name!r} is a reserved event name")
        elif kind is sio.PacketType.CONNECT_ERROR:
            raise ProtocolError("a client may not send CONNECT_ERROR")
        elif kind is sio.PacketType.DISCONNECT:
            # No ack can come any more: a handler awaiting one learns it now.
            socket = self.sockets.get(packet.namespace)
            if socket is not None:
                socket.abandon_acks()
        if (hand_off is not None and not self._queue
                and self._workers == (self._parked is not None)  # none inside a handler
                and (kind is sio.PacketType.EVENT or kind is sio.PacketType.BINARY_EVENT)):
            # Nothing queued, no handler running: this one may start at once (arrival order).
            await self._run_inline(packet, size, hand_off)
            return
        while (len(self._queue) >= QUEUE_LIMIT or self._queue and
               self._queued_bytes + size > self._queue_bytes) and not self.session.closed:
            # Backpressure: the reader waits, so the client's TCP window fills.
            self._room = self._room or trio.Event()
            await self._room.wait()
        if self.session.closed:
            return
        if self._queue is _NO_QUEUE:
            self._queue = collections.deque()
        self._queue.append((packet, size))
        self._queued_bytes += size
        if self._starting:
            return  # a worker is about to take it
        if self._parked is not None:
            self._wake_worker(True)
        elif (self._workers < self.context.max_concurrent_handlers
                and (not self._workers or kind is sio.PacketType.EVENT
                     or kind is sio.PacketType.BINARY_EVENT)):
            # Every worker is inside a handler (or there is none): one more.
            self._start_worker()

    def new_read(self) -> None:
        """A WebSocket read brought messages: a new turn of the RoomManager.

        Per read, not per message: the handlers of one read run here one after
        the other without yielding, so only the first one's cast runs at once and
        the rest go to the manager as one backlog (one write per socket, as when a
        worker handled them).
        """
        manager = self.context.manager
        if manager is not None:
            manager.new_turn()

    def held_bytes(self) -> int:
        """Wire bytes of this client's input held here: a partial binary packet, the
        queue, the packets being handled."""
        return self._incoming + self._queued_bytes + self._handling_bytes

    def on_close(self, reason: str) -> None:
        self.decoder.reset()  # a pending binary packet's attachments go at once
        self._incoming = 0
        for socket in self.sockets.values():
            socket.abandon_acks()
        # Events not started are dropped; a namespace disconnect the client
        # sent before it went still counts as one (its reason says so).
        left = [p.namespace for p, _ in self._queue if p.type is sio.PacketType.DISCONNECT]
        self._queue.clear()
        self._queued_bytes = 0
        if self._room is not None:
            self._room.set()
        if self._parked is not None:
            self._wake_worker(False)
        if not self._cleaned:
            self._cleaned = True
            self.context.spawn(functools.partial(self._cleanup, left))

    def _start_worker(self) -> None:
        self._workers += 1
        self._starting += 1
        self.context.spawn(self._work)

    def _wake_worker(self, go_on: bool) -> None:
        task, self._parked = self._parked, None
        assert task is not None and self.context.idle_workers is not None
        self.context.idle_workers.discard(self)
        if go_on:
            self._starting += 1
        trio.lowlevel.reschedule(task, outcome.Value(go_on))

    def end_idle_worker(self) -> None:
        """The worker parked here has lingered long enough: it exits."""
        if self._parked is not None:
            self._wake_worker(False)

    async def _park(self) -> bool:
        """Wait for the next packet; False when the sweep or the close came first."""
        idle_workers = self.context.idle_workers
        if idle_workers is None or self._parked is not None:
            return False  # lingering is off, or another worker already waits
        self._parked = trio.lowlevel.current_task()
        idle_workers.add(self)

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._parked = None
            idle_workers.discard(self)
            return trio.lowlevel.Abort.SUCCEEDED

        go_on: bool = await trio.lowlevel.wait_task_rescheduled(abort)
        return go_on

    async def _run_inline(self, packet: sio.Packet, size: int,
                          hand_off: Callable[[], None]) -> None:
        """Run an EVENT's handlers in the reader's task: no task switch when they do not wait.

        The handler coroutine is driven by hand. Most handlers (a broadcast: the
        RoomManager runs it at once when idle) finish without yielding to trio,
        which saves the hop to a worker task (docs/performance.md, issue 12). One
        that yields must go on in this task (a trio trap names its task): the
        reader hands its read loop to a new task, and this one, counted as a
        worker inside a handler, drives the handler to its end, handles what was
        queued meanwhile (in order) and leaves.
        """
        session = self.session
        # A close while the handler runs must not cancel it (it would not cancel a
        # worker): the reader's scope is out of the session's reach meanwhile.
        scope, session.reader_scope = session.reader_scope, None
        self._handling_bytes += size
        coro = self._handle_one(packet, size)
        try:
            trap = coro.send(None)
        except StopIteration:
            if session.reader_scope is None:
                session.reader_scope = scope
                if session.closed and scope is not None:
                    scope.cancel()
            return
        except BaseException:
            session.reader_scope = scope
            raise
        self._workers += 1
        try:
            hand_off()  # sets the follower's scope as the session's reader_scope
            await _resume(coro, trap)
            await self._take_queue()
        finally:
            self._done_working()

    async def _work(self) -> None:
        session = self.session
        self._starting -= 1
        try:
            while True:
                handled_event = await self._take_queue()
                # Linger (one parked worker at most) when the client is emitting.
                if not handled_event or session.closed or not await self._park():
                    break
                self._starting -= 1
        finally:
            self._done_working()

    def _done_working(self) -> None:
        self._workers -= 1
        if not self._workers and not self._queue:
            self._queue = _NO_QUEUE

    async def _take_queue(self) -> bool:
        """Handle the queued packets in order; True when one was an EVENT."""
        session = self.session
        queue = self._queue
        handled_event = False
        while queue and not session.closed:
            packet, size = queue.popleft()
            self._queued_bytes -= size
            self._handling_bytes += size  # still held (and counted) until handled
            if self._room is not None and (len(queue) < QUEUE_LIMIT // 2 or not queue):
                self._room.set()
                self._room = None
            handled_event = handled_event or packet.type is sio.PacketType.EVENT
            await self._handle_one(packet, size)
        session.account_input()  # what was handled leaves the budget
        return handled_event

    async def _handle_one(self, packet: sio.Packet, size: int) -> None:
        """Handle one packet whose ``size`` bytes are counted in ``_handling_bytes``."""
        session = self.session
        try:
            await self.handle(packet)
        except ProtocolError as exc:
            session.engine.ratelog.note("malformed packet", session.request.address,
                                        f"session {session.sid}: {exc}")
            session.close("parse error")
        except Exception:
            self._handler_failed(packet)
        finally:
            self._handling_bytes -= size

    def _handler_failed(self, packet: sio.Packet) -> None:
        self.context.counters.handler_errors += 1
        event = packet.data[0] if packet.data and isinstance(packet.data, list) else None
        logger.exception("session %s: %s handler of %s failed", self.session.sid,
                         repr(event) if event is not None else packet.type.name,
                         packet.namespace)
        if self.context.disconnect_on_handler_error:
            self.session.close("server error")

    async def _cleanup(self, left: list[str]) -> None:
        """Run every socket's disconnect sequence once the session is closed.

        ``left`` are the namespaces the client disconnected from in packets
        still queued. Handlers still running are not waited for.
        """
        reason = self.session.close_reason
        # One scope: shielded from the server's cancellation, cancelled by its own
        # deadline (each scope costs microseconds, times every closed connection).
        with trio.CancelScope(shield=True,
                              deadline=trio.current_time() + CLEANUP_TIMEOUT):
            for name in left:
                socket = self.sockets.get(name)
                if socket is not None:
                    await self.close_socket(socket, "client namespace disconnect")
            for socket in list(self.sockets.values()):
                try:
                    await self.close_socket(socket, reason)
                except Exception:
                    logger.exception("socket %s: disconnect handler failed", socket.id)
        self.context.live.pop(self.session.sid, None)

    async def _send(self, packet: sio.Packet) -> None:
        # CONNECT_ERROR: there is no socket, so nothing to keep in order with.
        self.context.counters.connect_errors += 1
        message = OutgoingMessage(sio.encode(packet))
        self.session.send(message)

    async def handle(self, packet: sio.Packet) -> None:
        """Handle a queued packet (CONNECT, EVENT, DISCONNECT), in the worker."""
        kind = packet.type
        if kind is sio.PacketType.EVENT or kind is sio.PacketType.BINARY_EVENT:
            socket = self.sockets.get(packet.namespace)
            if socket is None:
                return  # Socket.IO ignores packets for namespaces not joined
            args = packet.data
            await socket.dispatch(args[0], args[1:], packet.id)
        elif kind is sio.PacketType.CONNECT:
            await self._connect(packet.namespace, packet.data)
        elif kind is sio.PacketType.DISCONNECT:
            socket = self.sockets.get(packet.namespace)
            if socket is not None:
                await self.close_socket(socket, "client namespace disconnect")
        else:
            raise ProtocolError(f"a client may not send {kind.name}")

    async def _connect(self, name: str, auth: Any) -> None:
        if name in self.sockets:
            session = self.session
            session.engine.ratelog.note("duplicate CONNECT", session.request.address,
                                        f"session {session.sid}: to {name}, ignored")
            return
        namespace = await self.context.resolve_namespace(name, auth)
        if namespace is None:
            await self._send(sio.Packet(sio.PacketType.CONNECT_ERROR, name,
                                         {"message": "Invalid namespace"}))
            return
        request = self.session.request
        handshake = Handshake(auth=auth if auth is not None else {}, headers=request.headers,
                              query=request.query, address=request.address, time=request.time,
                              url=request.url, secure=request.secure)
        recovery = namespace.adapter.recovery
        restored = await restore_session(namespace.adapter, auth)
        socket = Socket(namespace, self, handshake, restored)
        try:
            if restored is None or recovery is None or not recovery.skip_middlewares:
                await namespace.run_middlewares(socket)
        except ConnectRefused as refusal:
            data: dict[str, Any] = {"message": refusal.message}
            if refusal.data is not None:
                data["data"] = refusal.data
            await self._send(sio.Packet(sio.PacketType.CONNECT_ERROR, name, data))
            await socket.give_back_session()
            return
        except Exception as exc:
            if isinstance(exc, trio.Cancelled):
                raise
            logger.info("namespace %s: middleware refused %s: %s", name, self.session.sid, exc)
            await self._send(sio.Packet(sio.PacketType.CONNECT_ERROR, name,
                                         {"message": str(exc) or type(exc).__name__}))
            await socket.give_back_session()
            return
        if self.session.closed:
            await socket.give_back_session()
            return
        self.ever_connected = True
        self.sockets[name] = socket
        manager = self.context.manager
        if manager is not None:
            # A new turn: this task did not cast since it last yielded, so its CONNECT
            # reply may run at once instead of waking the manager (whose backlog would
            # then make the next connections' add_member wait for it too).
            manager.new_turn()
        await socket.registered()
        # no checkpoint between these two: see Socket.registered
        await socket.send_packet(sio.Packet(sio.PacketType.CONNECT, name, socket.connect_reply()))
        await namespace.connected(socket)

    async def close_socket(self, socket: Socket, reason: str) -> None:
        if self.sockets.get(socket.namespace.name) is not socket:
            return
        del self.sockets[socket.namespace.name]
        await socket.closed(reason)

    async def disconnect_all(self, reason: str) -> None:
        """Disconnect every namespace, then close the session.

        Each socket gets a Socket.IO DISCONNECT first: the client learns the
        server meant it ("io server disconnect") and does not reconnect.
        """
        for socket in list(self.sockets.values()):
            await socket.send_packet(sio.Packet(sio.PacketType.DISCONNECT,
                                                  socket.namespace.name))
            await self.close_socket(socket, reason)
        self.session.close("forced close")

    async def close(self, reason: str) -> None:
        """Close every socket with ``reason``, then the session, with no DISCONNECT.

        The server going away (``Server.shutdown``), as Node's ``io.close()``:
        the disconnect handlers run with ``reason``, and the client sees only
        its transport close ("transport close"), so it reconnects with its
        backoff, to this server's successor.
        """
        for socket in list(self.sockets.values()):
            await self.close_socket(socket, reason)
        self.session.close(reason)

    def check_connected(self) -> None:
        """Timer callback: close a session that never connected a namespace."""
        session = self.session
        if not self.ever_connected and not session.closed:
            session.engine.ratelog.note("no CONNECT within connect_timeout",
                                        session.request.address, f"session {session.sid}")
            session.close("connect timeout")
