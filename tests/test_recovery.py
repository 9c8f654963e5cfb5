"""Issue 15: connection state recovery with the stock socket.io-client.

A client's transport is cut (by the server side, as a dead network would, or
by the client side only, so that the server learns of it by its ping
timeout) while another client publishes to its room; socket.io-client
reconnects by itself and must come back with the same id, its rooms and
``socket.data``, ``socket.recovered`` true, and every event exactly once in
order. After the window, or when the log overflowed, or with a forged pid or
offset: a fresh session. The emitter loops until the server has published
several events while the cut client was away *and* the client is back, so
each test exercises the replay whatever the scheduling.
"""

from __future__ import annotations

import json
import socket as stdlib_socket

import pytest
import trio
from daemon_proc import running_daemon, short_dir
from harness import open_raw_ws

import roomd

RECONNECT = {"reconnection": True, "reconnectionDelay": 200, "reconnectionDelayMax": 200,
             "randomizationFactor": 0}


class App:
    """A server whose clients join the room named in their auth and publish to rooms."""

    def __init__(self, ping: float = 0.5, **recovery: object) -> None:
        options = {"max_disconnection_duration": 30, **recovery}
        self.io = roomd.Server(ping_interval=ping, ping_timeout=ping,
                               connection_state_recovery=options)
        self.connections: list[roomd.Socket] = []
        self.middleware_runs = 0
        self.gap_emits = 0  # events published while the watched socket was away
        self.watched: str | None = None

        @self.io.use
        def count(socket: roomd.Socket) -> None:
            self.middleware_runs += 1

        @self.io.on("connection")
        async def connection(socket: roomd.Socket) -> None:
            self.connections.append(socket)
            if not socket.recovered:
                room = socket.handshake.auth.get("room")
                if room:
                    await socket.join(room)
                socket.data["joined"] = room

        @self.io.on("publish")
        async def publish(socket: roomd.Socket, room: str, n: int) -> str:
            if self.watched is not None and self.io.sockets.get_socket(self.watched) is None:
                self.gap_emits += 1
            await socket.to(room).emit("msg", n)
            return "ok"

        @self.io.on("whoami")
        def whoami(socket: roomd.Socket) -> dict:
            return {"sid": socket.id, "rooms": sorted(socket.rooms), "data": socket.data,
                    "recovered": socket.recovered}


def server_cut(io: roomd.Server, sid: str) -> None:
    """Shut the TCP connection under a socket, as a dead network would."""
    session = io.sockets.get_socket(sid)._connection.session
    raw = session.outbox._stream.socket
    raw.shutdown(stdlib_socket.SHUT_RDWR)


async def wait_for(predicate, timeout: float = 10, what: str = "condition") -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def publish_across_gap(app: App, pub, a, *, first: int, gap: int = 3,
                             after: int = 2) -> int:
    """Publish to room r until ``gap`` events went out while ``a`` was away and ``a`` is back.

    Returns the next event number.
    """
    n = first
    back = 0
    with trio.fail_after(20):
        while app.gap_emits < gap or back < after:
            assert await pub.emit_with_ack("publish", "r", n) == ["ok"]
            n += 1
            if app.gap_emits >= gap and app.io.sockets.get_socket(a.sid) is not None:
                back += 1
            await trio.sleep(0.01)
    return n


async def received_msgs(a, count: int) -> list[list]:
    out = []
    for _ in range(count):
        out.append((await a.next_event("msg", timeout=10)).args)
    await a.no_event("msg", wait=0.2)
    return out


def check_in_order(msgs: list[list], count: int) -> None:
    assert [m[0] for m in msgs] == list(range(count))
    offsets = [m[-1] for m in msgs]
    assert all(isinstance(o, str) for o in offsets)
    seqs = [int(o.rpartition("-")[2]) for o in offsets]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


