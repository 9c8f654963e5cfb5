"""The RoomManager actor: the one task that owns room membership.

Connection tasks never touch membership themselves: they send the manager
commands over a memory channel (``cast`` when they need no answer, ``call``
when they do). Because every outgoing Socket.IO packet also goes through the
manager, packets reach each socket in the order they were emitted.

The manager never awaits a client: a broadcast's bytes go into each target
session's outbox with a non-blocking ``put``. A full outbox marks a slow
consumer, which is disconnected under the default policy (or skipped, for a
volatile packet, or under the "drop" policy).

Readers of membership (``Member.rooms``, the snapshots) may look at it
directly: trio runs one task at a time and only the manager task mutates it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import trio

from ..transport.outbox import OutgoingMessage, WriteBatch

logger = logging.getLogger("roomd")

COMMAND_QUEUE = 1024
TAP_QUEUE = 1024


class Member:
    """One socket's membership record; ``rooms`` is mutated only by the manager."""

    __slots__ = ("id", "namespace", "session", "rooms", "owner")

    def __init__(self, sid: str, namespace: str, session: Any, owner: Any) -> None:
        self.id = sid
        self.namespace = namespace
        self.session = session
        self.rooms: set[str] = set()
        self.owner = owner


class Target:
    """Who a broadcast or a bulk operation is for: namespaces, rooms, exclusions.

    No rooms means every socket of the namespaces. A socket in several of the
    rooms is targeted once.
    """

    __slots__ = ("namespaces", "rooms", "except_rooms")

    def __init__(self, namespaces: Iterable[str], rooms: Iterable[str] = (),
                 except_rooms: Iterable[str] = ()) -> None:
        self.namespaces = tuple(namespaces)
        self.rooms = frozenset(rooms)
        self.except_rooms = frozenset(except_rooms)


