"""The relay app (what ``roomd serve`` runs without --app), with the stock clients.

Client events ``join`` / ``leave`` (acked ``{"rooms": [...]}``) and ``publish`` (acked
``{"recipients": N}``), and every refusal as an ``{"error": "..."}`` ack, never silence.
The policies are the configuration's: ``roomd.ops.config.NamespaceConfig``, read from the TOML
form of issue 3.
"""

from __future__ import annotations

import textwrap

import pytest
from harness import ConnectError
from rooms_app import count

import roomd
from roomd.apps.relay import MAX_ROOM_NAME, MAX_ROOMS_PER_REQUEST, RelayApp
from roomd.ops.config import Config, NamespaceConfig, load_config

WS = ["websocket"]

CONFIG = """
[[namespaces]]
name = "/"

[[namespaces]]
name = "/orders"
client_join = true
client_publish = true
rooms = ["order:*", "lobby"]   # glob patterns a client may join or publish to

[[namespaces]]
name = "/readonly"
client_publish = false

[[namespaces]]
name = "/locked"
client_join = false
"""


@pytest.fixture
def policies(tmp_path):
    path = tmp_path / "roomd.toml"
    path.write_text(textwrap.dedent(CONFIG))
    namespaces = load_config(str(path)).namespaces
    assert namespaces == (
        NamespaceConfig(name="/"),
        NamespaceConfig(name="/orders", client_join=True, client_leave=True, client_publish=True,
                        rooms=("order:*", "lobby")),
        NamespaceConfig(name="/readonly", client_publish=False),
        NamespaceConfig(name="/locked", client_join=False, client_leave=False),
    )
    return namespaces


async def relay_server(start_server, policies, **kw):
    io = roomd.Server(**kw)
    relay = RelayApp(io, policies)
    srv = await start_server(io)
    return io, relay, srv


async def test_defaults_without_config(start_server, node, py_client):
    """No config: namespace "/" only; join, leave and publish allowed; any room name."""
    assert Config().namespaces == (NamespaceConfig(name="/"),)
    io, _, srv = await relay_server(start_server, Config().namespaces)
    a = await node.connect(srv.url, transports=WS)
    p = await py_client()
    await p.connect(srv.url, transports=WS)
    assert await a.emit_with_ack("join", "any room at all ✓") == [
        {"rooms": sorted([a.sid, "any room at all ✓"])}]
    assert await p.call("join", ["any room at all ✓", "x"]) == [
        {"rooms": sorted([p.sid, "any room at all ✓", "x"])}]
    assert await p.call("publish", "any room at all ✓", "chat", "hello") == [{"recipients": 1}]
    assert (await a.next_event("chat")).args == ["hello"]
    assert await a.emit_with_ack("leave", "any room at all ✓") == [{"rooms": [a.sid]}]
    with pytest.raises(ConnectError) as info:  # not configured
        await node.connect(srv.url, "/orders", transports=WS)
    assert info.value.message == "Invalid namespace"


async def test_join_and_leave_with_acks(start_server, node, py_client, policies):
    io, _, srv = await relay_server(start_server, policies)
    a = await node.connect(srv.url, "/orders", transports=WS)
    assert await a.emit_with_ack("join", "order:1") == [{"rooms": sorted([a.sid, "order:1"])}]
    assert await a.emit_with_ack("join", ["order:2", "lobby"]) == [
        {"rooms": sorted([a.sid, "order:1", "order:2", "lobby"])}]
    assert io.of("/orders").sockets[a.sid].rooms == {a.sid, "order:1", "order:2", "lobby"}
    assert await a.emit_with_ack("leave", "order:1") == [
        {"rooms": sorted([a.sid, "order:2", "lobby"])}]
    assert await a.emit_with_ack("leave", ["order:2", "lobby", "order:9"]) == [{"rooms": [a.sid]}]
    assert await io.rooms_snapshot("/orders") == [
        {"namespace": "/orders", "room": a.sid, "members": [a.sid], "private": True}]

    p = await py_client()
    await p.connect(srv.url, ["/orders"], transports=WS)
    sid = p.get_sid("/orders")
    assert await p.call("join", "lobby", namespace="/orders") == [
        {"rooms": sorted([sid, "lobby"])}]
    assert await p.call("leave", "lobby", namespace="/orders") == [{"rooms": [sid]}]