@pytest.mark.parametrize("transports", [None, ["websocket"]], ids=["default", "websocket-only"])
@pytest.mark.parametrize("events_before", [1, 0], ids=["after-events", "zero-events"])
async def test_recovery_after_server_side_cut(start_server, node, transports, events_before):
    app = App()
    srv = await start_server(app.io)
    kw = {} if transports is None else {"transports": transports}
    a = await node.connect(srv.url, auth={"room": "r"}, force_new=True, **RECONNECT, **kw)
    pub = await node.connect(srv.url, force_new=True, transports=["websocket"])
    assert (await a.next_event("connect")).args == [a.sid, False]
    if transports is None:
        await a.wait_upgrade()
    before = await a.emit_with_ack("whoami")
    assert before[0]["rooms"] == sorted([a.sid, "r"]) and before[0]["recovered"] is False
    n = 0
    for n in range(events_before):
        await pub.emit_with_ack("publish", "r", n)
    n = events_before
    state = await a.state()
    assert state["pid"] and (state["offset"] is None) == (events_before == 0)

    app.watched = a.sid
    server_cut(app.io, a.sid)
    assert (await a.next_event("disconnect")).args == ["transport close"]
    n = await publish_across_gap(app, pub, a, first=n)

    connect = await a.next_event("connect")
    assert connect.args == [a.sid, True]
    state = await a.state()
    assert state["recovered"] is True and state["sid"] == a.sid and state["connected"]
    after = await a.emit_with_ack("whoami")
    assert after[0] == {"sid": a.sid, "rooms": sorted([a.sid, "r"]), "data": {"joined": "r"},
                        "recovered": True}
    check_in_order(await received_msgs(a, n), n)
    # the middleware ran for the two first connections only (skip_middlewares)
    assert app.middleware_runs == 2


async def test_after_the_window_a_fresh_session(start_server, node):
    app = App(max_disconnection_duration=0.5)
    srv = await start_server(app.io)
    a = await node.connect(srv.url, auth={"room": "r"}, force_new=True, transports=["websocket"],
                           reconnection=True, reconnectionDelay=1500, reconnectionDelayMax=1500,
                           randomizationFactor=0)
    pub = await node.connect(srv.url, force_new=True, transports=["websocket"])
    await a.next_event("connect")
    await pub.emit_with_ack("publish", "r", 0)
    assert (await a.next_event("msg")).args[0] == 0
    old = a.sid
    server_cut(app.io, old)
    await a.next_event("disconnect")
    await pub.emit_with_ack("publish", "r", 1)  # missed, and lost with the session
    connect = await a.next_event("connect", timeout=10)
    new_sid, recovered = connect.args
    assert new_sid != old and recovered is False
    who = (await a.emit_with_ack("whoami"))[0]
    assert who["rooms"] == sorted([new_sid, "r"]) and who["recovered"] is False
    await a.no_event("msg", wait=0.2)
    assert app.middleware_runs == 3


def engine_session(io: roomd.Server, sid: str):
    return io.sockets.get_socket(sid)._connection.session


async def test_takeover_before_the_server_notices_twice(start_server, node):
    # Pings every 20 s: the server cannot notice the silent cuts during this test, so
    # each reconnect finds the old socket still connected and takes its session over.
    app = App(ping=20)
    srv = await start_server(app.io)
    a = await node.connect(srv.url, auth={"room": "r"}, force_new=True, transports=["websocket"])
    pub = await node.connect(srv.url, force_new=True, transports=["websocket"])
    await a.next_event("connect")
    n = 0
    await pub.emit_with_ack("publish", "r", n)
    n += 1
    for _ in range(2):
        old = engine_session(app.io, a.sid)
        await a.cut(silent=True)
        assert (await a.next_event("disconnect")).args == ["transport error"]
        for _ in range(3):  # sent into the dead connection: lost there, replayed later
            await pub.emit_with_ack("publish", "r", n)
            n += 1
        await a.reconnect()
        assert (await a.next_event("connect")).args == [a.sid, True]
        assert old.closed and old.close_reason == "transport close"
        new = engine_session(app.io, a.sid)
        assert new is not old and not new.closed
        assert len(app.io.engine.sessions) == 2
        who = (await a.emit_with_ack("whoami"))[0]
        assert who["rooms"] == sorted([a.sid, "r"]) and who["recovered"] is True
        await pub.emit_with_ack("publish", "r", n)
        n += 1
    # and recovery still works on a later, ordinary disconnect
    app.watched = a.sid
    await a.cut()
    await a.next_event("disconnect")
    await wait_for(lambda: app.io.sockets.get_socket(a.sid) is None)
    for _ in range(2):
        await pub.emit_with_ack("publish", "r", n)
        n += 1
    await a.reconnect()
    assert (await a.next_event("connect")).args == [a.sid, True]
    check_in_order(await received_msgs(a, n), n)
    assert app.middleware_runs == 2


