"""Engine.IO v4 sessions on trio: heartbeats, transports, the upgrade.

An :class:`EngineSession` is one Engine.IO connection, whatever carries it
(long-polling requests, a WebSocket, or polling upgraded to WebSocket). The
task reading its transport hands each incoming message to the session's
:class:`SessionHandler` (the Socket.IO layer); outgoing messages go into the
transport's outbox (see ``outbox``). The HTTP front door that creates and
feeds sessions is ``http``; a WebSocket's read loop is ``wsreader``.

A session's life is one :class:`SessionState`, changed only by
:meth:`EngineSession._enter` (the table ``_TRANSITIONS`` lists every legal
step)::

    POLLING --WebSocket opened--> UPGRADING --upgrade--> WEBSOCKET
                                  |    ^
         probe answered, long-poll    |    the noop sent
         pending (timer)  --> PAUSED --/
    (UPGRADING and PAUSED fall back to POLLING when the upgrade fails, and
     PAUSED may also complete the upgrade; a session opened on a WebSocket
     starts in WEBSOCKET)
    (any) --close()--> CLOSED

What a client can make a session hold is bounded (docs/limits.md): its
outbox in messages and bytes, the pongs it is owed (one), the incomplete
message its WebSocket is sending (maxPayload, in at most MAX_FRAGMENTS
frames), and all of these together by the process-wide budget. A closed
session lets go of its buffers and of the objects that point back to it at
once, so its memory does not wait for the cycle collector.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import json
import logging
import resource
import time
from collections.abc import Callable
from typing import Any, Protocol

import trio

from .._errors import ProtocolError
from ..protocol import eio, sio
from ..protocol.websocket import WebSocketProtocol
from ..protocol.wsframe import encode_frames
from .limits import Admission, Budget, RateLog
from .options import EngineOptions
from .outbox import OutgoingMessage, PollingOutbox, WebSocketOutbox, WriteBatch
from .timers import Timers
from .turns import Turns
from .wsreader import CLOSE_FLUSH_TIMEOUT, UPGRADE_NOOP_CHECK, WebSocketReader
from .wsreader import SHUTTING_DOWN as SHUTTING_DOWN  # re-exported for api.server

logger = logging.getLogger("roomd.transport")


@dataclasses.dataclass(frozen=True)
class RequestInfo:
    """What the handshake request said: exposed as ``socket.handshake``."""

    headers: dict[str, str]
    query: dict[str, str]
    address: str
    time: float
    url: str
    secure: bool = False  # over TLS (https, wss)


class SessionState(enum.Enum):
    """Where an Engine.IO session is in its life (see the module docstring)."""

    POLLING = "polling"      # long-polling, no upgrade under way
    UPGRADING = "upgrading"  # a WebSocket opened for this sid, doing the probe exchange
    PAUSED = "paused"        # the pending long-poll is answered with a noop (then UPGRADING)
    WEBSOCKET = "websocket"  # the WebSocket carries the session
    CLOSED = "closed"


_TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    SessionState.POLLING: frozenset({SessionState.UPGRADING, SessionState.CLOSED}),
    SessionState.UPGRADING: frozenset({SessionState.PAUSED, SessionState.WEBSOCKET,
                                       SessionState.POLLING, SessionState.CLOSED}),
    SessionState.PAUSED: frozenset({SessionState.UPGRADING, SessionState.WEBSOCKET,
                                    SessionState.POLLING, SessionState.CLOSED}),
    SessionState.WEBSOCKET: frozenset({SessionState.CLOSED}),
    SessionState.CLOSED: frozenset(),
}


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

    async def on_message(self, data: str | bytes,
                         hand_off: Callable[[], None] | None = None) -> None:
        """One Engine.IO MESSAGE payload, in order; may raise ProtocolError.

        ``hand_off`` is given by a reader that can pass its read loop to a new
        task (the WebSocket's): the handler may then run a client's handler in
        the reader's task and, when that handler waits, call it to keep the
        connection read meanwhile.
        """

    def on_close(self, reason: str) -> None:
        """The session closed (called once, never blocks)."""

    def new_read(self) -> None:
        """A read of the WebSocket brought messages (the scheduler ran since the last
        ones); called before they are handed on."""

    def held_bytes(self) -> int:
        """Wire bytes of the client's input the handler holds (partial and queued packets)."""


class EngineSession:
    """One Engine.IO connection; ``close_reason`` says why it ended.

    ``poll_pending`` / ``post_pending`` guard against overlapping long-poll
    requests of one sid (a protocol error); they are request bookkeeping of
    the HTTP front door, not session state.
    """

    def __init__(self, engine: Engine, sid: str, state: SessionState,
                 request: RequestInfo, outbox: WebSocketOutbox | None = None) -> None:
        self.engine = engine
        self.sid = sid
        self.state = state
        self.closed = False  # state is CLOSED (kept by _enter, read on the hot path)
        self.request = request
        self.connected_at = time.time()
        options = engine.options
        self.outbox: PollingOutbox | WebSocketOutbox = outbox or PollingOutbox(
            options.outbox_limit, options.outbox_bytes, engine.budget)
        self.handler: SessionHandler | None = None
        self.close_reason = ""
        self._awaiting_pong = False
        self._ping_generation = 0
        self.reader_scope: trio.CancelScope | None = None
        self.poll_pending = False
        self.post_pending = False
        self._input_budgeted = 0  # the handler's held_bytes, counted in engine.budget

    def _enter(self, state: SessionState) -> None:
        """The one place a session's state changes."""
        if state not in _TRANSITIONS[self.state]:
            raise AssertionError(f"session {self.sid}: {self.state.name} -> {state.name}")
        self.state = state
        self.closed = state is SessionState.CLOSED

    @property
    def transport(self) -> str:
        """"websocket" once upgraded (or opened so), else "polling"."""
        return "websocket" if isinstance(self.outbox, WebSocketOutbox) else "polling"

    # -- outgoing -------------------------------------------------------
    def send(self, message: OutgoingMessage, volatile: bool = False) -> bool:
        """Queue a message; False when the outbox is full (a slow consumer)."""
        if self.state is SessionState.CLOSED:
            return True
        return self.outbox.put(message, volatile)

    def send_packet(self, packet: eio.Packet) -> None:
        """Queue an Engine.IO control packet; never refused (a pong may be coalesced)."""
        outbox = self.outbox
        if isinstance(outbox, PollingOutbox):
            outbox.put_packet(packet)
        elif packet.type is eio.PacketType.PONG:
            outbox.put_control(encode_frames([eio.encode_packet(packet)]))
        else:
            outbox.put_bytes(encode_frames([eio.encode_packet(packet)]))

    # -- incoming -------------------------------------------------------
    async def receive(self, packet: eio.Packet,
                      hand_off: Callable[[], None] | None = None) -> None:
        """Handle one Engine.IO packet from the client (``hand_off``: see SessionHandler).

        Raises ProtocolError for a packet a client may not send now, and
        whatever the handler raises for a malformed message.
        """
        kind = packet.type
        if kind is eio.PacketType.MESSAGE:
            self.engine.messages_in += 1
            if self.state is not SessionState.CLOSED and self.handler is not None:
                await self.handler.on_message(packet.data, hand_off)
        elif kind is eio.PacketType.PONG:
            if self._awaiting_pong:
                self._awaiting_pong = False
                self.engine.timers.call_later_weak(self.engine.options.ping_interval,
                                                   self._ping, self._ping_generation)
        elif kind is eio.PacketType.CLOSE:
            # A long-poll still pending is answered with a noop, as engine.io does
            # (http's _answer_poll: a session closed by "transport close").
            self.close("transport close")
        elif kind is eio.PacketType.NOOP:
            pass
        elif kind is eio.PacketType.PING:
            self.send_packet(eio.Packet(eio.PacketType.PONG, packet.data))
        else:
            raise ProtocolError(f"unexpected {kind.name} packet from a client")

    def account_input(self) -> bool:
        """Count what the handler holds of this client's input in the budget.

        Called by the task reading the transport after each read; False when
        the process budget is spent (the caller closes the session).
        """
        handler = self.handler
        held = handler.held_bytes() if handler is not None else 0
        if not self.engine.budget.take(held - self._input_budgeted):
            return False
        self._input_budgeted = held
        return True

    # -- the upgrade (driven by the WebSocket that asks for it) ------------
    def begin_upgrade(self) -> bool:
        """A WebSocket opened for this sid; False when it may not upgrade now."""
        if self.state is not SessionState.POLLING:
            return False
        self._enter(SessionState.UPGRADING)
        return True

    def release_poll_for_upgrade(self) -> None:
        """Timer after the probe: while the upgrade is under way, end the pending long-poll.

        The client pauses polling once probed; its pending GET gets a noop
        (PAUSED), unless the upgrade completed first.
        """
        if self.state is not SessionState.UPGRADING:
            return
        if self.poll_pending:
            self._enter(SessionState.PAUSED)
            self.outbox.wake()  # type: ignore[union-attr]
        else:
            self.engine.timers.call_later_weak(UPGRADE_NOOP_CHECK, self.release_poll_for_upgrade)

    def noop_sent(self) -> None:
        """The paused long-poll got its noop: the upgrade goes on."""
        if self.state is SessionState.PAUSED:
            self._enter(SessionState.UPGRADING)

    def finish_upgrade(self, outbox: WebSocketOutbox) -> None:
        """The client sent UPGRADE: the WebSocket carries the session from now on."""
        polling = self.outbox
        assert isinstance(polling, PollingOutbox)
        self._enter(SessionState.WEBSOCKET)
        self.outbox = outbox
        leftover = polling.take_all_raw()
        if leftover:
            outbox.put_bytes(encode_frames(leftover))
        polling.wake()

    def abandon_upgrade(self) -> None:
        if self.state is SessionState.UPGRADING or self.state is SessionState.PAUSED:
            self._enter(SessionState.POLLING)

    # -- heartbeat ------------------------------------------------------
    def start_heartbeat(self) -> None:
        self.engine.timers.call_later_weak(self.engine.options.ping_interval,
                                           self._ping, self._ping_generation)

    def _ping(self, generation: int) -> None:
        if self.state is SessionState.CLOSED or generation != self._ping_generation:
            return
        self._ping_generation += 1
        self._awaiting_pong = True
        self.send_packet(eio.Packet(eio.PacketType.PING))
        self.engine.timers.call_later_weak(self.engine.options.ping_timeout,
                                           self._check_pong, self._ping_generation)

    def _check_pong(self, generation: int) -> None:
        if (self.state is not SessionState.CLOSED and self._awaiting_pong
                and generation == self._ping_generation):
            self.close("ping timeout")

    # -- closing --------------------------------------------------------
    def close(self, reason: str) -> None:
        """Close the session (idempotent, never blocks).

        Queued messages are still flushed for a short while; then the
        transport is shut. The handler's ``on_close`` runs once, and the
        session lets go of it (the handler may keep the session).
        """
        if self.state is SessionState.CLOSED:
            return
        self._enter(SessionState.CLOSED)
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
        handler, self.handler = self.handler, None
        if handler is not None:
            handler.on_close(reason)
        self.engine.budget.give(self._input_budgeted)
        self._input_budgeted = 0


def half_open_cap(configured: int) -> int:
    """``max_half_open``, lowered to a quarter of the descriptor limit if that is less.

    Half-open connections must never be what exhausts the descriptors: the
    sessions being served need them too.
    """
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return configured
    if soft == resource.RLIM_INFINITY or not configured:
        return configured
    cap = max(16, soft // 4)
    if configured > cap:
        logger.warning("max_half_open lowered from %d to %d: the descriptor limit is %d",
                       configured, cap, soft)
        return cap
    return configured


class Engine:
    """The registry of sessions and the behaviour shared by both transports.

    ``on_session(session)`` is called for each new session and returns its
    handler. ``budget``, ``admission`` and ``ratelog`` are the process-wide
    limits (see ``limits``).
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
        self.budget = Budget(options.memory_budget)
        self.admission = Admission(
            connections_per_ip=options.connections_per_ip,
            sessions_per_ip_rate=options.sessions_per_ip_rate,
            sessions_per_ip_burst=options.sessions_per_ip_burst,
            max_half_open=half_open_cap(options.max_half_open),
            exempt=options.exempt_addresses)
        self.turns = Turns(self.admission)  # the half-open places, first come first served
        self.trusted_proxies = frozenset(options.trusted_proxies)
        self.ratelog = RateLog(timers.call_later)
        self.allow_request: AllowRequest | None = None
        self.error_listeners: list[Callable[[ConnectionRefusal], Any]] = []
        self.closes: dict[str, int] = {}  # close reason -> sessions closed for it
        # Counters read at scrape time (roomd.ops.metrics); none is touched per delivery.
        self.sessions_opened = 0
        self.refusals: dict[tuple[int, str], int] = {}  # (HTTP status, Engine.IO message)
        self.messages_in = 0  # Engine.IO MESSAGE packets received
        self._open_templates: dict[bool, tuple[str, str]] = {}  # see open_packet
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
        """The OPEN packet of a new session.

        Only the sid differs between sessions (ids are URL-safe base64, never
        escaped in JSON): the rest is encoded once per transport and reused.
        """
        cached = self._open_templates.get(websocket)
        if cached is None:
            o = self.options
            upgrades = [] if websocket or "websocket" not in o.transports else ["websocket"]
            marker = "\x00sid\x00"
            text = eio.encode_open(marker, upgrades, int(o.ping_interval * 1000),
                                   int(o.ping_timeout * 1000), o.max_payload).data
            assert isinstance(text, str)
            head, _, tail = text.partition(json.dumps(marker))
            cached = self._open_templates[websocket] = (head + '"', '"' + tail)
        return eio.Packet(eio.PacketType.OPEN, cached[0] + sid + cached[1])

    def full(self) -> bool:
        limit = self.options.max_connections
        return bool(limit) and len(self.sessions) >= limit

    def new_session(self, transport: str, request: RequestInfo,
                    outbox: WebSocketOutbox | None = None) -> EngineSession:
        sid = sio.new_id()
        state = SessionState.POLLING if outbox is None else SessionState.WEBSOCKET
        session = EngineSession(self, sid, state, request, outbox)
        self.sessions[sid] = session
        self.sessions_opened += 1
        session.handler = self.on_session(session)
        session.start_heartbeat()
        return session

    def forget(self, session: EngineSession) -> None:
        """Drop a closing session; a polling one with unread packets waits for one more GET.

        A long-polling client between two requests has not read the packets
        that closed its session (a DISCONNECT, say): its next GET still gets
        them, and the close packet after them, within CLOSE_FLUSH_TIMEOUT; then
        they are dropped. Called before the close packet is queued: a session
        that has nothing else for its client is forgotten at once.
        """
        if self.sessions.get(session.sid) is not session:
            return
        del self.sessions[session.sid]
        outbox = session.outbox
        if not isinstance(outbox, PollingOutbox):
            return
        if session.poll_pending:
            return  # the pending long-poll takes what is queued (then http: closed_poll_answered)
        self.closed_poll_answered(session)

    def closed_poll_answered(self, session: EngineSession) -> None:
        """A closed polling session between two GETs: what is left waits for one more.

        The close packet travels in a payload of its own, so a GET that took the
        last messages leaves it for the next one (within CLOSE_FLUSH_TIMEOUT).
        """
        outbox = session.outbox
        assert isinstance(outbox, PollingOutbox)
        if outbox.pending and session.close_reason != "transport close":  # the client left
            if session.sid not in self.closing_polls:
                self.closing_polls[session.sid] = session
                self.timers.call_later(CLOSE_FLUSH_TIMEOUT, self._drop_closing, session.sid)
        else:
            self.closing_polls.pop(session.sid, None)
            outbox.clear()  # nobody will read it: its bytes go at once

    def _drop_closing(self, sid: str) -> None:
        session = self.closing_polls.pop(sid, None)
        if session is not None:
            session.outbox.clear()  # type: ignore[union-attr]

    def polling_session(self, sid: str) -> EngineSession | None:
        """The session a long-polling request names, a closing one included."""
        return self.sessions.get(sid) or self.closing_polls.get(sid)

    async def run_websocket(self, stream: trio.abc.Stream, received: bytes,
                            request: RequestInfo, sid: str | None,
                            answer: bool = False) -> None:
        """Serve one accepted WebSocket until it or its session closes.

        ``received`` is what the client sent after the upgrade request. With
        ``answer`` the 101 answer of a new session is still to be sent: it
        leaves in one write with the OPEN packet (the fast upgrade). Errors
        caused by the peer close this connection only.
        """
        assert self.nursery is not None
        options = self.options
        # Flush tasks run in the server's nursery: an idle WebSocket owns no nursery.
        outbox = WebSocketOutbox(stream, self.nursery, options.outbox_limit,
                                 self.write_batch, options.outbox_bytes, self.budget,
                                 options.send_timeout)
        protocol = WebSocketProtocol(options.max_payload)
        self.live_websockets += 1
        reader = WebSocketReader(self, stream, outbox, protocol)
        try:
            await reader.run(received, request, sid, answer)
        finally:
            if reader.reading_elsewhere:
                # Cancelled while a follower reads (reader.hand_off): the connection is
                # closed once it is done (soon: shutdown cancels it too).
                assert reader.wake is not None
                with trio.CancelScope(shield=True):
                    await reader.wake.wait()
            # The descriptor is about to close (and may be reused): never write to it again.
            outbox.close()
            reader.release()
            self.live_websockets -= 1
