"""The Redis Streams adapter: @socket.io/redis-streams-adapter 0.3's protocol.

Speaks socket.io-adapter's ClusterAdapter protocol as the Node.js streams
adapter does. Broadcasts without acks, sockets_join / sockets_leave and
disconnect_sockets are appended to the stream (``XADD <stream> MAXLEN ~ N``;
fields uid, nsp, type, data); the entry id is the offset clients are given
(connection state recovery). Requests (fetch_sockets, server-side emits,
broadcasts with acks) are msgpack on pub/sub ``<key>#<nsp>#``; answers go
to the requester's ``<key>#<nsp>#<uid>#``. The server count is NUMSUB of
``<key>#<nsp>#``. No heartbeats: the 0.3 Node adapter sends none.

One reader task per server (:class:`~roomd.cluster.streamlink.StreamLink`)
reads the stream and hands each entry of another node to its namespace's
adapter, in stream order; commands never wait behind the reader.

Sessions: a disconnecting socket's session is ``SET sio:session:<pid>
base64(msgpack({sid, pid, rooms, data})) PX <max_disconnection_duration>``;
a reconnecting client's session is taken with GETDEL, its offset must still
be in the stream, and the broadcasts after it (XRANGE) that its rooms select
are replayed, then what this node applied after the XRANGE, so any node
(roomd or Node.js) recovers a session that another node kept.

While Redis is down every command fails at once (returns None), the node
serves its own clients, gives them its local log's offsets, and recovers
sessions it kept itself. Malformed entries are logged at debug level and
dropped (:class:`~roomd.cluster.wire.WireError`).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

from ..rooms.adapter import InMemoryAdapter
from ..rooms.records import BroadcastOptions, Emission, Member
from ..rooms.recovery import PacketLog, RestoredSession, SessionRecord, with_offset
from ..transport.outbox import OutgoingMessage
from . import wire
from .base import options_local
from .link import describe
from .sharded import ShardedRedisAdapter
from .streamlink import StreamLink
from .wire import MessageType

logger = logging.getLogger("roomd.cluster")

# The Node adapter's sessionKeyPrefix.
SESSION_PREFIX = "sio:session:"


class StreamLog(PacketLog):
    """A namespace's packet log whose entries also know their stream id (None for a
    packet logged while Redis was down), and the newest stream id that left it."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.ids: collections.deque[tuple[int, int] | None] = collections.deque()
        self.dropped_id: tuple[int, int] = (0, 0)

    def append(self, parts: list[str | bytes], rooms: frozenset[str],
               except_rooms: frozenset[str], offset: str | None = None) -> OutgoingMessage:
        self.ids.append(wire.parse_stream_id(offset))
        return super().append(parts, rooms, except_rooms, offset)

    def trim(self, now: float | None = None) -> None:
        super().trim(now)
        ids = self.ids
        while len(ids) > len(self.entries):
            dropped = ids.popleft()
            if dropped is not None and dropped > self.dropped_id:
                self.dropped_id = dropped

    def after_id(self, bound: tuple[int, int], rooms: frozenset[str]
                 ) -> Iterator[OutgoingMessage]:
        """The logged packets with a stream id after ``bound`` that ``rooms`` select."""
        for entry, entry_id in zip(self.entries, self.ids, strict=True):
            if entry_id is None or entry_id <= bound:
                continue
            if entry.rooms and rooms.isdisjoint(entry.rooms):
                continue
            if entry.except_rooms and not rooms.isdisjoint(entry.except_rooms):
                continue
            yield entry.message


@dataclasses.dataclass(slots=True)
class StreamRestoredSession(RestoredSession):
    """A session restored from the stream: ``missed`` goes first, then the log after
    ``from_seq``."""

    missed: list[OutgoingMessage] = dataclasses.field(default_factory=list)


def selects(rooms: frozenset[str], target: wire.Target) -> bool:
    """Whether a broadcast to ``target`` reached a socket in ``rooms`` (the Node rule)."""
    if target.rooms and rooms.isdisjoint(target.rooms):
        return False
    return rooms.isdisjoint(target.except_rooms)


