"""Rooms, with the stock clients over real sockets (issue 3: "Semantics, in the Python API").

Each test starts a roomd.Server on 127.0.0.1:0 with the small app of tests/rooms_app.py and
drives it with socket.io-client under node (``node``) and python-socketio (``py_client``).
"To make sure an event arrived exactly once", a test emits a marker event to everyone after
it: a socket receives packets in emission order, so once the marker is there, every earlier
event is there too, and the count in the client's inbox is final.
"""

from __future__ import annotations

import pytest
import trio
from churn_client import RawClient
from rooms_app import count, make_server

import roomd

WS = ["websocket"]


async def marker(io, *clients_and_socks, namespace: str = "/") -> None:
    """Emit "marker" to the whole namespace and wait until each (client, sock) has it."""
    await io.of(namespace).emit("marker")
    for client, sock in clients_and_socks:
        if sock is None:
            await client.next_event("marker")
        else:
            await sock.next_event("marker")


async def rooms_of(io, namespace: str = "/") -> dict[str, list[str]]:
    """Non-private rooms of a namespace -> sorted member ids (from the manager)."""
    return {r["room"]: r["members"] for r in await io.rooms_snapshot(namespace)
            if not r["private"]}


async def test_join_leave_and_own_room(start_server, node, py_client):
    io, _ = make_server()
    srv = await start_server(io)
    a = await node.connect(srv.url, transports=WS)
    server_socket = io.sockets.sockets[a.sid]
    assert server_socket.rooms == {a.sid}
    assert await a.emit_with_ack("rooms") == [[a.sid]]

    assert await a.emit_with_ack("join", "r1") == [sorted([a.sid, "r1"])]
    assert await a.emit_with_ack("join", ["r2", "r3"]) == [sorted([a.sid, "r1", "r2", "r3"])]
    assert server_socket.rooms == {a.sid, "r1", "r2", "r3"}
    assert await a.emit_with_ack("leave", "r2") == [sorted([a.sid, "r1", "r3"])]
    assert await a.emit_with_ack("leave", "not-a-member") == [sorted([a.sid, "r1", "r3"])]

    # the Python API: several names and lists at once
    await server_socket.join("x", ["y", "z"])
    assert server_socket.rooms == {a.sid, "r1", "r3", "x", "y", "z"}
    await server_socket.leave(["x", "y"], "z")
    assert server_socket.rooms == {a.sid, "r1", "r3"}

    p = await py_client()
    await p.connect(srv.url, transports=WS)
    assert await p.call("join", ["r1"]) == [sorted([p.sid, "r1"])]
    assert await rooms_of(io) == {"r1": sorted([a.sid, p.sid]), "r3": [a.sid]}


async def test_to_and_in_are_the_same(start_server, node, py_client):
    io, _ = make_server()
    srv = await start_server(io)
    a = await node.connect(srv.url, transports=WS)
    b = await node.connect(srv.url)  # polling, then upgraded
    p = await py_client()
    await p.connect(srv.url)
    await a.emit_with_ack("join", "r1")
    await p.call("join", "r1")

    await io.to("r1").emit("ev", "via to", {"n": 1})
    await io.in_("r1").emit("ev", "via in", b"\x00\x01")
    for got in (await a.next_event("ev"), await a.next_event("ev")):
        assert got.args in (["via to", {"n": 1}], ["via in", b"\x00\x01"])
    assert (await p.next_event("ev")).args == ["via to", {"n": 1}]
    assert (await p.next_event("ev")).args == ["via in", b"\x00\x01"]
    await marker(io, (node, b), (node, a), (p, None))
    assert count(node, "ev", b) == 0