async def test_overflowed_log_means_no_recovery(start_server, node):
    app = App(max_packets=5)
    srv = await start_server(app.io)
    a = await node.connect(srv.url, auth={"room": "r"}, force_new=True, transports=["websocket"])
    pub = await node.connect(srv.url, force_new=True, transports=["websocket"])
    await a.next_event("connect")
    await pub.emit_with_ack("publish", "r", 0)
    assert (await a.next_event("msg")).args[0] == 0
    old = a.sid
    server_cut(app.io, old)
    await a.next_event("disconnect")
    await wait_for(lambda: app.io.sockets.get_socket(old) is None)
    assert app.io.stats()["recovery"]["sessions"] == 1
    for n in range(1, 7):  # six more: the packet after a's offset leaves the log
        await pub.emit_with_ack("publish", "r", n)
    assert app.io.stats()["recovery"]["packets"] == 5
    await a.reconnect()
    new_sid, recovered = (await a.next_event("connect")).args
    assert new_sid != old and recovered is False
    assert (await a.state())["recovered"] is False
    await a.no_event("msg", wait=0.2)
    assert app.middleware_runs == 3
    # the fresh session recovers in turn
    await pub.emit_with_ack("publish", "r", 7)
    assert (await a.next_event("msg")).args[0] == 7


async def test_log_bounded_in_bytes(start_server, node):
    app = App(max_bytes=2000)
    srv = await start_server(app.io)
    pub = await node.connect(srv.url, force_new=True, transports=["websocket"])
    for _ in range(20):
        await pub.emit_with_ack("publish", "r", "x" * 300)
    held = app.io.stats()["recovery"]
    assert held["bytes"] <= 2000 and 0 < held["packets"] < 20


async def raw_connect(port: int, auth: object) -> dict:
    """A raw Engine.IO + Socket.IO CONNECT with ``auth``; returns the CONNECT reply's data."""
    async with open_raw_ws(port) as ws:
        await ws.handshake()
        await ws.send("40" + json.dumps(auth))
        reply = await ws.recv_skip_pings()
        assert isinstance(reply, str) and reply.startswith("40"), reply
        return json.loads(reply[2:])


