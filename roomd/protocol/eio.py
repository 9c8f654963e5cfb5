"""Engine.IO v4 packets and long-polling payloads (sans-IO).

Pure functions, no I/O: text and bytes in, :class:`Packet` objects out, and
back. Two wire forms exist:

* WebSocket: one packet per frame. A text frame is ``<type digit><data>``
  (``"4hello"``, ``"2probe"``); a binary frame is always a MESSAGE whose data
  is the raw bytes (no type prefix).
* Long-polling: a payload is packets joined by the record separator
  ``"\\x1e"``; a binary MESSAGE is written ``"b" + base64(data)``.

Decoding is strict. Anything malformed raises
:class:`roomd._errors.ProtocolError` (and never another exception type) with a
message saying what was wrong; the transport then closes the session.
Encoding trusts the server's own packets and raises :class:`ValueError` only
for a programming error (bytes data on a packet other than MESSAGE).

Both roles use these functions: the server encodes OPEN with
:func:`encode_open`, the client reads it with :func:`decode_open`.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass

from .._errors import ProtocolError

__all__ = [
    "PacketType",
    "Packet",
    "encode_packet",
    "decode_packet",
    "encode_payload",
    "decode_payload",
    "encode_open",
    "decode_open",
    "OpenInfo",
    "RECORD_SEPARATOR",
    "ErrorCode",
]

RECORD_SEPARATOR = "\x1e"


class PacketType(enum.IntEnum):
    OPEN = 0
    CLOSE = 1
    PING = 2
    PONG = 3
    MESSAGE = 4
    UPGRADE = 5
    NOOP = 6


class ErrorCode(enum.IntEnum):
    """The ``code`` of an HTTP refusal's JSON body, as the JS engine.io server sends it."""

    UNKNOWN_TRANSPORT = 0
    UNKNOWN_SID = 1
    BAD_HANDSHAKE_METHOD = 2
    BAD_REQUEST = 3
    FORBIDDEN = 4
    UNSUPPORTED_PROTOCOL_VERSION = 5

    @property
    def message(self) -> str:
        return _ERROR_MESSAGES[self]


_ERROR_MESSAGES = {
    ErrorCode.UNKNOWN_TRANSPORT: "Transport unknown",
    ErrorCode.UNKNOWN_SID: "Session ID unknown",
    ErrorCode.BAD_HANDSHAKE_METHOD: "Bad handshake method",
    ErrorCode.BAD_REQUEST: "Bad request",
    ErrorCode.FORBIDDEN: "Forbidden",
    ErrorCode.UNSUPPORTED_PROTOCOL_VERSION: "Unsupported protocol version",
}


@dataclass(frozen=True, slots=True)
class Packet:
    """One Engine.IO packet.

    ``data`` is a str for every packet type; it is bytes only for a binary
    MESSAGE.
    """

    type: PacketType
    data: str | bytes = ""


# Index by packet type -> type digit / PacketType member, avoiding str(int).
_TYPE_CHAR = "0123456"
_TYPE_BY_CHAR = {str(int(t)): t for t in PacketType}
_BINARY = (bytes, bytearray, memoryview)
_PROBE_OK = frozenset(("", "probe"))


def encode_packet(packet: Packet) -> str | bytes:
    """Encode one packet in its WebSocket form.

    Text packets become ``str`` (``"4hello"``); a MESSAGE whose data is bytes
    becomes the raw ``bytes`` (sent as a binary frame).

    Raises ValueError when bytes data is attached to a packet that is not a
    MESSAGE.
    """
    data = packet.data
    if isinstance(data, str):
        return _TYPE_CHAR[packet.type] + data
    if packet.type != PacketType.MESSAGE:
        raise ValueError(f"only MESSAGE packets may carry binary data, not {packet.type!r}")
    return data if type(data) is bytes else bytes(data)


def decode_packet(frame: str | bytes) -> Packet:
    """Decode one WebSocket frame's content into a packet.

    A bytes frame is a binary MESSAGE. A str frame starts with the type digit.

    Raises ProtocolError for: an empty frame, an unknown type digit, data on
    CLOSE / UPGRADE / NOOP, PING / PONG data other than ``"probe"``, an OPEN
    packet whose data is not a JSON object, or a frame that is neither str nor
    bytes.
    """
    if isinstance(frame, str):
        return _decode_text(frame)
    if isinstance(frame, _BINARY):
        return Packet(PacketType.MESSAGE, bytes(frame))
    raise ProtocolError(f"expected a str or bytes frame, got {type(frame).__name__}")


def _decode_text(text: str) -> Packet:
    if not text:
        raise ProtocolError("empty packet")
    ptype = _TYPE_BY_CHAR.get(text[0])
    if ptype is None:
        raise ProtocolError(f"invalid packet type {text[0]!r}")
    data = text[1:]
    if ptype is PacketType.MESSAGE:
        return Packet(ptype, data)
    if ptype is PacketType.PING or ptype is PacketType.PONG:
        if data not in _PROBE_OK:
            raise ProtocolError(f"{ptype.name} packet data must be empty or 'probe'")
    elif ptype is PacketType.OPEN:
        try:
            parsed = json.loads(data)
        except (ValueError, RecursionError):
            raise ProtocolError("OPEN packet data must be a JSON object") from None
        if not isinstance(parsed, dict):
            raise ProtocolError("OPEN packet data must be a JSON object")
    elif data:
        raise ProtocolError(f"{ptype.name} packet must not carry data")
    return Packet(ptype, data)