class _Reply:
    __slots__ = ("done", "value", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class _NamespaceState:
    __slots__ = ("rooms", "members")

    def __init__(self) -> None:
        self.rooms: dict[str, set[Member]] = {}
        self.members: dict[str, Member] = {}


class RoomManager:
    """Owns namespace -> room -> members and member -> rooms.

    Start :meth:`run` in a nursery before use. Commands sent after the
    manager stopped raise ``trio.ClosedResourceError``.
    """

    def __init__(self, slow_consumer: str = "disconnect",
                 write_batch: WriteBatch | None = None) -> None:
        self._batch = write_batch or WriteBatch()
        self._send, self._receive = trio.open_memory_channel[tuple](COMMAND_QUEUE)
        self._namespaces: dict[str, _NamespaceState] = {}
        self._taps: list[trio.MemorySendChannel[dict]] = []
        self._drop_slow = slow_consumer == "drop"
        self.events_total = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Execute commands until cancelled.

        A command that raises fails only its caller (``call``) or is logged
        (``cast``); the manager keeps running.
        """
        task_status.started()
        try:
            receive = self._receive
            async for command in receive:
                if not receive.statistics().current_buffer_used:
                    self._execute(*command)
                    del command  # a departed socket must not stay alive until the next one
                    continue
                # A backlog: run it all, then write once per socket.
                self._batch.open = True
                try:
                    self._execute(*command)
                    while True:
                        try:
                            command = receive.receive_nowait()
                        except trio.WouldBlock:
                            break
                        self._execute(*command)
                finally:
                    self._batch.close()
                del command
        finally:
            # Commands are synchronous: finish the ones already queued so that
            # no caller waits forever for a stopped manager.
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

    async def cast(self, function: Callable[..., Any], *args: Any) -> None:
        """Queue a command; a stopped manager runs it at once.

        Yields only when the command queue is full (backpressure): an emit
        need not cost its task a trip through the scheduler.
        """
        command = (function, args, None)
        try:
            try:
                self._send.send_nowait(command)
            except trio.WouldBlock:
                await self._send.send(command)
        except trio.ClosedResourceError:
            self._execute(function, args, None)

    async def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Queue a command and return its result (or raise its error)."""
        reply = _Reply()
        try:
            await self._send.send((function, args, reply))
        except trio.ClosedResourceError:
            self._execute(function, args, reply)
        await reply.done.wait()
        if reply.error is not None:
            raise reply.error
        return reply.value

    # -- public commands -----------------------------------------------
    async def add(self, member: Member) -> None:
        """Register a member; it joins the room named by its own id."""
        await self.call(self._add, member)

    async def remove(self, member: Member) -> None:
        """Take a member out of every room; returns once done."""
        await self.call(self._remove, member)

    async def join(self, member: Member, rooms: Iterable[str]) -> None:
        await self.call(self._join, member, tuple(rooms))

    async def leave(self, member: Member, rooms: Iterable[str]) -> None:
        await self.call(self._leave, member, tuple(rooms))

    async def deliver(self, member: Member, message: OutgoingMessage,
                      volatile: bool = False, tap: dict | None = None) -> None:
        """Send one packet to one member, in order with its broadcasts."""
        await self.cast(self._deliver, member, message, volatile, tap)

    async def broadcast(self, target: Target, message: OutgoingMessage, *,
                        volatile: bool = False, tap: dict | None = None,
                        wait: bool = False) -> list[Member] | None:
        """Send one encoded packet to every member of ``target``.

        With ``wait`` the recipients are returned once the packet is in
        their outboxes; otherwise this returns as soon as the manager has
        the command.
        """
        if wait:
            return await self.call(self._broadcast, target, message, volatile, tap, True)
        await self.cast(self._broadcast, target, message, volatile, tap, False)
        return None

    async def select(self, target: Target) -> list[Member]:
        return await self.call(self._select, target)

    async def join_target(self, target: Target, rooms: Iterable[str]) -> None:
        await self.call(self._join_target, target, tuple(rooms))

    async def leave_target(self, target: Target, rooms: Iterable[str]) -> None:
        await self.call(self._leave_target, target, tuple(rooms))

    async def rooms_snapshot(self, namespace: str | None) -> list[dict]:
        return await self.call(self._rooms_snapshot, namespace)

    @asynccontextmanager
    async def open_tap(self) -> AsyncIterator[trio.MemoryReceiveChannel[dict]]:
        """Receive a dict for every emitted event while the context is open.

        A tap that does not keep up loses events rather than slowing the
        manager.
        """
        send, receive = trio.open_memory_channel[dict](TAP_QUEUE)
        self._taps.append(send)
        try:
            async with receive:
                yield receive
        finally:
            self._taps.remove(send)
            send.close()

    def counts(self) -> dict[str, int]:
        rooms = sum(1 for ns in self._namespaces.values() for name, members in ns.rooms.items()
                    if not (len(members) == 1 and next(iter(members)).id == name))
        sockets = sum(len(ns.members) for ns in self._namespaces.values())
        return {"rooms": rooms, "sockets": sockets}

    # -- command bodies (run in the manager task) ------------------------
    def _state(self, namespace: str) -> _NamespaceState:
        state = self._namespaces.get(namespace)
        if state is None:
            state = self._namespaces[namespace] = _NamespaceState()
        return state

    def _add(self, member: Member) -> None:
        self._state(member.namespace).members[member.id] = member
        self._join(member, (member.id,))

    def _remove(self, member: Member) -> None:
        state = self._namespaces.get(member.namespace)
        if state is None:
            return
        self._leave(member, tuple(member.rooms))
        state.members.pop(member.id, None)

    def _join(self, member: Member, rooms: tuple[str, ...]) -> None:
        state = self._namespaces.get(member.namespace)
        if state is None or state.members.get(member.id) is not member:
            return  # already gone: a late join must not resurrect it
        for room in rooms:
            members = state.rooms.get(room)
            if members is None:
                members = state.rooms[room] = set()
            members.add(member)
            member.rooms.add(room)

    def _leave(self, member: Member, rooms: tuple[str, ...]) -> None:
        state = self._namespaces.get(member.namespace)
        if state is None:
            return
        for room in rooms:
            members = state.rooms.get(room)
            if members is not None:
                members.discard(member)
                if not members:
                    del state.rooms[room]
            member.rooms.discard(room)

    def _deliver(self, member: Member, message: OutgoingMessage, volatile: bool,
                 tap: dict | None) -> None:
        if not member.session.send(message, volatile):
            self._slow((member,), volatile)
        elif tap is not None:
            self.events_total += 1
            if self._taps:
                self._publish_tap(Target((member.namespace,), (member.id,)), tap, 1)

    def _targets(self, target: Target) -> Iterable[Member]:
        """The members of ``target``, each once (may be a live set: do not mutate)."""
        found: list[Iterable[Member]] = []
        for namespace in target.namespaces:
            state = self._namespaces.get(namespace)
            if state is None:
                continue
            if not target.rooms:
                found.append(state.members.values())
            elif len(target.rooms) == 1:
                (room,) = target.rooms
                found.append(state.rooms.get(room, ()))
            else:
                union: set[Member] = set()
                for room in target.rooms:
                    union.update(state.rooms.get(room, ()))
                found.append(union)
            if target.except_rooms:
                excluded: set[Member] = set()
                for room in target.except_rooms:
                    excluded.update(state.rooms.get(room, ()))
                if excluded:
                    found[-1] = [m for m in found[-1] if m not in excluded]
        if len(found) == 1:
            return found[0]
        return [m for members in found for m in members]

    def _broadcast(self, target: Target, message: OutgoingMessage, volatile: bool,
                   tap: dict | None, collect: bool) -> list[Member] | None:
        self.events_total += 1
        slow: list[Member] | None = None
        recipients = self._targets(target)
        count = 0
        for member in recipients:
            if member.session.send(message, volatile):
                count += 1
            elif slow is None:
                slow = [member]
            else:
                slow.append(member)
        if slow:
            self._slow(slow, volatile)
        if self._taps and tap is not None:
            self._publish_tap(target, tap, count)
        if not collect:
            return None
        return [m for m in recipients if slow is None or m not in slow]

    def _publish_tap(self, target: Target, tap: dict, count: int) -> None:
        record = dict(tap, time=time.time(), namespace=target.namespaces[0] if len(
            target.namespaces) == 1 else list(target.namespaces),
            rooms=sorted(target.rooms), recipients=count)
        record["except"] = sorted(target.except_rooms)
        for send in self._taps:
            try:
                send.send_nowait(record)
            except trio.WouldBlock:
                pass

    def _slow(self, members: Iterable[Member], volatile: bool) -> None:
        if volatile or self._drop_slow:
            return
        for member in members:
            if not member.session.closed:
                logger.warning("socket %s (session %s): outbox full, disconnecting slow consumer",
                               member.id, member.session.sid)
                member.session.close("slow consumer")

    def _select(self, target: Target) -> list[Member]:
        return list(self._targets(target))

    def _join_target(self, target: Target, rooms: tuple[str, ...]) -> None:
        for member in list(self._targets(target)):
            self._join(member, rooms)

    def _leave_target(self, target: Target, rooms: tuple[str, ...]) -> None:
        for member in list(self._targets(target)):
            self._leave(member, rooms)

    def _rooms_snapshot(self, namespace: str | None) -> list[dict]:
        out = []
        for name, state in sorted(self._namespaces.items()):
            if namespace is not None and name != namespace:
                continue
            for room, members in sorted(state.rooms.items()):
                ids = sorted(m.id for m in members)
                out.append({"namespace": name, "room": room, "members": ids,
                            "private": room in state.members and ids == [room]})
        return out