async def test_forged_pids_and_offsets_get_fresh_sessions(start_server, node):
    app = App()
    srv = await start_server(app.io)
    a = await node.connect(srv.url, auth={"room": "r"}, force_new=True, transports=["websocket"])
    b = await node.connect(srv.url, auth={"room": "r"}, force_new=True, transports=["websocket"])
    pub = await node.connect(srv.url, force_new=True, transports=["websocket"])
    await a.next_event("connect")
    await b.next_event("connect")
    await pub.emit_with_ack("publish", "r", 0)
    await a.next_event("msg")
    b_state = await b.state()
    a_state = await a.state()
    valid = (await b.next_event("msg")).args[-1]
    server_cut(app.io, b.sid)  # b's session waits to be recovered
    await b.next_event("disconnect")
    await wait_for(lambda: app.io.sockets.get_socket(b.sid) is None)
    epoch = valid.rpartition("-")[0]
    forged = [
        {"pid": "x" * 20, "offset": valid}, {"pid": b.sid, "offset": valid},
        {"pid": a.sid}, {"pid": "", "offset": ""}, {"pid": "y" * 5000, "offset": "z" * 5000},
        {"pid": 12, "offset": 3}, {"pid": ["p"], "offset": {"o": 1}}, {"pid": None},
        {"offset": valid}, {"pid": "x" * 20, "offset": f"{epoch}-999999999999999999999"},
        {"pid": "x" * 20, "offset": f"{epoch}--1"}, {"pid": "x" * 20, "offset": "\u0000-1"},
    ]
    seen = {a.sid, b.sid, pub.sid}
    for _ in range(3):
        for auth in forged:
            data = await raw_connect(srv.port, auth)
            assert set(data) == {"sid", "pid"}
            assert data["sid"] not in seen and data["pid"] not in (a_state["pid"],
                                                                   b_state["pid"])
            seen.add(data["sid"])
    # nothing else changed: a is connected in its room, b's session is still there
    assert (await a.emit_with_ack("whoami"))[0]["rooms"] == sorted([a.sid, "r"])
    await wait_for(lambda: len(app.io.engine.sessions) == 2)
    # b's session, and one per raw connection (each closed its transport: kept, unused)
    assert app.io.stats()["recovery"]["sessions"] == 1 + 3 * len(forged)
    await pub.emit_with_ack("publish", "r", 1)
    await b.reconnect()
    assert (await b.next_event("connect")).args == [b.sid, True]
    assert [m[0] for m in await received_msgs(b, 1)] == [1]
    assert [m[0] for m in await received_msgs(a, 1)] == [1]


async def test_client_disconnect_discards_the_session(start_server, node):
    app = App()
    srv = await start_server(app.io)
    a = await node.connect(srv.url, auth={"room": "r"}, force_new=True, transports=["websocket"])
    await a.next_event("connect")
    old = a.sid
    await a.disconnect()
    assert (await a.next_event("disconnect")).args == ["io client disconnect"]
    await wait_for(lambda: app.io.sockets.get_socket(old) is None)
    assert app.io.stats()["recovery"]["sessions"] == 0
    await a.reconnect()
    new_sid, recovered = (await a.next_event("connect")).args
    assert new_sid != old and recovered is False
    # the server's own disconnect discards it too
    await app.io.sockets.get_socket(new_sid).disconnect()
    assert (await a.next_event("disconnect")).args == ["io server disconnect"]
    await wait_for(lambda: app.io.sockets.get_socket(new_sid) is None)
    assert app.io.stats()["recovery"]["sessions"] == 0


async def test_off_by_default_no_offsets_no_pid(start_server, node):
    srv = await start_server()
    received = []

    @srv.io.on("connection")
    async def connection(socket):
        received.append(socket)
        await socket.emit("hello", 1)

    a = await node.connect(srv.url, transports=["websocket"])
    assert (await a.next_event("hello")).args == [1]
    assert (await a.state())["pid"] is None
    assert srv.io.stats()["recovery"] is None


RELAY_CONFIG = """\
[recovery]
enabled = true
max_disconnection_duration = 30

[[namespaces]]
name = "/chat"

[[namespaces]]
name = "/plain"
recovery = false
"""