async def test_union_is_delivered_once(start_server, node, py_client):
    """A socket in three rooms gets an event to the union of the three exactly once."""
    io, _ = make_server()
    srv = await start_server(io)
    a = await node.connect(srv.url, transports=WS)  # in r1, r2, r3
    b = await node.connect(srv.url, transports=WS)  # in r3
    c = await node.connect(srv.url, transports=WS)  # in none
    p = await py_client()                           # in r1, r2, r3
    await p.connect(srv.url, transports=WS)
    assert await a.emit_with_ack("join", ["r1", "r2", "r3"])
    assert await b.emit_with_ack("join", "r3")
    assert await p.call("join", ["r1", "r2", "r3"])

    await io.to("r1").to("r2").to("r3").emit("u", 1)
    assert (await a.next_event("u")).args == [1]
    assert (await b.next_event("u")).args == [1]
    assert (await p.next_event("u")).args == [1]
    await a.no_event("u", wait=0.3)
    await p.no_event("u", wait=0.1)

    await io.in_(["r1", "r2"]).to("r3").emit("u", 2)     # lists and chains mix
    await io.of("/").to("r1", "r2", "r3").emit("u", 3)   # several names at once
    await marker(io, (node, a), (node, b), (node, c), (p, None))
    assert count(node, "u", a) == 3
    assert count(node, "u", b) == 3
    assert count(node, "u", c) == 0
    assert count(p, "u") == 3
    assert [ev.args for ev in node.inbox.all if ev.name == "u" and ev.sock == a.handle] == \
        [[1], [2], [3]]


async def test_socket_to_excludes_the_sender(start_server, node, py_client):
    io, _ = make_server()
    srv = await start_server(io)
    a = await node.connect(srv.url, transports=WS)
    b = await node.connect(srv.url, transports=WS)
    c = await node.connect(srv.url, transports=WS)  # not in the room
    p = await py_client()
    await p.connect(srv.url, transports=WS)
    for s in (a, b):
        await s.emit_with_ack("join", ["room", "other"])
    await p.call("join", "room")

    assert await a.emit_with_ack("to", "room", "hello", "from a") == ["ok"]
    assert (await b.next_event("hello")).args == ["from a"]
    assert (await p.next_event("hello")).args == ["from a"]
    # the union rule holds for socket.to too; the sender stays out
    assert await p.call("to", ["room", "other"], "hello", "from p") == ["ok"]
    assert (await a.next_event("hello")).args == ["from p"]
    assert (await b.next_event("hello")).args == ["from p"]
    await marker(io, (node, a), (node, b), (node, c), (p, None))
    assert count(node, "hello", a) == 1
    assert count(node, "hello", b) == 2
    assert count(node, "hello", c) == 0
    assert count(p, "hello") == 1

    # the Python API directly
    server_b = io.sockets.sockets[b.sid]
    await server_b.to("room").emit("direct", 1)
    await server_b.in_("room").emit("direct", 2)
    assert [(await a.next_event("direct")).args, (await a.next_event("direct")).args] == \
        [[1], [2]]
    await marker(io, (node, a), (node, b), (p, None))
    assert count(node, "direct", b) == 0
    assert count(p, "direct") == 2


async def test_broadcast_excludes_the_sender_only(start_server, node, py_client):
    io, _ = make_server("/other")
    srv = await start_server(io)
    a = await node.connect(srv.url, transports=WS)
    b = await node.connect(srv.url)
    other = await node.connect(srv.url, "/other", transports=WS)
    p = await py_client()
    await p.connect(srv.url, transports=WS)
    await b.emit_with_ack("join", "r1")

    assert await a.emit_with_ack("broadcast", "news", 1) == ["ok"]
    assert (await b.next_event("news")).args == [1]
    assert (await p.next_event("news")).args == [1]
    # except_ on a socket's broadcast
    assert await p.call("broadcast_except", "r1", "news", 2) == ["ok"]
    assert (await a.next_event("news")).args == [2]
    await marker(io, (node, a), (node, b), (p, None))
    await marker(io, (node, other), namespace="/other")
    assert count(node, "news", a) == 1
    assert count(node, "news", b) == 1
    assert count(p, "news") == 1
    assert count(node, "news", other) == 0


