"""A graceful shutdown closes every client's transport, and the stock clients come back.

As Node's ``io.close()`` (socket.io 4.8, lib/index.ts): the server side runs each
socket's disconnect sequence with the reason "server shutting down", and no Socket.IO
DISCONNECT is sent: a client that got one would take it as the server's will ("io server
disconnect") and stay away after every restart. The client sees its transport close
("transport close") and reconnects with its backoff.

Long-polling clients learn of the close from the Engine.IO close packet, answered to the
GET that is pending or to the next one; it travels in a payload of its own, after
whatever was queued before it (socket.io-client handles a close packet before the
packets behind it). WebSocket clients get the close frame 1001, going away.

python-socketio treats the Engine.IO close packet as the server's will ("server
disconnect") and does not reconnect from it: a python-socketio client that only polls
stays away, against Node.js socket.io as against roomd. On a WebSocket (its default
transports upgrade to one) it reconnects.
"""

from __future__ import annotations

import signal

import pytest
import trio
from daemon_proc import running_daemon, short_dir
from harness import Received, open_raw_ws

import roomd
from roomd.protocol import eio
from roomd.transport.outbox import OutgoingMessage, PollingOutbox

WS = ["websocket"]
POLLING = ["polling"]


def test_the_close_packet_leaves_alone():
    outbox = PollingOutbox(16)
    outbox.put(OutgoingMessage(["2[\"bye\"]"]))  # a last event
    outbox.put_packet(eio.Packet(eio.PacketType.CLOSE))
    first = outbox.take(10_000)
    assert [p.type for p in first] == [eio.PacketType.MESSAGE]
    assert [p.type for p in outbox.take(10_000)] == [eio.PacketType.CLOSE]


def _app() -> tuple[roomd.Server, list[str]]:
    io = roomd.Server()
    seen: list[str] = []

    @io.on("connection")
    async def on_connection(socket):
        @socket.on("disconnecting")
        async def disconnecting(reason):
            seen.append(f"disconnecting: {reason}")

        @socket.on("disconnect")
        async def disconnect(reason):
            seen.append(f"disconnect: {reason}")

    return io, seen


async def _pending_poll(io: roomd.Server) -> None:
    """Wait until every polling session has its long-poll GET pending."""
    with trio.fail_after(5):
        while not all(s.poll_pending for s in io.engine.sessions.values()
                      if s.transport == "polling"):
            await trio.sleep(0.01)


@pytest.mark.parametrize("transports", [POLLING, WS], ids=["polling", "websocket"])
async def test_shutdown_closes_the_transport_without_a_disconnect_packet(start_server, node,
                                                                         transports):
    for _ in range(5):  # the race between a pending GET and the close is in the timing
        io, seen = _app()
        srv = await start_server(io)
        client = await node.connect(srv.url, transports=transports, force_new=True)
        await _pending_poll(io)
        with trio.fail_after(5):  # bounded, and far below the 2 s a left-over poll would take
            await io.shutdown(grace=5)
        assert (await client.next_event("disconnect")).args == ["transport close"]
        assert seen == ["disconnecting: server shutting down", "disconnect: server shutting down"]


@pytest.mark.parametrize("transports", [POLLING, WS], ids=["polling", "websocket"])
async def test_queued_messages_leave_before_the_close(start_server, node, transports):
    io, seen = _app()
    srv = await start_server(io)
    client = await node.connect(srv.url, transports=transports, force_new=True)
    await _pending_poll(io)
    await io.emit("bye", "queued before the shutdown")
    with trio.fail_after(5):
        await io.shutdown(grace=5)
    assert (await client.next_event("bye")).args == ["queued before the shutdown"]
    # Over polling the GET that took "bye" cannot also carry the close packet; node's
    # socket.io-client polls on a new TCP connection each time, which finds no listener.
    reasons = ["transport close"] if transports == WS else ["transport close", "transport error"]
    assert (await client.next_event("disconnect")).args[0] in reasons
    assert seen == ["disconnecting: server shutting down", "disconnect: server shutting down"]


async def test_a_websocket_gets_the_close_code_going_away(start_server):
    io, seen = _app()
    srv = await start_server(io)
    async with open_raw_ws(srv.port) as ws:
        await ws.handshake()
        await ws.send("40")
        assert (await ws.recv()).startswith("40")
        with trio.fail_after(5):
            await io.shutdown(grace=5)
        reason = await ws.wait_closed()
    assert reason.code == 1001
    assert seen == ["disconnecting: server shutting down", "disconnect: server shutting down"]


async def test_socket_disconnect_still_sends_disconnect(start_server, node):
    """``socket.disconnect()`` from the app is the server's will: the client stays away."""
    io = roomd.Server()

    @io.on("connection")
    async def on_connection(socket):
        @socket.on("go away")
        async def go_away(close):
            await socket.disconnect(close)

    srv = await start_server(io)
    for close in (False, True):
        client = await node.connect(srv.url, transports=WS, force_new=True, reconnection=True,
                                    reconnectionDelay=50)
        await client.next_event("connect")  # the first one
        await client.emit("go away", close)
        assert (await client.next_event("disconnect")).args == ["io server disconnect"]
        await client.no_event("connect", wait=0.5)


