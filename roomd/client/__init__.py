"""roomd's Socket.IO client for trio programs (and for ``roomd client``).

    async with roomd.connect("https://rooms.example.com/orders", auth={"token": t}) as client:
        print(await client.emit_with_ack("join", "order-7"))
        async for event in client:
            print(event.name, event.args)

Layout: :mod:`._client` holds :func:`connect`, :class:`Client` and
:class:`ReceivedEvent`; :mod:`._handshake` opens a connection (transport,
Engine.IO OPEN, namespace CONNECT); :mod:`._transports` the WebSocket
(trio-websocket) and long-polling (h11) transports and the URL checks. The protocol state
machine is sans-IO, in :mod:`roomd.protocol.client`. The client's errors are
part of roomd's one hierarchy (:mod:`roomd._errors`). docs/client.md is the
guide.
"""

from __future__ import annotations

from .._errors import AckTimeout, ClientError, ConnectError, Disconnected
from ._client import Client, ReceivedEvent, connect
from ._transports import Target, parse_url

__all__ = [
    "AckTimeout", "Client", "ClientError", "ConnectError", "Disconnected", "ReceivedEvent",
    "Target", "connect", "parse_url",
]
