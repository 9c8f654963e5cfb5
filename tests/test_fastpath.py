"""What the broadcast fast path changes, checked with the stock clients.

A burst of emits from one task fills the RoomManager's queue, so the manager
runs it as a backlog inside a WriteBatch (each socket's messages leave in one
write). Per-socket order, binary attachments and acks must survive that, and
a socket closing in the middle of a burst must cost nobody else anything.
"""

from __future__ import annotations

import trio
from churn_client import RawClient

import roomd
from roomd.transport.outbox import WriteBatch

WS = ["websocket"]
BURST = 300


class CountingBatch(WriteBatch):
    """A WriteBatch that counts the sockets whose messages it held."""

    __slots__ = ("held_total",)

    def __init__(self) -> None:
        super().__init__()
        self.held_total = 0

    def close(self) -> None:
        self.held_total += len(self._held)
        super().close()


def make_app() -> roomd.Server:
    io = roomd.Server()
    io.engine.write_batch = io.manager.batch = CountingBatch()

    @io.on("join")
    async def join(socket: roomd.Socket, room: str) -> bool:
        await socket.join(room)
        return True

    return io


async def burst(io: roomd.Server, direct: roomd.Socket | None = None) -> None:
    """BURST broadcasts to room "r" without yielding in between, binary every 50th."""
    for i in range(BURST):
        if i % 50 == 0:
            await io.to("r").emit("seq", i, bytes([i % 256]) * 3)
        else:
            await io.to("r").emit("seq", i)
        if direct is not None and i % 100 == 0:
            await direct.emit("direct", i)


async def test_order_and_binary_survive_a_batched_burst(start_server, node, py_client):
    io = make_app()
    srv = await start_server(io)
    a = await node.connect(srv.url, "/", transports=WS)
    b = await node.connect(srv.url, "/", force_new=True)  # polling, then the upgrade
    p = await py_client()
    await p.connect(srv.url, transports=WS)
    for sock in (a, b):
        assert await sock.emit_with_ack("join", "r") == [True]
    assert await p.call("join", "r") == [True]
    socket_a = io.sockets.sockets[a.sid]

    await burst(io, direct=socket_a)

    for client, sock in ((node, a), (node, b), (p, None)):
        seen = []
        while len(seen) < BURST:
            ev = await (sock.next_event("seq", timeout=10) if sock is not None
                        else client.next_event("seq", timeout=10))
            seen.append(ev.args[0])
            if ev.args[0] % 50 == 0:
                assert ev.args[1] == bytes([ev.args[0] % 256]) * 3
        assert seen == list(range(BURST))
    # the direct emits kept their order too, interleaved with the broadcasts
    directs = [(await a.next_event("direct")).args[0] for _ in range(BURST // 100)]
    assert directs == list(range(0, BURST, 100))
    assert io.manager.batch.held_total > 0  # the burst did go through the batched path
    # and acks still round-trip after the burst
    assert await a.emit_with_ack("join", "r2") == [True]


async def test_a_close_in_the_middle_of_a_burst_harms_nobody(start_server, node):
    io = make_app()
    srv = await start_server(io)
    a = await node.connect(srv.url, "/", transports=WS)
    assert await a.emit_with_ack("join", "r") == [True]
    quitters = []
    for i in range(6):
        raw = await RawClient.connect(srv.port)
        await raw.open_namespace("/")
        assert await raw.call(i + 1, "join", "r") == [True]
        quitters.append(raw)

    async def close_them() -> None:
        for i, raw in enumerate(quitters):
            await trio.sleep(0)
            await raw.drop(reset=bool(i % 2))  # RST or FIN, mid-burst

    async with trio.open_nursery() as nursery:
        nursery.start_soon(close_them)
        await burst(io)

    seen = [(await a.next_event("seq", timeout=10)).args[0] for _ in range(BURST)]
    assert seen == list(range(BURST))
    with trio.fail_after(5):
        while io.stats()["sockets"] != 1:
            await trio.sleep(0.02)
    # the server still serves newcomers
    c = await node.connect(srv.url, "/", force_new=True, transports=WS)
    assert await c.emit_with_ack("join", "r") == [True]
