"""The server side of a WebSocket, sans-IO: the handshake answer and frames in.

The upgrade request itself is parsed by h11 in ``_http``; this module checks
it and computes the answer. After the handshake, :class:`WebSocketProtocol`
turns received bytes into whole messages with wsproto's frame parser
(control frames answered, fragments reassembled, the size limit enforced
while a message arrives, not after). Outgoing data frames are pre-framed by
``_wsframe`` and written by ``_outbox``; see docs/architecture.md for why
roomd does this beside wsproto rather than through trio-websocket.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


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


class WebSocketProtocol:
    """Bytes in, whole messages out, for one accepted server-side WebSocket.

    :meth:`receive` returns the messages completed by the data. Once the
    peer has closed (or sent a malformed frame, or a message over
    ``max_message`` characters/bytes), ``close_code`` is set and further data
    is ignored. Replies the protocol owes the peer (pongs, the closing
    handshake) accumulate in :meth:`take_output`.
    """

    __slots__ = ("_conn", "_parts", "_size", "_max", "_output", "close_code")

    def __init__(self, max_message: int) -> None:
        self._conn = Connection(ConnectionType.SERVER)
        self._parts: list[str | bytes] = []
        self._size = 0
        self._max = max_message
        self._output = b""
        self.close_code: int | None = None

    def take_output(self) -> bytes:
        output, self._output = self._output, b""
        return output

    def close_frame(self, code: int = 1000, reason: str = "") -> bytes:
        """The frame that starts (or completes) a closing handshake; b"" once closed."""
        try:
            return self._conn.send(CloseConnection(code=code, reason=reason))
        except LocalProtocolError:  # already closed
            return b""

    def receive(self, data: bytes | None) -> list[str | bytes]:
        """Feed received bytes (None at end of stream)."""
        if self.close_code is not None:
            return []
        conn = self._conn
        conn.receive_data(data)
        messages: list[str | bytes] = []
        for event in conn.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                part = event.data
                self._size += len(part)
                if self._size > self._max:
                    self._output += self.close_frame(CloseReason.MESSAGE_TOO_BIG,
                                                     "message over maxPayload")
                    self.close_code = CloseReason.MESSAGE_TOO_BIG
                    break
                if event.message_finished:
                    if self._parts:
                        self._parts.append(part)
                        joined = "" if isinstance(part, str) else b""
                        part = joined.join(self._parts)  # type: ignore[arg-type]
                        self._parts = []
                    messages.append(bytes(part) if isinstance(part, bytearray) else part)
                    self._size = 0
                else:
                    self._parts.append(part)
            elif isinstance(event, Ping):
                self._output += conn.send(event.response())
            elif isinstance(event, CloseConnection):
                # A frame wsproto could not parse leaves the state OPEN: answer
                # with its error code; a peer's close is answered with 1000.
                protocol_error = conn.state is ConnectionState.OPEN
                self._output += self.close_frame(event.code if protocol_error else 1000, "")
                self.close_code = event.code
                break
        return messages
