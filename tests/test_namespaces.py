"""Namespaces, with the stock clients over real sockets (issue 3).

Own handlers and own rooms per namespace, middlewares (raising, or passing an error to
``next``) whose refusal the client sees as CONNECT_ERROR with message and data, and dynamic
namespaces declared by a regular expression or a predicate.
"""

from __future__ import annotations

import re

import pytest
import trio
from harness import AckTimeout, ConnectError
from rooms_app import RoomsApp, count, make_server

import roomd

WS = ["websocket"]


async def marker(io, namespace: str, *socks) -> None:
    await io.of(namespace).emit("marker")
    for s in socks:
        await s.next_event("marker")


async def test_same_named_rooms_are_isolated(start_server, node, py_client):
    io, _ = make_server("/orders", "/users")
    srv = await start_server(io)
    # one node connection multiplexing both namespaces, and a second one
    o1 = await node.connect(srv.url, "/orders", transports=WS)
    u1 = await node.connect(srv.url, "/users", transports=WS)
    o2 = await node.connect(srv.url, "/orders", transports=WS)
    connection = io.of("/orders").sockets[o1.sid]._connection
    assert connection is io.of("/users").sockets[u1.sid]._connection
    p = await py_client()
    await p.connect(srv.url, ["/orders", "/users"], transports=WS)
    po, pu = p.get_sid("/orders"), p.get_sid("/users")

    for s in (o1, u1, o2):
        await s.emit_with_ack("join", "room1")
    await p.call("join", "room1", namespace="/orders")
    await p.call("join", "room1", namespace="/users")
    snap = {(r["namespace"], r["room"]): r["members"] for r in await io.rooms_snapshot()
            if not r["private"]}
    assert snap == {("/orders", "room1"): sorted([o1.sid, o2.sid, po]),
                    ("/users", "room1"): sorted([u1.sid, pu])}

    await io.of("/orders").to("room1").emit("ev", "orders")
    await io.of("/users").to("room1").emit("ev", "users")
    await io.to("room1").emit("ev", "main")  # "/" has no room1: nobody
    assert (await o1.next_event("ev")).args == ["orders"]
    assert (await o2.next_event("ev")).args == ["orders"]
    assert (await u1.next_event("ev")).args == ["users"]
    assert (await p.next_event("ev", namespace="/orders")).args == ["orders"]
    assert (await p.next_event("ev", namespace="/users")).args == ["users"]
    # socket.to in /orders stays in /orders
    assert await o1.emit_with_ack("to", "room1", "hi", 1) == ["ok"]
    assert (await o2.next_event("hi")).args == [1]
    assert (await p.next_event("hi", namespace="/orders")).args == [1]
    await marker(io, "/orders", o1, o2)
    await marker(io, "/users", u1)
    assert count(node, "ev", o1) == count(node, "ev", o2) == count(node, "ev", u1) == 1
    assert count(node, "hi", u1) == count(node, "hi", o1) == 0
    assert [ev.namespace for ev in p.inbox.all if ev.name in ("ev", "hi")].count("/users") == 1

    # leaving room1 in /orders does not touch /users
    await io.of("/orders").sockets_leave("room1")
    assert [r for r in await io.rooms_snapshot() if not r["private"]] == [
        {"namespace": "/users", "room": "room1", "members": sorted([u1.sid, pu]),
         "private": False}]
    assert {s.id for s in await io.of("/users").to("room1").fetch_sockets()} == {u1.sid, pu}


async def test_each_namespace_has_its_own_handlers(start_server, node):
    io = roomd.Server()
    io.of("/orders").on("whoami", lambda socket: ("orders", socket.namespace.name))
    io.of("/users").on("whoami", lambda socket: ("users", socket.namespace.name))
    srv = await start_server(io)
    o = await node.connect(srv.url, "/orders", transports=WS)
    u = await node.connect(srv.url, "/users", transports=WS)
    m = await node.connect(srv.url, "/", transports=WS)
    assert await o.emit_with_ack("whoami") == ["orders", "/orders"]
    assert await u.emit_with_ack("whoami") == ["users", "/users"]
    with pytest.raises(AckTimeout):  # no handler in "/": no ack
        await m.emit_with_ack("whoami", timeout=0.5)


