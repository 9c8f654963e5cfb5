"""The half-open places (roomd/transport/turns.py): over ``max_half_open``, a turn.

A connection counts as half-open once its first bytes are there; over the cap it waits
its turn, first come first served, and nothing is refused. A connection that sends
nothing holds no place and is closed after ``head_timeout``. Real TCP connections over
loopback; no test measures speed.
"""

from __future__ import annotations

import json

import trio
from harness import build_request, raw_http

import roomd

HANDSHAKE = build_request("GET", "/socket.io/?EIO=4&transport=polling")
PARTIAL = b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\n"  # a head never finished


def _count_peak(io: roomd.Server) -> list[int]:
    """Record the most half-open connections there ever were (peak[0])."""
    admission = io.engine.admission
    peak = [0]
    open_half = admission.open_half

    def counting() -> bool:
        opened = open_half()
        peak[0] = max(peak[0], admission.half_open)
        return opened

    admission.open_half = counting  # type: ignore[method-assign]
    return peak


async def _wait(predicate, timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def test_a_burst_over_the_cap_is_served_not_refused(start_server):
    io = roomd.Server(max_half_open=4)
    peak = _count_peak(io)
    srv = await start_server(io)
    answers: list[tuple[int, bytes]] = []

    async def handshake() -> None:
        status, _, body = await raw_http(srv.port, HANDSHAKE, timeout=30)
        answers.append((status, body))

    async with trio.open_nursery() as nursery:
        for _ in range(100):  # all at once: most of them find the cap reached
            nursery.start_soon(handshake)
    assert [status for status, _ in answers] == [200] * 100
    assert all(json.loads(body[1:])["sid"] for _, body in answers)
    assert 0 < peak[0] <= 4
    assert io.stats()["refused"] == {}
    assert io.engine.admission.half_open == 0


async def test_over_the_cap_a_request_waits_its_turn(start_server):
    io = roomd.Server(max_half_open=2, head_timeout=30)
    srv = await start_server(io)
    engine = io.engine
    slow = []
    for _ in range(2):
        stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
        await stream.send_all(PARTIAL)
        slow.append(stream)
    try:
        await _wait(lambda: engine.admission.half_open == 2)
        answers: list[int] = []

        async def handshake() -> None:
            answers.append((await raw_http(srv.port, HANDSHAKE, timeout=30))[0])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(handshake)
            await _wait(lambda: engine.turns.waiting == 1)
            # Waiting: not read, no session, no refusal, the cap kept.
            await trio.sleep(0.2)
            assert answers == [] and engine.sessions == {} and engine.refusals == {}
            assert engine.admission.half_open == 2
            await slow.pop().aclose()  # one place frees: the waiting one gets it
        assert answers == [200]
        assert len(engine.sessions) == 1
    finally:
        for stream in slow:
            await stream.aclose()


async def test_a_silent_connection_holds_no_place(start_server):
    io = roomd.Server(max_half_open=1, head_timeout=1)
    srv = await start_server(io)
    silent = [await trio.open_tcp_stream("127.0.0.1", srv.port) for _ in range(3)]
    try:
        # They say nothing: the one place stays free for a client that does.
        status, _, _ = await raw_http(srv.port, HANDSHAKE, timeout=10)
        assert status == 200
        assert io.engine.admission.half_open == 0 and io.engine.turns.waiting == 0
        for stream in silent:  # closed after head_timeout, without an answer
            with trio.fail_after(10):
                assert await stream.receive_some(100) == b""
    finally:
        for stream in silent:
            await stream.aclose()


async def test_shutdown_with_connections_waiting(start_server):
    io = roomd.Server(max_half_open=1, head_timeout=30)
    srv = await start_server(io)
    streams = []
    for _ in range(2):  # one reads its head, the other waits its turn
        stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
        await stream.send_all(PARTIAL)
        streams.append(stream)
    await _wait(lambda: io.engine.turns.waiting == 1)
    with trio.fail_after(10):
        await io.shutdown(grace=1)  # returns: neither connection holds it up
    for stream in streams:
        with trio.fail_after(10):
            try:
                assert await stream.receive_some(100) == b""
            except trio.BrokenResourceError:
                pass  # reset: closed with its request unread
        await stream.aclose()
    assert io.engine.turns.waiting == 0


async def _keepalive_get(stream: trio.SocketStream, target: str) -> tuple[int, bytes]:
    """One request on a kept-alive connection; (status, body) of its answer."""
    import h11

    conn = h11.Connection(h11.CLIENT)
    await stream.send_all(conn.send(h11.Request(method="GET", target=target, headers=[
        ("Host", "127.0.0.1")])) + conn.send(h11.EndOfMessage()))
    status, body = 0, b""
    with trio.fail_after(10):
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return status, body


async def test_idle_keepalive_connections_hold_no_place(start_server):
    """More idle keep-alive connections than places: none is closed, and each one's next
    request is served (a connection closed between requests is a reset for a client
    already sending its next one on it)."""
    io = roomd.Server(max_half_open=2)
    srv = await start_server(io)
    streams = [await trio.open_tcp_stream("127.0.0.1", srv.port) for _ in range(5)]
    try:
        target = "/socket.io/?EIO=4&transport=polling"
        for stream in streams:  # a handshake each; the connections stay open, idle
            status, body = await _keepalive_get(stream, target)
            assert status == 200 and json.loads(body[1:])["sid"]
        await _wait(lambda: io.engine.admission.half_open == 0)
        # A new connection is not kept waiting by the idle ones.
        assert (await raw_http(srv.port, HANDSHAKE, timeout=10))[0] == 200
        for stream in streams:  # each idle one still serves a request
            status, body = await _keepalive_get(stream, target)
            assert status == 200 and json.loads(body[1:])["sid"]
        assert len(io.engine.sessions) == 11
    finally:
        for stream in streams:
            await stream.aclose()
    assert io.stats()["refused"] == {}
