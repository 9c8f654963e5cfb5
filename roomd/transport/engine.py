"""Engine.IO v4 sessions on trio: heartbeats, transports, the upgrade.

An :class:`EngineSession` is one Engine.IO connection, whatever carries it
(long-polling requests, a WebSocket, or polling upgraded to WebSocket). The
task reading its transport hands each incoming message to the session's
:class:`SessionHandler` (the Socket.IO layer); outgoing messages go into the
transport's outbox (see ``_outbox``). The HTTP front door that creates and
feeds sessions is ``_http``.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

import trio

from .._errors import ProtocolError
from ..protocol import eio, sio
from ..protocol.websocket import WebSocketProtocol
from ..protocol.wsframe import encode_frames
from .outbox import OutgoingMessage, PollingOutbox, WebSocketOutbox, WriteBatch
from .timers import Timers

logger = logging.getLogger("roomd.transport")

# How long a WebSocket may take to finish the polling-to-WebSocket upgrade,
# and how long a closing session may take to flush before its socket is shut.
UPGRADE_TIMEOUT = 10.0
CLOSE_FLUSH_TIMEOUT = 2.0
# After the probe, a pending long-poll is released with a noop only if the
# upgrade has not completed by then; checked this often, as engine.io does
# (released at once, the noop can overtake the client's CONNECT reply).
UPGRADE_NOOP_CHECK = 0.1
RECEIVE_SIZE = 65536


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """The transport's settings (seconds and bytes)."""

    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    max_payload: int = 1_000_000
    path: str = "/socket.io/"
    cors_origins: tuple[str, ...] = ()
    outbox_limit: int = 1024
    max_connections: int = 0
    transports: tuple[str, ...] = ("polling", "websocket")


@dataclasses.dataclass(frozen=True)
class RequestInfo:
    """What the handshake request said: exposed as ``socket.handshake``."""

    headers: dict[str, str]
    query: dict[str, str]
    address: str
    time: float
    url: str


