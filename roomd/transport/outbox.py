"""Per-session outgoing queues: the end of the broadcast hot path.

A broadcast is encoded once into an :class:`OutgoingMessage`; each target
session's outbox then takes the form its transport needs (pre-framed
WebSocket bytes, or Engine.IO packets for the next long-poll) without copying
or re-encoding per recipient.

Outboxes never block and never await: :meth:`put` either accepts the message
or returns False when the outbox is full (a slow consumer), and the caller
applies the slow-consumer policy.

Full means any of: ``limit`` messages queued, ``max_bytes`` bytes queued, or
the process-wide :class:`~roomd.transport.limits.Budget` spent. The first
message of an empty outbox is never refused for its size alone (a message
may be as large as maxPayload), but always counts against the budget.
Bytes are counted per outbox, so a broadcast's shared frames count once per
recipient that has not taken them yet: the count is an upper bound of the
memory held. Control answers (pongs, probes) are never queued behind data:
when data is waiting, they are dropped (the peer's next ping is answered).
"""

from __future__ import annotations

import collections
import os
import socket
from typing import TYPE_CHECKING, Any

import trio

from ..protocol import eio
from ..protocol.wsframe import encode_frames
from .limits import Budget
from .tcp import stream_fd

if TYPE_CHECKING:
    from collections.abc import Sequence


# A client must take this much of what is queued for it within ``send_timeout``
# (8.5 KiB/s at the defaults), or its connection is shut: a reader that never
# reads holds its outbox for a bounded time, not only in bounded bytes.
STALL_CHUNK = 256 * 1024


class OutgoingMessage:
    """One Socket.IO packet, encoded once, ready for any number of sessions.

    ``eio_parts`` are the Engine.IO packets it becomes: the text packet
    ("4" + Socket.IO text) followed by one bytes item per binary attachment.
    The WebSocket framing is computed on first use and shared.
    """

    __slots__ = ("eio_parts", "_frames")

    def __init__(self, sio_parts: Sequence[str | bytes]) -> None:
        parts: list[str | bytes] = ["4" + sio_parts[0]]  # type: ignore[operator]
        parts.extend(sio_parts[1:])
        self.eio_parts = parts
        self._frames: bytes | None = None

    @property
    def ws_frames(self) -> bytes:
        frames = self._frames
        if frames is None:
            frames = self._frames = encode_frames(self.eio_parts)
        return frames


class WriteBatch:
    """Lets the messages a burst sends to one socket leave in one write.

    While a batch is open, WebSocket outboxes hold what they are given;
    :meth:`close` then writes each one's holdings at once. The RoomManager
    opens a batch when several commands are waiting for it, so the busier
    the server, the fewer syscalls per delivery.
    """

    __slots__ = ("open", "_held")

    def __init__(self) -> None:
        self.open = False
        self._held: list[WebSocketOutbox] = []

    def close(self) -> None:
        self.open = False
        held, self._held = self._held, []
        for outbox in held:
            outbox._release()