async def test_join_refusals(start_server, node, policies):
    io, _, srv = await relay_server(start_server, policies)
    a = await node.connect(srv.url, "/orders", transports=WS)
    b = await node.connect(srv.url, "/orders", transports=WS)
    m1 = await node.connect(srv.url, "/", transports=WS)
    m2 = await node.connect(srv.url, "/", transports=WS)

    # a room name outside the configured patterns; a list is all or nothing
    assert await a.emit_with_ack("join", "secret") == [
        {"error": "room 'secret' is not allowed in /orders"}]
    assert await a.emit_with_ack("join", ["order:1", "admin"]) == [
        {"error": "room 'admin' is not allowed in /orders"}]
    assert await a.emit_with_ack("join", "order") == [
        {"error": "room 'order' is not allowed in /orders"}]
    # another socket's private room, even where every name is allowed
    assert await m1.emit_with_ack("join", m2.sid) == [
        {"error": f"room {m2.sid!r} is a socket's private room"}]
    assert await a.emit_with_ack("join", b.sid) == [
        {"error": f"room {b.sid!r} is not allowed in /orders"}]
    assert await m1.emit_with_ack("join", m1.sid) == [{"rooms": [m1.sid]}]  # one's own: fine
    # one's own room cannot be left
    assert await m1.emit_with_ack("leave", m1.sid) == [
        {"error": "a socket cannot leave its own room"}]
    assert io.of("/").sockets[m1.sid].rooms == {m1.sid}
    assert io.of("/orders").sockets[a.sid].rooms == {a.sid}
    assert io.stats()["rooms"] == 0

    # join / leave disabled by configuration
    locked = await node.connect(srv.url, "/locked", transports=WS)
    assert await locked.emit_with_ack("join", "r") == [
        {"error": "joining rooms is not allowed in /locked"}]
    assert await locked.emit_with_ack("leave", "r") == [
        {"error": "leaving rooms is not allowed in /locked"}]
    assert await locked.emit_with_ack("publish", locked.sid, "ev") == [{"recipients": 0}]


ROOMS_ERROR = "rooms must be a room name or a non-empty list of room names"
LENGTH_ERROR = f"room names must be 1 to {MAX_ROOM_NAME} characters"


@pytest.mark.parametrize(("event", "args", "error"), [
    ("join", [], ROOMS_ERROR),
    ("join", [None], ROOMS_ERROR),
    ("join", [42], ROOMS_ERROR),
    ("join", [[]], ROOMS_ERROR),
    ("join", [["ok", 5]], ROOMS_ERROR),
    ("join", [{"room": "x"}], ROOMS_ERROR),
    ("join", [""], LENGTH_ERROR),
    ("join", ["x" * (MAX_ROOM_NAME + 1)], LENGTH_ERROR),
    ("join", [[f"r{i}" for i in range(MAX_ROOMS_PER_REQUEST + 1)]],
     f"at most {MAX_ROOMS_PER_REQUEST} rooms per request"),
    ("leave", [], ROOMS_ERROR),
    ("leave", [7], ROOMS_ERROR),
    ("publish", [], ROOMS_ERROR),
    ("publish", [["r", None], "ev"], ROOMS_ERROR),
    ("publish", ["r"], "the event name must be a non-empty string and not reserved"),
    ("publish", ["r", 5], "the event name must be a non-empty string and not reserved"),
    ("publish", ["r", ""], "the event name must be a non-empty string and not reserved"),
    ("publish", ["r", "disconnect"], "the event name must be a non-empty string and not reserved"),
    ("publish", ["r", "connect"], "the event name must be a non-empty string and not reserved"),
])
async def test_bad_arguments_get_an_error_ack(start_server, node, event, args, error):
    io, _, srv = await relay_server(start_server, [NamespaceConfig(name="/")])
    a = await node.connect(srv.url, transports=WS)
    b = await node.connect(srv.url, transports=WS)
    await b.emit_with_ack("join", "r")
    assert await a.emit_with_ack(event, *args) == [{"error": error}]
    assert io.sockets.sockets[a.sid].rooms == {a.sid}
    await io.emit("marker")
    await b.next_event("marker")
    assert [ev.name for ev in node.inbox.all if ev.sock == b.handle and ev.name != "connect"] \
        == ["marker"]


