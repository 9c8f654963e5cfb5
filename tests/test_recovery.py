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

import socket as stdlib_socket

import pytest
import trio

import roomd

RECONNECT = {"reconnection": True, "reconnectionDelay": 200, "reconnectionDelayMax": 200,
             "randomizationFactor": 0}


class App:
    """A server whose clients join the room named in their auth and publish to rooms."""

    def __init__(self, **recovery: object) -> None:
        options = {"max_disconnection_duration": 30, **recovery}
        self.io = roomd.Server(ping_interval=0.5, ping_timeout=0.5,
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