class WebSocketOutbox:
    """Outbox of a WebSocket session: everything roomd sends on it goes here.

    When no flush is in progress, :meth:`put_bytes` writes the frames straight
    into the socket's kernel buffer with one non-blocking ``write``; no task
    is woken. Whatever does not fit is queued, and one flush task (started on
    demand in the connection's nursery) sends the whole queue in one
    ``send_all`` per round, so a burst for one socket leaves in as few
    syscalls as possible. Being the only writer of the socket, it keeps
    frames in order.

    A stream that is not a plain socket (TLS) has no descriptor to write to:
    then every write goes through the flush task and the stream's
    ``send_all``, which encrypts.
    """

    __slots__ = ("_stream", "_fd", "_nursery", "_limit", "_max_bytes", "_budget", "_queue",
                 "_queued", "_inflight", "_flushing", "_drained", "_batch", "_held",
                 "_stall_timeout", "broken")

    def __init__(self, stream: trio.abc.SendStream, nursery: trio.Nursery, limit: int,
                 batch: WriteBatch | None = None, max_bytes: int = 0,
                 budget: Budget | None = None, stall_timeout: float = 0) -> None:
        self._stream = stream
        self._batch = batch or WriteBatch()
        self._held: list[bytes] | None = None
        self._fd = stream_fd(stream)
        self._nursery = nursery
        self._limit = limit
        self._max_bytes = max_bytes  # 0: unlimited
        self._budget = budget or Budget(0)
        # Only appended to and cleared: a list (an empty deque is 600 bytes per connection).
        self._queue: list[bytes] = []
        self._queued = 0  # bytes held, queued or being sent; counted in the budget
        self._inflight = 0
        self._flushing = False
        self._drained: trio.Event | None = None
        self._stall_timeout = stall_timeout or float("inf")
        self.broken = False

    @property
    def queued_bytes(self) -> int:
        return self._queued

    @property
    def flushing(self) -> bool:
        """A flush task is sending what the kernel did not take at once."""
        return self._flushing

    def _admit(self, n: int) -> bool:
        """Count ``n`` more bytes held; False when over the outbox's or the process's bound."""
        queued = self._queued
        if queued and self._max_bytes and queued + n > self._max_bytes:
            return False
        if not self._budget.take(n):
            return False
        self._queued = queued + n
        return True

    def _forget(self, n: int) -> None:
        self._queued -= n
        self._budget.give(n)

    def put(self, message: OutgoingMessage, volatile: bool = False) -> bool:
        return self.put_bytes(message.ws_frames, volatile)

    def put_control(self, data: bytes) -> None:
        """Send a control answer (pong, probe) now, or drop it when data is waiting."""
        if not self._flushing and self._held is None:
            self.put_bytes(data)

    def put_bytes(self, data: bytes, volatile: bool = False) -> bool:
        """Write or queue ``data``; False when the outbox is full."""
        if self.broken:
            return True
        if self._batch.open and not self._flushing:
            held = self._held
            if held is not None and len(held) >= self._limit or not self._admit(len(data)):
                return volatile
            if held is None:
                self._held = [data]
                self._batch._held.append(self)
            else:
                held.append(data)
            return True
        if self._flushing:
            # Queued data is waiting: a volatile message is simply dropped.
            if volatile:
                return True
            if len(self._queue) >= self._limit or not self._admit(len(data)):
                return False
            self._queue.append(data)
            return True
        fd = self._fd
        if fd < 0:
            sent = 0  # TLS: the flush task sends through the stream
        else:
            try:
                sent = os.write(fd, data)
            except BlockingIOError:
                sent = 0
            except OSError:
                # The reader sees the dead socket and closes the session.
                self.broken = True
                return True
        if sent < len(data):
            rest = data[sent:]
            if not self._admit(len(rest)):
                return False
            self._queue.append(rest)
            self._flushing = True
            self._nursery.start_soon(self._flush)
        return True

    def _release(self) -> None:
        held, self._held = self._held, None
        if held:
            self._forget(sum(len(d) for d in held))
            self.put_bytes(b"".join(held) if len(held) > 1 else held[0])

    async def _flush(self) -> None:
        queue = self._queue
        try:
            while queue and not self.broken:
                data = b"".join(queue) if len(queue) > 1 else queue[0]
                queue.clear()
                self._inflight = len(data)
                try:
                    await self._send(data)
                finally:
                    self._forget(self._inflight)
                    self._inflight = 0
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.close()
        except trio.TooSlowError:
            # The client stopped reading: shut the socket, so that its reader sees the end.
            self.close()
            stream: Any = self._stream
            while isinstance(stream, trio.SSLStream):
                stream = stream.transport_stream
            try:
                stream.socket.shutdown(socket.SHUT_RDWR)
            except (OSError, AttributeError):
                pass
        finally:
            self._flushing = False
            if self._drained is not None:
                self._drained.set()
                self._drained = None

    async def _send(self, data: bytes) -> None:
        """Send, giving the client ``stall_timeout`` for each STALL_CHUNK it must take."""
        timeout = self._stall_timeout
        if len(data) <= STALL_CHUNK:
            with trio.fail_after(timeout):
                await self._stream.send_all(data)
            return
        view = memoryview(data)
        for start in range(0, len(view), STALL_CHUNK):
            with trio.fail_after(timeout):
                await self._stream.send_all(view[start:start + STALL_CHUNK])

    def close(self) -> None:
        """Never write again (the descriptor may be reused): drop what is queued or held."""
        self.broken = True
        dropped = self._queued - self._inflight
        self._queue.clear()
        self._held = None
        if dropped:
            self._forget(dropped)

    async def drain(self) -> None:
        """Wait until everything queued has been handed to the kernel."""
        while self._flushing and not self.broken:
            if self._drained is None:
                self._drained = trio.Event()
            await self._drained.wait()


