"""What Socket.IO servers publish to each other through Redis: sans-IO codecs.

Two protocols, which do not talk to each other (a cluster speaks one):

- the *classic* one of ``@socket.io/redis-adapter`` (``createAdapter``),
  also spoken by ``@socket.io/redis-emitter``: broadcasts are msgpack
  ``[uid, packet, opts]`` on ``<key>#<nsp>#[<room>#]``; requests are JSON
  (type 7, a broadcast with acks, is msgpack) on ``<key>-request#<nsp>#``;
  responses on ``<key>-response#<nsp>#`` (and ``...#<uid>#``), JSON except
  type 9 (msgpack);
- the *cluster* one of socket.io-adapter's ``ClusterAdapter``, spoken by the
  sharded adapter (``createShardedAdapter``): ``{uid, nsp, type, data}`` as
  JSON, or msgpack when the data holds binary, on ``<key>#<nsp>#`` (and a
  room's own channel), responses on ``<key>#<nsp>#<uid>#``; and by
  ``@socket.io/redis-streams-adapter`` 0.3: broadcasts without acks,
  joins, leaves and disconnects as stream entries (fields uid, nsp, type,
  data: JSON text, or base64 msgpack when it holds binary), the rest as
  msgpack on pub/sub; kept sessions as base64 msgpack.

Binary values are msgpack bin on the wire and ``bytes`` here; msgpack
timestamps (JavaScript Dates) decode to the ISO 8601 string a Node server
would send its clients. Decoding raises :class:`WireError` (a RoomdError)
for bytes that are neither JSON nor msgpack, or a message of the wrong
shape; receivers log and drop such messages. No I/O here.
"""

from __future__ import annotations

import base64
import datetime
import enum
import json
import secrets
from collections.abc import Iterable
from typing import Any

import msgpack

from .._errors import RoomdError
from ..protocol import sio

# The uid @socket.io/redis-emitter publishes under.
EMITTER_UID = "emitter"
# Socket.IO packet type EVENT, the only packet a cluster broadcast carries.
EVENT = 2
# A Node.js Socket.IO socket id is 20 characters; the sharded adapter sends a
# broadcast to such a room on the main channel, not the room's own channel.
SOCKET_ID_LENGTH = 20


class WireError(RoomdError):
    """A message from Redis is not one this protocol understands."""


class RequestType(enum.IntEnum):
    """The classic redis-adapter's request and response types."""

    SOCKETS = 0
    ALL_ROOMS = 1
    REMOTE_JOIN = 2
    REMOTE_LEAVE = 3
    REMOTE_DISCONNECT = 4
    REMOTE_FETCH = 5
    SERVER_SIDE_EMIT = 6
    BROADCAST = 7
    BROADCAST_CLIENT_COUNT = 8
    BROADCAST_ACK = 9


class MessageType(enum.IntEnum):
    """socket.io-adapter ClusterAdapter message types (the sharded adapter)."""

    INITIAL_HEARTBEAT = 1
    HEARTBEAT = 2
    BROADCAST = 3
    SOCKETS_JOIN = 4
    SOCKETS_LEAVE = 5
    DISCONNECT_SOCKETS = 6
    FETCH_SOCKETS = 7
    FETCH_SOCKETS_RESPONSE = 8
    SERVER_SIDE_EMIT = 9
    SERVER_SIDE_EMIT_RESPONSE = 10
    BROADCAST_CLIENT_COUNT = 11
    BROADCAST_ACK = 12
    ADAPTER_CLOSE = 13


# Message types of the cluster protocol whose data may hold binary (then msgpack).
MAY_HOLD_BINARY = frozenset({MessageType.BROADCAST, MessageType.BROADCAST_ACK,
                             MessageType.FETCH_SOCKETS_RESPONSE, MessageType.SERVER_SIDE_EMIT,
                             MessageType.SERVER_SIDE_EMIT_RESPONSE})


def classic_uid() -> str:
    """A node's uid in the classic protocol: 6 characters, as uid2(6) makes."""
    return secrets.token_urlsafe(6)[:6]


