"""The Socket.IO Admin UI's server side, spoken to by socket.io-client as the UI's page does
(login, session, config, all_sockets, server_stats, development-mode events, actions)."""

from __future__ import annotations

import bcrypt
import harness
import pytest
import trio

import roomd
from roomd.apps.admin_ui import AdminUI
from roomd.apps.relay import RelayApp
from roomd.ops.config import NamespaceConfig
from roomd.rooms.adapter import AdapterFactory

PASSWORD = "correct horse"
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
LOGIN = {"username": "admin", "password": PASSWORD}


async def next_about(sock, name: str, nsp: str, timeout: float = 10):
    """The next ``name`` event that is not about the /admin namespace itself."""
    with trio.fail_after(timeout):
        while True:
            ev = await sock.next_event(name, timeout=timeout)
            first = ev.args[0]
            if (first.get("nsp") if isinstance(first, dict) else first) == nsp:
                return ev


@pytest.fixture
def make(start_server):
    async def make(**options):
        io = roomd.Server()
        RelayApp(io, [NamespaceConfig(name="/"), NamespaceConfig(name="/chat")])
        ui = AdminUI(io, password_hash=HASH, **options)
        srv = await start_server(io)
        return srv, ui
    return make


async def test_login(make, node):
    srv, _ = await make()
    for auth in ({"username": "admin", "password": "wrong"}, {"username": "root",
                 "password": PASSWORD}, {}, {"sessionId": "0123456789abcdef"},
                 {"username": "admin", "password": "x" * 200}):
        with pytest.raises(harness.ConnectError, match="invalid credentials"):
            await node.connect(srv.url, "/admin", auth=auth, force_new=True)
    admin = await node.connect(srv.url, "/admin", auth=LOGIN, force_new=True)
    session = (await admin.next_event("session")).args[0]
    assert isinstance(session, str) and len(session) == 16
    # the UI reconnects with the session id alone
    again = await node.connect(srv.url, "/admin", auth={"sessionId": session}, force_new=True)
    await again.next_event("config")
    # the main namespace is not affected by the admin login
    await node.connect(srv.url, "/", force_new=True)


async def test_config_all_sockets_stats_and_live_updates(make, node):
    srv, ui = await make(server_id="node-a")
    a = await node.connect(srv.url, "/chat", transports=["websocket"])
    assert await a.emit_with_ack("join", "lobby")

    admin = await node.connect(srv.url, "/admin", auth=LOGIN, force_new=True)
    features = (await admin.next_event("config")).args[0]["supportedFeatures"]
    assert set(features) == {"EMIT", "JOIN", "LEAVE", "DISCONNECT", "MJOIN", "MLEAVE",
                             "MDISCONNECT", "AGGREGATED_EVENTS", "ALL_EVENTS"}
    sockets = (await admin.next_event("all_sockets")).args[0]
    mine = next(s for s in sockets if s["id"] == a.sid)
    assert mine["nsp"] == "/chat" and mine["transport"] == "websocket"
    assert sorted(mine["rooms"]) == sorted([a.sid, "lobby"])
    assert mine["handshake"]["address"] == "127.0.0.1" and mine["clientId"]
    assert any(s["nsp"] == "/admin" for s in sockets)

    stats = (await admin.next_event("server_stats")).args[0]
    assert stats["serverId"] == "node-a" and stats["clientsCount"] == 2
    assert {"name": "/chat", "socketsCount": 1} in stats["namespaces"]
    # and again, every 2 s, with the traffic of the interval
    later = (await admin.next_event("server_stats", timeout=10)).args[0]
    assert later["uptime"] > stats["uptime"]
    for event in later["aggregatedEvents"]:
        assert event["type"] in {"rawConnection", "rawDisconnection", "packetsIn",
                                 "packetsOut", "bytesIn", "bytesOut"} and event["count"] > 0

    # development mode: a new socket, its event, its room, its departure
    b = await node.connect(srv.url, "/", force_new=True)
    connected = await next_about(admin, "socket_connected", "/")
    assert connected.args[0]["id"] == b.sid and connected.args[0]["nsp"] == "/"
    assert await b.emit_with_ack("join", "r9")
    received = await admin.next_event("event_received")
    assert received.args[:3] == ["/", b.sid, ["join", "r9"]]
    joined = await next_about(admin, "room_joined", "/")
    assert joined.args[:3] == ["/", "r9", b.sid]
    await srv.io.to(b.sid).emit("direct", 1)
    sent = await admin.next_event("event_sent", timeout=10)
    assert sent.args[:3] == ["/", b.sid, ["direct", 1]]
    # socket_updated: an upgrade to WebSocket, and data the application set
    c = await node.connect(srv.url, "/", transports=["polling", "websocket"], force_new=True)
    assert (await next_about(admin, "socket_connected", "/")).args[0]["id"] == c.sid
    await node.wait_upgrade(c)
    srv.io.of("/").get_socket(c.sid).data["name"] = "carol"
    changes: dict = {}
    with trio.fail_after(10):
        while changes.get("transport") != "websocket" or changes.get("data") != {"name": "carol"}:
            update = (await admin.next_event("socket_updated", timeout=10)).args[0]
            if update["id"] == c.sid:
                changes.update(update)

    await b.disconnect()
    gone = await next_about(admin, "socket_disconnected", "/")
    assert gone.args[:3] == ["/", b.sid, "client namespace disconnect"]

    # with no admin client left, the event tap is closed again
    assert ui._tap_scope is not None
    await admin.disconnect()
    with trio.fail_after(5):
        while ui._tap_scope is not None:
            await trio.sleep(0.02)


