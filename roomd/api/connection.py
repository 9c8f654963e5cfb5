"""One client connection at the Socket.IO level: namespaces over one session.

The task reading the transport decodes each message (:meth:`Connection.on_message`).
ACKs are resolved there at once, so a handler may await an acknowledgement
from its own client. Every other packet is queued and handled, in order, by
one worker task that exists only while there is work: an idle connection
costs no task. A malformed packet or a handler's exception is logged and
closes this connection only.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .._errors import ConnectRefused, ProtocolError
from ..protocol import sio
from ..transport.engine import EngineSession
from ..transport.outbox import OutgoingMessage
from ..transport.timers import Timers
from .broadcast import RESERVED_EVENTS
from .namespace import Namespace
from .socket import Handshake, Socket

logger = logging.getLogger("roomd.api")

CLEANUP_TIMEOUT = 10.0
QUEUE_LIMIT = 64


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


class Connection:
    """The namespaces one Engine.IO session is connected to (its SessionHandler)."""

    def __init__(self, session: EngineSession, context: ConnectionContext) -> None:
        self.context = context
        self.session = session
        self.sockets: dict[str, Socket] = {}
        self.decoder = sio.Decoder()
        self.ever_connected = False
        self._queue: collections.deque[sio.Packet] = collections.deque()
        self._working = False
        self._room: trio.Event | None = None
        self._cleaned = False
        context.live[session.sid] = self
        context.timers.call_later_weak(context.connect_timeout, self.check_connected)

    async def on_message(self, data: str | bytes) -> None:
        """Decode one message; raises ProtocolError when it is malformed."""
        packet = self.decoder.feed(data)
        if packet is None:
            return
        kind = packet.type
        if kind is sio.PacketType.ACK or kind is sio.PacketType.BINARY_ACK:
            socket = self.sockets.get(packet.namespace)
            if socket is not None and packet.id is not None:
                socket.on_ack(packet.id, packet.data)
            return
        if kind is sio.PacketType.EVENT or kind is sio.PacketType.BINARY_EVENT:
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
        while len(self._queue) >= QUEUE_LIMIT and not self.session.closed:
            # Backpressure: the reader waits, so the client's TCP window fills.
            self._room = self._room or trio.Event()
            await self._room.wait()
        self._queue.append(packet)
        if not self._working:
            self._start_worker()

    def on_close(self, reason: str) -> None:
        for socket in self.sockets.values():
            socket.abandon_acks()
        if self._room is not None:
            self._room.set()
        if not self._working:
            self._start_worker()

    def _start_worker(self) -> None:
        self._working = True
        self.context.spawn(self._work)

    async def _work(self) -> None:
        queue = self._queue
        session = self.session
        try:
            while queue:
                packet = queue.popleft()
                if self._room is not None and len(queue) < QUEUE_LIMIT // 2:
                    self._room.set()
                    self._room = None
                await self.handle(packet)
        except ProtocolError as exc:
            logger.warning("session %s: closing on malformed packet: %s", session.sid, exc)
            session.close("parse error")
        except Exception:
            logger.exception("session %s: handler failed; closing the connection", session.sid)
            session.close("server error")
        finally:
            self._working = False
            if session.closed and not self._cleaned:
                self._cleaned = True
                queue.clear()
                with trio.CancelScope(shield=True):
                    await self._cleanup()

    async def _cleanup(self) -> None:
        """Run every socket's disconnect sequence once the session is closed."""
        reason = self.session.close_reason
        with trio.move_on_after(CLEANUP_TIMEOUT):
            for socket in list(self.sockets.values()):
                try:
                    await self.close_socket(socket, reason)
                except Exception:
                    logger.exception("socket %s: disconnect handler failed", socket.id)
        self.context.live.pop(self.session.sid, None)

    async def _send(self, packet: sio.Packet) -> None:
        # CONNECT_ERROR: there is no socket, so nothing to keep in order with.
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
            logger.info("session %s: duplicate CONNECT to %s ignored", self.session.sid, name)
            return
        namespace = await self.context.resolve_namespace(name, auth)
        if namespace is None:
            await self._send(sio.Packet(sio.PacketType.CONNECT_ERROR, name,
                                         {"message": "Invalid namespace"}))
            return
        request = self.session.request
        handshake = Handshake(auth=auth if auth is not None else {}, headers=request.headers,
                              query=request.query, address=request.address, time=request.time,
                              url=request.url)
        socket = Socket(namespace, self, handshake)
        try:
            await namespace.run_middlewares(socket)
        except ConnectRefused as refusal:
            data: dict[str, Any] = {"message": refusal.message}
            if refusal.data is not None:
                data["data"] = refusal.data
            await self._send(sio.Packet(sio.PacketType.CONNECT_ERROR, name, data))
            return
        except Exception as exc:
            if isinstance(exc, trio.Cancelled):
                raise
            logger.info("namespace %s: middleware refused %s: %s", name, self.session.sid, exc)
            await self._send(sio.Packet(sio.PacketType.CONNECT_ERROR, name,
                                         {"message": str(exc) or type(exc).__name__}))
            return
        if self.session.closed:
            return
        self.ever_connected = True
        self.sockets[name] = socket
        await socket.registered()
        await socket.send_packet(sio.Packet(sio.PacketType.CONNECT, name, {"sid": socket.id}))
        await namespace.connected(socket)

    async def close_socket(self, socket: Socket, reason: str) -> None:
        if self.sockets.get(socket.namespace.name) is not socket:
            return
        del self.sockets[socket.namespace.name]
        await socket.closed(reason)

    async def disconnect_all(self, reason: str) -> None:
        """Disconnect every namespace, then close the session."""
        for socket in list(self.sockets.values()):
            await socket.send_packet(sio.Packet(sio.PacketType.DISCONNECT,
                                                  socket.namespace.name))
            await self.close_socket(socket, reason)
        self.session.close("forced close")

    def check_connected(self) -> None:
        """Timer callback: close a session that never connected a namespace."""
        if not self.ever_connected and not self.session.closed:
            logger.info("session %s: no CONNECT within connect_timeout", self.session.sid)
            self.session.close("connect timeout")