async def receive_some(fd: int) -> bytes:
    """Read what a non-blocking socket has; b"" at the end of the stream.

    trio's SocketStream yields twice per read (on parking and once more
    after the data arrived); on the hot path one park per read is enough.
    A read that finds data at once still yields, so a flooding client
    cannot starve the others. A reset connection reads as its end.
    """
    while True:
        try:
            data = os.read(fd, RECEIVE_SIZE)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(fd)
            try:
                return os.read(fd, RECEIVE_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                return b""
        except OSError:
            return b""
        await trio.lowlevel.checkpoint()
        return data


AllowRequest = Callable[[RequestInfo], Any]
"""``allow_request(request)``, sync or async: True (or None) accepts a handshake;
False refuses it with HTTP 403 "Forbidden", a string refuses it with that
message. An exception is logged and refuses it."""


@dataclasses.dataclass(frozen=True)
class ConnectionRefusal:
    """An Engine.IO request refused before or outside a session (Node's ``connection_error``)."""

    code: int
    message: str
    context: str
    address: str
    url: str


class SessionHandler(Protocol):
    """What the layer above does with a session's traffic."""

    async def on_message(self, data: str | bytes) -> None:
        """One Engine.IO MESSAGE payload, in order; may raise ProtocolError."""

    def on_close(self, reason: str) -> None:
        """The session closed (called once, never blocks)."""


class EngineSession:
    """One Engine.IO connection; ``close_reason`` says why it ended."""

    def __init__(self, engine: Engine, sid: str, transport: str, request: RequestInfo) -> None:
        self.engine = engine
        self.sid = sid
        self.transport = transport
        self.request = request
        self.connected_at = time.time()
        self.outbox: PollingOutbox | WebSocketOutbox = PollingOutbox(engine.options.outbox_limit)
        self.handler: SessionHandler | None = None
        self.closed = False
        self.close_reason = ""
        self._awaiting_pong = False
        self._ping_generation = 0
        self.reader_scope: trio.CancelScope | None = None
        self.poll_pending = False
        self.post_pending = False
        self.upgrading = False
        self.noop_pending = False

    # -- outgoing -------------------------------------------------------
    def send(self, message: OutgoingMessage, volatile: bool = False) -> bool:
        """Queue a message; False when the outbox is full (a slow consumer)."""
        if self.closed:
            return True
        return self.outbox.put(message, volatile)

    def send_packet(self, packet: eio.Packet) -> None:
        """Queue an Engine.IO control packet; never refused."""
        outbox = self.outbox
        if isinstance(outbox, PollingOutbox):
            outbox.put_packet(packet)
        else:
            outbox.put_bytes(encode_frames([eio.encode_packet(packet)]))

    # -- incoming -------------------------------------------------------
    async def receive(self, packet: eio.Packet) -> None:
        """Handle one Engine.IO packet from the client.

        Raises ProtocolError for a packet a client may not send now, and
        whatever the handler raises for a malformed message.
        """
        kind = packet.type
        if kind is eio.PacketType.MESSAGE:
            self.engine.messages_in += 1
            if not self.closed and self.handler is not None:
                await self.handler.on_message(packet.data)
        elif kind is eio.PacketType.PONG:
            if self._awaiting_pong:
                self._awaiting_pong = False
                self.engine.timers.call_later_weak(self.engine.options.ping_interval,
                                                   self._ping, self._ping_generation)
        elif kind is eio.PacketType.CLOSE:
            # A long-poll still pending is answered with a noop, as engine.io does.
            self.noop_pending = isinstance(self.outbox, PollingOutbox)
            self.close("transport close")
        elif kind is eio.PacketType.NOOP:
            pass
        elif kind is eio.PacketType.PING:
            self.send_packet(eio.Packet(eio.PacketType.PONG, packet.data))
        else:
            raise ProtocolError(f"unexpected {kind.name} packet from a client")

    # -- heartbeat ------------------------------------------------------
    def start_heartbeat(self) -> None:
        self.engine.timers.call_later_weak(self.engine.options.ping_interval,
                                           self._ping, self._ping_generation)

    def _ping(self, generation: int) -> None:
        if self.closed or generation != self._ping_generation:
            return
        self._ping_generation += 1
        self._awaiting_pong = True
        self.send_packet(eio.Packet(eio.PacketType.PING))
        self.engine.timers.call_later_weak(self.engine.options.ping_timeout,
                                           self._check_pong, self._ping_generation)

    def release_poll_for_upgrade(self) -> None:
        """Timer: while an upgrade is under way, answer a pending long-poll with a noop."""
        if self.closed or not self.upgrading or self.transport != "polling":
            return
        if self.poll_pending:
            self.noop_pending = True
            self.outbox.wake()  # type: ignore[union-attr]
        else:
            self.engine.timers.call_later_weak(UPGRADE_NOOP_CHECK, self.release_poll_for_upgrade)

    def _check_pong(self, generation: int) -> None:
        if not self.closed and self._awaiting_pong and generation == self._ping_generation:
            self.close("ping timeout")

    # -- closing --------------------------------------------------------
    def close(self, reason: str) -> None:
        """Close the session (idempotent, never blocks).

        Queued messages are still flushed for a short while; then the
        transport is shut. The handler's ``on_close`` runs once.
        """
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.engine.forget(self)
        # Clients come and go all day: counted (roomd status), logged only at DEBUG.
        self.engine.closes[reason] = self.engine.closes.get(reason, 0) + 1
        logger.debug("session %s closed: %s", self.sid, reason)
        outbox = self.outbox
        if isinstance(outbox, PollingOutbox):
            outbox.put_packet(eio.Packet(eio.PacketType.CLOSE))
        if self.reader_scope is not None:
            self.reader_scope.cancel()
        if self.handler is not None:
            self.handler.on_close(reason)


class Engine:
    """The registry of sessions and the behaviour shared by both transports.

    ``on_session(session)`` is called for each new session and returns its
    handler.
    """

    def __init__(self, options: EngineOptions, timers: Timers,
                 on_session: Callable[[EngineSession], SessionHandler]) -> None:
        self.options = options
        self.timers = timers
        self.on_session = on_session
        self.sessions: dict[str, EngineSession] = {}
        self.closing_polls: dict[str, EngineSession] = {}
        self.polls_in_flight = 0  # long-poll GETs being answered (a drain waits for them)
        self.accepting = True
        self.live_websockets = 0
        self.nursery: trio.Nursery | None = None
        self.write_batch = WriteBatch()
        self.allow_request: AllowRequest | None = None
        self.error_listeners: list[Callable[[ConnectionRefusal], Any]] = []
        self.closes: dict[str, int] = {}  # close reason -> sessions closed for it
        # Counters read at scrape time (roomd.ops.metrics); none is touched per delivery.
        self.sessions_opened = 0
        self.refusals: dict[tuple[int, str], int] = {}  # (HTTP status, Engine.IO message)
        self.messages_in = 0  # Engine.IO MESSAGE packets received
        self.bytes_in = 0  # bytes read from WebSockets and polling POST bodies

    async def refusal_of(self, request: RequestInfo) -> str | None:
        """Why ``allow_request`` refuses a handshake, or None when it accepts."""
        if self.allow_request is None:
            return None
        try:
            verdict = self.allow_request(request)
            if inspect.isawaitable(verdict):
                verdict = await verdict
        except Exception:
            logger.exception("allow_request failed; refusing %s", request.address)
            return "Forbidden"
        if verdict is None or verdict is True:
            return None
        return verdict if isinstance(verdict, str) and verdict else "Forbidden"

    def report_error(self, error: ConnectionRefusal) -> None:
        """Tell the ``connection_error`` listeners; a listener's error is logged."""
        for listener in self.error_listeners:
            try:
                listener(error)
            except Exception:
                logger.exception("connection_error listener failed")

    def open_packet(self, sid: str, websocket: bool) -> eio.Packet:
        o = self.options
        upgrades = [] if websocket or "websocket" not in o.transports else ["websocket"]
        return eio.encode_open(sid, upgrades, int(o.ping_interval * 1000),
                                int(o.ping_timeout * 1000), o.max_payload)

    def full(self) -> bool:
        limit = self.options.max_connections
        return bool(limit) and len(self.sessions) >= limit

    def new_session(self, transport: str, request: RequestInfo,
                    outbox: WebSocketOutbox | None = None) -> EngineSession:
        sid = sio.new_id()
        session = EngineSession(self, sid, transport, request)
        if outbox is not None:
            session.outbox = outbox
        self.sessions[sid] = session
        self.sessions_opened += 1
        session.handler = self.on_session(session)
        session.start_heartbeat()
        return session

    def forget(self, session: EngineSession) -> None:
        """Drop a closing session; a polling one with unread packets waits for one more GET.

        A long-polling client between two requests has not read the packets
        that closed its session (a DISCONNECT, say): its next GET still gets
        them, within CLOSE_FLUSH_TIMEOUT. Called before the close packet is
        queued.
        """
        if self.sessions.get(session.sid) is session:
            del self.sessions[session.sid]
            outbox = session.outbox
            if (isinstance(outbox, PollingOutbox) and outbox.pending and not session.poll_pending
                    and session.close_reason != "transport close"):  # the client left itself
                self.closing_polls[session.sid] = session
                self.timers.call_later(CLOSE_FLUSH_TIMEOUT, self.closing_polls.pop,
                                       session.sid, None)

    def polling_session(self, sid: str) -> EngineSession | None:
        """The session a long-polling request names, a closing one included."""
        return self.sessions.get(sid) or self.closing_polls.get(sid)

    async def run_websocket(self, stream: trio.SocketStream, received: bytes,
                            request: RequestInfo, sid: str | None) -> None:
        """Serve one accepted WebSocket until it or its session closes.

        ``received`` is what the client sent after the upgrade request.
        Errors caused by the peer close this connection only.
        """
        assert self.nursery is not None
        # Flush tasks run in the server's nursery: an idle WebSocket owns no nursery.
        outbox = WebSocketOutbox(stream, self.nursery, self.options.outbox_limit,
                                 self.write_batch)
        protocol = WebSocketProtocol(self.options.max_payload)
        self.live_websockets += 1
        try:
            await _WebSocketSession(self, stream, outbox, protocol).run(received, request, sid)
        finally:
            # The descriptor is about to close (and may be reused): never write to it again.
            outbox.broken = True
            self.live_websockets -= 1


class _WebSocketSession:
    """The read loop of one WebSocket, and its part in the upgrade."""

    def __init__(self, engine: Engine, stream: trio.SocketStream, outbox: WebSocketOutbox,
                 protocol: WebSocketProtocol) -> None:
        self.engine = engine
        self.stream = stream
        self.outbox = outbox
        self.protocol = protocol
        self.fd = stream.socket.fileno()
        self.session: EngineSession | None = None
        self.upgraded = False
        self.scope = trio.CancelScope()

    async def run(self, received: bytes, request: RequestInfo, sid: str | None) -> None:
        engine = self.engine
        if sid is None:
            session = engine.new_session("websocket", request, self.outbox)
            self.upgraded = True
            session.send_packet(engine.open_packet(session.sid, websocket=True))
        else:
            found = engine.sessions.get(sid)
            if found is None or found.transport != "polling" or found.upgrading:
                # Already upgraded (or upgrading): the handshake was answered, now close
                # this WebSocket at once, as engine.io does.
                await self._close(1008)
                return
            session = found
            session.upgrading = True
        self.session = session
        reason: str | None = None
        with trio.CancelScope() as self.scope:
            if self.upgraded:
                session.reader_scope = self.scope
            else:
                self.scope.deadline = trio.current_time() + UPGRADE_TIMEOUT
            try:
                reason = await self._read(received)
            except ProtocolError as exc:
                logger.warning("session %s: closing on malformed packet: %s", session.sid, exc)
                reason = "parse error"
        if not self.upgraded:
            session.upgrading = False
            # a client that goes away mid-upgrade: ordinary, not worth an INFO line
            logger.debug("session %s: upgrade failed: %s", session.sid, reason or "timed out")
            await self._close(1002)
            return
        session.reader_scope = None
        if reason is None:
            # Closed by the server: let queued frames (a DISCONNECT, say) leave first,
            # then wait for the client's close frame (RFC 6455 7.1.1): closing the TCP
            # socket while the client's answer is unread would reset the connection,
            # and a reset can discard what the client had not read yet.
            await self._close(1000)
            await self._await_peer_close()
            return
        session.close(reason)
        with trio.move_on_after(CLOSE_FLUSH_TIMEOUT):
            self.outbox.put_bytes(self.protocol.take_output())
            await self.outbox.drain()

    async def _close(self, code: int) -> None:
        with trio.move_on_after(CLOSE_FLUSH_TIMEOUT):
            self.outbox.put_bytes(self.protocol.close_frame(code))
            await self.outbox.drain()

    async def _await_peer_close(self) -> None:
        """Read (and drop) until the client's close frame or EOF, for a short while."""
        protocol = self.protocol
        with trio.move_on_after(CLOSE_FLUSH_TIMEOUT):
            while protocol.close_code is None:
                data = await receive_some(self.fd)
                if not data:
                    return
                protocol.receive(data)

    async def _read(self, data: bytes) -> str:
        """Read until the peer goes away; returns the close reason."""
        protocol = self.protocol
        session = self.session
        assert session is not None
        while True:
            if data:
                messages = protocol.receive(data)
                output = protocol.take_output()
                if output:
                    self.outbox.put_bytes(output)
                for message in messages:
                    packet = eio.decode_packet(message)
                    if self.upgraded:
                        await session.receive(packet)
                    else:
                        self._upgrade_step(packet)
                if protocol.close_code is not None:
                    return "transport close"
            data = await receive_some(self.fd)
            if not data:
                protocol.receive(None)
                return "transport close"
            self.engine.bytes_in += len(data)

    def _upgrade_step(self, packet: eio.Packet) -> None:
        """One packet of the polling-to-WebSocket upgrade."""
        session = self.session
        assert session is not None
        if session.closed:
            raise ProtocolError("session closed during the upgrade")
        if packet.type is eio.PacketType.PING and packet.data == "probe":
            self.outbox.put_bytes(encode_frames(["3probe"]))
            # The client pauses polling next: its pending long-poll must end.
            self.engine.timers.call_later_weak(UPGRADE_NOOP_CHECK,
                                               session.release_poll_for_upgrade)
            return
        if packet.type is not eio.PacketType.UPGRADE:
            raise ProtocolError(f"unexpected {packet.type.name} during upgrade")
        polling = session.outbox
        assert isinstance(polling, PollingOutbox)
        session.transport = "websocket"
        session.upgrading = False
        session.outbox = self.outbox
        leftover = polling.take_all_raw()
        if leftover:
            self.outbox.put_bytes(encode_frames(leftover))
        polling.wake()
        # From now on this task reads the session: a close must interrupt it.
        self.upgraded = True
        self.scope.deadline = float("inf")
        session.reader_scope = self.scope