async def test_except_removes_rooms_from_any_broadcast(start_server, node):
    io, _ = make_server()
    srv = await start_server(io)
    a = await node.connect(srv.url, transports=WS)  # r1
    b = await node.connect(srv.url, transports=WS)  # r2
    c = await node.connect(srv.url, transports=WS)  # r1, r2
    d = await node.connect(srv.url, transports=WS)  # none
    await a.emit_with_ack("join", "r1")
    await b.emit_with_ack("join", "r2")
    await c.emit_with_ack("join", ["r1", "r2"])
    socks = {"a": a, "b": b, "c": c, "d": d}

    async def who_gets(operator) -> set[str]:
        node.inbox.pending.clear()
        await operator.emit("e")
        await marker(io, *((node, s) for s in socks.values()))
        got = {name for name, s in socks.items()
               if any(ev.name == "e" and ev.sock == s.handle for ev in node.inbox.pending)}
        for _, s in socks.items():
            assert sum(ev.name == "e" and ev.sock == s.handle for ev in node.inbox.pending) <= 1
        return got

    assert await who_gets(io.except_("r1")) == {"b", "d"}
    assert await who_gets(io.to("r2").except_("r1")) == {"b"}
    assert await who_gets(io.except_("r1").to("r2")) == {"b"}
    assert await who_gets(io.except_(["r1", "r2"])) == {"d"}
    assert await who_gets(io.to("r1").except_("r1")) == set()
    assert await who_gets(io.to("r1", "r2").except_(d.sid)) == {"a", "b", "c"}
    assert await who_gets(io.except_(a.sid)) == {"b", "c", "d"}
    server_c = io.sockets.sockets[c.sid]
    assert await who_gets(server_c.to("r1").except_("r2")) == {"a"}
    assert await who_gets(server_c.broadcast.except_("r2")) == {"a", "d"}


async def test_empty_rooms_disappear(start_server, node, py_client):
    io, _ = make_server()
    srv = await start_server(io)
    a = await node.connect(srv.url, transports=WS)
    p = await py_client()
    await p.connect(srv.url, transports=WS)
    assert (io.stats()["rooms"], io.stats()["sockets"]) == (0, 2)
    await a.emit_with_ack("join", ["r1", "r2"])
    await p.call("join", ["r2", "r3"])
    assert await rooms_of(io) == {"r1": [a.sid], "r2": sorted([a.sid, p.sid]), "r3": [p.sid]}
    assert (io.stats()["rooms"], io.stats()["sockets"]) == (3, 2)

    await a.emit_with_ack("leave", "r1")
    assert await rooms_of(io) == {"r2": sorted([a.sid, p.sid]), "r3": [p.sid]}
    await io.sockets_leave("r3")
    assert await rooms_of(io) == {"r2": sorted([a.sid, p.sid])}
    await a.disconnect()
    with trio.fail_after(5):
        while io.stats()["sockets"] != 1:
            await trio.sleep(0.01)
    assert await rooms_of(io) == {"r2": [p.sid]}
    await p.disconnect()
    with trio.fail_after(5):
        while (io.stats()["rooms"], io.stats()["sockets"]) != (0, 0):
            await trio.sleep(0.01)
    assert await io.rooms_snapshot() == []
    assert not io.sockets.adapter.rooms


