"""The client side of Engine.IO v4 and Socket.IO v5 (sans-IO).

:class:`ClientProtocol` is the state of one client connection, in the style
of h11 and wsproto: the I/O layer feeds it what the server sent and gets
events back; it calls methods to connect a namespace, emit, ack and
disconnect, and sends what :meth:`~ClientProtocol.packets_to_send` returns.
No trio, no sockets: the same machine serves the WebSocket and the
long-polling transport, and is tested by tables of wire messages.

It reuses the server's codecs (:mod:`.eio`, :mod:`.sio`): Socket.IO packets
are symmetric, so the client encodes CONNECT / EVENT / ACK / DISCONNECT with
:func:`.sio.encode` and decodes the server's packets with :class:`.sio.Decoder`;
the server's OPEN packet is read by :func:`.eio.decode_open`.

Every state change happens in this file. The connection is OPENING until the
server's OPEN packet, then OPEN, then CLOSED for good. Each namespace is
CONNECTING from :meth:`~ClientProtocol.connect` until the server's CONNECT
(:class:`Connected`) or CONNECT_ERROR (:class:`ConnectFailed`, and it is
forgotten); a server DISCONNECT (:class:`NamespaceDisconnected`) forgets it
too.

What the server sends is never trusted: malformed Engine.IO or Socket.IO data,
a packet before OPEN, a second OPEN or a CONNECT without a sid closes the
connection with a :class:`Closed` event whose reason is "parse error" and
whose detail says what was wrong; nothing here raises on bad server input.
Packets for a namespace that is not connected, and acks nobody waits for
(late ones, after a timeout), are ignored, as socket.io-client does.

Heartbeats: the server pings, the client answers every PING with a PONG at
once. :attr:`~ClientProtocol.heartbeat_timeout` is how long the I/O layer may
wait for the next packet (pingInterval + pingTimeout); when it passes, it calls
:meth:`~ClientProtocol.heartbeat_expired` (reason "ping timeout").

Misuse by the caller raises: :class:`roomd._errors.Disconnected` when the
connection or the namespace is not open, :class:`ValueError` for a reserved
event name or a bad namespace, :class:`TypeError` / :class:`ValueError` from
the codec for data that is not JSON-serializable.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .._errors import Disconnected, ProtocolError
from . import eio, sio

__all__ = [
    "AckReceived",
    "ClientProtocol",
    "ClientState",
    "Closed",
    "ConnectFailed",
    "Connected",
    "EventReceived",
    "NamespaceDisconnected",
    "NamespaceState",
    "Opened",
    "RESERVED_EVENTS",
]

# socket.io-client refuses to emit these: the server would close the connection.
RESERVED_EVENTS = frozenset(
    ("connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener")
)
# A client has no reason to accept more attachments per packet than this;
# with trio-websocket's message size limit it bounds a pending packet's memory.
DEFAULT_MAX_ATTACHMENTS = 100


class ClientState(enum.Enum):
    OPENING = "opening"  # waiting for the server's OPEN packet
    OPEN = "open"
    CLOSED = "closed"


class NamespaceState(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"


# --------------------------------------------------------------------------
# Events


@dataclass(frozen=True, slots=True)
class Opened:
    """The Engine.IO handshake is done."""

    info: eio.OpenInfo


@dataclass(frozen=True, slots=True)
class Connected:
    """The server accepted the namespace; ``sid`` is the socket's id there."""

    namespace: str
    sid: str


@dataclass(frozen=True, slots=True)
class ConnectFailed:
    """The server refused the namespace (CONNECT_ERROR)."""

    namespace: str
    message: str
    data: Any = None


@dataclass(frozen=True, slots=True)
class EventReceived:
    """An event from the server; ``ack_id`` is not None when it asks for an ack."""

    namespace: str
    name: str
    args: list
    ack_id: int | None = None


@dataclass(frozen=True, slots=True)
class AckReceived:
    """The server acknowledged the event sent with ``ack_id``."""

    namespace: str
    ack_id: int
    args: list