async def test_publish_to_rooms_except_the_sender(start_server, node, py_client, policies):
    io, _, srv = await relay_server(start_server, policies)
    a = await node.connect(srv.url, "/orders", transports=WS)
    b = await node.connect(srv.url, "/orders", transports=WS)
    c = await node.connect(srv.url, "/orders")               # polling, upgraded
    d = await node.connect(srv.url, "/orders", transports=WS)
    outsider = await node.connect(srv.url, "/orders", transports=WS)
    main = await node.connect(srv.url, "/", transports=WS)    # same room name, other namespace
    p = await py_client()
    await p.connect(srv.url, ["/orders"], transports=WS)
    for s in (a, b, c):
        await s.emit_with_ack("join", "order:1")
    await d.emit_with_ack("join", "lobby")
    await p.call("join", ["order:1", "lobby"], namespace="/orders")
    await main.emit_with_ack("join", "order:1")

    assert await a.emit_with_ack("publish", "order:1", "chat", "hi", {"n": 1}) == [
        {"recipients": 3}]
    for s in (b, c):
        ev = await s.next_event("chat")
        assert ev.args == ["hi", {"n": 1}] and not ev.with_ack
    assert (await p.next_event("chat", namespace="/orders")).args == ["hi", {"n": 1}]

    # a list of rooms is a union: each recipient once; binary arguments go through
    assert await p.call("publish", ["order:1", "lobby"], "bin", b"\x00\xff", namespace="/orders") \
        == [{"recipients": 4}]
    for s in (a, b, c, d):
        assert (await s.next_event("bin")).args == [b"\x00\xff"]

    # without an ack the event is still delivered
    await d.emit("publish", "lobby", "quiet", 1)
    assert (await p.next_event("quiet", namespace="/orders")).args == [1]
    # publishing to a room one is not in is allowed (the sender is excluded anyway)
    assert await outsider.emit_with_ack("publish", "lobby", "from-outside") == [
        {"recipients": 2}]
    assert (await d.next_event("from-outside")).args == []
    # nobody there
    assert await a.emit_with_ack("publish", "order:404", "chat") == [{"recipients": 0}]

    # refusals: a room outside the patterns
    assert await a.emit_with_ack("publish", ["order:1", "secret"], "chat", "x") == [
        {"error": "room 'secret' is not allowed in /orders"}]

    await io.of("/orders").emit("marker")
    for s in (a, b, c, d, outsider):
        await s.next_event("marker")
    await p.next_event("marker", namespace="/orders")
    assert count(node, "chat", a) == 0
    assert count(node, "chat", d) == 0
    assert count(node, "chat", b) == count(node, "chat", c) == 1
    assert count(node, "bin", outsider) == 0 and count(node, "chat", outsider) == 0
    assert count(p, "bin") == 0 and count(p, "quiet") == 1 and count(p, "from-outside") == 1
    await io.emit("marker")
    await main.next_event("marker")
    assert count(node, "chat", main) == 0


async def test_publish_disabled(start_server, node, py_client, policies):
    io, _, srv = await relay_server(start_server, policies)
    a = await node.connect(srv.url, "/readonly", transports=WS)
    b = await node.connect(srv.url, "/readonly", transports=WS)
    assert await a.emit_with_ack("join", "room") == [{"rooms": sorted([a.sid, "room"])}]
    assert await b.emit_with_ack("join", "room") == [{"rooms": sorted([b.sid, "room"])}]
    assert await a.emit_with_ack("publish", "room", "chat", "x") == [
        {"error": "publishing is not allowed in /readonly"}]
    p = await py_client()
    await p.connect(srv.url, ["/readonly"], transports=WS)
    assert await p.call("publish", "room", "chat", namespace="/readonly") == [
        {"error": "publishing is not allowed in /readonly"}]
    # the server itself may still emit there
    await io.of("/readonly").to("room").emit("chat", "from server")
    assert (await b.next_event("chat")).args == ["from server"]
    await b.no_event("chat", wait=0.2)