@pytest.mark.parametrize("how", ["client", "server", "server_close", "transport"])
async def test_disconnecting_sees_rooms_disconnect_sees_none(start_server, node, py_client, how):
    io, app = make_server()
    srv = await start_server(io)
    if how == "transport":
        raw = await RawClient.connect(srv.port)
        sid = await raw.open_namespace("/")
        assert await raw.call(1, "join", ["r1", "r2"]) == [sorted([sid, "r1", "r2"])]
    else:
        a = await node.connect(srv.url, transports=WS)
        sid = a.sid
        await a.emit_with_ack("join", ["r1", "r2"])
    server_socket = io.sockets.sockets[sid]

    if how == "client":
        await a.disconnect()
        expected = "client namespace disconnect"
    elif how == "server":
        await server_socket.disconnect()
        assert (await a.next_event("disconnect")).args == ["io server disconnect"]
        expected = "server namespace disconnect"
    elif how == "server_close":
        await server_socket.disconnect(close=True)
        await a.next_event("disconnect")
        expected = "server namespace disconnect"
    else:
        await raw.drop(reset=True)  # abrupt: the TCP connection goes away (RST)
        expected = "transport close"

    with trio.fail_after(5):
        while len(app.events(sid)) < 2:
            await trio.sleep(0.01)
    assert app.events(sid) == [("disconnecting", expected, {sid, "r1", "r2"}),
                               ("disconnect", expected, set())]
    assert server_socket.rooms == set()
    assert not server_socket.connected
    assert await io.rooms_snapshot() == []
    assert sid not in io.sockets.sockets


async def test_fetch_sockets_on_every_target(start_server, node):
    io, _ = make_server("/other")
    srv = await start_server(io)
    a = await node.connect(srv.url, transports=WS, auth={"user": "ann"})
    b = await node.connect(srv.url, transports=WS, auth={"user": "bob"})
    c = await node.connect(srv.url, transports=WS, auth={"user": "cy"}, query={"k": "v"})
    o = await node.connect(srv.url, "/other", transports=WS, auth={"user": "oz"})
    await a.emit_with_ack("join", ["r1"])
    await b.emit_with_ack("join", ["r1", "r2"])
    await o.emit_with_ack("join", ["r1"])

    def ids(sockets) -> set[str]:
        return {s.id for s in sockets}

    assert ids(await io.fetch_sockets()) == {a.sid, b.sid, c.sid}
    assert ids(await io.of("/").fetch_sockets()) == {a.sid, b.sid, c.sid}
    assert ids(await io.of("/other").fetch_sockets()) == {o.sid}
    assert ids(await io.to("r1").fetch_sockets()) == {a.sid, b.sid}
    assert ids(await io.in_("r2").fetch_sockets()) == {b.sid}
    assert ids(await io.except_("r1").fetch_sockets()) == {c.sid}
    assert ids(await io.to("r1").except_("r2").fetch_sockets()) == {a.sid}
    assert ids(await io.of("/other").to("r1").fetch_sockets()) == {o.sid}
    assert ids(await io.to("nowhere").fetch_sockets()) == set()

    by_id = {s.id: s for s in await io.fetch_sockets()}
    assert {sid: s.data for sid, s in by_id.items()} == {
        a.sid: {"user": "ann"}, b.sid: {"user": "bob"}, c.sid: {"user": "cy"}}
    assert by_id[b.sid].rooms == {b.sid, "r1", "r2"}
    assert by_id[c.sid].handshake.auth == {"user": "cy"}
    assert by_id[c.sid].handshake.query.get("k") == "v"
    assert by_id[c.sid].handshake.address == "127.0.0.1"
    # socket.data written by the server is what fetch_sockets shows later
    by_id[a.sid].data["score"] = 7
    (fa,) = await io.to(a.sid).fetch_sockets()
    assert fa.data == {"user": "ann", "score": 7}