@dataclass(frozen=True, slots=True)
class NamespaceDisconnected:
    """The server disconnected the namespace ("io server disconnect")."""

    namespace: str


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection is over. ``reason`` is a Socket.IO disconnect reason."""

    reason: str
    detail: str = ""


Event = (
    Opened | Connected | ConnectFailed | EventReceived | AckReceived | NamespaceDisconnected
    | Closed
)


@dataclass(slots=True)
class _Namespace:
    state: NamespaceState
    sid: str | None = None
    pending_acks: set[int] = field(default_factory=set)


class ClientProtocol:
    """One client connection's Engine.IO and Socket.IO state (see the module docstring)."""

    def __init__(self, *, max_attachments: int = DEFAULT_MAX_ATTACHMENTS) -> None:
        self.state = ClientState.OPENING
        self.info: eio.OpenInfo | None = None
        self.close_reason: Closed | None = None
        self._namespaces: dict[str, _Namespace] = {}
        self._decoder = sio.Decoder(max_attachments)
        self._outgoing: list[eio.Packet] = []
        self._ack_ids = itertools.count()

    # ---- what the caller reads

    @property
    def heartbeat_timeout(self) -> float | None:
        """Seconds the I/O layer may wait for the server's next packet (None before OPEN)."""
        if self.info is None or self.state is ClientState.CLOSED:
            return None
        return self.info.ping_interval + self.info.ping_timeout

    def namespace_state(self, namespace: str) -> NamespaceState | None:
        entry = self._namespaces.get(namespace)
        return entry.state if entry is not None else None

    def sid(self, namespace: str) -> str | None:
        entry = self._namespaces.get(namespace)
        return entry.sid if entry is not None else None

    def packets_to_send(self) -> list[eio.Packet]:
        """The Engine.IO packets to send, in order; the queue is emptied."""
        packets, self._outgoing = self._outgoing, []
        return packets

    def frames_to_send(self) -> list[str | bytes]:
        """:meth:`packets_to_send` in WebSocket form (one frame each)."""
        return [eio.encode_packet(packet) for packet in self.packets_to_send()]

    # ---- what the server sent

    def receive_message(self, frame: str | bytes) -> list[Event]:
        """Feed one WebSocket message (an Engine.IO packet)."""
        if self.state is ClientState.CLOSED:
            return []
        try:
            packet = eio.decode_packet(frame)
        except ProtocolError as exc:
            return self._fail(str(exc))
        return self._receive(packet)

    def receive_payload(self, body: str) -> list[Event]:
        """Feed one long-polling response body (packets joined by the record separator)."""
        if self.state is ClientState.CLOSED:
            return []
        try:
            packets = eio.decode_payload(body)
        except ProtocolError as exc:
            return self._fail(str(exc))
        return self.receive_packets(packets)

    def receive_packets(self, packets: Iterable[eio.Packet]) -> list[Event]:
        events: list[Event] = []
        for packet in packets:
            if self.state is ClientState.CLOSED:
                break
            events.extend(self._receive(packet))
        return events

    def transport_closed(self, detail: str = "", *, error: bool = False) -> list[Event]:
        """The transport ended (closed by the server, or a network error when ``error``)."""
        if self.state is ClientState.CLOSED:
            return []
        waiting = self._decoder.awaiting_attachments
        if waiting:
            mid = f"closed while waiting for {waiting} binary attachment(s)"
            detail = f"{detail}; {mid}" if detail else mid
        return self._close("transport error" if error else "transport close", detail)

    def heartbeat_expired(self) -> list[Event]:
        """Nothing came from the server within :attr:`heartbeat_timeout`."""
        if self.state is ClientState.CLOSED:
            return []
        timeout = self.heartbeat_timeout
        detail = f"no packet from the server within {timeout:g} s" if timeout else ""
        return self._close("ping timeout", detail)

    # ---- what the caller does

    def connect(self, namespace: str = "/", auth: dict | None = None) -> None:
        """Ask the server for ``namespace`` (CONNECT, with ``auth`` as its payload)."""
        self._check_open()
        if namespace in self._namespaces:
            raise ValueError(f"namespace {namespace!r} is already connecting or connected")
        if auth is not None and not isinstance(auth, dict):
            raise ValueError("auth must be a dict (a JSON object)")
        self._send(sio.Packet(sio.PacketType.CONNECT, namespace, auth))
        self._namespaces[namespace] = _Namespace(NamespaceState.CONNECTING)

    def emit(self, namespace: str, event: str, args: Iterable[Any] = (), *,
             ack: bool = False) -> int | None:
        """Send an event; with ``ack``, ask for an acknowledgement and return its id."""
        entry = self._connected(namespace)
        if not isinstance(event, str) or not event:
            raise ValueError("the event name must be a non-empty string")
        if event in RESERVED_EVENTS:
            raise ValueError(f"{event!r} is a reserved event name")
        ack_id = next(self._ack_ids) if ack else None
        self._send(sio.Packet(sio.PacketType.EVENT, namespace, [event, *args], ack_id))
        if ack_id is not None:
            entry.pending_acks.add(ack_id)
        return ack_id

    def cancel_ack(self, namespace: str, ack_id: int) -> None:
        """Stop waiting for an ack (timed out): if it comes later, it is ignored."""
        entry = self._namespaces.get(namespace)
        if entry is not None:
            entry.pending_acks.discard(ack_id)

    def send_ack(self, namespace: str, ack_id: int, args: Iterable[Any] = ()) -> None:
        """Answer an event the server sent with an ack id."""
        self._connected(namespace)
        self._send(sio.Packet(sio.PacketType.ACK, namespace, list(args), ack_id))

    def disconnect(self, namespace: str = "/") -> None:
        """Leave a namespace (DISCONNECT); no-op when it is not connected."""
        if self.state is not ClientState.OPEN or namespace not in self._namespaces:
            return
        del self._namespaces[namespace]
        self._send(sio.Packet(sio.PacketType.DISCONNECT, namespace))

    def close(self) -> list[Event]:
        """Leave every namespace and close the Engine.IO connection (reason "io client
        disconnect"). The packets to send still come out of :meth:`packets_to_send`."""
        if self.state is ClientState.CLOSED:
            return []
        if self.state is ClientState.OPEN:
            for namespace in list(self._namespaces):
                self.disconnect(namespace)
            self._outgoing.append(eio.Packet(eio.PacketType.CLOSE))
        return self._close("io client disconnect")

    # ---- internals

    def _check_open(self) -> None:
        if self.state is ClientState.CLOSED:
            reason = self.close_reason
            raise Disconnected(reason.reason if reason else "closed",
                               reason.detail if reason else "")
        if self.state is ClientState.OPENING:
            raise Disconnected("not connected", "the Engine.IO handshake is not done")

    def _connected(self, namespace: str) -> _Namespace:
        self._check_open()
        entry = self._namespaces.get(namespace)
        if entry is None or entry.state is not NamespaceState.CONNECTED:
            raise Disconnected("not connected", f"namespace {namespace!r} is not connected")
        return entry

    def _send(self, packet: sio.Packet) -> None:
        for part in sio.encode(packet):
            self._outgoing.append(eio.Packet(eio.PacketType.MESSAGE, part))

    def _close(self, reason: str, detail: str = "") -> list[Event]:
        self.state = ClientState.CLOSED
        self._namespaces.clear()
        self.close_reason = Closed(reason, detail)
        return [self.close_reason]

    def _fail(self, detail: str) -> list[Event]:
        self._outgoing.clear()
        return self._close("parse error", detail)

    def _receive(self, packet: eio.Packet) -> list[Event]:
        ptype = packet.type
        if self.state is ClientState.OPENING:
            if ptype is not eio.PacketType.OPEN:
                return self._fail(f"expected the OPEN packet first, got {ptype.name}")
            try:
                self.info = eio.decode_open(packet)
            except ProtocolError as exc:
                return self._fail(str(exc))
            self.state = ClientState.OPEN
            return [Opened(self.info)]
        if ptype is eio.PacketType.MESSAGE:
            try:
                sio_packet = self._decoder.feed(packet.data)
            except ProtocolError as exc:
                return self._fail(str(exc))
            return self._on_sio(sio_packet) if sio_packet is not None else []
        if ptype is eio.PacketType.PING:
            self._outgoing.append(eio.Packet(eio.PacketType.PONG, packet.data))
            return []
        if ptype is eio.PacketType.CLOSE:
            return self._close("transport close", "the server closed the connection")
        if ptype is eio.PacketType.OPEN:
            return self._fail("a second OPEN packet")
        return []  # NOOP; PONG and UPGRADE mean nothing to a client that never probes

    def _on_sio(self, packet: sio.Packet) -> list[Event]:
        namespace = packet.namespace
        entry = self._namespaces.get(namespace)
        if entry is None:
            return []
        ptype = packet.type
        if entry.state is NamespaceState.CONNECTING:
            if ptype is sio.PacketType.CONNECT:
                sid = packet.data.get("sid") if isinstance(packet.data, dict) else None
                if not isinstance(sid, str) or not sid:
                    return self._fail("CONNECT packet without a sid (a Socket.IO v2 server?)")
                entry.state = NamespaceState.CONNECTED
                entry.sid = sid
                return [Connected(namespace, sid)]
            if ptype is sio.PacketType.CONNECT_ERROR:
                del self._namespaces[namespace]
                return [_connect_failed(namespace, packet.data)]
            return []
        if ptype is sio.PacketType.EVENT:
            data = packet.data
            return [EventReceived(namespace, data[0], data[1:], packet.id)]
        if ptype is sio.PacketType.ACK:
            if packet.id is None or packet.id not in entry.pending_acks:
                return []
            entry.pending_acks.discard(packet.id)
            return [AckReceived(namespace, packet.id, packet.data)]
        if ptype is sio.PacketType.DISCONNECT:
            del self._namespaces[namespace]
            return [NamespaceDisconnected(namespace)]
        return []  # a second CONNECT / CONNECT_ERROR on a connected namespace


def _connect_failed(namespace: str, data: Any) -> ConnectFailed:
    if isinstance(data, str):
        return ConnectFailed(namespace, data)
    message = data.get("message")
    return ConnectFailed(namespace, message if isinstance(message, str) else "connection refused",
                         data.get("data"))
