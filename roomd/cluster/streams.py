"""The Redis Streams adapter: @socket.io/redis-streams-adapter 0.3's protocol.

Speaks socket.io-adapter's ClusterAdapter protocol as the Node.js streams
adapter does. Broadcasts without acks, sockets_join / sockets_leave and
disconnect_sockets are appended to the stream (``XADD <stream> MAXLEN ~ N``;
fields uid, nsp, type, data); the entry id is the offset clients are given
(connection state recovery). Requests (fetch_sockets, server-side emits,
broadcasts with acks) are msgpack on pub/sub ``<key>#<nsp>#``; answers go
to the requester's ``<key>#<nsp>#<uid>#``. The server count is NUMSUB of
``<key>#<nsp>#``. No heartbeats: the 0.3 Node adapter sends none.

One reader task per server (:class:`StreamLink`) reads the stream with
``XREAD BLOCK`` on its own connection and hands each entry of another node
to its namespace's adapter, in stream order; commands (XADD, SET, GETDEL,
XRANGE) go through another connection and never wait behind the reader.

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
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any

import coredis
import trio
from coredis.retry import NoRetryPolicy
from coredis.tokens import PureToken

from .._errors import RoomdError
from ..rooms.adapter import InMemoryAdapter
from ..rooms.records import BroadcastOptions, Emission, Member
from ..rooms.recovery import PacketLog, RestoredSession, SessionRecord, with_offset
from ..transport.outbox import OutgoingMessage
from . import wire
from .base import options_local
from .link import BACKOFF_FIRST, BACKOFF_MAX, COMMAND_TIMEOUT, CONNECT_TIMEOUT, _describe
from .sharded import ShardedRedisAdapter
from .wire import MessageType

logger = logging.getLogger("roomd.cluster")

EntryHandler = Callable[[str, dict[str, Any]], Awaitable[None]]

# The Node adapter's defaults (streamName, maxLen, readCount, blockTimeInMs, sessionKeyPrefix).
DEFAULT_STREAM = "socket.io"
DEFAULT_MAXLEN = 10_000
READ_COUNT = 100
BLOCK_MS = 5_000
SESSION_PREFIX = "sio:session:"
# The Node adapter's bound on XRANGE calls of one restore (100 entries each by default here).
RESTORE_MAX_CALLS = 100
RANGE_COUNT = 1_000
# A restore waits at most this long for the reader to have applied the entries it replays.
CATCH_UP = 2.0


class StreamsUnsupported(RoomdError):
    """The Redis at the URL cannot carry the stream (a Redis Cluster node)."""


class StreamLink:
    """The stream's connections of one server: commands, and the reader task."""

    def __init__(self, url: str, *, stream: str = DEFAULT_STREAM,
                 maxlen: int = DEFAULT_MAXLEN, block_ms: int = BLOCK_MS) -> None:
        self.url = url
        self.stream = stream
        self.maxlen = maxlen
        self.block_ms = block_ms
        self.up = False
        self.appended = 0
        self.failed = 0
        self.read = 0
        self.last_error: str | None = None
        self.read_through: tuple[int, int] = (0, 0)  # the last entry read and handed over
        self._cursor: str | None = None
        self._client: Any = None
        self._handlers: dict[str, EntryHandler] = {}
        self._progress = trio.Event()
        self._scope: trio.CancelScope | None = None

    def register(self, namespace: str, handler: EntryHandler) -> None:
        self._handlers[namespace] = handler

    def unregister(self, namespace: str) -> None:
        self._handlers.pop(namespace, None)

    def status(self) -> dict[str, Any]:
        return {"stream": self.stream, "stream_up": self.up, "stream_appended": self.appended,
                "stream_read": self.read, "stream_failed": self.failed,
                "stream_last_error": self.last_error}

    # -- commands (None: Redis did not answer; never waits longer than COMMAND_TIMEOUT) ------
    async def _command(self, what: str, call: Callable[[Any], Awaitable[Any]]) -> Any:
        client = self._client
        if client is None or not self.up:
            self.failed += 1
            return None
        try:
            with trio.fail_after(COMMAND_TIMEOUT):
                return await call(client)
        except coredis.exceptions.ResponseError as exc:  # Redis answered: still up
            self.failed += 1
            logger.debug("redis stream %s: %s failed: %s", self.stream, what, _describe(exc))
            return None
        except Exception as exc:  # any other failure of Redis: the caller goes on without it
            self.failed += 1
            self._lost(f"{what}: {_describe(exc)}")
            return None

    async def add(self, fields: dict[str, str]) -> str | None:
        """XADD with MAXLEN ~; the new entry's id."""
        entry_id = await self._command("XADD", lambda c: c.xadd(
            self.stream, fields, trim_strategy=PureToken.MAXLEN, threshold=self.maxlen,
            trim_operator=PureToken.APPROXIMATELY))
        if entry_id is None:
            return None
        self.appended += 1
        return _text(entry_id)

    async def set_session(self, key: str, value: str, px: int) -> bool:
        return await self._command("SET", lambda c: c.set(key, value, px=px)) is not None

    async def take_session(self, key: str) -> tuple[bool, bytes | None]:
        """GETDEL: (whether Redis answered, the value)."""
        found: list[Any] = []

        async def getdel(client: Any) -> bool:
            found.append(await client.getdel(key))
            return True
        if await self._command("GETDEL", getdel) is None:
            return False, None
        value = found[0]
        return True, (value.encode() if isinstance(value, str) else value)

    async def entries_after(self, offset: str) -> list[tuple[str, Any]] | None:
        """The entries after ``offset`` (at most RESTORE_MAX_CALLS ranges); None when
        ``offset`` is no longer in the stream or Redis did not answer."""
        start = wire.parse_stream_id(offset)
        if start is None:
            return None
        exists = await self._command("XRANGE", lambda c: c.xrange(self.stream, offset, offset))
        if not exists:
            return None
        out: list[tuple[str, Any]] = []
        for _ in range(RESTORE_MAX_CALLS):
            begin = wire.next_stream_id(start)

            async def xrange(client: Any, begin: str = begin) -> Any:
                return await client.xrange(self.stream, begin, "+", count=RANGE_COUNT)
            batch = await self._command("XRANGE", xrange)
            if batch is None:
                return None
            for entry in batch:
                out.append((_text(entry.identifier), entry.field_values))
            if len(batch) < RANGE_COUNT:
                return out
            parsed = wire.parse_stream_id(out[-1][0])
            assert parsed is not None
            start = parsed
        return None  # more than a restore may read: incomplete

    async def caught_up(self, target: tuple[int, int]) -> bool:
        """Wait (at most CATCH_UP) until the reader handed over every entry up to ``target``."""
        with trio.move_on_after(CATCH_UP):
            while self.read_through < target:
                await self._progress.wait()
        return self.read_through >= target

    # -- the task ------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the connections up and read the stream until cancelled; started at once."""
        task_status.started()
        backoff = BACKOFF_FIRST
        while True:
            was = self.read
            try:
                with trio.CancelScope() as self._scope:
                    await self._session()
            except BaseException as exc:
                await trio.lowlevel.checkpoint()
                if isinstance(exc, KeyboardInterrupt | SystemExit):
                    raise
                self._lost(_describe(exc))
            finally:
                self._scope = None
                self._client = None
            self.up = False
            if self.read != was:
                backoff = BACKOFF_FIRST
            await trio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _connection(self, stream_timeout: float) -> Any:
        return coredis.Redis.from_url(self.url, retry_policy=NoRetryPolicy(),
                                      connect_timeout=CONNECT_TIMEOUT,
                                      stream_timeout=stream_timeout)

    async def _session(self) -> None:
        async with AsyncExitStack() as stack:
            # The clients open their own task groups: not inside a cancel scope of ours.
            client = await stack.enter_async_context(self._connection(COMMAND_TIMEOUT))
            reader = await stack.enter_async_context(
                self._connection(self.block_ms / 1000 + COMMAND_TIMEOUT))
            with trio.fail_after(CONNECT_TIMEOUT + COMMAND_TIMEOUT):
                info = await client.info("cluster")
                if info.get("cluster_enabled"):
                    raise StreamsUnsupported("the streams adapter needs a single Redis, "
                                             "not a Redis Cluster")
                if self._cursor is None:
                    last = await reader.xrevrange(self.stream, count=1)
                    self._cursor = _text(last[0].identifier) if last else "0-0"
                    parsed = wire.parse_stream_id(self._cursor)
                    self.read_through = parsed or (0, 0)
            self._client = client
            self.up = True
            if self.last_error is not None:
                logger.info("redis stream %s: reading again from %s", self.stream, self._cursor)
            self.last_error = None
            while True:
                reply = await reader.xread({self.stream: self._cursor}, count=READ_COUNT,
                                           block=self.block_ms)
                if reply:
                    for entries in reply.values():
                        for entry in entries:
                            await self._hand_over(_text(entry.identifier), entry.field_values)
                    progress, self._progress = self._progress, trio.Event()
                    progress.set()

    async def _hand_over(self, entry_id: str, fields: Any) -> None:
        self._cursor = entry_id
        self.read += 1
        try:
            message = wire.decode_stream_entry(fields)
            handler = self._handlers.get(message["nsp"])
            if handler is not None:
                await handler(entry_id, message)
        except wire.WireError as exc:
            logger.debug("stream entry %s dropped: %s", entry_id, exc)
        except Exception:
            logger.exception("applying stream entry %s failed", entry_id)
        parsed = wire.parse_stream_id(entry_id)
        if parsed is not None:
            self.read_through = parsed

    def _lost(self, reason: str) -> None:
        if self.up or self.last_error is None:
            logger.warning("redis stream %s: unavailable (%s); serving local clients only, "
                           "reconnecting", self.stream, reason)
        self.up = False
        self.last_error = reason
        if self._scope is not None:
            self._scope.cancel()


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


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
            logger.warning("socket %s: session not shared (%s)", record.sid, _describe(exc))
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