def cluster_uid() -> str:
    """A node's uid in the cluster protocol: 16 hex characters."""
    return secrets.token_hex(8)


def request_id() -> str:
    return secrets.token_hex(6)


def looks_like_socket_id(room: str) -> bool:
    return len(room) == SOCKET_ID_LENGTH


# -- channel names ------------------------------------------------------------------
class Channels:
    """The channel names of one namespace under one key prefix."""

    __slots__ = ("broadcast", "request", "response", "pattern")

    def __init__(self, key: str, namespace: str) -> None:
        self.broadcast = f"{key}#{namespace}#"
        self.request = f"{key}-request#{namespace}#"
        self.response = f"{key}-response#{namespace}#"
        self.pattern = self.broadcast + "*"

    def room(self, room: str) -> str:
        """The channel of one room (classic single-room broadcasts, sharded room channels)."""
        return f"{self.broadcast}{room}#"

    def specific_response(self, uid: str) -> str:
        return f"{self.response}{uid}#"

    def sharded_response(self, uid: str) -> str:
        return f"{self.broadcast}{uid}#"

    def room_of(self, channel: str) -> str | None:
        """The room named by a broadcast channel ("" for the namespace), None if foreign."""
        if not channel.startswith(self.broadcast) or not channel.endswith("#"):
            return None
        return channel[len(self.broadcast):-1]


# -- msgpack and JSON -----------------------------------------------------------------
def _ext_hook(code: int, data: bytes) -> Any:
    # notepack.io writes JavaScript's undefined as fixext 1 of type 0.
    if code == 0:
        return None
    raise WireError(f"unknown msgpack extension type {code}")