async def test_update_policies(start_server, node, policies):
    io, relay, srv = await relay_server(start_server, policies)
    a = await node.connect(srv.url, "/orders", transports=WS)
    ro = await node.connect(srv.url, "/readonly", transports=WS)
    main = await node.connect(srv.url, "/", transports=WS)  # multiplexed with ro
    assert await a.emit_with_ack("join", "lobby") == [{"rooms": sorted([a.sid, "lobby"])}]
    assert await ro.emit_with_ack("join", "r") == [{"rooms": sorted([ro.sid, "r"])}]
    added, removed = await relay.update([
        NamespaceConfig(name="/"),
        NamespaceConfig(name="/orders", client_publish=False, rooms=("lobby",)),
        NamespaceConfig(name="/new")])
    assert (added, removed) == (["/new"], ["/readonly", "/locked"])
    # changed policies apply to the next request; rooms are kept
    assert await a.emit_with_ack("join", "order:1") == [
        {"error": "room 'order:1' is not allowed in /orders"}]
    assert await a.emit_with_ack("publish", "lobby", "x") == [
        {"error": "publishing is not allowed in /orders"}]
    assert io.of("/orders").sockets[a.sid].rooms == {a.sid, "lobby"}
    # a namespace dropped from the configuration no longer exists: its sockets are told and
    # disconnected (the other namespace of the same connection stays), new ones refused
    assert (await ro.next_event("disconnect")).args == ["io server disconnect"]
    assert await main.is_connected() and await a.is_connected()
    assert io.of("/readonly").sockets == {}
    assert relay.serves("/orders") and relay.serves("/new") and not relay.serves("/readonly")
    for name in ("/readonly", "/locked"):
        with pytest.raises(ConnectError) as info:
            await node.connect(srv.url, name, transports=WS)
        assert info.value.message == "Invalid namespace"
    # a new namespace is served at once
    n = await node.connect(srv.url, "/new", transports=WS)
    assert await n.emit_with_ack("join", "x") == [{"rooms": sorted([n.sid, "x"])}]
    # and a dropped one comes back when the configuration lists it again
    assert await relay.update(policies) == (["/readonly", "/locked"], ["/new"])
    ro2 = await node.connect(srv.url, "/readonly", transports=WS, force_new=True)
    assert await ro2.emit_with_ack("publish", "r", "x") == [
        {"error": "publishing is not allowed in /readonly"}]


async def test_unlisted_main_namespace_does_not_exist(start_server, node, py_client):
    """The Server always has "/": without it in the configuration, the relay refuses it."""
    _, relay, srv = await relay_server(start_server, [NamespaceConfig(name="/orders")])
    with pytest.raises(ConnectError) as info:
        await node.connect(srv.url, "/", transports=WS)
    assert info.value.message == "Invalid namespace"
    orders = await node.connect(srv.url, "/orders", transports=WS, force_new=True)
    assert await orders.emit_with_ack("join", "r") == [{"rooms": sorted([orders.sid, "r"])}]
    assert not relay.serves("/") and relay.serves("/orders")


@pytest.mark.parametrize("allowed", [False, True])
async def test_publish_to_another_sockets_private_room(start_server, node, allowed):
    """Joining another socket's own room is always refused; publishing to it (a direct
    message) only where publish_to_sockets allows it, and then the room patterns do not
    apply to socket ids."""
    policies = [NamespaceConfig(name="/", publish_to_sockets=allowed),  # every name allowed
                NamespaceConfig(name="/strict", rooms=("lobby",), publish_to_sockets=allowed)]
    _, _, srv = await relay_server(start_server, policies)
    for namespace in ("/", "/strict"):
        a = await node.connect(srv.url, namespace, transports=WS, force_new=True)
        b = await node.connect(srv.url, namespace, transports=WS, force_new=True)
        c = await node.connect(srv.url, namespace, transports=WS, force_new=True)
        refused = (f"room {b.sid!r} is a socket's private room" if namespace == "/" else
                   f"room {b.sid!r} is not allowed in /strict")
        assert await a.emit_with_ack("join", b.sid) == [{"error": refused}]
        answer = await a.emit_with_ack("publish", [b.sid], "dm", "psst")
        if allowed:
            assert answer == [{"recipients": 1}]
            assert (await b.next_event("dm")).args == ["psst"]
        else:
            if namespace == "/":
                refused += f"; publishing to sockets is not allowed in {namespace}"
            assert answer == [{"error": refused}]
            await b.no_event("dm", wait=0.2)
        await c.no_event("dm", wait=0)
        await a.no_event("dm", wait=0)
    # names that are not socket ids still follow the patterns
    assert await a.emit_with_ack("publish", "elsewhere", "dm", 1) == [
        {"error": "room 'elsewhere' is not allowed in /strict"}]
