"""The read loop of one WebSocket (``Engine.run_websocket``), and its part in the upgrade.

One task reads the connection, feeds the frames to the sans-IO
``WebSocketProtocol`` and hands each Engine.IO packet to the session. A
handler run in this task that waits hands the loop to a follower task
(:meth:`WebSocketReader.hand_off`) and takes it back once done. The reader
ends the session and the connection: its close frame, a flush bounded by
``CLOSE_FLUSH_TIMEOUT``, and a bounded linger so the close frame is not lost
to a TCP reset. Errors caused by the peer close this connection only.
"""

from __future__ import annotations

import enum
import logging
import math
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import trio

from .._errors import ProtocolError
from ..protocol import eio
from ..protocol.websocket import CloseCode, WebSocketProtocol, upgrade_answer
from ..protocol.wsframe import encode_frames
from .outbox import WebSocketOutbox
from .tcp import stream_fd

if TYPE_CHECKING:
    from .engine import Engine, EngineSession, RequestInfo

logger = logging.getLogger("roomd.transport")

# How long a closing session may take to flush before its socket is shut, and
# how long (and how many bytes) a closed WebSocket is read and discarded so
# that the close frame is not lost to a TCP reset (RFC 6455 7.1.1).
CLOSE_FLUSH_TIMEOUT = 2.0
CLOSE_LINGER_BYTES = 1 << 20
# After the probe, a pending long-poll is released with a noop only if the
# upgrade has not completed by then; checked this often, as engine.io does
# (released at once, the noop can overtake the client's CONNECT reply).
UPGRADE_NOOP_CHECK = 0.1
RECEIVE_SIZE = 65536
# The close reason of every session when the server shuts down (Socket.IO's name
# for it): a WebSocket closed for it gets the close code 1001, going away.
SHUTTING_DOWN = "server shutting down"


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
            pass  # parked below, outside the handler: an idle connection keeps no exception
        except OSError:
            return b""
        else:
            await trio.lowlevel.checkpoint()
            return data
        await trio.lowlevel.wait_readable(fd)
        try:
            return os.read(fd, RECEIVE_SIZE)
        except BlockingIOError:
            continue
        except OSError:
            return b""


async def receive_stream(stream: trio.abc.ReceiveStream) -> bytes:
    """``receive_some`` for a stream that is not a plain socket (TLS).

    A broken or closed stream reads as its end, as a reset socket does.
    """
    try:
        data = await stream.receive_some(RECEIVE_SIZE)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return b""
    return data if isinstance(data, bytes) else bytes(data)