async def test_sockets_join_and_leave_on_every_target(start_server, node):
    io, _ = make_server("/other")
    srv = await start_server(io)
    a = await node.connect(srv.url, transports=WS)
    b = await node.connect(srv.url, transports=WS)
    c = await node.connect(srv.url, transports=WS)
    o = await node.connect(srv.url, "/other", transports=WS)
    await a.emit_with_ack("join", "r1")
    await b.emit_with_ack("join", "r1")

    await io.to("r1").sockets_join("joined")
    assert await rooms_of(io) == {"r1": sorted([a.sid, b.sid]), "joined": sorted([a.sid, b.sid])}
    await io.except_("r1").sockets_join(["outside", "also"])
    assert (await rooms_of(io))["outside"] == [c.sid]
    assert (await rooms_of(io))["also"] == [c.sid]
    await io.sockets_join("all")
    await io.of("/other").sockets_join("all")
    assert (await rooms_of(io))["all"] == sorted([a.sid, b.sid, c.sid])
    assert await rooms_of(io, "/other") == {"all": [o.sid]}
    # a room joined server-side works for emits
    await io.to("joined").emit("j")
    assert (await a.next_event("j")).args == []
    assert (await b.next_event("j")).args == []
    assert await a.emit_with_ack("rooms") == [sorted([a.sid, "r1", "joined", "all"])]

    await io.to("r1").except_(a.sid).sockets_leave("joined")
    assert (await rooms_of(io))["joined"] == [a.sid]
    await io.of("/").sockets_leave(["also", "outside"])
    await io.to(a.sid).sockets_leave("joined")
    assert await rooms_of(io) == {"r1": sorted([a.sid, b.sid]),
                                  "all": sorted([a.sid, b.sid, c.sid])}
    await io.sockets_leave("all")
    assert await rooms_of(io) == {"r1": sorted([a.sid, b.sid])}
    assert await rooms_of(io, "/other") == {"all": [o.sid]}  # another namespace: untouched
    await marker(io, (node, c))
    assert count(node, "j", c) == 0


async def test_disconnect_sockets_on_every_target(start_server, node, py_client):
    io, app = make_server("/other")
    srv = await start_server(io)
    a = await node.connect(srv.url, transports=WS)                  # r1
    b = await node.connect(srv.url, transports=WS)                  # r2
    c = await node.connect(srv.url, transports=WS)                  # none
    # socket.io-client multiplexes "/other" over a's connection (the cached manager)
    c_other = await node.connect(srv.url, "/other", transports=WS)
    p = await py_client()                                           # r3; "/" and "/other"
    await p.connect(srv.url, ["/", "/other"], transports=WS)
    await a.emit_with_ack("join", "r1")
    await b.emit_with_ack("join", "r2")
    await p.call("join", "r3", namespace="/")
    assert io.sockets.sockets[a.sid]._connection is io.of("/other").sockets[c_other.sid]._connection

    await io.to("r1").disconnect_sockets()
    assert (await a.next_event("disconnect")).args == ["io server disconnect"]
    assert {s.id for s in await io.fetch_sockets()} == {b.sid, c.sid, p.get_sid("/")}

    assert await c_other.is_connected()            # a's connection is still up
    await io.except_(["r2", "r3"]).disconnect_sockets()     # c, in "/" only
    assert (await c.next_event("disconnect")).args == ["io server disconnect"]
    assert {s.id for s in await io.fetch_sockets()} == {b.sid, p.get_sid("/")}
    assert await c_other.emit_with_ack("rooms") == [[c_other.sid]]

    # close=True: the whole underlying connection goes, its other namespaces included
    p_other = p.get_sid("/other")
    assert p_other in io.of("/other").sockets
    p_session = io.sockets.sockets[p.get_sid("/")]._connection.session
    await io.to("r3").disconnect_sockets(close=True)
    assert {(ev.namespace, ev.args[0]) for ev in [await p.next_event("disconnect"),
                                                  await p.next_event("disconnect")]} == \
        {("/", "server disconnect"), ("/other", "server disconnect")}
    with trio.fail_after(5):
        while p_other in io.of("/other").sockets or p_session.sid in io.connections:
            await trio.sleep(0.01)
    assert p_session.closed
    assert {s.id for s in await io.of("/other").fetch_sockets()} == {c_other.sid}

    await io.of("/other").disconnect_sockets()
    assert (await c_other.next_event("disconnect")).args == ["io server disconnect"]
    assert await io.of("/other").fetch_sockets() == []
    await io.disconnect_sockets()
    assert (await b.next_event("disconnect")).args == ["io server disconnect"]
    with trio.fail_after(5):
        while (io.stats()["rooms"], io.stats()["sockets"]) != (0, 0):
            await trio.sleep(0.01)
    reasons = {sid: [r for _, r, _ in app.events(sid)] for sid in (a.sid, b.sid, c.sid)}
    assert reasons == {sid: ["server namespace disconnect"] * 2 for sid in reasons}


