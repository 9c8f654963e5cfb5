"""One client connection at the Socket.IO level: namespaces over one session.

:func:`run_connection` is the session task: it reads the session's messages,
decodes Socket.IO packets and runs the handlers, in order. A malformed packet
or a handler's exception is logged and closes this connection only.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from . import _sio
from ._broadcast import RESERVED_EVENTS
from ._engine import EngineSession
from ._errors import ConnectRefused, ProtocolError
from ._outbox import OutgoingMessage
from ._socket import Handshake, Socket

if TYPE_CHECKING:
    from ._server import Server

logger = logging.getLogger("roomd")

CLEANUP_TIMEOUT = 10.0


class Connection:
    """The namespaces one Engine.IO session is connected to."""

    def __init__(self, server: Server, session: EngineSession) -> None:
        self.server = server
        self.session = session
        self.sockets: dict[str, Socket] = {}
        self.decoder = _sio.Decoder()
        self.ever_connected = False

    async def _send(self, packet: _sio.Packet) -> None:
        # CONNECT_ERROR: there is no socket, so nothing to keep in order with.
        message = OutgoingMessage(_sio.encode(packet))
        self.session.send(message)

    async def handle(self, packet: _sio.Packet) -> None:
        kind = packet.type
        if kind is _sio.PacketType.EVENT or kind is _sio.PacketType.BINARY_EVENT:
            socket = self.sockets.get(packet.namespace)
            if socket is None:
                return  # Socket.IO ignores packets for namespaces not joined
            args = packet.data
            if args[0] in RESERVED_EVENTS:
                raise ProtocolError(f"{args[0]!r} is a reserved event name")
            await socket._dispatch(args[0], args[1:], packet.id)
        elif kind is _sio.PacketType.ACK or kind is _sio.PacketType.BINARY_ACK:
            socket = self.sockets.get(packet.namespace)
            if socket is not None and packet.id is not None:
                socket._on_ack(packet.id, packet.data)
        elif kind is _sio.PacketType.CONNECT:
            await self._connect(packet.namespace, packet.data)
        elif kind is _sio.PacketType.DISCONNECT:
            socket = self.sockets.get(packet.namespace)
            if socket is not None:
                await self.close_socket(socket, "client namespace disconnect")
        else:
            raise ProtocolError(f"a client may not send {kind.name}")

    async def _connect(self, name: str, auth: Any) -> None:
        if name in self.sockets:
            logger.info("session %s: duplicate CONNECT to %s ignored", self.session.sid, name)
            return
        namespace = await self.server._resolve_namespace(name, auth)
        if namespace is None:
            await self._send(_sio.Packet(_sio.PacketType.CONNECT_ERROR, name,
                                         {"message": "Invalid namespace"}))
            return
        request = self.session.request
        handshake = Handshake(auth=auth if auth is not None else {}, headers=request.headers,
                              query=request.query, address=request.address, time=request.time,
                              url=request.url)
        socket = Socket(namespace, self, handshake)
        try:
            await namespace._run_middlewares(socket)
        except ConnectRefused as refusal:
            data: dict[str, Any] = {"message": refusal.message}
            if refusal.data is not None:
                data["data"] = refusal.data
            await self._send(_sio.Packet(_sio.PacketType.CONNECT_ERROR, name, data))
            return
        except Exception as exc:
            if isinstance(exc, trio.Cancelled):
                raise
            logger.info("namespace %s: middleware refused %s: %s", name, self.session.sid, exc)
            await self._send(_sio.Packet(_sio.PacketType.CONNECT_ERROR, name,
                                         {"message": str(exc) or type(exc).__name__}))
            return
        if self.session.closed:
            return
        self.ever_connected = True
        self.sockets[name] = socket
        socket.connected = True
        await self.server._manager.add(socket._member)
        await socket._send_packet(_sio.Packet(_sio.PacketType.CONNECT, name, {"sid": socket.id}))
        await namespace._connected(socket)

    async def close_socket(self, socket: Socket, reason: str) -> None:
        if self.sockets.get(socket.namespace.name) is not socket:
            return
        del self.sockets[socket.namespace.name]
        await socket._closed(reason)

    async def disconnect_all(self, reason: str) -> None:
        """Disconnect every namespace, then close the session."""
        for socket in list(self.sockets.values()):
            await socket._send_packet(_sio.Packet(_sio.PacketType.DISCONNECT,
                                                  socket.namespace.name))
            await self.close_socket(socket, reason)
        self.session.close("forced close")

    def check_connected(self) -> None:
        """Timer callback: close a session that never connected a namespace."""
        if not self.ever_connected and not self.session.closed:
            logger.info("session %s: no CONNECT within connect_timeout", self.session.sid)
            self.session.close("connect timeout")


async def run_connection(server: Server, session: EngineSession) -> None:
    """The session task: dispatch until the session ends, then clean up."""
    connection = Connection(server, session)
    server._connections[session.sid] = connection
    server._timers.call_later(server.connect_timeout, connection.check_connected)
    try:
        async for message in session.messages:
            packet = connection.decoder.feed(message)
            if packet is not None:
                await connection.handle(packet)
    except ProtocolError as exc:
        logger.warning("session %s: closing on malformed packet: %s", session.sid, exc)
        session.close("parse error")
    except Exception:
        logger.exception("session %s: handler failed; closing the connection", session.sid)
        session.close("server error")
    finally:
        session.close(session.close_reason or "server shutting down")
        reason = session.close_reason
        with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_TIMEOUT):
            for socket in list(connection.sockets.values()):
                try:
                    await connection.close_socket(socket, reason)
                except Exception:
                    logger.exception("socket %s: disconnect handler failed", socket.id)
        server._connections.pop(session.sid, None)

