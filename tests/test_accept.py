"""Connection setup of issue 12, part two: roomd's own accept loop, timer entries that
hold their weak reference themselves, and the CONNECT reply run in the worker's task.
Behaviour only; speed is measured in docs/performance.md, never here."""

from __future__ import annotations

import base64
import gc
import os
import socket

import trio
from harness import build_request

import roomd
from roomd.transport import accept, tcp
from roomd.transport.timers import Timers

WS = "/socket.io/?EIO=4&transport=websocket"


def _upgrade_request() -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return build_request("GET", WS, headers=[
        ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13")], close=False)


async def _read_open(sock: trio.socket.SocketType) -> bytes:
    received = b""
    with trio.fail_after(10):
        while b'"sid"' not in received:
            data = await sock.recv(65536)
            assert data, received
            received += data
    return received


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_burst_queued_before_the_loop_runs_is_served_whole(start_server):
    """More connections than one wake-up accepts (ACCEPT_BATCH) wait in the backlog at
    once: every one is accepted and answered."""
    srv = await start_server()
    count = accept.ACCEPT_BATCH * 2 + 7
    request = _upgrade_request()
    # Blocking connects: the server's task cannot run meanwhile, so all of them queue.
    plain = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", srv.port))
        sock.sendall(request)
        plain.append(sock)
    socks = [trio.socket.from_stdlib_socket(s) for s in plain]
    try:
        answers = []
        for sock in socks:
            answers.append(await _read_open(sock))
        assert all(a.startswith(b"HTTP/1.1 101 ") for a in answers)
        assert len(srv.io.engine.sessions) == count
    finally:
        for sock in socks:
            sock.close()


async def test_peer_address_comes_with_the_accept(start_server, py_client):
    io = roomd.Server()
    seen: list[str] = []

    @io.on("connection")
    async def connected(socket: roomd.Socket) -> None:
        seen.append(socket.handshake.address)

    srv = await start_server(io)
    client = await py_client()
    await client.connect(srv.url, ["/"], transports=["websocket"])
    assert seen == ["127.0.0.1"]


async def test_every_closed_connection_gives_its_descriptor_back(start_server, py_client):
    """The handler closes the stream itself (no trio wrapper does it any more): on every
    path, a served upgrade, a refusal before parsing, a client that leaves."""
    srv = await start_server(connections_per_ip=3, exempt_addresses=())
    client = await py_client()
    await client.connect(srv.url, ["/"], transports=["websocket"])  # warm up
    await client.disconnect()
    await trio.sleep(0.2)
    gc.collect()
    before = _open_fds()
    for _ in range(3):
        socks = []
        for _ in range(5):  # two over the per-address cap: refused early with 429
            sock = trio.socket.socket()
            await sock.connect(("127.0.0.1", srv.port))
            await sock.send(_upgrade_request())
            socks.append(sock)
        for sock in socks:
            sock.close()
    silent = trio.socket.socket()
    await silent.connect(("127.0.0.1", srv.port))
    silent.close()
    with trio.fail_after(10):
        while _open_fds() > before or srv.io.engine.admission.connections:
            await trio.sleep(0.05)
    assert srv.io.engine.admission.half_open == 0


async def test_the_listener_is_closed_once_serving_ends():
    io = roomd.Server()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(io.serve, "127.0.0.1", 0)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.aclose()
        await io.shutdown(grace=1)
    sock = trio.socket.socket()
    try:
        try:
            await sock.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return
        raise AssertionError("the port still accepts connections after serve returned")
    finally:
        sock.close()


class _Owner:
    def __init__(self, log: list) -> None:
        self.log = log

    def fire(self, *args: object) -> None:
        self.log.append(args)


async def test_timer_entries_keep_order_and_do_not_keep_their_object():
    timers = Timers()
    log: list = []
    kept = _Owner(log)
    gone = _Owner(log)
    async with trio.open_nursery() as nursery:
        await nursery.start(timers.run)
        timers.call_later_weak(0.05, kept.fire, 1)
        timers.call_later_weak(0.05, gone.fire, "never")
        timers.call_later(0.05, log.append, ("plain",))
        timers.call_later_weak(0.05, kept.fire, 2, "b")
        timers.call_later_weak(0.01, kept.fire, "first")
        del gone  # only the timer refers to it: freed at once, its callback skipped
        await trio.sleep(0.3)
        nursery.cancel_scope.cancel()
    assert log == [("first",), (1,), ("plain",), (2, "b")]


async def test_connect_replies_of_a_burst_all_run_in_their_callers(start_server):
    """Many CONNECTs handled in one scheduler turn: each reply runs in its worker (a
    new turn), so the RoomManager is not woken for it and no add_member waits behind
    it. When a connection handler's emit is queued meanwhile, the replies after it
    queue too (the order holds): every client gets its CONNECT reply, then the emit."""
    io = roomd.Server()
    greet = [False]

    @io.on("connection")
    async def connected(socket: roomd.Socket) -> None:
        if greet[0]:
            await socket.emit("hello", socket.id)

    srv = await start_server(io)
    manager = io.manager
    replies_queued = []
    cast = manager.cast

    async def watching_cast(function, *args):  # type: ignore[no-untyped-def]
        message = args[1] if len(args) > 1 else None
        if getattr(message, "eio_parts", [""])[0].startswith("40"):  # a CONNECT reply
            replies_queued.append(bool(manager._pending or manager._inlined))
        await cast(function, *args)

    manager.cast = watching_cast  # type: ignore[method-assign]
    count = 30
    greeted: list[tuple[str, bool]] = []

    async def one_client() -> None:
        async with roomd.connect(srv.url) as client:
            assert client.connected
            if greet[0]:
                event = await client.receive()
                greeted.append((event.name, event.args[0] == client.sid))

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one_client)
    assert replies_queued == [False] * count
    greet[0] = True
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one_client)
    assert greeted == [("hello", True)] * count


async def test_the_101_and_the_open_packet_leave_in_one_write(start_server):
    """A new session's upgrade answer is written with its OPEN packet: the first read
    after the request gets both (one segment on the loopback)."""
    srv = await start_server()
    sock = trio.socket.socket()
    try:
        await sock.connect(("127.0.0.1", srv.port))
        await sock.send(_upgrade_request())
        with trio.fail_after(10):
            first = await sock.recv(65536)
        head, _, rest = first.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        assert rest.startswith(b"\x81") and b'0{"sid":"' in rest  # a text frame: OPEN
    finally:
        sock.close()


async def test_accepted_streams_have_trios_socket_options():
    """TCP_NODELAY and TCP_NOTSENT_LOWAT, as trio's SocketStream sets them: on the
    listener once (accepted sockets inherit them), else on each connection."""
    seen: list[tuple[int, int, str]] = []

    async def handler(stream: tcp.TCPStream, address: str) -> None:
        sock = stream.socket
        seen.append((sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                     sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT), address))
        stream.close()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept.serve_tcp, handler, listeners, nursery)
        for _ in range(3):
            client = await trio.open_tcp_stream("127.0.0.1", port)
            await client.aclose()
        with trio.fail_after(10):
            while len(seen) < 3:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert seen == [(1, tcp.NOTSENT_LOWAT, "127.0.0.1")] * 3
