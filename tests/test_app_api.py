"""Writing an app (issue 9): concurrent handlers, handler errors, lifespan and
background tasks, argument encoding, allow_request and connection_error.

Each test runs a roomd.Server in the test's trio loop on 127.0.0.1:0 and
drives it with socket.io-client under node.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import json
import logging
import uuid

import pytest
import trio
from churn_client import RawClient
from harness import AckTimeout, ConnectError, raw_http

import roomd

WS = ["websocket"]


async def test_a_slow_handler_does_not_hold_up_the_next_event(start_server, node):
    io = roomd.Server()
    release = trio.Event()

    @io.on("slow")
    async def slow(socket):
        await release.wait()
        return "slow done"

    @io.on("fast")
    async def fast(socket):
        return "fast done"

    srv = await start_server(io)
    a = await node.connect(srv.url, transports=WS)
    async with trio.open_nursery() as nursery:
        got: list = []

        async def ask_slow() -> None:
            got.append(await a.emit_with_ack("slow", timeout=10))

        nursery.start_soon(ask_slow)
        # the slow handler is waiting; the next event is handled meanwhile
        assert await a.emit_with_ack("fast") == ["fast done"]
        assert got == []
        release.set()
    assert got == [["slow done"]]


async def test_one_handler_at_a_time_when_asked(start_server, node):
    io = roomd.Server(max_concurrent_handlers=1)
    release = trio.Event()
    order: list[str] = []

    @io.on("slow")
    async def slow(socket):
        await release.wait()
        order.append("slow")

    @io.on("fast")
    async def fast(socket):
        order.append("fast")
        return "fast done"

    srv = await start_server(io)
    a = await node.connect(srv.url, transports=WS)
    await a.emit("slow")
    with pytest.raises(AckTimeout):
        await a.emit_with_ack("fast", timeout=0.5)  # queued behind the slow one
    release.set()
    assert await a.emit_with_ack("fast") == ["fast done"]
    assert order[:2] == ["slow", "fast"]


async def test_handlers_start_in_arrival_order(start_server, node):
    io = roomd.Server()
    started: list[int] = []

    @io.on("n")
    async def n(socket, i):
        started.append(i)
        await trio.sleep(0.01 * (i % 3))  # finish out of order
        return i

    srv = await start_server(io)
    a = await node.connect(srv.url, transports=WS)
    for i in range(30):
        await a.emit("n", i)
    assert await a.emit_with_ack("n", 30) == [30]
    with trio.fail_after(5):
        while len(started) < 31:
            await trio.sleep(0.01)
    assert started == list(range(31))


def count_tasks() -> int:
    """Every task of this trio run (trio's public introspection)."""
    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(count(child) for nursery in task.child_nurseries
                       for child in nursery.child_tasks)
    return count(trio.lowlevel.current_root_task())


async def wait_for_tasks(expected: int, timeout: float = 5) -> None:
    with trio.fail_after(timeout):
        while count_tasks() > expected:
            await trio.sleep(0.05)


async def test_events_after_a_pause_keep_their_order_and_the_idle_worker_goes(start_server,
                                                                                node):
    """A worker parks after an EVENT (docs/performance.md, issue 12): events that
    wake it are handled in arrival order, and it exits about a second after the
    client went quiet, so an idle connection holds no task."""
    io = roomd.Server()
    seen: list[int] = []

    @io.on("n")
    async def n(socket, i):
        seen.append(i)
        if i % 7 == 0:
            await trio.sleep(0)  # some handlers yield: the next one may start meanwhile
        return i

    srv = await start_server(io)
    a = await node.connect(srv.url, transports=WS)
    await trio.sleep(0.2)
    idle = count_tasks()
    for i in range(60):
        await a.emit("n", i)
        if i % 10 == 9:
            await trio.sleep(0.05)  # the worker parks, the next event wakes it
    assert await a.emit_with_ack("n", 60) == [60]
    assert seen == list(range(61))
    await wait_for_tasks(idle)  # the lingering worker is gone within two sweeps
    assert await a.emit_with_ack("n", 61) == [61]  # and a new one starts for the next
    await wait_for_tasks(idle)


async def test_a_connection_dropped_while_its_worker_lingers_frees_it(start_server):
    io = roomd.Server()

    @io.on("ping")
    async def ping(socket):
        return "pong"

    srv = await start_server(io)
    await trio.sleep(0.2)
    idle = count_tasks()
    for reset in (False, True):
        raw = await RawClient.connect(srv.port)
        await raw.open_namespace("/")
        assert await raw.call(1, "ping") == ["pong"]
        await raw.drop(reset=reset)  # no DISCONNECT packet: only the close can wake it
        with trio.fail_after(5):
            while io.connections:
                await trio.sleep(0.02)
        await wait_for_tasks(idle, timeout=0.9)  # woken by the close, not by a sweep


async def test_a_hanging_disconnecting_handler_is_cut_off_and_the_socket_still_leaves(
        start_server, monkeypatch):
    """The disconnect sequence is bounded (CLEANUP_TIMEOUT): a handler that never
    returns is cancelled there, and the socket leaves its rooms and namespace anyway."""
    monkeypatch.setattr("roomd.api.connection.CLEANUP_TIMEOUT", 0.3)
    io = roomd.Server()
    cancelled: list[str] = []

    @io.on("join")
    async def join(socket, room):
        await socket.join(room)
        return True

    @io.on("disconnecting")
    async def hang(socket, reason):
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.append(reason)
            raise

    srv = await start_server(io)
    raw = await RawClient.connect(srv.port)
    sid = await raw.open_namespace("/")
    assert await raw.call(1, "join", "r") == [True]
    await raw.drop(reset=True)
    with trio.fail_after(5):
        while sid in io.sockets.sockets or io.connections:
            await trio.sleep(0.02)
    assert cancelled == ["transport close"]
    assert await io.rooms_snapshot() == []


async def test_a_failing_handler_is_logged_and_keeps_the_connection(start_server, node,
                                                                     caplog):
    io = roomd.Server()

    @io.on("boom")
    async def boom(socket):
        raise RuntimeError("kaboom")

    @io.on("ping")
    def ping(socket):
        return "pong"

    srv = await start_server(io)
    a = await node.connect(srv.url, transports=WS)
    with caplog.at_level(logging.ERROR, logger="roomd"):
        with pytest.raises(AckTimeout):  # a handler that raised sends no ack
            await a.emit_with_ack("boom", timeout=0.5)
    assert await a.emit_with_ack("ping") == ["pong"]
    failures = [r for r in caplog.records if "'boom' handler" in r.getMessage()]
    assert failures and failures[0].exc_info is not None
    assert "kaboom" in str(failures[0].exc_info[1])


async def test_an_ack_timeout_in_a_handler_keeps_the_connection(start_server, node):
    io = roomd.Server()

    @io.on("ask")
    async def ask(socket):
        return await socket.emit_with_ack("question", timeout=0.2)  # never answered

    srv = await start_server(io)
    a = await node.connect(srv.url, transports=WS, auto_ack=False)
    await a.emit("ask")
    await a.next_event("question")
    await trio.sleep(0.5)
    await io.emit("still-here")
    assert (await a.next_event("still-here")).args == []


async def test_disconnect_on_handler_error_when_asked(start_server, node):
    io = roomd.Server(disconnect_on_handler_error=True)

    @io.on("boom")
    async def boom(socket):
        raise RuntimeError("kaboom")

    srv = await start_server(io)
    a = await node.connect(srv.url, transports=WS)
    await a.emit("boom")
    event = await a.next_event("disconnect")
    assert event.args[0] in ("transport close", "transport error")


async def test_dates_uuids_decimals_and_a_user_hook(start_server, node):
    class Money:
        def __init__(self, cents: int) -> None:
            self.cents = cents

    io = roomd.Server(json_default=lambda o: {"cents": o.cents} if isinstance(o, Money)
                      else _raise(o))
    moment = datetime.datetime(2026, 11, 26, 15, 4, 5, 678000, tzinfo=datetime.UTC)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")

    @io.on("send")
    async def send(socket):
        await socket.emit("values", moment, moment.date(), ident, decimal.Decimal("1.10"),
                          Money(250))

    @io.on("bad")
    async def bad(socket):
        await socket.emit("values", object())  # raises in this handler; nothing is sent

    srv = await start_server(io)
    try:
        a = await node.connect(srv.url, transports=WS)
        await a.emit("bad")
        await a.emit("send")
        event = await a.next_event("values")
        # as Node's Date.prototype.toJSON and String() would send them
        assert event.args == ["2026-11-26T15:04:05.678Z", "2026-11-26",
                              "12345678-1234-5678-1234-567812345678", "1.10", {"cents": 250}]
        await io.emit("after")
        assert (await a.next_event("after")).args == []  # the bad emit closed nothing
    finally:
        from roomd.protocol import sio
        sio.set_json_default(None)


def _raise(obj):
    raise TypeError(f"no encoding for {type(obj).__name__}")


async def test_an_unencodable_argument_raises_in_the_emitter(start_server):
    io = roomd.Server()
    await start_server(io)
    with pytest.raises(TypeError, match="cannot encode an argument of type object"):
        await io.emit("x", object())
    with pytest.raises(TypeError):
        await io.to("room").emit("x", {"nested": {1, 2}})


async def test_lifespan_and_background_tasks(start_server, node):
    io = roomd.Server()
    log: list[str] = []
    ticks = 0

    @io.lifespan
    @contextlib.asynccontextmanager
    async def lifespan(server):
        log.append("startup")
        server.start_background_task(ticker)
        yield
        log.append(f"shutdown after drain: {server.connections == {}}")

    async def ticker():
        nonlocal ticks
        try:
            while True:
                ticks += 1
                await io.emit("tick", ticks)
                await trio.sleep(0.05)
        finally:
            log.append("ticker cancelled")

    srv = await start_server(io)
    assert log == ["startup"]
    a = await node.connect(srv.url, transports=WS)
    first = (await a.next_event("tick")).args[0]
    assert (await a.next_event("tick")).args[0] > first
    await io.shutdown(grace=5)
    assert log == ["startup", "ticker cancelled", "shutdown after drain: True"]
    assert (await a.next_event("disconnect")).args == ["transport close"]


async def test_a_failing_background_task_is_logged(start_server, caplog):
    io = roomd.Server()

    async def broken():
        raise ValueError("broken task")

    io.start_background_task(broken)  # before serving: starts with the server
    with caplog.at_level(logging.ERROR, logger="roomd"):
        await start_server(io)
        with trio.fail_after(5):
            while not any("broken" in r.getMessage() for r in caplog.records):
                await trio.sleep(0.01)
    await io.emit("still serving")


async def test_allow_request_and_connection_error(start_server, node):
    seen: list = []

    def allow(request):
        if request.query.get("token") == "good":
            return True
        return "bad token" if "token" in request.query else False

    io = roomd.Server(allow_request=allow)
    io.on_connection_error(seen.append)
    srv = await start_server(io)

    ok = await node.connect(srv.url, transports=WS, query={"token": "good"})
    assert ok.sid
    with pytest.raises(ConnectError):
        await node.connect(srv.url, query={"token": "nope"}, force_new=True, timeout=3,
                           reconnection=False)
    status, _, body = await raw_http(srv.port, b"GET /socket.io/?EIO=4&transport=polling "
                                     b"HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 403
    assert json.loads(body) == {"code": 4, "message": "Forbidden"}
    status, _, body = await raw_http(srv.port, b"GET /socket.io/?EIO=4&transport=bogus "
                                     b"HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, json.loads(body)["code"]) == (400, 0)
    codes = [(e.code, e.message) for e in seen]
    assert {(4, "bad token"), (4, "Forbidden"), (0, "Transport unknown")} <= set(codes)
    assert all(e.address == "127.0.0.1" for e in seen)


async def test_allow_request_that_raises_refuses(start_server, caplog):
    async def allow(request):
        raise RuntimeError("database down")

    io = roomd.Server(allow_request=allow)
    srv = await start_server(io)
    with caplog.at_level(logging.ERROR, logger="roomd"):
        status, _, _ = await raw_http(srv.port, b"GET /socket.io/?EIO=4&transport=polling "
                                      b"HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 403
    assert any("allow_request failed" in r.getMessage() for r in caplog.records)