class RedisStreamsAdapter(ShardedRedisAdapter):
    """One namespace's rooms, shared through a Redis stream (and pub/sub for requests)."""

    mode = "streams"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.streams: StreamLink = self.factory.streams
        self._shared: set[str] = set()  # pids whose session this node stored in Redis
        if self._log is not None:
            log = self._log
            self._log = StreamLog(log.max_packets, log.max_bytes, log.max_age)

    async def init(self) -> None:
        await super().init()
        self.streams.register(self.namespace, self._on_entry)

    async def close(self) -> None:
        self.streams.unregister(self.namespace)
        await super().close()

    # no room channels: every node reads the whole stream
    def _join(self, member: Member, rooms: tuple[str, ...]) -> None:
        InMemoryAdapter._join(self, member, rooms)

    def _leave(self, member: Member, rooms: tuple[str, ...]) -> None:
        InMemoryAdapter._leave(self, member, rooms)

    # -- publishing ----------------------------------------------------------------------
    def _publish(self, kind: MessageType, data: dict[str, Any], channel: str | None = None) -> None:
        payload = wire.encode_pubsub_message(self.uid, self.namespace, kind, data)
        self.link.publish(channel or self.channels.broadcast, payload)

    async def _send_message(self, kind: MessageType, data: dict[str, Any],
                            channel: str | None = None) -> None:
        if kind in wire.STREAM_TYPES and "requestId" not in data:
            await self.streams.add(wire.encode_stream_entry(self.uid, self.namespace, kind, data))
            return
        payload = wire.encode_pubsub_message(self.uid, self.namespace, kind, data)
        await self.link.send(channel or self.channels.broadcast, payload)

    async def _append_broadcast(self, emission: Emission, opts: BroadcastOptions) -> str | None:
        self._encode(emission, opts)  # an argument that cannot be encoded fails here
        return await self.streams.add(wire.encode_stream_entry(
            self.uid, self.namespace, MessageType.BROADCAST,
            {"packet": wire.encode_packet(None, emission.data), "opts": self._opts(opts)}))

    async def broadcast(self, emission: Emission, opts: BroadcastOptions) -> None:
        if opts.local:
            await InMemoryAdapter.broadcast(self, emission, opts)
            return
        entry_id = await self._append_broadcast(emission, opts)
        await self._manager.cast(self._broadcast_at, emission, opts, entry_id)

    async def broadcast_count(self, emission: Emission, opts: BroadcastOptions) -> int:
        if opts.local:
            return await InMemoryAdapter.broadcast_count(self, emission, opts)
        entry_id = await self._append_broadcast(emission, opts)
        return await self._manager.call(self._broadcast_at, emission, opts, entry_id)

    def _broadcast_at(self, emission: Emission, opts: BroadcastOptions,
                      entry_id: str | None) -> int:
        """Deliver locally with the stream entry's id as offset (run in the manager task)."""
        log = self._log
        if log is not None and not opts.volatile:
            message = log.append(emission.parts(), opts.rooms, opts.except_rooms, entry_id)
        else:
            message = emission.message()
        return self._broadcast_message(emission, message, opts)

    # -- what the stream brings ----------------------------------------------------------
    async def _on_entry(self, entry_id: str, message: dict[str, Any]) -> None:
        if message["uid"] == self.uid:
            return
        data = message.get("data") or {}
        if message["type"] == MessageType.BROADCAST and data.get("requestId") is None:
            _namespace, event = wire.decode_packet(data.get("packet"))
            target = wire.decode_opts(data.get("opts"))
            await self._manager.cast(self._broadcast_at,
                                     Emission(self.namespace, event, "cluster"),
                                     options_local(target), entry_id)
            return
        await self._handle(message)

    # -- connection state recovery across nodes ------------------------------------------
    def _session_key(self, pid: str) -> str:
        return SESSION_PREFIX + pid

    async def share_session(self, record: SessionRecord) -> None:
        assert self.recovery is not None
        try:
            value = wire.encode_session(record.sid, record.pid, sorted(record.rooms),
                                        record.data)
        except Exception as exc:  # data msgpack cannot carry: kept on this node only
            logger.warning("socket %s: session not shared (%s)", record.sid, describe(exc))
            return
        px = max(1, int(self.recovery.max_disconnection_duration * 1000))
        if await self.streams.set_session(self._session_key(record.pid), value, px):
            self._shared.add(record.pid)

    async def restore_session(self, pid: Any, offset: Any) -> RestoredSession | None:
        if self._sessions is None or not isinstance(pid, str):
            return None
        answered, raw = await self.streams.take_session(self._session_key(pid))
        if not answered:  # Redis is down: this node's own sessions and log
            return await super().restore_session(pid, offset)
        start = wire.parse_stream_id(offset)
        entries = None
        if start is not None:
            entries = await self.streams.entries_after(offset)
            if entries is not None:
                last = wire.parse_stream_id(entries[-1][0]) if entries else start
                if last is None or not await self.streams.caught_up(last):
                    entries = None
        return await self._manager.call(self._restore_shared, pid, offset, raw, start, entries)

    def _restore_shared(self, pid: str, offset: str | None, raw: bytes | None,
                        start: tuple[int, int] | None,
                        entries: list[tuple[str, Any]] | None) -> RestoredSession | None:
        sessions, log = self._sessions, self._log
        assert sessions is not None and isinstance(log, StreamLog)
        live = self._pids.get(pid)
        if live is not None:  # back before its old transport was noticed dead
            logger.info("socket %s: taken over by a reconnecting client (session %s closed)",
                        live.id, live.session.sid)
            self._remove_member(live, persist=True)
            live.session.close("transport close")
        local = sessions.pop(pid)
        shared = pid in self._shared
        self._shared.discard(pid)
        if live is None and raw is not None:
            try:
                sid, stored_pid, rooms, data = wire.decode_session(raw)
            except wire.WireError as exc:
                logger.debug("session %s dropped: %s", pid, exc)
                return None
            if stored_pid != pid:
                return None
            record = SessionRecord(sid, pid, rooms, data, log.last_seq)
        elif local is not None and (live is not None or not shared):
            record = local  # kept here and not (or no longer) in Redis: this node's own
        else:
            return None  # taken (or expired) elsewhere
        if start is None:
            if local is not record:
                return None  # the stream has no place for "no offset"
            seq = record.from_seq if offset is None else log.parse(offset)
            if seq is None or not log.complete_after(max(seq, record.from_seq), record.rooms):
                return None
            return RestoredSession(record.sid, record.pid, record.rooms, record.data,
                                   max(seq, record.from_seq))
        if entries is None:
            return None
        return self._missed(record, start, entries, log)

    def _missed(self, record: SessionRecord, start: tuple[int, int],
                entries: list[tuple[str, Any]], log: StreamLog) -> RestoredSession | None:
        """What ``record``'s socket missed after ``start``: the stream's entries, then what
        this node delivered after the last of them."""
        rooms = record.rooms
        missed: list[OutgoingMessage] = []
        bound = start
        logged = set(log.ids)
        for entry_id, fields in entries:
            parsed = wire.parse_stream_id(entry_id)
            if parsed is None:
                continue
            bound = parsed
            try:
                message = wire.decode_stream_entry(fields)
                if message["nsp"] != self.namespace or message["type"] != MessageType.BROADCAST:
                    continue
                if message["uid"] == self.uid and parsed not in logged \
                        and parsed > log.dropped_id:
                    continue  # appended here, not delivered here yet: it comes live
                data = message.get("data") or {}
                if data.get("requestId") is not None:
                    continue
                _namespace, event = wire.decode_packet(data.get("packet"))
                target = wire.decode_opts(data.get("opts"))
            except wire.WireError:
                continue
            if target.volatile or not selects(rooms, target):
                continue
            emission = Emission(self.namespace, event, "cluster")
            missed.append(OutgoingMessage(with_offset(emission.parts(), entry_id)))
        if log.dropped_id > bound:
            return None  # what this node delivered after the range left its log
        missed.extend(log.after_id(bound, rooms))
        return StreamRestoredSession(record.sid, record.pid, rooms, record.data, log.last_seq,
                                     missed)

    def _resume(self, member: Member, restored: RestoredSession, log: PacketLog) -> None:
        if isinstance(restored, StreamRestoredSession) and restored.missed:
            self._join(member, tuple(restored.rooms))
            deliver = self._delivery.send_one
            for message in restored.missed:
                if not deliver(member, message):
                    member.session.close("recovery incomplete")
                    return
        super()._resume(member, restored, log)

    def status(self) -> dict[str, Any]:
        return {**super().status(), "stream": self.streams.stream}