# ---------------------------------------------------------------------------------------------
# The real daemon restarted on its port: the stock clients reconnect and rejoin by themselves
# ---------------------------------------------------------------------------------------------

async def _join_on_connect(py, room: str) -> None:
    """Make a PyClient emit ``join`` on every connect and record the ack as "joined"."""

    async def install() -> None:
        sio = py.sio

        async def on_connect(namespace: str) -> None:
            py._record(Received("connect", [sio.get_sid(namespace)], namespace=namespace))
            ack = await sio.call("join", room, namespace=namespace, timeout=5)
            py._record(Received("joined", [ack], namespace=namespace))

        # replaces the harness's recorder of "connect" (handlers of namespace "*" are
        # used only for namespaces without handlers of their own)
        sio.on("connect", on_connect, namespace="*")

    await py._call(install(), 5)


@pytest.mark.deadline(90)
async def test_clients_reconnect_and_rejoin_after_a_restart(node, py_client):
    quick = {"reconnection": True, "reconnectionDelay": 100, "reconnectionDelayMax": 500}
    join = {"event": "join", "args": ["r1"]}
    with short_dir() as directory:
        async with running_daemon(directory, log_name="first.log") as first:
            port = first.port
            node_sockets = []
            for transports in (WS, POLLING, None):  # None: polling, then the upgrade
                opts = {"transports": transports} if transports else {}
                node_sockets.append(await node.connect(first.url, force_new=True,
                                                       join_on_connect=join, **opts, **quick))
            py_sockets = []
            for transports in (WS, None):
                py = await py_client(reconnection=True, reconnection_delay=0.1,
                                     reconnection_delay_max=0.5)
                await _join_on_connect(py, "r1")
                await py.connect(first.url, transports=transports)
                py_sockets.append(py)
            py_polling = await py_client(reconnection=True, reconnection_delay=0.1)
            await py_polling.connect(first.url, transports=POLLING)
            for sock in node_sockets:
                assert (await sock.next_event("connect")).args[0] == sock.sid
                assert (await sock.next_event("joined")).raw["args"][0]["rooms"] == sorted(
                    [sock.sid, "r1"])
            for py in py_sockets:
                sid = (await py.next_event("connect")).args[0]
                assert (await py.next_event("joined", timeout=10)).args[0]["rooms"] == sorted(
                    [sid, "r1"])
            assert (await first.admin("status"))["status"]["sockets"] == 6

            first.proc.send_signal(signal.SIGTERM)
            with trio.fail_after(15):
                assert await first.proc.wait() == 0
        for sock in node_sockets:
            assert (await sock.next_event("disconnect", timeout=10)).args == ["transport close"]
        for py in py_sockets:
            assert (await py.next_event("disconnect", timeout=10)).args == ["transport error"]
        # the close packet reached it: python-socketio's name for it (and no reconnection)
        event = await py_polling.next_event("disconnect", timeout=10)
        assert event.args == ["server disconnect"]

        async with running_daemon(directory, args=["--port", str(port)],
                                  log_name="second.log") as second:
            for sock in node_sockets:
                new_sid = (await sock.next_event("connect", timeout=20)).args[0]
                joined = await sock.next_event("joined", timeout=10)
                assert joined.raw.get("error") is None, joined.raw
                assert joined.raw["args"][0]["rooms"] == sorted([new_sid, "r1"])
            for py in py_sockets:
                sid = (await py.next_event("connect", timeout=20)).args[0]
                assert (await py.next_event("joined", timeout=10)).args[0]["rooms"] == sorted(
                    [sid, "r1"])
            assert (await second.admin("status"))["status"]["sockets"] == 5
            rooms = (await second.admin("rooms", namespace="/"))["rooms"]
            assert [(r["room"], r["count"]) for r in rooms] == [("r1", 5)]


async def test_the_daemon_drains_with_the_collector_paused():
    """On SIGTERM the daemon pauses the cyclic collector for the drain (it frees, it
    builds nothing that lasts) and turns it back on when the drain is over."""
    import gc
    import os

    from churn_client import RawClient

    from roomd.ops.config import load_config
    from roomd.ops.daemon import Daemon

    daemon = Daemon(load_config(None, {"server.port": 0, "admin.enabled": False}))
    seen: list[tuple[str, bool]] = []
    daemon.server.on("disconnect")(lambda socket, reason: seen.append((reason, gc.isenabled())))
    assert gc.isenabled()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(daemon.run)
            raw = await RawClient.connect(port)
            await raw.open_namespace("/")
            os.kill(os.getpid(), signal.SIGTERM)  # daemon.run's signal receiver takes it
    assert seen == [("server shutting down", False)]
    assert gc.isenabled()
