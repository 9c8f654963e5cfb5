"""Connection state recovery: the packet log and the disconnected sessions.

Socket.IO 4.6's connection state recovery, server half. With recovery on,
every event an adapter broadcasts without an ack id and not volatile gets an
*offset*: a string appended as the event's last argument, which the client
keeps and sends back (``auth: {pid, offset}``) when it reconnects. A socket
that disconnects for a reason that keeps a session (:data:`RECOVERABLE_REASONS`)
leaves a :class:`SessionRecord` behind: its id, private id (``pid``), rooms
and ``data``. Within ``max_disconnection_duration`` a client that presents
that pid gets the same socket back and every logged packet after its offset
that its rooms select.

This module holds the two in-memory stores an adapter keeps per namespace
(:class:`PacketLog`, :class:`SessionStore`) and the options; they are
changed only by commands running in the RoomManager task, like the rest of
an adapter's state. Both are bounded: the log by packets, bytes and age,
the sessions by count and age.

Offsets of the in-memory log are ``"<epoch>-<seq>"``: ``epoch`` is random
per log (an offset from another namespace or an earlier process never
matches) and ``seq`` counts the log's packets from 1. Nothing a client
sends can make these stores raise: an offset or pid that does not parse,
belongs to another log, lies in the future or has expired is simply not
found, and the client gets a fresh session.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .._errors import ConfigError
from ..transport.outbox import OutgoingMessage

# The disconnect reasons for which Node keeps a session (socket.io
# lib/socket.ts RECOVERABLE_DISCONNECT_REASONS). A client's own disconnect
# ("client namespace disconnect"), the server's ("server namespace
# disconnect"), a parse error and a slow consumer discard it.
RECOVERABLE_REASONS = frozenset({
    "transport error", "transport close", "forced close", "ping timeout",
    "server shutting down", "forced server close",
})

# Defaults, as Node's (maxDisconnectionDuration 2 minutes, skipMiddlewares
# true), plus roomd's bounds on what one namespace may hold: 10 000 packets
# is what @socket.io/redis-streams-adapter keeps in its stream (MAXLEN), and
# 16 MiB of encoded packets keeps a namespace of large events in check.
DEFAULT_MAX_DISCONNECTION = 120.0
DEFAULT_MAX_PACKETS = 10_000
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_SESSIONS = 100_000


@dataclasses.dataclass(frozen=True)
class RecoveryOptions:
    """Connection state recovery settings (seconds, packets, bytes).

    ``namespaces`` names the namespaces that recover (None: every namespace,
    dynamic ones included). ``max_packets`` and ``max_bytes`` bound each
    namespace's packet log, ``max_sessions`` the sessions each keeps.
    """

    max_disconnection_duration: float = DEFAULT_MAX_DISCONNECTION
    skip_middlewares: bool = True
    max_packets: int = DEFAULT_MAX_PACKETS
    max_bytes: int = DEFAULT_MAX_BYTES
    max_sessions: int = DEFAULT_MAX_SESSIONS
    namespaces: frozenset[str] | None = None

    def __post_init__(self) -> None:
        if not self.max_disconnection_duration > 0:
            raise ConfigError("max_disconnection_duration must be positive")
        if self.max_packets < 1 or self.max_bytes < 1 or self.max_sessions < 1:
            raise ConfigError("max_packets, max_bytes and max_sessions must be positive")

    @classmethod
    def from_value(cls, value: RecoveryOptions | Mapping[str, Any] | bool | None
                   ) -> RecoveryOptions | None:
        """The options from what ``Server(connection_state_recovery=...)`` takes.

        None or False: off; True: the defaults; a mapping: those keys
        (ConfigError for an unknown one).
        """
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError("connection_state_recovery must be a mapping, "
                              "RecoveryOptions, True or None")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(value) - known
        if unknown:
            raise ConfigError(f"unknown connection_state_recovery key(s): {sorted(unknown)}")
        fields = dict(value)
        names = fields.get("namespaces")
        if names is not None:
            fields["namespaces"] = frozenset((names,) if isinstance(names, str) else names)
        return cls(**fields)

    def covers(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces


@dataclasses.dataclass(slots=True)
class SessionRecord:
    """What survives a disconnection: Node's ``{sid, pid, rooms, data}``.

    ``from_seq`` is where a client that presents no offset resumes: the
    log's last packet when the socket first connected (it has received
    nothing since, or it would have an offset).
    """

    sid: str
    pid: str
    rooms: frozenset[str]
    data: Any
    from_seq: int
    disconnected_at: float = 0.0


@dataclasses.dataclass(slots=True)
class RestoredSession:
    """A session handed back to a reconnecting client: replay after ``from_seq``."""

    sid: str
    pid: str
    rooms: frozenset[str]
    data: Any
    from_seq: int


class _Entry:
    __slots__ = ("seq", "rooms", "except_rooms", "message", "size", "at")

    def __init__(self, seq: int, rooms: frozenset[str], except_rooms: frozenset[str],
                 message: OutgoingMessage, size: int, at: float) -> None:
        self.seq = seq
        self.rooms = rooms
        self.except_rooms = except_rooms
        self.message = message
        self.size = size
        self.at = at


def message_size(message: OutgoingMessage) -> int:
    """Bytes of a message's Engine.IO parts (text counted in characters)."""
    return sum(len(part) for part in message.eio_parts)


