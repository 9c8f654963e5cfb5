"""Handlers run in the WebSocket reader's task, and the read loop's hand-off.

An EVENT with nothing queued ahead of it and no handler running is handled
in the task reading the WebSocket (``Connection._run_inline``): most handlers
finish without yielding, so no worker task is woken. A handler that waits goes
on in that task while a follower task reads the connection
(``WebSocketReader.hand_off``); the connection's task takes the read loop
back when its handler is done. These tests check what that must keep: the
order handlers start in, max_concurrent_handlers, handler errors, closes
during a waiting handler, the task count of an idle connection, polling
(always workers), binary events and TLS.
"""

from __future__ import annotations

import logging

import pytest
import trio
from churn_client import RawClient
from harness import ws_frame
from test_app_api import WS, count_tasks, wait_for_tasks
from test_tls import pki, serve_tls  # noqa: F401  (pki is a fixture)

import roomd
from roomd.transport.tls import server_context


def task_name() -> str:
    return trio.lowlevel.current_task().name


async def test_a_handler_that_does_not_wait_runs_in_the_reader(start_server, node):
    io = roomd.Server()
    names: list[str] = []

    @io.on("quick")
    async def quick(socket, i):
        names.append(task_name())
        await socket.to("nobody").emit("x", i)  # the manager runs it at once: no yield
        return i

    srv = await start_server(io)
    a = await node.connect(srv.url, transports=WS)
    await trio.sleep(0.2)
    idle = count_tasks()
    for i in range(5):
        assert await a.emit_with_ack("quick", i) == [i]
    assert len(names) == 5
    assert not any("_work" in name for name in names), names  # no handler worker
    assert count_tasks() == idle


async def test_a_waiting_handler_is_handed_off_and_the_reader_comes_back(start_server,
                                                                         node):
    """The slow handler waits in the connection's task while a follower reads; once it
    returned, the connection holds one task again (the follower gave the loop back)."""
    io = roomd.Server()
    release = trio.Event()
    started = trio.Event()

    @io.on("slow")
    async def slow(socket):
        started.set()
        await release.wait()
        return "slow done"

    @io.on("fast")
    async def fast(socket, i):
        return i

    srv = await start_server(io)
    a = await node.connect(srv.url, transports=WS)
    await trio.sleep(0.2)
    idle = count_tasks()
    async with trio.open_nursery() as nursery:
        got: list = []

        async def ask_slow() -> None:
            got.append(await a.emit_with_ack("slow", timeout=10))

        nursery.start_soon(ask_slow)
        await started.wait()
        for i in range(3):  # read and handled by the follower meanwhile
            assert await a.emit_with_ack("fast", i) == [i]
        assert got == []
        assert count_tasks() > idle
        release.set()
    assert got == [["slow done"]]
    await wait_for_tasks(idle)  # the loop is back in the connection's task
    for i in range(3):  # and inline again
        assert await a.emit_with_ack("fast", i) == [i]
    assert count_tasks() == idle


async def test_order_holds_across_a_hand_off_within_one_read(start_server):
    """Events arriving in one read: the one that waits is handed off mid-batch; the
    rest of the batch is the follower's, first and in order."""
    io = roomd.Server()
    started: list[int] = []
    finished: list[int] = []

    @io.on("n")
    async def n(socket, i):
        started.append(i)
        if i % 4 == 1:
            await trio.sleep(0.05)
        elif i % 4 == 2:
            await trio.sleep(0)
        finished.append(i)
        return i

    srv = await start_server(io)
    raw = await RawClient.connect(srv.port)
    await raw.open_namespace("/")
    await raw.stream.send_all(b"".join(ws_frame(f'42["n",{i}]') for i in range(20)))
    with trio.fail_after(5):
        while len(finished) < 20:
            await trio.sleep(0.01)
    assert started == list(range(20))
    assert finished != started  # some finished out of order: they did wait
    assert await raw.call(7, "n", 20) == [20]
    assert started == list(range(21))
    await raw.close_politely("ws")


