"""A graceful shutdown reaches every client as a Socket.IO disconnect.

Long-polling clients are the delicate case: the DISCONNECT must be answered
to a GET that is pending, or to the next one if none is, and never in the
same payload as the Engine.IO close packet (socket.io-client handles the
close packet first and would report "transport close").
"""

from __future__ import annotations

import trio

import roomd
from roomd.protocol import eio
from roomd.transport.outbox import OutgoingMessage, PollingOutbox


def test_the_close_packet_leaves_alone():
    outbox = PollingOutbox(16)
    outbox.put(OutgoingMessage(["1"]))  # a Socket.IO DISCONNECT of "/"
    outbox.put_packet(eio.Packet(eio.PacketType.CLOSE))
    first = outbox.take(10_000)
    assert [p.type for p in first] == [eio.PacketType.MESSAGE]
    assert [p.type for p in outbox.take(10_000)] == [eio.PacketType.CLOSE]


async def test_shutdown_disconnects_polling_and_websocket_clients(start_server, node):
    for _ in range(5):  # the race between a pending GET and the close is in the timing
        io = roomd.Server()
        srv = await start_server(io)
        polling = await node.connect(srv.url, transports=["polling"], force_new=True)
        websocket = await node.connect(srv.url, transports=["websocket"], force_new=True)
        with trio.fail_after(5):  # bounded, and far below the 2 s a left-over poll would take
            await io.shutdown(grace=5)
        assert (await polling.next_event("disconnect")).args == ["io server disconnect"]
        assert (await websocket.next_event("disconnect")).args == ["io server disconnect"]
