"""The RoomManager actor: the one task that changes room membership.

Connection tasks never touch membership themselves: an adapter sends the
manager a command (a plain function and its arguments) over a memory
channel, with :meth:`RoomManager.cast` when it needs no answer and
:meth:`RoomManager.call` when it does. Because every outgoing Socket.IO
packet also goes through the manager, packets reach each socket in the
order they were emitted.

Commands are synchronous and never await a client. When several commands
are waiting, the manager runs the whole backlog inside one
:class:`~roomd.transport.outbox.WriteBatch`, so the messages a burst sends
to one socket leave in one write.

Readers of membership may look at it directly: trio runs one task at a
time and only the manager task mutates it.

A command sent while the manager is idle (no command queued or being
handed to it) runs at once in the caller's task: with nothing ahead of it,
running it there keeps every order the actor guarantees, and saves the task
switches of the trip through the actor (two and an Event for a
:meth:`RoomManager.call`, one for a :meth:`RoomManager.cast`; measured in
docs/performance.md, issue 12). Only the first cast of a turn runs so: a
task that casts several commands without yielding (a burst of emits) still
hands the rest to the manager, which runs them as one backlog and writes
once per socket. A turn ends when the manager runs or when
:meth:`RoomManager.new_turn` says so (a client message arrived, so the
scheduler has run since).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import trio

from ..transport.outbox import WriteBatch

logger = logging.getLogger("roomd.rooms")

# Commands queued before a sender waits (backpressure on emitters). Large
# enough that a burst from many connections does not make them yield.
COMMAND_QUEUE = 1024


class _Reply:
    __slots__ = ("done", "value", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class RoomManager:
    """Runs membership and delivery commands, one at a time, in one task.

    Start :meth:`run` in a nursery before use. After it stopped, commands
    run at once in the caller's task, so nobody waits for a dead actor.
    """

    def __init__(self, write_batch: WriteBatch | None = None) -> None:
        self.batch = write_batch or WriteBatch()
        self._send, self._receive = trio.open_memory_channel[tuple](COMMAND_QUEUE)
        # Commands sent to run() and not executed yet (queued, or handed to the
        # parked receiver); while it is 0 a call may run in the caller's task.
        self._pending = 0
        self._running = False
        # A cast ran in its caller's task in this turn: the next ones queue (and batch).
        self._inlined = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Execute commands until cancelled.

        A command that raises fails only its caller (``call``) or is logged
        (``cast``); the manager keeps running.
        """
        task_status.started()
        self._running = True
        try:
            receive = self._receive
            async for command in receive:
                self._inlined = False
                if not receive.statistics().current_buffer_used:
                    self._pending -= 1
                    self._execute(*command)
                    del command  # a departed socket must not stay alive until the next one
                    continue
                # A backlog: run it all, then write once per socket.
                self.batch.open = True
                try:
                    self._pending -= 1
                    self._execute(*command)
                    while True:
                        try:
                            command = receive.receive_nowait()
                        except trio.WouldBlock:
                            break
                        self._pending -= 1
                        self._execute(*command)
                finally:
                    self.batch.close()
                del command
        finally:
            self._running = False
            # Finish the commands already queued so that no caller waits forever.
            self._send.close()
            while True:
                try:
                    command = self._receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                self._execute(*command)

    def _execute(self, function: Callable[..., Any], args: tuple, reply: _Reply | None) -> None:
        try:
            value = function(*args)
        except Exception as exc:
            if reply is None:
                logger.exception("room manager command %s failed", function.__name__)
            else:
                reply.error = exc
        else:
            if reply is not None:
                reply.value = value
        if reply is not None:
            reply.done.set()

    def new_turn(self) -> None:
        """The scheduler has run since the last cast: the next one may run at once."""
        self._inlined = False

    async def cast(self, function: Callable[..., Any], *args: Any) -> None:
        """Queue a command; a stopped manager, or an idle one (first cast of a turn),
        runs it at once.

        Yields only when the command queue is full (backpressure): an emit
        need not cost its task a trip through the scheduler.
        """
        if self._running and not self._pending and not self._inlined:
            self._inlined = True
            self._execute(function, args, None)
            return
        command = (function, args, None)
        try:
            try:
                self._send.send_nowait(command)
            except trio.WouldBlock:
                self._pending += 1
                try:
                    await self._send.send(command)
                except BaseException:
                    self._pending -= 1
                    raise
                return
            self._pending += 1
        except trio.ClosedResourceError:
            self._execute(function, args, None)

    async def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Queue a command and return its result (or raise its error).

        Cancelling the caller does not cancel the command: it still runs.
        When the manager is idle the command runs here and now, without a
        checkpoint (like :meth:`cast`).
        """
        if self._running and not self._pending:
            return function(*args)
        reply = _Reply()
        try:
            self._pending += 1
            await self._send.send((function, args, reply))
        except trio.ClosedResourceError:
            self._pending -= 1
            self._execute(function, args, reply)
        except BaseException:
            self._pending -= 1
            raise
        await reply.done.wait()
        if reply.error is not None:
            raise reply.error
        return reply.value