async def test_relay_daemon_recovers_per_namespace(node):
    with short_dir() as tmp:
        async with running_daemon(tmp, RELAY_CONFIG) as d:
            a = await node.connect(d.url, "/chat", force_new=True, transports=["websocket"])
            plain = await node.connect(d.url, "/plain", force_new=True, transports=["websocket"])
            pub = await node.connect(d.url, "/chat", force_new=True, transports=["websocket"])
            await a.next_event("connect")
            assert (await plain.state())["pid"] is None  # recovery off in /plain
            assert (await a.emit_with_ack("join", "r"))[0]["rooms"] == sorted([a.sid, "r"])
            assert await pub.emit_with_ack("publish", "r", "m", 0) == [{"recipients": 1}]
            assert (await a.next_event("m")).args[0] == 0
            await a.cut()  # the TCP connection destroyed: the daemon sees it close
            await a.next_event("disconnect")
            with trio.fail_after(10):  # until the daemon noticed the cut
                while (await d.cli("status", "--json")).json()["recovery"]["sessions"] != 1:
                    await trio.sleep(0.05)
            for n in (1, 2):
                assert await pub.emit_with_ack("publish", "r", "m", n) == [{"recipients": 0}]
            status = (await d.cli("status", "--json")).json()
            assert status["recovery"]["namespaces"] == 1 and status["recovery"]["packets"] == 3
            text = (await d.cli("status")).stdout
            assert "recovery:    1 sessions" in text
            await a.reconnect()
            assert (await a.next_event("connect")).args == [a.sid, True]
            got = [(await a.next_event("m")).args for _ in range(2)]
            await a.no_event("m", wait=0.2)
            assert [args[0] for args in got] == [1, 2]


async def test_middlewares_when_not_skipped(start_server, node):
    app = App(skip_middlewares=False)
    refuse = []

    @app.io.use
    def gate(socket: roomd.Socket) -> None:
        if refuse:
            raise roomd.ConnectRefused("not now")

    srv = await start_server(app.io)
    a = await node.connect(srv.url, auth={"room": "r"}, force_new=True, transports=["websocket"])
    pub = await node.connect(srv.url, force_new=True, transports=["websocket"])
    await a.next_event("connect")
    server_cut(app.io, a.sid)
    await a.next_event("disconnect")
    await wait_for(lambda: app.io.sockets.get_socket(a.sid) is None)
    await pub.emit_with_ack("publish", "r", 0)
    # refused by a middleware: the session is kept for a later attempt
    refuse.append(True)
    await a.reconnect()
    assert (await a.next_event("connect_error")).args[0] == "not now"
    assert app.io.stats()["recovery"]["sessions"] == 1
    refuse.clear()
    await a.reconnect()
    assert (await a.next_event("connect")).args == [a.sid, True]
    assert [m[0] for m in await received_msgs(a, 1)] == [0]
    assert app.middleware_runs == 4  # a, pub, the refused attempt, the recovery


async def test_python_client_sees_the_offset_as_an_extra_argument(start_server, py_client):
    # Why recovery is off by default: a client without recovery support gets the offset.
    app = App()
    srv = await start_server(app.io)

    @app.io.on("poke")
    async def poke(socket: roomd.Socket) -> None:
        await socket.emit("blob", b"\x00\xff", {"k": 1})

    p = await py_client()
    await p.connect(srv.url, transports=["websocket"])
    await p.emit("poke")
    args = (await p.next_event("blob")).args
    assert args[:2] == [b"\x00\xff", {"k": 1}] and len(args) == 3 and isinstance(args[2], str)


async def test_polling_only_client_cut(start_server, node):
    app = App()
    srv = await start_server(app.io)
    a = await node.connect(srv.url, auth={"room": "r"}, force_new=True, transports=["polling"])
    pub = await node.connect(srv.url, force_new=True, transports=["websocket"])
    await a.next_event("connect")
    await pub.emit_with_ack("publish", "r", 0)
    await a.cut()  # the client abandons its long-polling requests
    assert (await a.next_event("disconnect")).args == ["transport error"]
    for n in (1, 2):
        await pub.emit_with_ack("publish", "r", n)
    await a.reconnect()
    assert (await a.next_event("connect")).args == [a.sid, True]
    check_in_order(await received_msgs(a, 3), 3)