_CLOSE = eio.encode_packet(eio.Packet(eio.PacketType.CLOSE))


class PollingOutbox:
    """Outbox of a long-polling session: Engine.IO packets for the next GET."""

    __slots__ = ("_limit", "_max_bytes", "_budget", "_queue", "_queued", "_pongs", "_wakeup")

    def __init__(self, limit: int, max_bytes: int = 0, budget: Budget | None = None) -> None:
        self._limit = limit
        self._max_bytes = max_bytes
        self._budget = budget or Budget(0)
        self._queue: collections.deque[str | bytes] = collections.deque()
        self._queued = 0
        self._pongs = 0
        self._wakeup = trio.Event()

    @property
    def queued_bytes(self) -> int:
        return self._queued

    @property
    def pending(self) -> int:
        """Packets queued and not yet taken."""
        return len(self._queue)

    def put(self, message: OutgoingMessage, volatile: bool = False) -> bool:
        if volatile and self._queue:
            return True
        if len(self._queue) >= self._limit:
            return False
        parts = message.eio_parts
        n = sum(len(p) for p in parts)
        queued = self._queued
        if queued and self._max_bytes and queued + n > self._max_bytes:
            return False
        if not self._budget.take(n):
            return False
        self._queued = queued + n
        self._queue.extend(parts)
        self._wakeup.set()
        return True

    def put_packet(self, packet: eio.Packet) -> None:
        """Queue a control packet (ping, noop, close); never refused.

        A pong is queued only when none is waiting: however many pings a
        client sends between two long-polls, it is owed one pong.
        """
        if packet.type is eio.PacketType.PONG:
            if self._pongs:
                return
            self._pongs += 1
        self._queue.append(eio.encode_packet(packet))
        self._wakeup.set()

    def _popped(self, item: str | bytes) -> None:
        if isinstance(item, str) and item[:1] == "3":
            self._pongs -= 1
        elif isinstance(item, bytes) or item[:1] == "4":
            self._queued -= len(item)
            self._budget.give(len(item))

    def wake(self) -> None:
        self._wakeup.set()

    async def wait(self) -> None:
        """Wait until something is queued or :meth:`wake` is called."""
        if not self._queue:
            await self._wakeup.wait()
        self._wakeup = trio.Event()

    def take(self, max_bytes: int) -> list[eio.Packet]:
        """Remove and return queued packets, at least one and about max_bytes."""
        out: list[eio.Packet] = []
        size = 0
        queue = self._queue
        while queue:
            item = queue[0]
            size += len(item)
            if out and (size > max_bytes or item == _CLOSE):
                # The close packet travels alone: clients handle it before the
                # messages of the same payload (socket.io-client does), and a
                # DISCONNECT would lose its reason.
                break
            queue.popleft()
            self._popped(item)
            out.append(eio.decode_packet(item) if isinstance(item, str)
                       else eio.Packet(eio.PacketType.MESSAGE, item))
        return out

    def take_all_raw(self) -> list[str | bytes]:
        """Remove everything queued, in wire form (for the move to WebSocket)."""
        items = list(self._queue)
        self.clear()
        return items

    def clear(self) -> None:
        """Drop everything queued (the session is gone) and give its bytes back."""
        self._queue.clear()
        self._budget.give(self._queued)
        self._queued = 0
        self._pongs = 0