def with_offset(parts: list[str | bytes], offset: str) -> list[str | bytes]:
    """Socket.IO parts of an EVENT with ``offset`` appended as its last argument.

    The text part ends with the JSON array of the event's arguments (binary
    events too: their attachments follow as separate parts), so appending is
    splicing ``,"<offset>"`` before the final ``]``: no second JSON pass.
    Offsets are made here of safe characters only.
    """
    text = parts[0]
    assert isinstance(text, str) and text.endswith("]")
    return [f'{text[:-1]},"{offset}"]', *parts[1:]]


class PacketLog:
    """The recent packets of one namespace, oldest first, bounded.

    Entries leave from the oldest end when there are more than
    ``max_packets``, more than ``max_bytes`` of them, or when they are older
    than ``max_age`` seconds; ``dropped_through`` is then the newest seq
    that left.

    What left is remembered in a compact form, so that a quiet client in a
    busy namespace can still be recovered: for each room the newest dropped
    packet that named it (``dropped_rooms``, at most ``max_packets`` rooms;
    beyond that the oldest is forgotten and ``dropped_floor`` rises to its
    seq), and the newest dropped packet for the whole namespace
    (``dropped_all``). A socket whose offset is older than a dropped packet
    that may have been for it cannot be recovered completely; excluded rooms
    are not taken into account there, so the answer errs on the safe side.
    """

    def __init__(self, max_packets: int, max_bytes: int, max_age: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_packets = max_packets
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.clock = clock
        self.epoch = secrets.token_hex(4)
        self.entries: collections.deque[_Entry] = collections.deque()
        self.last_seq = 0
        self.dropped_through = 0
        self.dropped_all = 0
        self.dropped_floor = 0
        self.dropped_rooms: dict[str, int] = {}  # oldest first
        self.bytes = 0

    def __len__(self) -> int:
        return len(self.entries)

    def append(self, parts: list[str | bytes], rooms: frozenset[str],
               except_rooms: frozenset[str], offset: str | None = None) -> OutgoingMessage:
        """Log an event (its Socket.IO parts); returns it encoded with its offset.

        ``offset`` is the one clients are given (a cluster's, such as a Redis
        stream entry id, made of safe characters); by default this log's own.
        """
        seq = self.last_seq + 1
        self.last_seq = seq
        message = OutgoingMessage(with_offset(parts, offset or f"{self.epoch}-{seq}"))
        size = message_size(message)
        now = self.clock()
        self.entries.append(_Entry(seq, rooms, except_rooms, message, size, now))
        self.bytes += size
        self.trim(now)
        return message

    def trim(self, now: float | None = None) -> None:
        """Drop entries over the bounds or older than ``max_age``."""
        entries = self.entries
        oldest = (self.clock() if now is None else now) - self.max_age
        while entries and (len(entries) > self.max_packets or self.bytes > self.max_bytes
                           or entries[0].at < oldest):
            entry = entries.popleft()
            self.bytes -= entry.size
            self.dropped_through = entry.seq
            self._remember(entry)

    def _remember(self, entry: _Entry) -> None:
        if not entry.rooms:
            self.dropped_all = entry.seq
            return
        dropped = self.dropped_rooms
        for room in entry.rooms:
            dropped.pop(room, None)
            dropped[room] = entry.seq  # to the end: the dict stays ordered by seq
        while len(dropped) > self.max_packets:
            room = next(iter(dropped))
            self.dropped_floor = dropped.pop(room)

    def parse(self, offset: Any) -> int | None:
        """The seq of one of this log's offsets; None for anything else."""
        if not isinstance(offset, str) or len(offset) > 40:
            return None
        epoch, _, seq = offset.partition("-")
        if epoch != self.epoch or not (seq.isascii() and seq.isdigit()) or len(seq) > 18:
            return None
        number = int(seq)
        return number if 0 < number <= self.last_seq else None

    def complete_after(self, seq: int, rooms: frozenset[str]) -> bool:
        """Whether every packet logged after ``seq`` that may be for a socket in ``rooms``
        is still here (False for a ``seq`` not logged yet)."""
        if seq > self.last_seq:
            return False
        if seq >= self.dropped_through:
            return True
        if self.dropped_all > seq or self.dropped_floor > seq:
            return False
        dropped = self.dropped_rooms
        return all(dropped.get(room, 0) <= seq for room in rooms)

    def since(self, seq: int, rooms: frozenset[str]) -> Iterator[OutgoingMessage]:
        """The logged packets after ``seq`` that a socket in ``rooms`` was sent, in order.

        Call only when :meth:`complete_after` holds.
        """
        entries = self.entries
        if not entries:
            return
        start = max(0, seq + 1 - entries[0].seq)
        for entry in itertools.islice(entries, start, None):
            if entry.rooms and rooms.isdisjoint(entry.rooms):
                continue
            if entry.except_rooms and not rooms.isdisjoint(entry.except_rooms):
                continue
            yield entry.message


class SessionStore:
    """Disconnected sessions by pid, oldest first; each kept ``max_age`` seconds.

    At most ``max_sessions``: beyond that the oldest is forgotten.
    """

    def __init__(self, max_sessions: int, max_age: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_sessions = max_sessions
        self.max_age = max_age
        self.clock = clock
        self.sessions: dict[str, SessionRecord] = {}
        self.sids: set[str] = set()  # the socket ids that may come back

    def __len__(self) -> int:
        return len(self.sessions)

    def put(self, record: SessionRecord) -> None:
        now = self.clock()
        record.disconnected_at = now
        self._remove(record.pid)
        self.sessions[record.pid] = record
        self.sids.add(record.sid)
        self.expire(now)

    def pop(self, pid: Any) -> SessionRecord | None:
        """Take the session of ``pid`` out (each is restored at most once)."""
        self.expire()
        if not isinstance(pid, str):
            return None
        return self._remove(pid)

    def expire(self, now: float | None = None) -> None:
        sessions = self.sessions
        oldest = (self.clock() if now is None else now) - self.max_age
        while sessions:
            pid, record = next(iter(sessions.items()))
            if len(sessions) <= self.max_sessions and record.disconnected_at >= oldest:
                break
            self._remove(pid)

    def _remove(self, pid: str) -> SessionRecord | None:
        record = self.sessions.pop(pid, None)
        if record is not None:
            self.sids.discard(record.sid)
        return record
