"""The server side of a WebSocket (RFC 6455), sans-IO.

The upgrade request itself is parsed by h11 in ``_http``; :func:`handshake_error`
and :func:`accept_token` check it and compute the answer. After the
handshake, :class:`WebSocketProtocol` turns received bytes into whole
messages: client frames unmasked, fragments reassembled, pings answered, the
closing handshake done, the size limit enforced from the frame header (an
oversized message is refused before its payload is read, never buffered).
Outgoing data frames are pre-framed by ``_wsframe`` and written by
``_outbox``. docs/architecture.md says why roomd parses frames itself
rather than through trio-websocket or wsproto: per message, it is the
difference between about 2 and 18 microseconds.

No extension is ever negotiated, so any RSV bit is a protocol error.

What a peer can make it hold is bounded (docs/limits.md): one incomplete
message of at most ``max_message`` bytes in at most :data:`MAX_FRAGMENTS`
frames, and at most one pong owed (a ping flood is answered by the newest
ping only, as RFC 6455 5.5.3 allows).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib

from .wsframe import frame_header

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"



class CloseCode(enum.IntEnum):
    """WebSocket close codes (RFC 6455, 7.4.1) that roomd sends or reports."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    NO_STATUS = 1005  # reported, never sent: the peer's close frame had no code
    ABNORMAL = 1006  # reported, never sent: the connection ended without a close frame
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # the server's memory budget is spent


NORMAL = CloseCode.NORMAL
PROTOCOL_ERROR = CloseCode.PROTOCOL_ERROR
INVALID_DATA = CloseCode.INVALID_DATA
MESSAGE_TOO_BIG = CloseCode.MESSAGE_TOO_BIG
NO_STATUS = CloseCode.NO_STATUS
ABNORMAL = CloseCode.ABNORMAL

# Frames one fragmented message may take: empty continuation frames cost the
# sender 6 bytes each and would otherwise pile up for free. Browsers and the
# stock clients never fragment a message into more than a few frames.
MAX_FRAGMENTS = 4096

_CONTINUATION, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def handshake_error(headers: dict[str, str]) -> str | None:
    """What is wrong with an upgrade request's headers, or None."""
    if "upgrade" not in headers.get("connection", "").lower():
        return "Connection header lacks 'upgrade'"
    if headers.get("upgrade", "").lower() != "websocket":
        return "Upgrade header is not 'websocket'"
    if headers.get("sec-websocket-version") != "13":
        return "Sec-WebSocket-Version must be 13"
    key = headers.get("sec-websocket-key", "")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return "Sec-WebSocket-Key must be 16 bytes in base64"
    except (binascii.Error, ValueError):
        return "Sec-WebSocket-Key is not base64"
    return None


def accept_token(key: str) -> str:
    """The Sec-WebSocket-Accept value answering ``key``."""
    digest = hashlib.sha1(key.encode("ascii") + _GUID).digest()
    return base64.b64encode(digest).decode("ascii")


def upgrade_answer(key: str) -> bytes:
    """The 101 answer to an upgrade request with that Sec-WebSocket-Key (no extension,
    no subprotocol), as written without h11."""
    return ("HTTP/1.1 101 \r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_token(key)}\r\n\r\n").encode()


def close_frame(code: int = NORMAL, reason: str = "") -> bytes:
    """An unmasked close frame (the reason cut to 123 bytes, never mid-character)."""
    reason_bytes = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
    payload = code.to_bytes(2, "big") + reason_bytes
    return frame_header(0x80 | _CLOSE, len(payload)) + payload


def _unmask(payload: bytes | bytearray, key: bytes | bytearray) -> bytes:
    n = len(payload)
    if not n:
        return b""
    mask = (key * ((n >> 2) + 1))[:n]
    unmasked = int.from_bytes(payload, "little") ^ int.from_bytes(mask, "little")
    return unmasked.to_bytes(n, "little")


def _valid_close_code(code: int) -> bool:
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011) or 3000 <= code <= 4999