async def test_middleware_refusal_reaches_node_with_message_and_data(start_server, node):
    io, _ = make_server("/orders", "/public")
    calls: list[str] = []

    @io.of("/orders").use
    def check_token(socket):
        calls.append(socket.namespace.name)
        if socket.handshake.auth.get("token") != "s3cret":
            raise roomd.ConnectRefused("not authorized", {"code": 401, "hint": ["token"]})
        socket.data["user"] = "authorized"

    srv = await start_server(io)
    with pytest.raises(ConnectError) as info:
        await node.connect(srv.url, "/orders", transports=WS, auth={"token": "wrong"})
    assert info.value.message == "not authorized"
    assert info.value.data == {"code": 401, "hint": ["token"]}
    ev = await node.next_event("connect_error")
    assert ev.args == ["not authorized", {"code": 401, "hint": ["token"]}]

    # the same connection may still use namespaces without that middleware
    pub = await node.connect(srv.url, "/public", transports=WS)
    with pytest.raises(ConnectError) as info:
        await node.connect(srv.url, "/orders", transports=WS)
    assert info.value.message == "not authorized"
    assert await pub.emit_with_ack("rooms") == [[pub.sid]]

    ok = await node.connect(srv.url, "/orders", transports=WS, auth={"token": "s3cret"})
    (fetched,) = await io.of("/orders").fetch_sockets()
    assert fetched.id == ok.sid and fetched.data == {"user": "authorized"}
    assert calls == ["/orders"] * 3
    assert io.stats()["sockets"] == 2  # refused sockets were never registered


async def test_middleware_next_error_and_chain(start_server, node, py_client):
    io = roomd.Server()
    nsp = io.of("/chain")
    order: list[str] = []

    @nsp.use
    async def first(socket, next):
        order.append("first")
        socket.data["first"] = True
        next()

    @nsp.use
    def second(socket, next):
        order.append("second")
        if socket.handshake.auth.get("deny"):
            next(Exception("go away"))
        else:
            next()

    @nsp.use
    async def third(socket):
        order.append("third")
        if socket.handshake.auth.get("deny_async"):
            raise roomd.ConnectRefused("later", "just a string")

    connected: list[dict] = []
    nsp.on("connection", lambda socket: connected.append(dict(socket.data)))
    srv = await start_server(io)

    with pytest.raises(ConnectError) as info:
        await node.connect(srv.url, "/chain", transports=WS, auth={"deny": 1})
    assert info.value.message == "go away"
    assert info.value.data is None
    assert order == ["first", "second"]  # a refusal stops the chain

    with pytest.raises(ConnectError) as info:
        await node.connect(srv.url, "/chain", transports=WS, auth={"deny_async": 1})
    assert (info.value.message, info.value.data) == ("later", "just a string")

    s = await node.connect(srv.url, "/chain", transports=WS)
    assert order == ["first", "second", "first", "second", "third", "first", "second", "third"]
    assert connected == [{"first": True}]
    assert s.sid in io.of("/chain").sockets

    # python-socketio sees the same CONNECT_ERROR
    p = await py_client()
    with pytest.raises(ConnectError):
        await p.connect(srv.url, ["/chain"], transports=WS, auth={"deny": 1}, timeout=3)
    ev = await p.next_event("connect_error", namespace="/chain")
    assert ev.args == [{"message": "go away"}]


async def test_io_use_guards_the_main_namespace(start_server, node, py_client):
    io, _ = make_server("/open")

    @io.use
    def main_only(socket):
        if socket.handshake.auth.get("user") != "ann":
            raise roomd.ConnectRefused("who are you?", {"allowed": ["ann"]})

    srv = await start_server(io)
    with pytest.raises(ConnectError) as info:
        await node.connect(srv.url, "/", transports=WS, auth={"user": "bob"})
    assert (info.value.message, info.value.data) == ("who are you?", {"allowed": ["ann"]})
    open_ = await node.connect(srv.url, "/open", transports=WS, auth={"user": "bob"})
    assert await open_.emit_with_ack("rooms") == [[open_.sid]]
    main = await node.connect(srv.url, "/", transports=WS, auth={"user": "ann"})
    assert [s.data for s in await io.fetch_sockets()] == [{"user": "ann"}]
    assert main.sid in io.sockets.sockets

    p = await py_client()
    with pytest.raises(ConnectError):
        await p.connect(srv.url, ["/"], transports=WS, auth={"user": "eve"}, timeout=3)
    ev = await p.next_event("connect_error", namespace="/")
    assert ev.args == [{"message": "who are you?", "data": {"allowed": ["ann"]}}]


async def test_unknown_namespace_is_refused(start_server, node):
    io, _ = make_server("/orders")
    io.of(re.compile(r"^/dyn-\w+$"))
    srv = await start_server(io)
    for name in ("/nope", "/dyn-", "/dyn-a/b", "/ORDERS"):
        with pytest.raises(ConnectError) as info:
            await node.connect(srv.url, name, transports=WS)
        assert info.value.message == "Invalid namespace"
    assert io.namespace_names() == ["/", "/orders"]


