"""Socket.IO v5 packets and binary attachments (sans-IO).

Text form of a packet (one Engine.IO MESSAGE)::

    <type>[<attachments>-][<namespace>,][<ack id>][<JSON data>]

The namespace is omitted when it is ``"/"``. Bytes anywhere inside the data
are replaced by ``{"_placeholder":true,"num":N}`` and sent as N following
binary Engine.IO messages; such an EVENT / ACK goes out as BINARY_EVENT /
BINARY_ACK.

Both roles use this codec: the server, and the client's state machine
(:mod:`.client`), since a Socket.IO packet has the same form in both directions.

Encoding (:func:`encode`, :func:`encode_event`) trusts its caller: it raises
:class:`TypeError` for data that is not JSON-serializable and
:class:`ValueError` for a malformed packet (bad namespace, bad ack id, wrong
data shape, NaN / infinity, circular or too deeply nested data).

Decoding (:class:`Decoder`) is strict, modelled on socket.io-parser v4: any
violation raises :class:`roomd._errors.ProtocolError` -- never another
exception type -- with a message saying what was wrong. Decoded binary packets
are returned as EVENT / ACK (like socket.io-parser), with bytes in place of
the placeholders, so ``Decoder.feed`` over ``encode(p)`` gives back ``p``.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import json
import math
import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._errors import ProtocolError

__all__ = ["PacketType", "Packet", "encode", "encode_event", "Decoder"]


class PacketType(enum.IntEnum):
    CONNECT = 0
    DISCONNECT = 1
    EVENT = 2
    ACK = 3
    CONNECT_ERROR = 4
    BINARY_EVENT = 5
    BINARY_ACK = 6


@dataclass(slots=True)
class Packet:
    """One Socket.IO packet.

    ``data`` is a list for EVENT / ACK (an EVENT's first item is the event
    name), a dict or None for CONNECT, a dict (or str) for CONNECT_ERROR and
    None for DISCONNECT. ``id`` is the ack id, or None.
    """

    type: PacketType
    namespace: str = "/"
    data: Any = None
    id: int | None = None


_BINARY = (bytes, bytearray, memoryview)
_EVENT_TYPES = (PacketType.EVENT, PacketType.BINARY_EVENT)
_ACK_TYPES = (PacketType.ACK, PacketType.BINARY_ACK)
_TYPE_BY_CHAR = {str(int(t)): t for t in PacketType}
_MAX_ACK_ID_DIGITS = 16  # JavaScript's Number.MAX_SAFE_INTEGER has 16 digits
_EVENT_MSG = "event payload must be a non-empty list starting with the event name"

# --------------------------------------------------------------------------
# Encoding


class _HasBinary(Exception):
    """Raised out of the JSON encoder when it meets bytes: take the slow path."""


_user_default: Callable[[Any], Any] | None = None


def set_json_default(fn: Callable[[Any], Any] | None) -> None:
    """Encode other types with ``fn(obj)`` (process-wide; None removes it).

    ``fn`` returns something JSON can hold, or raises TypeError.
    """
    global _user_default
    _user_default = fn


def _plain(obj: Any) -> Any:
    """A JSON stand-in for a value the json module cannot encode, as Node would send it."""
    if isinstance(obj, datetime.datetime):
        if obj.tzinfo is None:
            return obj.isoformat(timespec="milliseconds")
        # JavaScript's Date.prototype.toJSON: UTC, milliseconds, "Z"
        utc = obj.astimezone(datetime.UTC).replace(tzinfo=None)
        return utc.isoformat(timespec="milliseconds") + "Z"
    if isinstance(obj, (datetime.date, datetime.time)):
        return obj.isoformat()
    if isinstance(obj, (uuid.UUID, decimal.Decimal)):
        return str(obj)
    if _user_default is not None:
        return _user_default(obj)
    raise TypeError(f"cannot encode an argument of type {type(obj).__name__} as JSON "
                    "(give roomd.Server a json_default to encode it)")


def plain(obj: Any) -> Any:
    """What the JSON encoder writes for a value JSON lacks (dates, UUID, Decimal,
    ``json_default``); raises TypeError. Other encodings of the same arguments
    (a cluster's msgpack) use it to agree with what clients receive."""
    return _plain(obj)


def _default_fast(obj: Any) -> Any:
    if isinstance(obj, _BINARY):
        raise _HasBinary
    return _plain(obj)


def _default_slow(obj: Any) -> Any:  # after _deconstruct: no bytes remain
    return _plain(obj)


def _make_dumps(default: Any, ascii_only: bool) -> Any:
    """A compact, NaN-refusing JSON encoder, built once (C accelerated)."""
    enc: Any = json.encoder  # the C accelerators are not in the stubs
    if enc.c_make_encoder is not None:
        quote = enc.c_encode_basestring_ascii if ascii_only else enc.c_encode_basestring
        c_encode = enc.c_make_encoder(None, default, quote, None, ":", ",", False, False, False)
        return lambda obj: "".join(c_encode(obj, 0))
    return json.JSONEncoder(  # pragma: no cover - CPython always has _json
        ensure_ascii=ascii_only, separators=(",", ":"), allow_nan=False,
        check_circular=False, default=default,
    ).encode


_dumps_fast = _make_dumps(_default_fast, False)
_dumps_fast_ascii = _make_dumps(_default_fast, True)
_dumps_slow = _make_dumps(_default_slow, False)
_dumps_slow_ascii = _make_dumps(_default_slow, True)


def _to_json(obj: Any, dumps: Any, dumps_ascii: Any) -> str:
    """JSON text of obj; UTF-8-safe (lone surrogates fall back to \\u escapes)."""
    try:
        text = dumps(obj)
    except RecursionError:
        raise ValueError("data is circular or nested too deeply") from None
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = dumps_ascii(obj)
    return text


def _deconstruct(data: Any, attachments: list[bytes]) -> Any:
    """Copy of data with each bytes-like replaced by a placeholder."""
    if isinstance(data, _BINARY):
        attachments.append(data if type(data) is bytes else bytes(data))
        return {"_placeholder": True, "num": len(attachments) - 1}
    if isinstance(data, (list, tuple)):
        return [_deconstruct(item, attachments) for item in data]
    if isinstance(data, dict):
        return {key: _deconstruct(value, attachments) for key, value in data.items()}
    return data


def _head(type_char: str, namespace: str, ack_id: int | None) -> str:
    if namespace != "/":
        if namespace[:1] != "/" or "," in namespace:
            raise ValueError(f"invalid namespace {namespace!r}")
        type_char = type_char + namespace + ","
    if ack_id is not None:
        if type(ack_id) is not int or ack_id < 0:
            raise ValueError(f"invalid ack id {ack_id!r}")
        type_char = type_char + str(ack_id)
    return type_char


def _encode_binary(is_event: bool, namespace: str, data: Any, ack_id: int | None) -> list:
    attachments: list[bytes] = []
    try:
        stripped = _deconstruct(data, attachments)
    except RecursionError:
        raise ValueError("data is circular or nested too deeply") from None
    body = _to_json(stripped, _dumps_slow, _dumps_slow_ascii)
    char = "5" if is_event else "6"
    out: list[str | bytes] = [_head(f"{char}{len(attachments)}-", namespace, ack_id) + body]
    out.extend(attachments)
    return out


def encode_event(namespace: str, args: list | tuple,
                 ack_id: int | None = None) -> list[str | bytes]:
    """Encode an EVENT (hot path): ``args`` is ``[event name, *arguments]``.

    Returns ``[text]``, or ``[text, attachment, ...]`` as a BINARY_EVENT when
    bytes occur anywhere in args. Without bytes this is one C-level JSON pass:
    no scan, no Packet allocation.

    Raises ValueError for an empty args / non-str event name, a bad namespace
    or ack id, NaN or circular data; TypeError for unserializable objects.
    """
    if not args or not isinstance(args[0], str):
        raise ValueError(_EVENT_MSG)
    try:
        body = _to_json(args, _dumps_fast, _dumps_fast_ascii)
    except _HasBinary:
        return _encode_binary(True, namespace, args, ack_id)
    if namespace == "/" and ack_id is None:
        return ["2" + body]
    return [_head("2", namespace, ack_id) + body]


def encode(packet: Packet) -> list[str | bytes]:
    """Encode a packet: ``[text]`` then one bytes item per binary attachment.

    EVENT / ACK data holding bytes (anywhere, nested) becomes BINARY_EVENT /
    BINARY_ACK; a BINARY_* packet without bytes is sent as plain EVENT / ACK.

    Raises ValueError when the data does not fit the type (EVENT: non-empty
    list starting with a str; ACK: list; CONNECT: dict or None; CONNECT_ERROR:
    dict or str; DISCONNECT: None), for bytes outside EVENT / ACK, a bad
    namespace or ack id, NaN or circular data; TypeError for unserializable
    objects.
    """
    ptype = packet.type
    data = packet.data
    if ptype in _EVENT_TYPES:
        if not isinstance(data, (list, tuple)) or not data or not isinstance(data[0], str):
            raise ValueError(_EVENT_MSG)
        return encode_event(packet.namespace, data, packet.id)
    if ptype in _ACK_TYPES:
        if not isinstance(data, (list, tuple)):
            raise ValueError("ack payload must be a list")
        try:
            body = _to_json(data, _dumps_fast, _dumps_fast_ascii)
        except _HasBinary:
            return _encode_binary(False, packet.namespace, data, packet.id)
        return [_head("3", packet.namespace, packet.id) + body]
    if ptype == PacketType.CONNECT:
        if data is not None and not isinstance(data, dict):
            raise ValueError("connect payload must be an object or None")
    elif ptype == PacketType.CONNECT_ERROR:
        if not isinstance(data, (dict, str)):
            raise ValueError("connect error payload must be an object or a string")
    elif ptype == PacketType.DISCONNECT:
        if data is not None:
            raise ValueError("disconnect packet must not carry a payload")
    else:
        raise ValueError(f"invalid packet type {ptype!r}")
    head = _head(str(int(ptype)), packet.namespace, packet.id)
    if data is None:
        return [head]
    try:
        body = _to_json(data, _dumps_fast, _dumps_fast_ascii)
    except _HasBinary:
        raise ValueError(f"{PacketType(ptype).name} packets cannot carry binary data") from None
    return [head + body]


# --------------------------------------------------------------------------
# Decoding

_MISSING = object()
_ATTACHMENTS_RE = re.compile(r"([0-9]{1,10})-")
_ACK_ID_RE = re.compile(r"[0-9]+")
# Text where a namespace was clearly meant but lacks its leading "/".
_BARE_NSP_RE = re.compile(r"[^/0-9\[{\"\s\-][^,\[{\"]*,")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


_loads = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_parse_float).decode