async def test_takeover_of_a_multiplexed_connection(start_server, node):
    # Two namespaces over one Engine.IO session, cut silently; socket.io-client reconnects
    # by itself before the server notices: both sockets come back, nothing is lost.
    app = App(ping=20)
    other = app.io.of("/other")

    @other.on("connection")
    async def joined(socket: roomd.Socket) -> None:
        if not socket.recovered:
            await socket.join("r")

    srv = await start_server(app.io)
    a = await node.connect(srv.url, auth={"room": "r"}, transports=["websocket"], **RECONNECT)
    b = await node.connect(srv.url, "/other", transports=["websocket"], **RECONNECT)
    assert app.io.sockets.get_socket(a.sid)._connection is \
        other.get_socket(b.sid)._connection
    pub = await node.connect(srv.url, force_new=True, transports=["websocket"])
    await a.next_event("connect")
    await b.next_event("connect")
    old = engine_session(app.io, a.sid)
    await a.cut(silent=True)
    await a.next_event("disconnect")
    await b.next_event("disconnect")
    for n in range(3):
        await pub.emit_with_ack("publish", "r", n)
        await other.to("r").emit("msg", n)
    assert (await a.next_event("connect", timeout=10)).args == [a.sid, True]
    assert (await b.next_event("connect", timeout=10)).args == [b.sid, True]
    assert old.closed
    for n in range(3, 5):
        await pub.emit_with_ack("publish", "r", n)
        await other.to("r").emit("msg", n)
    check_in_order(await received_msgs(a, 5), 5)
    check_in_order(await received_msgs(b, 5), 5)


async def test_relay_refuses_the_room_of_a_socket_that_may_come_back(start_server, node):
    from roomd.apps.relay import RelayApp
    from roomd.ops.config import NamespaceConfig

    io = roomd.Server(connection_state_recovery=True)
    RelayApp(io, [NamespaceConfig(name="/")])
    srv = await start_server(io)
    victim = await node.connect(srv.url, force_new=True, transports=["websocket"])
    spy = await node.connect(srv.url, force_new=True, transports=["websocket"])
    await victim.next_event("connect")
    server_cut(io, victim.sid)
    await victim.next_event("disconnect")
    await wait_for(lambda: io.sockets.get_socket(victim.sid) is None)
    assert await spy.emit_with_ack("join", victim.sid) == [
        {"error": f"room {victim.sid!r} is a socket's private room"}]
    await victim.reconnect()
    assert (await victim.next_event("connect")).args == [victim.sid, True]
    assert await spy.emit_with_ack("join", victim.sid) == [
        {"error": f"room {victim.sid!r} is a socket's private room"}]


async def test_quiet_client_in_a_busy_namespace_is_recovered(start_server, node):
    # Node gives up as soon as the client's offset has left the log; roomd knows which
    # rooms the dropped packets were for.
    app = App(max_packets=3)
    srv = await start_server(app.io)
    a = await node.connect(srv.url, auth={"room": "r"}, force_new=True, transports=["websocket"])
    pub = await node.connect(srv.url, force_new=True, transports=["websocket"])
    await a.next_event("connect")
    await pub.emit_with_ack("publish", "r", 0)
    assert (await a.next_event("msg")).args[0] == 0
    for n in range(6):  # busy elsewhere: a's offset leaves the log
        await pub.emit_with_ack("publish", "elsewhere", 100 + n)
    server_cut(app.io, a.sid)
    await a.next_event("disconnect")
    await wait_for(lambda: app.io.sockets.get_socket(a.sid) is None)
    await pub.emit_with_ack("publish", "r", 1)
    await pub.emit_with_ack("publish", "elsewhere", 106)
    await a.reconnect()
    assert (await a.next_event("connect")).args == [a.sid, True]
    assert [m[0] for m in await received_msgs(a, 1)] == [1]


async def test_unencodable_argument_raises_in_the_emitter(start_server, node):
    app = App()

    @app.io.on("bad")
    async def bad(socket: roomd.Socket) -> list:
        raised = []
        for emit in (socket.emit, app.io.emit, socket.to("r").emit):
            try:
                await emit("x", object())
            except TypeError:
                raised.append(True)
        return raised

    srv = await start_server(app.io)
    a = await node.connect(srv.url, auth={"room": "r"}, transports=["websocket"])
    assert await a.emit_with_ack("bad") == [[True, True, True]]
    assert app.io.stats()["recovery"]["packets"] == 0
    await a.no_event("x", wait=0.1)