async def test_dynamic_namespaces_by_regex(start_server, node):
    io = roomd.Server()
    family = io.of(re.compile(r"^/dyn-\w+$"))
    app = RoomsApp()
    app.install(family)
    refused: list[str] = []

    @family.use
    def no_bob(socket):
        if socket.handshake.auth.get("user") == "bob":
            refused.append(socket.namespace.name)
            raise roomd.ConnectRefused("no bob here")

    srv = await start_server(io)
    assert io.namespace_names() == ["/"]
    assert family.children == {}

    a = await node.connect(srv.url, "/dyn-a", transports=WS)
    # created on the first connection, and kept
    assert io.namespace_names() == ["/", "/dyn-a"]
    child_a = io.of("/dyn-a")
    assert family.children == {"/dyn-a": child_a}
    assert [s.namespace for s in app.connected] == [child_a]
    a2 = await node.connect(srv.url, "/dyn-a", transports=WS)
    b = await node.connect(srv.url, "/dyn-b", transports=WS)
    assert io.namespace_names() == ["/", "/dyn-a", "/dyn-b"]
    assert io.of("/dyn-a") is child_a and set(child_a.sockets) == {a.sid, a2.sid}

    # the family's middleware applies to every child
    with pytest.raises(ConnectError) as info:
        await node.connect(srv.url, "/dyn-c", transports=WS, auth={"user": "bob"})
    assert info.value.message == "no bob here"
    assert refused == ["/dyn-c"]

    # each concrete namespace has its own rooms
    for s in (a, a2, b):
        assert await s.emit_with_ack("join", "room1")
    assert {(r["namespace"], tuple(r["members"])) for r in await io.rooms_snapshot()
            if r["room"] == "room1"} == {("/dyn-a", tuple(sorted([a.sid, a2.sid]))),
                                         ("/dyn-b", (b.sid,))}
    await io.of("/dyn-a").to("room1").emit("ev", "a only")
    assert (await a.next_event("ev")).args == ["a only"]
    assert (await a2.next_event("ev")).args == ["a only"]
    assert await a.emit_with_ack("to", "room1", "hi") == ["ok"]
    assert (await a2.next_event("hi")).args == []
    # the family as a target: every child that exists
    await family.to("room1").emit("ev", "all")
    for s in (a, a2, b):
        assert (await s.next_event("ev")).args == ["all"]
    assert {s.id for s in await family.fetch_sockets()} == {a.sid, a2.sid, b.sid}
    await io.of("/dyn-b").emit("marker")
    await b.next_event("marker")
    assert count(node, "ev", b) == 1 and count(node, "hi", b) == 0

    await family.except_("room1").disconnect_sockets()   # nobody
    await io.of("/dyn-a").disconnect_sockets()
    for s in (a, a2):
        assert (await s.next_event("disconnect")).args == ["io server disconnect"]
    assert {s.id for s in await family.fetch_sockets()} == {b.sid}


async def test_dynamic_namespaces_by_predicate(start_server, node, py_client):
    io = roomd.Server()
    asked: list[tuple] = []

    def tenant(name, auth):
        asked.append((name, auth))
        return name.startswith("/tenant-") and auth.get("key") == name[len("/tenant-"):]

    async def async_pred(name, auth):
        await trio.sleep(0)
        return name == "/async"

    fam = io.of(tenant)
    RoomsApp().install(fam)
    io.of(async_pred).on("whoami", lambda socket: socket.namespace.name)
    srv = await start_server(io)

    with pytest.raises(ConnectError) as info:
        await node.connect(srv.url, "/tenant-x", transports=WS, auth={"key": "y"})
    assert info.value.message == "Invalid namespace"
    assert "/tenant-x" not in io.namespace_names()
    x = await node.connect(srv.url, "/tenant-x", transports=WS, auth={"key": "x"})
    y = await node.connect(srv.url, "/tenant-y", transports=WS, auth={"key": "y"})
    assert asked[:3] == [("/tenant-x", {"key": "y"}), ("/tenant-x", {"key": "x"}),
                         ("/tenant-y", {"key": "y"})]
    assert set(fam.children) == {"/tenant-x", "/tenant-y"}
    # once created, the namespace exists: later connections are not re-asked
    x2 = await node.connect(srv.url, "/tenant-x", transports=WS, auth={"key": "whatever"})
    assert len(asked) == 3
    await x.emit_with_ack("join", "room1")
    await y.emit_with_ack("join", "room1")
    await io.of("/tenant-x").to("room1").emit("ev", 1)
    assert (await x.next_event("ev")).args == [1]
    await io.of("/tenant-y").emit("marker")
    await y.next_event("marker")
    assert count(node, "ev", y) == 0 and count(node, "ev", x2) == 0

    p = await py_client()
    await p.connect(srv.url, ["/async"], transports=WS)
    assert await p.call("whoami", namespace="/async") == ["/async"]