async def test_emit_with_ack_to_a_room(start_server, node, py_client):
    io, _ = make_server()
    srv = await start_server(io)
    a = await node.connect(srv.url, transports=WS)
    b = await node.connect(srv.url)
    p = await py_client(ack=lambda event, ns, args: ("py", args[0]))
    await p.connect(srv.url, transports=WS)
    out = await node.connect(srv.url, transports=WS)   # not in the room
    for s in (a, b):
        await s.emit_with_ack("join", "room")
    await p.call("join", "room")

    replies = await io.to("room").emit_with_ack("question", 42, timeout=5)
    assert sorted(map(repr, replies)) == sorted(map(repr, [
        {"echo": [42]}, {"echo": [42]}, ("py", 42)]))
    assert count(node, "question", out) == 0

    # nobody in the room: no replies, no waiting
    assert await io.to("empty").emit_with_ack("question", 1, timeout=5) == []

    # one socket that never answers: AckTimeout after the timeout, with the replies that came
    silent = await node.connect(srv.url, transports=WS, auto_ack=False)
    await silent.emit_with_ack("join", "room")
    with trio.fail_after(5):
        with pytest.raises(roomd.AckTimeout) as info:
            await io.to("room").emit_with_ack("question", 7, timeout=0.5)
    assert sorted(map(repr, info.value.replies)) == sorted(map(repr, [
        {"echo": [7]}, {"echo": [7]}, ("py", 7)]))
    assert (await silent.next_event("question")).with_ack

    # a single socket's emit_with_ack: the value of the client's ack
    server_a = io.sockets.sockets[a.sid]
    assert await server_a.emit_with_ack("one", "x", timeout=5) == {"echo": ["x"]}
    with pytest.raises(roomd.AckTimeout):
        await io.sockets.sockets[silent.sid].emit_with_ack("one", timeout=0.3)


async def test_volatile_reaches_ready_sockets(start_server, node, py_client):
    io, _ = make_server()
    srv = await start_server(io)
    a = await node.connect(srv.url, transports=WS)
    p = await py_client()
    await p.connect(srv.url, transports=WS)
    await a.emit_with_ack("join", "room")

    await io.volatile.emit("v", 1)
    assert (await a.next_event("v")).args == [1]
    assert (await p.next_event("v")).args == [1]
    await io.to("room").volatile.emit("v", 2)
    await io.volatile.to("room").emit("v", 3)
    assert (await a.next_event("v")).args == [2]
    assert (await a.next_event("v")).args == [3]
    await marker(io, (node, a), (p, None))
    assert count(p, "v") == 1


async def test_on_any_sees_every_client_event(start_server, node, py_client):
    io, _ = make_server()
    seen: list[tuple] = []

    @io.on("connection")
    def on_connection(socket):
        socket.on_any(lambda event, *args: seen.append((socket.id, event, list(args))))

        @socket.on("echo")
        def echo(*args):
            return list(args)

    srv = await start_server(io)
    a = await node.connect(srv.url, transports=WS)
    p = await py_client()
    await p.connect(srv.url, transports=WS)

    await a.emit("free", 1, "two")
    assert await a.emit_with_ack("echo", {"k": b"\x01\x02"}) == [[{"k": b"\x01\x02"}]]
    assert await p.call("join", "r") == [sorted([p.sid, "r"])]
    await p.emit("bin", b"\xff")
    with trio.fail_after(5):
        while len(seen) < 4:
            await trio.sleep(0.01)
    assert [s for s in seen if s[0] == a.sid] == [
        (a.sid, "free", [1, "two"]), (a.sid, "echo", [{"k": b"\x01\x02"}])]
    assert [s for s in seen if s[0] == p.sid] == [
        (p.sid, "join", ["r"]), (p.sid, "bin", [b"\xff"])]
