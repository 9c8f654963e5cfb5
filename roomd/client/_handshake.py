"""Opening a client connection: transport, Engine.IO OPEN, namespace CONNECT.

:func:`open_connection` opens the transport to a :class:`~._transports.Target`,
reads the Engine.IO OPEN packet, asks for the namespace and returns an
:class:`Opening` once the server's CONNECT came: the transport, the protocol
state and what arrived after the CONNECT in the same payload (the reader's
first work). It raises :class:`~roomd.ConnectError` for a refusal
(CONNECT_ERROR, ``refused`` true), a transport that ends during the exchange,
or what the transport could not open; the transport is closed then. It sets no
deadline of its own: :func:`roomd.connect` bounds it.

:func:`feed` and the transports' ``send_packets`` are how Engine.IO data
crosses a transport both here and in the connected client.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import trio

from .._errors import ConnectError
from ..protocol import client as proto
from ._transports import (
    PollingTransport,
    Target,
    Transport,
    TransportGone,
    WebSocketTransport,
    close_quietly,
)

# How long closing a transport may take (a graceful disconnect's last packets included)
# before it is just dropped.
CLOSE_TIMEOUT = 2.0


@dataclass
class Opening:
    """A connection whose namespace the server accepted."""

    transport: Transport
    protocol: proto.ClientProtocol
    sid: str  # the socket's id in the namespace
    early: list[proto.Event]  # what came in the same payload as the CONNECT


def feed(protocol: proto.ClientProtocol, transport: Transport,
         item: str | bytes) -> list[proto.Event]:
    """What one receive of ``transport`` means: a polling response body is a payload of
    packets, a WebSocket message one packet."""
    if isinstance(transport, PollingTransport):
        assert isinstance(item, str)
        return protocol.receive_payload(item)
    return protocol.receive_message(item)


def make_ssl_context(cafile: str | None, insecure: bool) -> ssl.SSLContext | None:
    """The context for ``cafile`` (trust this CA) / ``insecure`` (verify nothing); None for
    the default (the system's CAs, host name checked)."""
    if cafile is None and not insecure:
        return None
    context = ssl.create_default_context(cafile=cafile)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def open_connection(nursery: trio.Nursery, target: Target, *, transport: str,
                          auth: dict | None, ssl_context: ssl.SSLContext | None,
                          max_message_size: int) -> Opening:
    """Open the transport, read OPEN, connect the namespace; raises ConnectError."""
    opener = PollingTransport if transport == "polling" else WebSocketTransport
    link = await opener.open(nursery, target, ssl_context, max_message_size)
    protocol = proto.ClientProtocol()
    try:
        while True:
            try:
                events = feed(protocol, link, await link.receive())
            except TransportGone as exc:
                protocol.transport_closed(exc.detail, error=exc.error)
                events = []
            for index, event in enumerate(events):
                if isinstance(event, proto.Opened):
                    if isinstance(link, PollingTransport):
                        link.handshake_done(event.info.sid)
                    protocol.connect(target.namespace, auth)
                elif isinstance(event, proto.Connected):
                    return Opening(link, protocol, event.sid, events[index + 1:])
                elif isinstance(event, proto.ConnectFailed):
                    raise ConnectError(event.message, event.data, refused=True)
            if protocol.state is proto.ClientState.CLOSED:
                closed = protocol.close_reason
                detail = f"{closed.reason}: {closed.detail}" if closed and closed.detail \
                    else closed.reason if closed else "closed"
                raise ConnectError(f"connection to {target.origin} ended during the "
                                   f"handshake ({detail})")
            packets = protocol.packets_to_send()
            if packets:
                await link.send_packets(packets)
    except TransportGone as exc:
        await close_quietly(link, CLOSE_TIMEOUT)
        raise ConnectError(f"connection to {target.origin} ended during the handshake "
                           f"({exc.detail})") from None
    except BaseException:
        await close_quietly(link, CLOSE_TIMEOUT)
        raise