class WebSocketReader:
    """The read loop of one WebSocket, and its part in the upgrade."""

    def __init__(self, engine: Engine, stream: trio.abc.Stream, outbox: WebSocketOutbox,
                 protocol: WebSocketProtocol) -> None:
        self.engine = engine
        self.stream = stream
        self.outbox = outbox
        self.protocol = protocol
        self.fd = stream_fd(stream)  # -1 over TLS: read through the stream
        self.session: EngineSession | None = None
        self.upgraded = False
        self.scope = trio.CancelScope()
        self.budgeted = 0  # bytes of an incomplete message, counted in the budget
        # The read loop's hand-off (``hand_off``): the messages of the batch being
        # handled (the follower takes what is left), how many hand-offs there were,
        # whether a follower reads, and what tells this (the connection's) task that
        # the read loop is back or over.
        self._batch: Iterator[str | bytes] = _NO_BATCH
        self.handoffs = 0
        self.reading_elsewhere = False
        self.wake: trio.Event | None = None
        self._over = False  # the follower ran the close sequence
        self._home_waiting = False  # this task waits to take the read loop back
        self._park_scope: trio.CancelScope | None = None  # a follower's wait for data

    async def run(self, received: bytes, request: RequestInfo, sid: str | None,
                  answer: bool = False) -> None:
        engine = self.engine
        if sid is None:
            session = engine.new_session("websocket", request, self.outbox)
            self.upgraded = True
            packet = engine.open_packet(session.sid, websocket=True)
            if answer:  # the 101 and the OPEN packet in one write (one segment)
                self.outbox.put_bytes(upgrade_answer(request.headers["sec-websocket-key"])
                                      + encode_frames([eio.encode_packet(packet)]))
            else:
                session.send_packet(packet)
            del packet  # nothing the idle connection does not need stays in this frame
        else:
            found = engine.sessions.get(sid)
            if found is None or not found.begin_upgrade():
                # Already upgraded (or upgrading): the handshake was answered, now close
                # this WebSocket at once, as engine.io does.
                await self._close(CloseCode.POLICY_VIOLATION)
                return
            session = found
        self.session = session
        ended: _Ended | None = None
        with trio.CancelScope() as self.scope:
            if self.upgraded:
                session.reader_scope = self.scope
            else:
                self.scope.deadline = trio.current_time() + engine.options.upgrade_timeout
            ended = await self._read_until_end(received, [])
        while ended is _HANDED_OFF:
            ended = await self._take_back()
        if ended is not _OVER:
            await self._finish(ended)

    async def _read_until_end(self, data: bytes, pending: list[str | bytes]) -> _Ended:
        """The read loop, its failures turned into a close reason and code.

        ``_HANDED_OFF`` when another task took the loop over (``hand_off``).
        """
        engine = self.engine
        session = self.session
        assert session is not None
        address = session.request.address
        try:
            reason = await self._read(data, pending)
        except ProtocolError as exc:
            engine.ratelog.note("malformed packet", address, f"session {session.sid}: {exc}")
            return ("parse error", CloseCode.PROTOCOL_ERROR)
        except _SlowMessage:
            engine.ratelog.note("slow WebSocket message", address,
                                f"session {session.sid}: not finished within "
                                f"{engine.options.body_timeout} s")
            return ("transport error", CloseCode.POLICY_VIOLATION)
        except _OverBudget:
            engine.ratelog.note("memory budget spent", address,
                                f"session {session.sid}: incoming message refused",
                                logging.WARNING)
            return ("transport error", CloseCode.TRY_AGAIN_LATER)
        if isinstance(reason, _Handed):
            return reason
        return (reason, CloseCode.NORMAL)

    async def _finish(self, ended: _Ended | None) -> None:
        """Close the session and the WebSocket once the read loop ended (None: cancelled,
        that is closed by the server or the upgrade timed out)."""
        assert not isinstance(ended, _Handed)
        reason, code = ended or (None, CloseCode.NORMAL)
        session = self.session
        assert session is not None
        if not self.upgraded:
            session.abandon_upgrade()
            # a client that goes away mid-upgrade: ordinary, not worth an INFO line
            logger.debug("session %s: upgrade failed: %s", session.sid, reason or "timed out")
            await self._close(CloseCode.PROTOCOL_ERROR)
            return
        session.reader_scope = None
        if reason is None:
            # Closed by the server: let queued frames (a DISCONNECT, say) leave first,
            # then wait for the client's close frame (see _close).
            await self._close(CloseCode.GOING_AWAY if session.close_reason == SHUTTING_DOWN
                              else CloseCode.NORMAL)
            return
        session.close(reason)
        await self._close(code)

    def hand_off(self) -> None:
        """A handler this task runs waits: a new task goes on reading the connection.

        Called by the session's handler (api.connection) from inside ``session.receive``,
        in the reader's task (a trio trap names its task, so the handler cannot move).
        The rest of the current batch of messages is the follower's, first and in
        order; this task's loop ends once the handler returned. The follower reads
        under a cancel scope of its own, from now on the session's ``reader_scope``:
        closing the session does not cancel the handler left here, as it does not
        cancel a handler worker. The connection's own task, once its handler is done,
        takes the read loop back (``_take_back``), so that an idle connection holds
        one task again; a follower whose handler is done just ends.
        """
        session = self.session
        nursery = self.engine.nursery
        assert session is not None and nursery is not None
        pending = list(self._batch)  # the batch's iterator is now empty: this loop ends
        self._batch = _NO_BATCH
        self.handoffs += 1
        if not self.reading_elsewhere:
            self.reading_elsewhere = True
            self.wake = trio.Event()
        scope = trio.CancelScope()
        if session.closed:
            scope.cancel()
        session.reader_scope = scope
        nursery.start_soon(self._follow, scope, pending, self.handoffs)

    async def _follow(self, scope: trio.CancelScope, pending: list[str | bytes],
                      generation: int) -> None:
        """The read loop, handed off by the reader before (``hand_off``)."""
        ended: _Ended | None = None
        try:
            with scope:
                ended = await self._read_until_end(b"", pending)
            if not isinstance(ended, _Handed):
                await self._finish(ended)
        except Exception:
            logger.exception("WebSocket reader failed")
            if self.session is not None:
                self.session.close("transport error")
        finally:
            if self.handoffs == generation:  # this task read last: back to the connection's
                self._over = ended is not _HANDED_BACK
                self.reading_elsewhere = False
                assert self.wake is not None
                self.wake.set()

    async def _take_back(self) -> _Ended | None:
        """The connection's task, its handler done, takes the read loop back from the
        follower (interrupting its wait for data), or learns that it ran the close
        sequence (``_OVER``)."""
        if self.reading_elsewhere:
            self._home_waiting = True
            if self._park_scope is not None:
                self._park_scope.cancel()
            assert self.wake is not None
            try:
                await self.wake.wait()
            finally:
                self._home_waiting = False
        if self._over:
            return _OVER
        session = self.session
        assert session is not None
        ended: _Ended | None = None
        with trio.CancelScope() as scope:
            session.reader_scope = scope
            if session.closed:
                scope.cancel()
            ended = await self._read_until_end(b"", [])
        return ended

    async def _receive_interruptible(self) -> bytes | None:
        """A follower's read: ``receive_some`` whose wait the connection's task may cut
        short to take the read loop back (None), never once data was read. Over TLS
        it is not cut short: the loop goes back after the next message."""
        fd = self.fd
        if fd < 0:
            return await receive_stream(self.stream)
        while True:
            try:
                data = os.read(fd, RECEIVE_SIZE)
            except BlockingIOError:
                pass
            except OSError:
                return b""
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()  # no cancel: data in hand
                return data
            with trio.CancelScope() as self._park_scope:
                await trio.lowlevel.wait_readable(fd)
            self._park_scope = None
            if self._home_waiting:
                return None

    async def _close(self, code: CloseCode) -> None:
        """Send our close frame (if the peer's close was not answered yet) and linger.

        Closing a TCP socket with unread data makes the kernel send a reset,
        which may destroy the close frame in flight: so the write side is
        shut first and what the peer still sends is read and dropped, for a
        bounded time and number of bytes.
        """
        outbox = self.outbox
        output = self.protocol.take_output()
        outbox.put_bytes(output + self.protocol.close_frame(code))
        if outbox.broken:
            # Reset (a cut network, a killed client): nothing to flush or wait for, and
            # no cancel scope to pay for, 10,000 times over in a storm.
            return
        with trio.move_on_after(CLOSE_FLUSH_TIMEOUT):
            await outbox.drain()
            if outbox.broken or outbox.flushing:
                return
            outbox.close()
            stream = self.stream
            if self.fd < 0 or not isinstance(stream, trio.abc.HalfCloseableStream):
                return  # TLS: its close_notify, sent when the connection ends, says it
            try:
                await stream.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            dropped = 0
            while dropped < CLOSE_LINGER_BYTES:
                data = await receive_some(self.fd)
                if not data:
                    return
                dropped += len(data)

    def release(self) -> None:
        """The connection is gone: give back the incomplete message and its budget."""
        self.protocol.discard()
        self._account(0)
        self.session = None

    def _account(self, held: int) -> None:
        if not self.engine.budget.take(held - self.budgeted):
            raise _OverBudget
        self.budgeted = held

    async def _read(self, data: bytes, pending: list[str | bytes]) -> str | _Handed:
        """Read until the peer goes away; returns the close reason.

        ``pending``: complete messages to handle before reading (a hand-off's).
        ``_HANDED_OFF`` when a handler of this task waited and another task now reads;
        ``_HANDED_BACK`` when this follower gave the loop back to the connection's task.
        """
        protocol = self.protocol
        session = self.session
        assert session is not None
        generation = self.handoffs
        hand_off = self.hand_off
        follower = self.reading_elsewhere  # never the connection's own task
        held = protocol.buffered  # bytes of an incomplete message
        started: float | None = None  # when the incomplete message began
        messages = pending
        if not pending and held != self.budgeted:
            self._account(held)  # a hand-off's batch was handled by the task before
        while True:
            if data:
                messages = protocol.receive(data)
                output = protocol.take_output()
                if output:
                    if protocol.close_code is None:
                        self.outbox.put_control(output)
                    else:
                        self.outbox.put_bytes(output)
                # Counted: the incomplete message, and complete ones until they are handed on.
                held = protocol.buffered
                if messages:
                    held += sum(map(len, messages))
                if held != self.budgeted:
                    self._account(held)
            if messages:
                self._batch = batch = iter(messages)
                handler = session.handler
                if handler is not None and self.upgraded:
                    handler.new_read()
                for message in batch:
                    packet = eio.decode_packet(message)
                    if self.upgraded:
                        await session.receive(packet, hand_off)
                    else:
                        self._upgrade_step(packet)
                if self.handoffs != generation:
                    return _HANDED_OFF
                self._batch = _NO_BATCH  # an idle connection keeps no messages
                started = None  # a message was finished: any incomplete one is new
                held = protocol.buffered
                self._account(held)
                if not session.account_input():
                    raise _OverBudget
                messages = []
            if protocol.close_code is not None:
                return "transport close"
            fd = self.fd
            if follower:
                if self._home_waiting:
                    return _HANDED_BACK
                if held and started is None:
                    started = trio.current_time()
                with trio.move_on_at(started + self.engine.options.body_timeout
                                     if held and started is not None else math.inf) as scope:
                    received = await self._receive_interruptible()
                if scope.cancelled_caught:
                    raise _SlowMessage
                if received is None:
                    return _HANDED_BACK
                data = received
            elif not held:
                data = await (receive_some(fd) if fd >= 0 else receive_stream(self.stream))
            else:
                # An incomplete message must be finished within body_timeout of its start.
                if started is None:
                    started = trio.current_time()
                with trio.move_on_at(started + self.engine.options.body_timeout) as scope:
                    data = await (receive_some(fd) if fd >= 0 else receive_stream(self.stream))
                if scope.cancelled_caught:
                    raise _SlowMessage
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
            self.outbox.put_control(encode_frames(["3probe"]))
            # The client pauses polling next: its pending long-poll must end.
            self.engine.timers.call_later_weak(UPGRADE_NOOP_CHECK,
                                               session.release_poll_for_upgrade)
            return
        if packet.type is not eio.PacketType.UPGRADE:
            raise ProtocolError(f"unexpected {packet.type.name} during upgrade")
        session.finish_upgrade(self.outbox)
        # From now on this task reads the session: a close must interrupt it.
        self.upgraded = True
        self.scope.deadline = float("inf")
        session.reader_scope = self.scope


class _Handed(enum.Enum):
    """How a read loop ended other than with the connection (``hand_off``)."""

    OFF = "went on in another task"
    BACK = "went back to the connection's task"
    OVER = "a follower ran the close sequence"


_HANDED_OFF, _HANDED_BACK, _OVER = _Handed.OFF, _Handed.BACK, _Handed.OVER
_NO_BATCH: Iterator[str | bytes] = iter(())  # shared, always empty
_Ended = tuple[str | None, CloseCode] | _Handed  # how a read loop ended


class _SlowMessage(Exception):
    """An incomplete incoming message took longer than body_timeout."""


class _OverBudget(Exception):
    """An incoming message would exceed the process's memory budget."""