def _decode_text(text: str, max_attachments: int) -> tuple[Packet, int | None]:
    """Parse the text part of a packet; returns (packet, attachment count)."""
    if not text:
        raise ProtocolError("empty packet")
    ptype = _TYPE_BY_CHAR.get(text[0])
    if ptype is None:
        raise ProtocolError(f"invalid packet type {text[0]!r}")
    pos = 1
    count = None
    if ptype is PacketType.BINARY_EVENT or ptype is PacketType.BINARY_ACK:
        match = _ATTACHMENTS_RE.match(text, 1)
        if match is None:
            raise ProtocolError("invalid attachment count in binary packet")
        count = int(match.group(1))
        if count > max_attachments:
            raise ProtocolError(f"too many attachments ({count} > {max_attachments})")
        pos = match.end()
    namespace = "/"
    if text.startswith("/", pos):
        comma = text.find(",", pos)
        if comma == -1:
            namespace, pos = text[pos:], len(text)
        else:
            namespace, pos = text[pos:comma], comma + 1
    elif _BARE_NSP_RE.match(text, pos):
        raise ProtocolError("namespace must start with '/'")
    ack_id = None
    match = _ACK_ID_RE.match(text, pos)
    if match is not None:
        digits = match.group()
        if len(digits) > _MAX_ACK_ID_DIGITS:
            raise ProtocolError("ack id too long")
        ack_id = int(digits)
        pos = match.end()
    data: Any = _MISSING
    if pos < len(text):
        try:
            data = _loads(text[pos:])
        except RecursionError:
            raise ProtocolError("invalid JSON payload: nested too deeply") from None
        except ValueError as exc:
            raise ProtocolError(f"invalid JSON payload: {exc}") from None
    if ptype is PacketType.EVENT or ptype is PacketType.BINARY_EVENT:
        if type(data) is not list or not data or type(data[0]) is not str:
            raise ProtocolError(_EVENT_MSG)
    elif ptype is PacketType.ACK or ptype is PacketType.BINARY_ACK:
        if type(data) is not list:
            raise ProtocolError("ack payload must be a list")
    elif ptype is PacketType.CONNECT:
        if data is _MISSING:
            data = None
        elif type(data) is not dict:
            raise ProtocolError("connect payload must be an object")
    elif ptype is PacketType.CONNECT_ERROR:
        if type(data) is not dict and type(data) is not str:
            raise ProtocolError("connect error payload must be an object or a string")
    else:  # DISCONNECT
        if data is not _MISSING:
            raise ProtocolError("disconnect packet must not carry a payload")
        data = None
    if count is not None:
        ptype = PacketType.EVENT if ptype is PacketType.BINARY_EVENT else PacketType.ACK
    return Packet(ptype, namespace, data, ack_id), count