def encode_payload(packets: Iterable[Packet]) -> str:
    """Encode packets as one long-polling payload.

    Packets are joined by ``"\\x1e"``; a binary MESSAGE is written as
    ``"b" + base64(data)``.

    Raises ValueError when bytes data is attached to a non-MESSAGE packet.
    """
    parts: list[str] = []
    append = parts.append
    for packet in packets:
        data = packet.data
        if isinstance(data, str):
            append(_TYPE_CHAR[packet.type] + data)
        elif packet.type != PacketType.MESSAGE:
            raise ValueError(f"only MESSAGE packets may carry binary data, not {packet.type!r}")
        else:
            append("b" + base64.b64encode(data).decode("ascii"))
    return RECORD_SEPARATOR.join(parts)


def decode_payload(body: str) -> list[Packet]:
    """Decode a long-polling request body into its packets.

    The body is split on ``"\\x1e"``; a part starting with ``"b"`` is a
    base64-encoded binary MESSAGE, any other part is decoded like a text frame
    (see :func:`decode_packet`).

    Raises ProtocolError for: an empty body or empty packet (including a
    leading, trailing or doubled separator), invalid base64 (padding is
    required, no characters outside the alphabet), any packet that
    :func:`decode_packet` rejects, or a body that is not a str.
    """
    if not isinstance(body, str):
        raise ProtocolError(f"expected a str payload, got {type(body).__name__}")
    packets: list[Packet] = []
    append = packets.append
    for part in body.split(RECORD_SEPARATOR):
        if part[:1] == "b":
            try:
                data = base64.b64decode(part[1:], validate=True)
            except (binascii.Error, ValueError):
                raise ProtocolError("invalid base64 in binary packet") from None
            append(Packet(PacketType.MESSAGE, data))
        else:
            append(_decode_text(part))
    return packets


def encode_open(
    sid: str,
    upgrades: Iterable[str],
    ping_interval_ms: int,
    ping_timeout_ms: int,
    max_payload: int,
) -> Packet:
    """Build the OPEN packet the server sends first on a new session.

    Its data is compact JSON with the keys sid, upgrades, pingInterval,
    pingTimeout and maxPayload, e.g.
    ``0{"sid":"abc","upgrades":["websocket"],"pingInterval":25000,...}``.
    """
    data = json.dumps(
        {
            "sid": sid,
            "upgrades": list(upgrades),
            "pingInterval": int(ping_interval_ms),
            "pingTimeout": int(ping_timeout_ms),
            "maxPayload": int(max_payload),
        },
        separators=(",", ":"),
    )
    return Packet(PacketType.OPEN, data)


@dataclass(frozen=True, slots=True)
class OpenInfo:
    """What a server's OPEN packet says: the session id and its heartbeat terms.

    Times are in seconds; ``max_payload`` is in bytes (0 when the server did not
    say).
    """

    sid: str
    upgrades: tuple[str, ...]
    ping_interval: float
    ping_timeout: float
    max_payload: int


def _ms(info: dict, key: str) -> float:
    value = info.get(key)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 2**31:
        raise ProtocolError(f"OPEN packet: {key} must be a positive number of milliseconds")
    return float(value) / 1000


def decode_open(packet: Packet) -> OpenInfo:
    """Read the OPEN packet a client receives first (the inverse of :func:`encode_open`).

    Raises ProtocolError when the packet is not OPEN, or its JSON lacks a
    non-empty string ``sid``, positive ``pingInterval`` / ``pingTimeout``
    (milliseconds, below 2**31), a list of strings ``upgrades`` (may be absent)
    or a non-negative integer ``maxPayload`` (may be absent).
    """
    if packet.type is not PacketType.OPEN or not isinstance(packet.data, str):
        raise ProtocolError(f"expected an OPEN packet, got {packet.type.name}")
    try:
        info = json.loads(packet.data)
    except (ValueError, RecursionError):
        info = None
    if not isinstance(info, dict):
        raise ProtocolError("OPEN packet data must be a JSON object")
    sid = info.get("sid")
    if not isinstance(sid, str) or not sid:
        raise ProtocolError("OPEN packet: sid must be a non-empty string")
    upgrades = info.get("upgrades", [])
    if not isinstance(upgrades, list) or not all(isinstance(u, str) for u in upgrades):
        raise ProtocolError("OPEN packet: upgrades must be a list of strings")
    max_payload = info.get("maxPayload", 0)
    if type(max_payload) is not int or max_payload < 0:
        raise ProtocolError("OPEN packet: maxPayload must be a non-negative integer")
    return OpenInfo(sid, tuple(upgrades), _ms(info, "pingInterval"), _ms(info, "pingTimeout"),
                    max_payload)
