"""Engine.IO v4 sessions on trio: heartbeats, transports, the upgrade.

An :class:`EngineSession` is one Engine.IO connection, whatever carries it
(long-polling requests, a WebSocket, or polling upgraded to WebSocket). Its
incoming Socket.IO messages go into a bounded memory channel that the
application layer's session task reads; its outgoing messages go into the
transport's outbox (see ``_outbox``). The HTTP front door that creates and
feeds sessions is ``_http``.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio_websocket

from . import _eio
from ._errors import ProtocolError
from ._outbox import OutgoingMessage, PollingOutbox, WebSocketOutbox
from ._timers import Timers
from ._wsframe import encode_frames

logger = logging.getLogger("roomd")

# How long a WebSocket may take to finish the polling-to-WebSocket upgrade,
# and how long a closing session may take to flush before its socket is shut.
UPGRADE_TIMEOUT = 10.0
CLOSE_FLUSH_TIMEOUT = 2.0


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


class EngineSession:
    """One Engine.IO connection.

    ``messages`` yields the Engine.IO MESSAGE payloads (str or bytes) in order
    and ends when the session closes; ``close_reason`` then says why.
    """

    def __init__(self, engine: Engine, sid: str, transport: str, request: RequestInfo) -> None:
        self.engine = engine
        self.sid = sid
        self.transport = transport
        self.request = request
        self.connected_at = time.time()
        self.outbox: PollingOutbox | WebSocketOutbox = PollingOutbox(engine.options.outbox_limit)
        self.closed = False
        self.close_reason = ""
        self.closed_event = trio.Event()
        self._inbox_send, self.messages = trio.open_memory_channel[str | bytes](64)
        self._awaiting_pong = False
        self._ping_generation = 0
        self.reader_scope: trio.CancelScope | None = None
        self.poll_pending = False
        self.upgrading = False
        self.noop_pending = False

    # -- outgoing -------------------------------------------------------
    def send(self, message: OutgoingMessage, volatile: bool = False) -> bool:
        """Queue a message; False when the outbox is full (a slow consumer)."""
        if self.closed:
            return True
        return self.outbox.put(message, volatile)

    def send_packet(self, packet: _eio.Packet) -> None:
        """Queue an Engine.IO control packet; never refused."""
        outbox = self.outbox
        if isinstance(outbox, PollingOutbox):
            outbox.put_packet(packet)
        else:
            outbox.put_bytes(encode_frames([_eio.encode_packet(packet)]))

    # -- incoming -------------------------------------------------------
    async def receive(self, packet: _eio.Packet) -> None:
        """Handle one Engine.IO packet from the client.

        Raises ProtocolError for a packet a client may not send now.
        """
        kind = packet.type
        if kind is _eio.PacketType.MESSAGE:
            try:
                await self._inbox_send.send(packet.data)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass
        elif kind is _eio.PacketType.PONG:
            if self._awaiting_pong:
                self._awaiting_pong = False
                self.engine.timers.call_later(self.engine.options.ping_interval,
                                              self._ping, self._ping_generation)
        elif kind is _eio.PacketType.CLOSE:
            self.close("transport close")
        elif kind is _eio.PacketType.NOOP:
            pass
        elif kind is _eio.PacketType.PING:
            self.send_packet(_eio.Packet(_eio.PacketType.PONG, packet.data))
        else:
            raise ProtocolError(f"unexpected {kind.name} packet from a client")

    # -- heartbeat ------------------------------------------------------
    def start_heartbeat(self) -> None:
        self.engine.timers.call_later(self.engine.options.ping_interval,
                                      self._ping, self._ping_generation)

    def _ping(self, generation: int) -> None:
        if self.closed or generation != self._ping_generation:
            return
        self._ping_generation += 1
        self._awaiting_pong = True
        self.send_packet(_eio.Packet(_eio.PacketType.PING))
        self.engine.timers.call_later(self.engine.options.ping_timeout,
                                      self._check_pong, self._ping_generation)

    def _check_pong(self, generation: int) -> None:
        if not self.closed and self._awaiting_pong and generation == self._ping_generation:
            self.close("ping timeout")

    # -- closing --------------------------------------------------------
    def close(self, reason: str) -> None:
        """Close the session (idempotent, never blocks).

        Queued messages are still flushed for a short while; then the
        transport is shut. The application sees ``messages`` end.
        """
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self._inbox_send.close()
        self.engine.forget(self)
        outbox = self.outbox
        if isinstance(outbox, PollingOutbox):
            outbox.put_packet(_eio.Packet(_eio.PacketType.CLOSE))
        if self.reader_scope is not None:
            self.reader_scope.cancel()
        self.closed_event.set()


class Engine:
    """The registry of sessions and the behaviour shared by both transports.

    ``on_session(session)`` is started in the server's nursery for each new
    session; it should read ``session.messages`` until they end.
    """

    def __init__(self, options: EngineOptions, timers: Timers,
                 on_session: Callable[[EngineSession], Awaitable[Any]]) -> None:
        self.options = options
        self.timers = timers
        self.on_session = on_session
        self.sessions: dict[str, EngineSession] = {}
        self.nursery: trio.Nursery | None = None
        self.accepting = True
        self.live_websockets = 0

    def open_packet(self, sid: str, websocket: bool) -> _eio.Packet:
        o = self.options
        upgrades = [] if websocket or "websocket" not in o.transports else ["websocket"]
        return _eio.encode_open(sid, upgrades, int(o.ping_interval * 1000),
                                int(o.ping_timeout * 1000), o.max_payload)

    def full(self) -> bool:
        limit = self.options.max_connections
        return bool(limit) and len(self.sessions) >= limit

    def new_session(self, transport: str, request: RequestInfo) -> EngineSession:
        sid = secrets.token_urlsafe(15)
        session = EngineSession(self, sid, transport, request)
        self.sessions[sid] = session
        assert self.nursery is not None
        self.nursery.start_soon(self.on_session, session)
        session.start_heartbeat()
        return session

    def forget(self, session: EngineSession) -> None:
        if self.sessions.get(session.sid) is session:
            del self.sessions[session.sid]

    async def run_websocket(self, ws: trio_websocket.WebSocketConnection,
                            outbox: WebSocketOutbox, request: RequestInfo,
                            sid: str | None) -> None:
        """Serve one accepted WebSocket until it or its session closes."""
        self.live_websockets += 1
        try:
            await self._run_websocket(ws, outbox, request, sid)
        finally:
            self.live_websockets -= 1

    async def _run_websocket(self, ws: trio_websocket.WebSocketConnection,
                             outbox: WebSocketOutbox, request: RequestInfo,
                             sid: str | None) -> None:
        if sid is None:
            session = self.new_session("websocket", request)
            session.outbox = outbox
            session.send_packet(self.open_packet(session.sid, websocket=True))
        else:
            found = self.sessions.get(sid)
            if found is None or found.transport != "polling" or found.upgrading:
                await ws.aclose(1008, "Session ID unknown")
                return
            session = found
            if not await self._upgrade(session, ws, outbox):
                return
        await self._read_websocket(session, ws, outbox)

    async def _upgrade(self, session: EngineSession, ws: trio_websocket.WebSocketConnection,
                       outbox: WebSocketOutbox) -> bool:
        session.upgrading = True
        packet = None
        try:
            with trio.move_on_after(UPGRADE_TIMEOUT):
                while True:
                    packet = _eio.decode_packet(await ws.get_message())
                    if packet.type is _eio.PacketType.PING and packet.data == "probe":
                        outbox.put_bytes(encode_frames(["3probe"]))
                        # Release the client's pending long-poll so it can pause.
                        session.noop_pending = True
                        session.outbox.wake()  # type: ignore[union-attr]
                    elif packet.type is _eio.PacketType.UPGRADE:
                        break
                    else:
                        raise ProtocolError(f"unexpected {packet.type.name} during upgrade")
            if session.closed:
                return False
            if packet is None or packet.type is not _eio.PacketType.UPGRADE:
                logger.info("session %s: upgrade timed out", session.sid)
                await ws.aclose(1002, "upgrade timed out")
                return False
        except (trio_websocket.ConnectionClosed, ProtocolError) as exc:
            logger.info("session %s: upgrade failed: %s", session.sid, exc)
            await ws.aclose(1002, "upgrade failed")
            return False
        finally:
            session.upgrading = False
        polling = session.outbox
        assert isinstance(polling, PollingOutbox)
        session.transport = "websocket"
        session.outbox = outbox
        leftover = polling.take_all_raw()
        if leftover:
            outbox.put_bytes(encode_frames(leftover))
        polling.wake()
        return True

    async def _read_websocket(self, session: EngineSession,
                              ws: trio_websocket.WebSocketConnection,
                              outbox: WebSocketOutbox) -> None:
        reason = None
        with trio.CancelScope() as session.reader_scope:
            if session.closed:
                session.reader_scope.cancel()
            try:
                while True:
                    message = await ws.get_message()
                    await session.receive(_eio.decode_packet(message))
            except trio_websocket.ConnectionClosed:
                reason = "transport close"
            except ProtocolError as exc:
                logger.warning("session %s: closing on malformed packet: %s", session.sid, exc)
                reason = "parse error"
        session.reader_scope = None
        if reason is not None:
            session.close(reason)
            return
        # Closed by the server: let queued frames (a DISCONNECT, say) leave first.
        with trio.move_on_after(CLOSE_FLUSH_TIMEOUT):
            await outbox.drain()
            await ws.aclose(1000)