def _reconstruct(data: Any, attachments: list[bytes], used: bytearray) -> Any:
    if type(data) is list:
        return [_reconstruct(item, attachments, used) for item in data]
    if type(data) is dict:
        if data.get("_placeholder") is True:
            num = data.get("num")
            if type(num) is not int or not 0 <= num < len(attachments):
                raise ProtocolError(
                    f"placeholder num must be an integer in range(0, {len(attachments)})"
                )
            used[num] = 1
            return attachments[num]
        return {key: _reconstruct(value, attachments, used) for key, value in data.items()}
    return data


class Decoder:
    """Per-connection Socket.IO decoder: feed it each Engine.IO message.

    A str starts a packet. A BINARY_EVENT / BINARY_ACK then waits for its
    attachments (bytes messages); once they have all arrived the packet is
    returned as EVENT / ACK with the placeholders replaced by the bytes.

    :meth:`feed` raises ProtocolError (the only exception type it raises) for
    a malformed packet, bytes with no binary packet pending, a str while
    attachments are pending, more than ``max_attachments`` attachments, a
    placeholder whose num is out of range, an attachment no placeholder
    uses, or attachments of more than ``max_bytes`` bytes in total (0: no
    bound; the server passes maxPayload, so a binary packet holds at most
    that much however many attachments it announces). After an error the
    decoder is reset, though the connection should be closed anyway.
    """

    __slots__ = ("max_attachments", "max_bytes", "_pending", "_expected", "_attachments",
                 "_size")

    def __init__(self, max_attachments: int = 1000, max_bytes: int = 0) -> None:
        self.max_attachments = max_attachments
        self.max_bytes = max_bytes
        self._pending: Packet | None = None
        self._expected = 0
        self._attachments: list[bytes] = []
        self._size = 0

    @property
    def awaiting_attachments(self) -> int:
        """How many attachments the pending binary packet still needs (0 if none)."""
        if self._pending is None:
            return 0
        return self._expected - len(self._attachments)

    def feed(self, message: str | bytes) -> Packet | None:
        """Feed one Engine.IO message; return a complete packet, or None while waiting."""
        if isinstance(message, str):
            if self._pending is not None:
                waiting = self.awaiting_attachments
                self._reset()
                raise ProtocolError(
                    f"got a text packet while waiting for {waiting} binary attachment(s)"
                )
            packet, count = _decode_text(message, self.max_attachments)
            if count is None:
                return packet
            self._pending = packet
            self._expected = count
            self._attachments = []
            if count == 0:
                return self._finish()
            return None
        if isinstance(message, _BINARY):
            if self._pending is None:
                raise ProtocolError("unexpected binary attachment: no binary packet is pending")
            self._size += len(message)
            if self.max_bytes and self._size > self.max_bytes:
                self._reset()
                raise ProtocolError(f"binary attachments over {self.max_bytes} bytes in total")
            self._attachments.append(message if type(message) is bytes else bytes(message))
            if len(self._attachments) == self._expected:
                return self._finish()
            return None
        raise ProtocolError(f"expected a str or bytes message, got {type(message).__name__}")

    def _reset(self) -> None:
        self._pending = None
        self._expected = 0
        self._attachments = []
        self._size = 0

    def reset(self) -> None:
        """Drop a pending packet and its attachments (the connection is gone)."""
        self._reset()

    def _finish(self) -> Packet:
        packet = self._pending
        attachments = self._attachments
        self._reset()
        assert packet is not None
        used = bytearray(len(attachments))
        try:
            packet.data = _reconstruct(packet.data, attachments, used)
        except RecursionError:
            raise ProtocolError("binary payload nested too deeply") from None
        if not all(used):
            raise ProtocolError(f"attachment {used.index(0)} is not referenced by any placeholder")
        return packet


def new_id() -> str:
    """A random 20-character id for a session or a socket (120 bits, URL-safe).

    Never starts with "-", so that an id can be given to a command line
    (``roomd disconnect SID``) without being read as an option.
    """
    while True:
        candidate = secrets.token_urlsafe(15)
        if candidate[0] != "-":
            return candidate