class WebSocketProtocol:
    """Bytes in, whole messages out, for one accepted server-side WebSocket.

    :meth:`receive` returns the messages (str for text, bytes for binary)
    completed by the data. Once the peer has closed, or broken the protocol,
    or announced a message over ``max_message`` bytes, ``close_code`` is set,
    the closing frame is in :meth:`take_output`, and further data is ignored.
    Pongs owed to the peer accumulate in :meth:`take_output` too.
    """

    __slots__ = ("_buffer", "_parts", "_opcode", "_size", "_max", "_output", "_pong",
                 "_sent_close", "close_code", "close_reason")

    def __init__(self, max_message: int) -> None:
        self._buffer: bytes | bytearray = b""
        self._parts: list[bytes] = []
        self._opcode: int | None = None
        self._size = 0
        self._max = max_message
        self._output = b""
        self._pong = b""
        self._sent_close = False
        self.close_code: int | None = None
        self.close_reason = ""

    def take_output(self) -> bytes:
        output, self._output = self._output, b""
        if self._pong:
            output, self._pong = self._pong + output, b""
        return output

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame or message."""
        return len(self._buffer) + self._size

    def discard(self) -> None:
        """Drop everything held (the connection is gone)."""
        self._buffer = b""
        self._parts = []
        self._size = 0
        self._output = self._pong = b""

    def close_frame(self, code: int = NORMAL, reason: str = "") -> bytes:
        """The frame that starts our closing handshake; b"" if one was sent."""
        if self._sent_close:
            return b""
        self._sent_close = True
        return close_frame(code, reason)

    def _fail(self, code: int, reason: str) -> None:
        self._parts = []
        self._size = 0
        self._output += self.close_frame(code, reason)
        self.close_code = code
        self.close_reason = reason

    def receive(self, data: bytes | None) -> list[str | bytes]:
        """Feed received bytes (None at the end of the stream)."""
        if self.close_code is not None:
            return []
        if data is None:
            self.close_code = ABNORMAL
            self.close_reason = "connection lost"
            return []
        if self._buffer:
            self._buffer += data  # a bytearray: a large frame arrives in pieces
            buf = self._buffer
        else:
            buf = data
        end = len(buf)
        pos = 0
        messages: list[str | bytes] = []
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            opcode = b0 & 0x0F
            if b0 & 0x70:
                self._fail(PROTOCOL_ERROR, "reserved bits set")
                break
            if not b1 & 0x80:
                self._fail(PROTOCOL_ERROR, "client frames must be masked")
                break
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 4], "big")
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                head = 10
                if length >> 63:
                    self._fail(PROTOCOL_ERROR, "frame length out of range")
                    break
            if opcode >= _CLOSE:
                if not b0 & 0x80 or length > 125:
                    self._fail(PROTOCOL_ERROR, "control frames must be whole and short")
                    break
            elif self._size + length > self._max:
                self._fail(MESSAGE_TOO_BIG, "message over maxPayload")
                break
            total = head + 4 + length
            if end - pos < total:
                break
            key = buf[pos + head:pos + head + 4]
            payload = _unmask(buf[pos + head + 4:pos + total], key)
            pos += total
            if opcode >= _CLOSE:
                if not self._control(opcode, payload):
                    break
                continue
            if opcode == _CONTINUATION:
                if self._opcode is None:
                    self._fail(PROTOCOL_ERROR, "continuation frame outside a message")
                    break
            elif opcode == _TEXT or opcode == _BINARY:
                if self._opcode is not None:
                    self._fail(PROTOCOL_ERROR, "new message inside a fragmented one")
                    break
                self._opcode = opcode
            else:
                self._fail(PROTOCOL_ERROR, f"unknown opcode {opcode}")
                break
            if not b0 & 0x80:
                if len(self._parts) >= MAX_FRAGMENTS:
                    self._fail(MESSAGE_TOO_BIG, f"message in over {MAX_FRAGMENTS} frames")
                    break
                self._parts.append(payload)
                self._size += length
                continue
            if self._parts:
                self._parts.append(payload)
                payload = b"".join(self._parts)
                self._parts = []
            if self._opcode == _TEXT:
                try:
                    messages.append(payload.decode("utf-8"))
                except UnicodeDecodeError:
                    self._fail(INVALID_DATA, "text message is not UTF-8")
                    break
            else:
                messages.append(payload)
            self._opcode = None
            self._size = 0
        if self.close_code is not None or pos >= end:
            self._buffer = b""
        elif buf is self._buffer:
            # Grown in place: keep it, never copy a partial frame per read (quadratic).
            if pos:
                del buf[:pos]  # type: ignore[union-attr]  # buf is the bytearray
        else:
            self._buffer = bytearray(buf[pos:])
        return messages

    def _control(self, opcode: int, payload: bytes) -> bool:
        """Handle a control frame; False once the connection is closing."""
        if opcode == _PING:
            # Only the newest ping is answered: a flood owes one pong, not thousands.
            self._pong = frame_header(0x80 | _PONG, len(payload)) + payload
            return True
        if opcode == _PONG:
            return True
        if opcode != _CLOSE:
            self._fail(PROTOCOL_ERROR, f"unknown opcode {opcode}")
            return False
        if not payload:
            code: int = NO_STATUS
            reason = ""
        elif len(payload) < 2:
            self._fail(PROTOCOL_ERROR, "close frame with a 1-byte payload")
            return False
        else:
            code = int.from_bytes(payload[:2], "big")
            if not _valid_close_code(code):
                self._fail(PROTOCOL_ERROR, f"invalid close code {code}")
                return False
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                self._fail(INVALID_DATA, "close reason is not UTF-8")
                return False
        # The peer closed: answer, and stop reading.
        self._output += self.close_frame(NORMAL)
        self.close_code = code
        self.close_reason = reason
        return False