async def test_actions(make, node):
    srv, _ = await make()
    a = await node.connect(srv.url, "/chat", transports=["websocket"])
    b = await node.connect(srv.url, "/chat", force_new=True)
    assert await a.emit_with_ack("join", "lobby")
    admin = await node.connect(srv.url, "/admin", auth=LOGIN, force_new=True)
    await admin.next_event("config")

    await admin.emit("emit", "/chat", "lobby", "hello", {"from": "ui"})
    assert (await a.next_event("hello")).args == [{"from": "ui"}]
    await b.no_event("hello")
    await admin.emit("emit", "/chat", None, "everyone")
    await b.next_event("everyone")

    await admin.emit("join", "/chat", "vip", b.sid)
    with trio.fail_after(5):
        while "vip" not in srv.io.of("/chat").sockets[b.sid].rooms:
            await trio.sleep(0.02)
    await admin.emit("leave", "/chat", "vip")  # no filter: every socket of /chat
    with trio.fail_after(5):
        while "vip" in srv.io.of("/chat").sockets[b.sid].rooms:
            await trio.sleep(0.02)

    # malformed actions are ignored; the admin connection stays
    await admin.emit("emit", "/nope", None, "x")
    await admin.emit("emit", "/chat", None, "disconnect")
    await admin.emit("emit", 5)
    await admin.emit("join", "/chat", 7)
    assert "/nope" not in srv.io.namespace_names()
    await admin.emit("_disconnect", "/chat", False, "lobby")
    assert (await a.next_event("disconnect")).args[0] == "io server disconnect"
    assert await admin.is_connected()
    assert await b.is_connected()


async def test_readonly(make, node):
    srv, _ = await make(readonly=True, mode="production")
    a = await node.connect(srv.url, "/", transports=["websocket"])
    admin = await node.connect(srv.url, "/admin", auth=LOGIN, force_new=True)
    features = (await admin.next_event("config")).args[0]["supportedFeatures"]
    assert features == ["AGGREGATED_EVENTS"]
    await admin.emit("emit", "/", None, "nope")
    await admin.emit("_disconnect", "/", True)
    await a.no_event("nope", wait=0.5)
    assert await a.is_connected()
    await admin.next_event("server_stats")
    await admin.no_event("all_sockets")


class ClusterLikeFactory(AdapterFactory):
    """Reports a cluster adapter (its adapters stay in memory: one node here)."""

    def status(self) -> dict:
        return {"adapter": "redis", "mode": "classic"}


async def test_clustered_node_reports_without_own_admin(start_server, node):
    """With a cluster adapter, admin pages may be connected to other nodes: this node
    follows its sockets and events even with no admin client of its own."""
    io = roomd.Server(adapter=ClusterLikeFactory())
    RelayApp(io, [NamespaceConfig(name="/")])
    ui = AdminUI(io, password_hash=HASH)
    srv = await start_server(io)
    with trio.fail_after(5):
        while ui._tap_scope is None:  # the event tap opens with nobody connected here
            await trio.sleep(0.02)
    a = await node.connect(srv.url, "/")
    assert await a.emit_with_ack("join", "lobby")
    with trio.fail_after(5):
        while ui._rooms.get(("/", a.sid)) != frozenset({a.sid, "lobby"}):
            await trio.sleep(0.05)


async def test_auth_off(start_server, node):
    io = roomd.Server()
    AdminUI(io, auth=False)
    srv = await start_server(io)
    admin = await node.connect(srv.url, "/admin")
    await admin.next_event("config")
    await admin.no_event("session")
    with pytest.raises(roomd.RoomdError, match="password hash"):
        AdminUI(roomd.Server())