async def test_one_at_a_time_across_a_hand_off(start_server):
    io = roomd.Server(max_concurrent_handlers=1)
    log: list[str] = []

    @io.on("n")
    async def n(socket, i):
        log.append(f"start {i}")
        if i % 3 == 0:
            await trio.sleep(0.01)
        log.append(f"end {i}")
        return i

    srv = await start_server(io)
    raw = await RawClient.connect(srv.port)
    await raw.open_namespace("/")
    await raw.stream.send_all(b"".join(ws_frame(f'42["n",{i}]') for i in range(9)))
    assert await raw.call(1, "n", 9) == [9]
    assert log == [f"{what} {i}" for i in range(10) for what in ("start", "end")]
    await raw.close_politely("ws")


@pytest.mark.parametrize("when", ["before", "after"])
async def test_a_failing_handler_is_logged_and_the_connection_stays(start_server, node,
                                                                    caplog, when):
    io = roomd.Server()

    @io.on("boom")
    async def boom(socket):
        if when == "after":
            await trio.sleep(0)  # raises in the handed-off task
        raise RuntimeError("kaboom")

    @io.on("ok")
    async def ok(socket):
        return "ok"

    srv = await start_server(io)
    a = await node.connect(srv.url, transports=WS)
    with caplog.at_level(logging.ERROR, logger="roomd.api"):
        await a.emit("boom")
        assert await a.emit_with_ack("ok") == ["ok"]
    failures = [r for r in caplog.records if "handler of" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None and "kaboom" in str(failures[0].exc_info[1])


@pytest.mark.parametrize("when", ["before", "after"])
async def test_disconnect_on_handler_error_inline(start_server, node, when):
    io = roomd.Server(disconnect_on_handler_error=True)

    @io.on("boom")
    async def boom(socket):
        if when == "after":
            await trio.sleep(0)
        raise RuntimeError("kaboom")

    srv = await start_server(io)
    a = await node.connect(srv.url, transports=WS)
    await trio.sleep(0.2)
    idle = count_tasks()
    await a.emit("boom")
    event = await a.next_event("disconnect")
    assert event.args[0] in ("transport close", "transport error")
    await wait_for_tasks(idle - 1)  # the connection's task is gone


@pytest.mark.parametrize("how", ["client closes", "server disconnects"])
async def test_a_close_does_not_cancel_a_handed_off_handler(start_server, how):
    """The handler outlives the close, as in a worker; the connection's tasks go
    once it returned, and the disconnect handlers ran meanwhile."""
    io = roomd.Server()
    release = trio.Event()
    started = trio.Event()
    finished: list[str] = []
    disconnected: list[str] = []

    @io.on("connection")
    async def on_connection(socket):
        @socket.on("disconnect")
        async def on_disconnect(reason):
            disconnected.append(reason)

    @io.on("wait")
    async def wait(socket):
        started.set()
        if how == "server disconnects":
            await socket.disconnect(close=True)
        try:
            await release.wait()
        except trio.Cancelled:
            finished.append("cancelled")
            raise
        finished.append("done")

    srv = await start_server(io)
    await trio.sleep(0.2)
    idle = count_tasks()
    raw = await RawClient.connect(srv.port)
    await raw.open_namespace("/")
    await raw.send('42["wait"]')
    await started.wait()
    if how == "client closes":
        await raw.close_politely("ws")
    else:
        with pytest.raises(EOFError):
            while True:
                await raw.recv(5)
    with trio.fail_after(5):
        while not disconnected:
            await trio.sleep(0.01)
    assert finished == []
    release.set()
    with trio.fail_after(5):
        while not finished:
            await trio.sleep(0.01)
    assert finished == ["done"]
    await wait_for_tasks(idle)
    assert not io.connections


async def test_the_read_loop_comes_back_while_a_follower_waits_on_a_partial_message(
        start_server):
    """The connection's task takes the loop back from a follower that holds half a
    message; the message is finished and handled after."""
    io = roomd.Server()
    release = trio.Event()

    @io.on("wait")
    async def wait(socket):
        await release.wait()

    @io.on("n")
    async def n(socket, i):
        return i

    srv = await start_server(io)
    await trio.sleep(0.2)
    idle = count_tasks()
    raw = await RawClient.connect(srv.port)
    await raw.open_namespace("/")
    await raw.send('42["wait"]')
    frame = ws_frame('421["n",5]')
    await raw.stream.send_all(frame[:4])
    await trio.sleep(0.1)
    release.set()
    await trio.sleep(0.1)
    await raw.stream.send_all(frame[4:])
    assert await raw.until("431") == '431[5]'
    await raw.close_politely("ws")
    await wait_for_tasks(idle)


async def test_an_ack_from_the_own_client_reaches_a_waiting_handler(start_server, node):
    """A handler awaiting its own client's ack: the follower reads the ack."""
    io = roomd.Server()

    @io.on("ask")
    async def ask(socket):
        return await socket.emit_with_ack("question", 41, timeout=5)

    srv = await start_server(io)
    a = await node.connect(srv.url, transports=WS)
    await a.on("question", ack=42)
    assert await a.emit_with_ack("ask") == [42]


async def test_binary_events_inline_and_handed_off(start_server, node):
    io = roomd.Server()

    @io.on("bin")
    async def bin_(socket, data, wait):
        if wait:
            await trio.sleep(0.01)
        return data[::-1]

    srv = await start_server(io)
    a = await node.connect(srv.url, transports=WS)
    for wait in (False, True, False):
        assert await a.emit_with_ack("bin", b"\x00\x01\xff" * 1000, wait) == [
            b"\xff\x01\x00" * 1000]


async def test_polling_handlers_run_in_workers_and_a_waiting_one_holds_no_post(start_server,
                                                                                node):
    """Over long-polling a handler never runs in the POST's task: a waiting handler
    would hold the POST's answer, and the client sends one POST at a time."""
    io = roomd.Server()
    names: list[str] = []
    release = trio.Event()

    @io.on("slow")
    async def slow(socket):
        names.append(task_name())
        await release.wait()
        return "slow"

    @io.on("fast")
    async def fast(socket):
        names.append(task_name())
        return "fast"

    srv = await start_server(io)
    a = await node.connect(srv.url, transports=["polling"])
    async with trio.open_nursery() as nursery:
        got: list = []

        async def ask_slow() -> None:
            got.append(await a.emit_with_ack("slow", timeout=10))

        nursery.start_soon(ask_slow)
        assert await a.emit_with_ack("fast") == ["fast"]
        release.set()
    assert got == [["slow"]]
    assert all("_work" in name for name in names), names


async def test_a_hand_off_over_tls(nursery, node, pki):  # noqa: F811
    ca, _, cert_file, key_file = pki
    io = roomd.Server()
    release = trio.Event()

    @io.on("slow")
    async def slow(socket):
        await release.wait()
        return "slow"

    @io.on("fast")
    async def fast(socket, i):
        return i

    port = await serve_tls(nursery, io, server_context(cert_file, key_file))
    a = await node.connect(f"https://127.0.0.1:{port}", transports=WS,
                           ca=ca.cert_pem.bytes().decode())
    async with trio.open_nursery() as inner:
        got: list = []

        async def ask_slow() -> None:
            got.append(await a.emit_with_ack("slow", timeout=10))

        inner.start_soon(ask_slow)
        assert await a.emit_with_ack("fast", 1) == [1]
        release.set()
    assert got == [["slow"]]
    for i in range(3):  # the loop goes back after the next message over TLS
        assert await a.emit_with_ack("fast", i) == [i]
