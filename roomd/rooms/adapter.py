"""Adapters: per-namespace room membership and broadcasting.

As in Socket.IO, each namespace has an adapter that owns its rooms and
carries its broadcasts; the public broadcast operator is built on it, so a
cluster adapter can replace the in-memory one without touching the rest.

:class:`InMemoryAdapter` is the default and the base of cluster adapters.
Its state (room -> members, id -> member) is changed only by commands that
run in the :class:`~roomd.rooms.manager.RoomManager` task; its async
methods send those commands and may be called from any task. A cluster
adapter overrides the operations that reach other nodes: it publishes
them, then calls the in-memory implementation for its own sockets; what
arrives from other nodes is applied with ``BroadcastOptions.local`` set.

Connection state recovery (``rooms/recovery.py``) lives here too, as in
Socket.IO's SessionAwareAdapter: with recovery on, the adapter logs every
broadcast that qualifies (an event, no ack id, not volatile) and gives it
its offset; :meth:`InMemoryAdapter.persist_session` keeps a departing
socket's session and :meth:`InMemoryAdapter.restore_session` hands it back.
A cluster adapter that recovers across nodes overrides those two.

Errors: membership commands for a socket that already left are ignored (a
late join must not resurrect it); an operation that fails raises in the
caller only.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable
from collections.abc import Set as AbstractSet
from typing import Any

import trio

from ..transport.outbox import OutgoingMessage
from .acks import AckCallback, AckRegistry
from .delivery import Delivery
from .manager import RoomManager
from .records import BroadcastOptions, Emission, LocalSocket, Member, RemoteSocketRecord
from .recovery import PacketLog, RecoveryOptions, RestoredSession, SessionRecord, SessionStore
from .taps import Taps, tap_record

logger = logging.getLogger("roomd.rooms")
# The members of a room that does not exist (shared, never mutated).
_NOBODY: frozenset = frozenset()

# The values adapters handle live in records.py; importing them from here keeps working.
__all__ = [
    "AckCloser", "AdapterContext", "AdapterFactory", "BroadcastOptions", "Emission",
    "InMemoryAdapter", "LocalSocket", "Member", "RemoteSocketRecord", "ServerEventHandler",
]


ServerEventHandler = Callable[[str, list, "Callable[[list], None] | None"], Awaitable[None]]


@dataclasses.dataclass(frozen=True)
class AdapterContext:
    """What every adapter of a server is handed.

    ``on_server_event(namespace, args, reply)`` runs the namespace's
    handlers of a server-side emit from another node; ``reply(args)`` (or
    None when no reply is wanted) answers it.
    """

    manager: RoomManager
    delivery: Delivery
    taps: Taps
    acks: AckRegistry
    on_server_event: ServerEventHandler | None = None
    recovery: RecoveryOptions | None = None


AckCloser = Callable[[], None]


class InMemoryAdapter:
    """The rooms of one namespace in this process; the base of cluster adapters."""

    def __init__(self, namespace: str, context: AdapterContext) -> None:
        self.namespace = namespace
        self.context = context
        self._manager = context.manager
        self._delivery = context.delivery
        self._taps = context.taps
        self.rooms: dict[str, set[Member]] = {}
        self.members: dict[str, Member] = {}
        recovery = context.recovery
        self.recovery = recovery if recovery is not None and recovery.covers(namespace) else None
        self._log: PacketLog | None = None
        self._sessions: SessionStore | None = None
        self._pids: dict[str, Member] = {}
        if self.recovery is not None:
            self._log = PacketLog(self.recovery.max_packets, self.recovery.max_bytes,
                                  self.recovery.max_disconnection_duration)
            self._sessions = SessionStore(self.recovery.max_sessions,
                                          self.recovery.max_disconnection_duration)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.namespace}>"

    # -- lifecycle ---------------------------------------------------------
    async def init(self) -> None:
        """Called once the server runs (cluster adapters subscribe here)."""

    async def close(self) -> None:
        """Called when the server stops."""

    def status(self) -> dict[str, Any]:
        return {"adapter": "memory"}

    def recovery_status(self) -> dict[str, int] | None:
        """What the recovery stores hold (None when recovery is off here).

        Read only: expired entries leave at the namespace's next use.
        """
        log, sessions = self._log, self._sessions
        if log is None or sessions is None:
            return None
        return {"sessions": len(sessions), "packets": len(log), "bytes": log.bytes}

    # -- membership of one local socket ------------------------------------
    async def add_member(self, member: Member, restored: RestoredSession | None = None) -> None:
        """Register a socket; it joins the room named by its own id.

        A ``restored`` session's rooms are joined and its missed packets
        replayed in the same command, so no broadcast falls between.
        """
        await self._manager.call(self._add_member, member, restored)

    async def add_all(self, member: Member, rooms: Iterable[str]) -> None:
        await self._manager.call(self._join, member, tuple(rooms))

    async def delete(self, member: Member, rooms: Iterable[str]) -> None:
        await self._manager.call(self._leave, member, tuple(rooms))

    async def delete_all(self, member: Member, persist: bool = False) -> None:
        """Take a socket out of every room and forget it.

        With ``persist`` (recovery on, a reason that keeps a session), its
        session is kept here in the same command (so a reconnect can never
        fall between), then handed to :meth:`share_session`.
        """
        record = await self._manager.call(self._remove_member, member, persist)
        if record is not None:
            await self.share_session(record)

    # -- connection state recovery -------------------------------------------
    # The hooks a cluster adapter overrides to recover across nodes (as
    # @socket.io/redis-streams-adapter does): ``share_session`` stores a kept
    # session where the other nodes find it, ``restore_session`` looks there
    # after this node's own sessions (super() first: it also takes over a
    # socket still connected here), and the broadcasts it receives from the
    # cluster carry the cluster's offsets instead of this log's.
    async def persist_session(self, record: SessionRecord) -> None:
        """Keep a disconnected socket's session for ``max_disconnection_duration``."""
        await self._manager.call(self._persist, record)
        await self.share_session(record)

    async def share_session(self, record: SessionRecord) -> None:
        """A session was kept on this node; a cluster adapter shares it (here: nothing)."""

    async def restore_session(self, pid: Any, offset: Any) -> RestoredSession | None:
        """The session of ``pid``, if it can be recovered completely; it is consumed.

        ``offset`` is the client's last offset (None when it received no
        event: the replay starts where the socket's record starts). A pid
        whose socket is still connected here (the server has not yet noticed
        that its transport died) is taken over: that socket's Engine.IO
        session is closed and its session moves to the caller. Returns None
        (a fresh session) for an unknown, expired or forged pid or offset,
        or when packets after the offset have left the log.
        """
        if self._sessions is None or not isinstance(pid, str):
            return None
        return await self._manager.call(self._restore, pid, offset)

    # -- sending -------------------------------------------------------------
    async def send(self, member: Member, message: OutgoingMessage,
                   emission: Emission | None = None) -> None:
        """One packet to one local socket, in order with its broadcasts.

        ``emission`` is given for events (it is counted and tapped).
        """
        await self._manager.cast(self._send, member, message, emission)

    async def broadcast(self, emission: Emission, opts: BroadcastOptions) -> None:
        """Send to every target socket; returns once the manager has it.

        The packet is encoded here, in the caller's task: an argument that
        cannot be encoded raises TypeError before anything is sent.
        """
        self._encode(emission, opts)
        await self._manager.cast(self._broadcast, emission, opts)

    async def broadcast_count(self, emission: Emission, opts: BroadcastOptions) -> int:
        """Broadcast, and return how many local sockets it was queued for."""
        self._encode(emission, opts)
        return await self._manager.call(self._broadcast, emission, opts)

    def _encode(self, emission: Emission, opts: BroadcastOptions) -> None:
        """Encode in the caller's task (raising there); a logged event gets its offset later."""
        if self._log is not None and not opts.volatile:
            emission.parts()
        else:
            emission.message()

    async def broadcast_with_ack(self, emission: Emission, opts: BroadcastOptions,
                                 on_count: Callable[[int], None],
                                 on_ack: AckCallback) -> AckCloser:
        """Broadcast with an ack id; call ``on_count`` once per node, ``on_ack`` per ack.

        Returns a function that stops the collection (call it when done).
        """
        acks = self.context.acks
        ack_id = acks.open(on_ack)
        try:
            message = emission.message(ack_id)
            count = await self._manager.call(self._broadcast_message, emission, message, opts)
        except BaseException:
            acks.close(ack_id)
            raise
        on_count(count)
        return lambda: acks.close(ack_id)

    # -- bulk operations -----------------------------------------------------
    async def fetch_sockets(self, opts: BroadcastOptions) -> list[Member | RemoteSocketRecord]:
        return await self._manager.call(self._select, opts)

    async def add_sockets(self, opts: BroadcastOptions, rooms: Iterable[str]) -> None:
        await self._manager.call(self._add_sockets, opts, tuple(rooms))

    async def del_sockets(self, opts: BroadcastOptions, rooms: Iterable[str]) -> None:
        await self._manager.call(self._del_sockets, opts, tuple(rooms))

    async def disconnect_sockets(self, opts: BroadcastOptions, close: bool) -> None:
        members: list[Member] = await self._manager.call(self._select, opts)
        for member in members:
            await member.owner.disconnect(close)

    async def server_side_emit(self, args: list,
                               on_reply: Callable[[list], None] | None = None) -> int:
        """Send ``args`` to the other servers; returns how many will reply.

        A single process has no other server: nothing is sent.
        """
        return 0

    async def all_rooms(self) -> set[str]:
        """Every room name, socket-id rooms included."""
        return set(self.rooms)

    async def server_count(self) -> int:
        return 1

    # -- views for the admin socket -------------------------------------------
    async def rooms_snapshot(self) -> list[dict[str, Any]]:
        return await self._manager.call(self._rooms_snapshot)

    def is_socket_room(self, room: str) -> bool:
        """Whether ``room`` is the own room of a socket here, or of one that may come back
        (a kept recovery session): another socket must not join it."""
        sessions = self._sessions
        return room in self.members or (sessions is not None and room in sessions.sids)

    def counts(self) -> tuple[int, int]:
        """(sockets, rooms that are not a socket's own room)."""
        rooms = sum(1 for name, members in self.rooms.items()
                    if not (len(members) == 1 and next(iter(members)).id == name))
        return len(self.members), rooms

    # -- command bodies (run in the manager task) -----------------------------
    def _add_member(self, member: Member, restored: RestoredSession | None = None) -> None:
        self.members[member.id] = member
        self._join(member, (member.id,))
        log = self._log
        if member.pid is not None and log is not None:
            self._pids[member.pid] = member
            member.from_seq = log.last_seq
            if restored is not None:
                self._resume(member, restored, log)

    def _resume(self, member: Member, restored: RestoredSession, log: PacketLog) -> None:
        """Rejoin a restored socket's rooms and replay what it missed, in order."""
        self._join(member, tuple(restored.rooms))
        member.from_seq = restored.from_seq
        if not log.complete_after(restored.from_seq, restored.rooms):
            # Packets left the log between the restore and now (a slow middleware).
            logger.warning("socket %s: missed packets left the log during its recovery",
                           member.id)
            member.session.close("recovery incomplete")
            return
        deliver = self._delivery.send_one
        for message in log.since(restored.from_seq, frozenset(member.rooms)):
            if not deliver(member, message):
                break

    def _remove_member(self, member: Member, persist: bool = False) -> SessionRecord | None:
        """Forget a socket; returns its kept session when ``persist``."""
        if self.members.get(member.id) is not member:
            return None
        record = None
        if member.pid is not None:
            if self._pids.get(member.pid) is member:
                del self._pids[member.pid]
            if persist:
                record = self._record(member)
                self._persist(record)
        self._leave(member, tuple(member.rooms))
        del self.members[member.id]
        return record

    def _record(self, member: Member) -> SessionRecord:
        data = member.owner.data
        assert member.pid is not None
        return SessionRecord(member.id, member.pid, frozenset(member.rooms),
                             dict(data) if isinstance(data, dict) else data, member.from_seq)

    def _persist(self, record: SessionRecord) -> None:
        if self._sessions is not None:
            self._sessions.put(record)

    def _restore(self, pid: str, offset: Any) -> RestoredSession | None:
        sessions, log = self._sessions, self._log
        assert sessions is not None and log is not None
        live = self._pids.get(pid)
        if live is not None:
            # The client is back before its old transport was noticed dead.
            logger.info("socket %s: taken over by a reconnecting client (session %s closed)",
                        live.id, live.session.sid)
            self._remove_member(live, persist=True)
            live.session.close("transport close")
        record = sessions.pop(pid)
        if record is None:
            return None
        if offset is None:
            seq = record.from_seq
        else:
            parsed = log.parse(offset)
            if parsed is None:
                return None
            seq = max(parsed, record.from_seq)  # never before the socket existed
        if not log.complete_after(seq, record.rooms):
            return None
        return RestoredSession(record.sid, record.pid, record.rooms, record.data, seq)

    def _join(self, member: Member, rooms: tuple[str, ...]) -> None:
        if self.members.get(member.id) is not member:
            return  # already gone: a late join must not resurrect it
        all_rooms = self.rooms
        for room in rooms:
            members = all_rooms.get(room)
            if members is None:
                members = all_rooms[room] = set()
            members.add(member)
            member.rooms.add(room)

    def _leave(self, member: Member, rooms: tuple[str, ...]) -> None:
        all_rooms = self.rooms
        for room in rooms:
            members = all_rooms.get(room)
            if members is not None:
                members.discard(member)
                if not members:
                    del all_rooms[room]
            member.rooms.discard(room)

    def _members_of(self, rooms: AbstractSet[str]) -> AbstractSet[Member]:
        """The members of any of ``rooms`` (one room: its live set, do not mutate)."""
        if len(rooms) == 1:
            (room,) = rooms
            return self.rooms.get(room, _NOBODY)
        union: set[Member] = set()
        for room in rooms:
            union.update(self.rooms.get(room, ()))
        return union

    def _targets(self, opts: BroadcastOptions) -> Iterable[Member]:
        """The members ``opts`` selects, each once (may be a live set: do not mutate)."""
        found: Iterable[Member]
        found = self._members_of(opts.rooms) if opts.rooms else self.members.values()
        if opts.except_rooms:
            excluded = self._members_of(opts.except_rooms)
            # Usually the sender, often not in the target rooms: then nothing to filter.
            if excluded and not excluded.isdisjoint(found):
                found = [m for m in found if m not in excluded]
        return found

    def _send(self, member: Member, message: OutgoingMessage, emission: Emission | None) -> None:
        if self.members.get(member.id) is not member:
            return
        if self._delivery.send_one(member, message) and emission is not None:
            taps = self._taps
            taps.count()
            if taps.watched:
                taps.publish(tap_record(self.namespace, emission.tap(), frozenset((member.id,)),
                                        frozenset(), 1))

    def _broadcast(self, emission: Emission, opts: BroadcastOptions) -> int:
        log = self._log
        if log is not None and not opts.volatile:
            message = log.append(emission.parts(), opts.rooms, opts.except_rooms)
        else:
            message = emission.message()
        return self._broadcast_message(emission, message, opts)

    def _broadcast_message(self, emission: Emission, message: OutgoingMessage,
                           opts: BroadcastOptions) -> int:
        # A live set is fine to iterate: delivery never changes membership.
        recipients = self._targets(opts)
        slow = self._delivery.send_many(recipients, message, opts.volatile)
        delivered = len(recipients) - (len(slow) if slow else 0)  # type: ignore[arg-type]
        self._delivery.count_broadcast(delivered, message)
        taps = self._taps
        taps.count()
        if taps.watched:
            taps.publish(tap_record(self.namespace, emission.tap(), opts.rooms, opts.except_rooms,
                                    delivered))
        return delivered

    def _select(self, opts: BroadcastOptions) -> list[Member]:
        return list(self._targets(opts))

    def _add_sockets(self, opts: BroadcastOptions, rooms: tuple[str, ...]) -> None:
        for member in list(self._targets(opts)):
            self._join(member, rooms)

    def _del_sockets(self, opts: BroadcastOptions, rooms: tuple[str, ...]) -> None:
        for member in list(self._targets(opts)):
            self._leave(member, rooms)

    def _rooms_snapshot(self) -> list[dict[str, Any]]:
        out = []
        for room, members in sorted(self.rooms.items()):
            ids = sorted(m.id for m in members)
            out.append({"namespace": self.namespace, "room": room, "members": ids,
                        "private": room in self.members and ids == [room]})
        return out


class AdapterFactory:
    """Makes each namespace's adapter: what ``roomd.Server(adapter=...)`` takes.

    This default makes in-memory adapters. A cluster factory also owns what
    its adapters share (the Redis connections) and runs their background
    tasks in :meth:`run`, which the server starts in its nursery before it
    accepts connections; it must call ``task_status.started()`` once it can
    serve (or raise), and keep running until cancelled if it has tasks.
    """

    def create(self, namespace: str, context: AdapterContext) -> InMemoryAdapter:
        return InMemoryAdapter(namespace, context)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()

    def status(self) -> dict[str, Any]:
        """What ``roomd status`` shows of the adapter."""
        return {"adapter": "memory"}