def _iso(value: datetime.datetime) -> str:
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{value.microsecond // 1000:03d}Z"


def _dates_to_strings(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return _iso(value)
    if isinstance(value, list):
        return [_dates_to_strings(v) for v in value]
    if isinstance(value, dict):
        return {k: _dates_to_strings(v) for k, v in value.items()}
    return value


def _msgpack_default(value: Any) -> Any:
    """What msgpack lacks, as the JSON encoder of roomd.protocol.sio writes it.

    An aware datetime is a msgpack timestamp, as notepack.io writes a Date.
    """
    if isinstance(value, datetime.datetime) and value.tzinfo is not None:
        return msgpack.Timestamp.from_datetime(value)
    if isinstance(value, set | frozenset):
        return list(value)
    return sio.plain(value)  # what clients get: naive dates, UUID, json_default...


def pack(value: Any) -> bytes:
    """msgpack as notepack.io writes it: str as str, bytes as bin, Dates as timestamps."""
    return msgpack.packb(value, use_bin_type=True, default=_msgpack_default)


def unpack(data: bytes) -> Any:
    """msgpack to Python; raises WireError."""
    try:
        value = msgpack.unpackb(data, raw=False, ext_hook=_ext_hook, timestamp=3,
                                strict_map_key=False)
    except WireError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types
        raise WireError(f"invalid msgpack: {exc}") from None
    return _dates_to_strings(value) if _holds(value, datetime.datetime) else value


def _holds(value: Any, kinds: type | tuple[type, ...]) -> bool:
    """Whether ``value`` is, or its lists, tuples and dict values hold, one of ``kinds``."""
    if isinstance(value, kinds):
        return True
    if isinstance(value, list | tuple):
        return any(_holds(v, kinds) for v in value)
    if isinstance(value, dict):
        return any(_holds(v, kinds) for v in value.values())
    return False


def _node_json(value: Any) -> Any:
    # What JSON.stringify makes of a Node.js Buffer: the JSON requests of the
    # classic protocol carry binary this way (and it stays an object there).
    if isinstance(value, bytes | bytearray | memoryview):
        return {"type": "Buffer", "data": list(bytes(value))}
    if isinstance(value, datetime.datetime) and value.tzinfo is not None:
        return _iso(value)
    plain = _msgpack_default(value)
    return list(plain) if isinstance(plain, tuple) else plain


def dump_json(value: Any) -> bytes:
    """JSON as JSON.stringify writes it (bytes as Buffer.toJSON)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                      default=_node_json).encode()


def load(data: bytes) -> Any:
    """A JSON object (first byte ``{``) or msgpack, as the Node adapters tell them apart."""
    if data[:1] == b"{":
        try:
            return json.loads(data)
        except ValueError as exc:
            raise WireError(f"invalid JSON: {exc}") from None
    return unpack(data)


def has_binary(value: Any) -> bool:
    return _holds(value, (bytes, bytearray, memoryview))


# -- shared shapes --------------------------------------------------------------------
def room_list(rooms: Any) -> frozenset[str]:
    """Rooms as they arrive (may be numbers: Node rooms can be) as strings."""
    if not rooms:
        return frozenset()
    if not isinstance(rooms, list):
        raise WireError("rooms must be a list")
    out = set()
    for room in rooms:
        if isinstance(room, bool) or not isinstance(room, str | int | float):
            raise WireError(f"invalid room {room!r}")
        out.add(room if isinstance(room, str) else _js_number(room))
    return frozenset(out)


def _js_number(value: int | float) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class Target:
    """Decoded broadcast options: rooms, excluded rooms, volatile."""

    __slots__ = ("rooms", "except_rooms", "volatile")

    def __init__(self, rooms: frozenset[str], except_rooms: frozenset[str],
                 volatile: bool = False) -> None:
        self.rooms = rooms
        self.except_rooms = except_rooms
        self.volatile = volatile

    def __repr__(self) -> str:
        return f"Target({sorted(self.rooms)}, {sorted(self.except_rooms)}, {self.volatile})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Target) and (self.rooms, self.except_rooms, self.volatile) == (
            other.rooms, other.except_rooms, other.volatile)


def encode_opts(rooms: Iterable[str], except_rooms: Iterable[str], volatile: bool = False,
                flags: dict | None = None) -> dict[str, Any]:
    out_flags = dict(flags or {})
    if volatile:
        out_flags["volatile"] = True
    return {"rooms": list(rooms), "except": list(except_rooms), "flags": out_flags}


def decode_opts(opts: Any) -> Target:
    if opts is None:
        return Target(frozenset(), frozenset())
    if not isinstance(opts, dict):
        raise WireError("opts must be an object")
    flags = opts.get("flags") or {}
    if not isinstance(flags, dict):
        raise WireError("opts.flags must be an object")
    return Target(room_list(opts.get("rooms")), room_list(opts.get("except")),
                  bool(flags.get("volatile")))


def decode_packet(packet: Any) -> tuple[str, list]:
    """A broadcast's packet: ``(namespace, [event, *args])``."""
    if not isinstance(packet, dict):
        raise WireError("packet must be an object")
    data = packet.get("data")
    if not isinstance(data, list) or not data or not isinstance(data[0], str):
        raise WireError("packet.data must be [event, ...args]")
    if packet.get("type", EVENT) not in (EVENT, 5):
        raise WireError(f"unexpected packet type {packet.get('type')!r}")
    nsp = packet.get("nsp")
    if nsp is None:
        nsp = "/"
    if not isinstance(nsp, str):
        raise WireError("packet.nsp must be a string")
    return nsp, data


def encode_packet(namespace: str | None, data: list) -> dict[str, Any]:
    """A broadcast's packet; the cluster protocol leaves ``nsp`` out (None)."""
    if namespace is None:
        return {"type": EVENT, "data": list(data)}
    return {"type": EVENT, "data": list(data), "nsp": namespace}


# -- the classic protocol ---------------------------------------------------------------
class ClassicBroadcast:
    """A decoded classic broadcast ``[uid, packet, opts]``."""

    __slots__ = ("uid", "namespace", "data", "target")

    def __init__(self, uid: str, namespace: str, data: list, target: Target) -> None:
        self.uid = uid
        self.namespace = namespace
        self.data = data
        self.target = target


def encode_classic_broadcast(uid: str, namespace: str, data: list, rooms: frozenset[str],
                             except_rooms: frozenset[str], volatile: bool,
                             channels: Channels) -> tuple[str, bytes]:
    """``(channel, payload)``: a single room goes to its own channel."""
    payload = pack([uid, encode_packet(namespace, data),
                    encode_opts(rooms, except_rooms, volatile)])
    if len(rooms) == 1:
        (room,) = rooms
        return channels.room(room), payload
    return channels.broadcast, payload


def decode_classic_broadcast(payload: bytes) -> ClassicBroadcast:
    value = unpack(payload)
    if not isinstance(value, list) or len(value) < 3:
        raise WireError("a broadcast must be [uid, packet, opts]")
    uid, packet, opts = value[0], value[1], value[2]
    namespace, data = decode_packet(packet)
    return ClassicBroadcast(str(uid), namespace, data, decode_opts(opts))


# -- requests and answers: the framing both protocols share ---------------------------------
def _load_object(payload: bytes, what: str) -> dict[str, Any]:
    """A JSON or msgpack object; raises WireError for anything else."""
    value = load(payload)
    if not isinstance(value, dict):
        raise WireError(f"{what} must be an object")
    return value


def _check_type(kind: Any, what: str) -> None:
    if isinstance(kind, bool) or not isinstance(kind, int):
        raise WireError(f"invalid {what} type {kind!r}")


def _check_request_id(fields: dict[str, Any]) -> None:
    if not isinstance(fields.get("requestId"), str | int | None):
        raise WireError("requestId must be a string")


def encode_request(request: dict[str, Any]) -> bytes:
    """A classic request or response: msgpack for types 7 and 9, else JSON."""
    if request.get("type") in (RequestType.BROADCAST, RequestType.BROADCAST_ACK):
        return pack(request)
    return dump_json(request)


def decode_request(payload: bytes) -> dict[str, Any]:
    """A classic request or response; raises WireError."""
    value = _load_object(payload, "a request")
    if value.get("type") is not None:
        _check_type(value["type"], "request")
    _check_request_id(value)
    return value


# -- the cluster (sharded) protocol -------------------------------------------------------
def _cluster_message(uid: str, namespace: str, kind: MessageType,
                     data: dict[str, Any] | None) -> dict[str, Any]:
    # The key order of the Node.js adapter, so that the bytes are the same.
    message: dict[str, Any] = {"type": int(kind)}
    if data is not None:
        message["data"] = data
    message["uid"] = uid
    message["nsp"] = namespace
    return message


def encode_cluster_message(uid: str, namespace: str, kind: MessageType,
                           data: dict[str, Any] | None = None) -> bytes:
    """``{type, data, uid, nsp}``: JSON, or msgpack when the data holds binary."""
    message = _cluster_message(uid, namespace, kind, data)
    if kind in MAY_HOLD_BINARY and has_binary(data):
        return pack(message)
    return dump_json(message)


def decode_cluster_message(payload: bytes) -> dict[str, Any]:
    """``{uid, nsp, type, data}``; raises WireError."""
    value = _load_object(payload, "a cluster message")
    _check_type(value.get("type"), "message")
    if not isinstance(value.get("uid"), str) or not isinstance(value.get("nsp"), str):
        raise WireError("a cluster message needs uid and nsp")
    data = value.get("data")
    if data is not None:
        if not isinstance(data, dict):
            raise WireError("message data must be an object")
        _check_request_id(data)
    return value


# -- the streams adapter (@socket.io/redis-streams-adapter 0.3) -------------------------------
# An entry of the stream: fields uid, nsp, type (decimal text) and data (JSON text, or base64
# msgpack when the data holds binary); its id "<ms>-<seq>" is the offset clients are given.
# What does not go through the stream (requests, answers) is the whole message as msgpack on
# pub/sub. A session is base64 msgpack {sid, pid, rooms, data}.
STREAM_TYPES = frozenset({MessageType.BROADCAST, MessageType.SOCKETS_JOIN,
                          MessageType.SOCKETS_LEAVE, MessageType.DISCONNECT_SOCKETS})
# Stream ids are two unsigned 64-bit numbers.
_MAX_ID_PART = 2**64 - 1


def encode_stream_entry(uid: str, namespace: str, kind: MessageType,
                        data: dict[str, Any] | None) -> dict[str, str]:
    """The fields of a stream entry, in the Node adapter's order."""
    fields = {"uid": uid, "nsp": namespace, "type": str(int(kind))}
    if data:
        if kind in MAY_HOLD_BINARY and has_binary(data):
            fields["data"] = base64.b64encode(pack(data)).decode("ascii")
        else:
            fields["data"] = dump_json(data).decode()
    return fields


def _field(fields: Any, name: str) -> str | None:
    value = fields.get(name, fields.get(name.encode()))
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise WireError(f"stream field {name} is not UTF-8") from None
    return value if isinstance(value, str) else None


def decode_stream_entry(fields: Any) -> dict[str, Any]:
    """``{uid, nsp, type, data}`` out of a stream entry's fields; raises WireError."""
    if not isinstance(fields, dict):
        raise WireError("a stream entry must be a mapping")
    uid, nsp, kind = _field(fields, "uid"), _field(fields, "nsp"), _field(fields, "type")
    if uid is None or nsp is None:
        raise WireError("a stream entry needs uid and nsp")
    if kind is None or not (kind.isascii() and kind.isdigit()) or len(kind) > 4:
        raise WireError(f"invalid stream entry type {kind!r}")
    message: dict[str, Any] = {"uid": uid, "nsp": nsp, "type": int(kind)}
    raw = _field(fields, "data")
    if raw:
        if raw.startswith("{"):
            try:
                data = json.loads(raw)
            except ValueError as exc:
                raise WireError(f"invalid JSON: {exc}") from None
        else:
            try:
                packed = base64.b64decode(raw, validate=True)
            except ValueError:
                raise WireError("stream entry data is neither JSON nor base64") from None
            data = unpack(packed)
        if not isinstance(data, dict):
            raise WireError("message data must be an object")
        message["data"] = data
    return message


def encode_pubsub_message(uid: str, namespace: str, kind: MessageType,
                          data: dict[str, Any] | None = None) -> bytes:
    """A request or an answer of the streams adapter: always msgpack."""
    return pack(_cluster_message(uid, namespace, kind, data))


def parse_stream_id(value: Any) -> tuple[int, int] | None:
    """``"<ms>-<seq>"`` as two numbers, None for anything else."""
    if not isinstance(value, str) or len(value) > 41:
        return None
    ms, dash, seq = value.partition("-")
    if not dash or not (ms.isascii() and ms.isdigit() and seq.isascii() and seq.isdigit()):
        return None
    parsed = int(ms), int(seq)
    return parsed if max(parsed) <= _MAX_ID_PART else None


def next_stream_id(value: tuple[int, int]) -> str:
    """The smallest id after ``value`` (XRANGE's exclusive start, as Redis < 6.2 needs it)."""
    ms, seq = value
    return f"{ms + 1}-0" if seq == _MAX_ID_PART else f"{ms}-{seq + 1}"


def encode_session(sid: str, pid: str, rooms: Iterable[str], data: Any) -> str:
    """A kept session as the Node adapter stores it."""
    return base64.b64encode(pack({"sid": sid, "pid": pid, "rooms": list(rooms),
                                  "data": data})).decode("ascii")


def decode_session(raw: bytes | str) -> tuple[str, str, frozenset[str], Any]:
    """``(sid, pid, rooms, data)`` of a stored session; raises WireError."""
    try:
        value = unpack(base64.b64decode(raw, validate=True))
    except ValueError:
        raise WireError("a session must be base64") from None
    if not isinstance(value, dict):
        raise WireError("a session must be an object")
    sid, pid = value.get("sid"), value.get("pid")
    if not isinstance(sid, str) or not isinstance(pid, str):
        raise WireError("a session needs sid and pid")
    return sid, pid, room_list(value.get("rooms")), value.get("data")
