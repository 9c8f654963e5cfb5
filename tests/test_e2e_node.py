"""Issue 2, end to end: socket.io-client (node) against roomd over real sockets.

Default options (polling first, then the upgrade to WebSocket) and WebSocket only:
"/" and "/orders" multiplexed on one Engine.IO session, emits with and without acks,
binary both ways and inside acks, server-to-client acks, the auth payload, a clean
disconnect, DISCONNECT of one namespace leaving the other working, and an unknown
namespace refused with "Invalid namespace".
"""

from __future__ import annotations

import pytest
import trio
from e2e_app import healthy_round_trip, make_app
from harness import ConnectError

BLOB = bytes(range(256)) * 4  # every byte value, 1 KiB


async def _wait_no_sessions(io, timeout: float = 5) -> None:
    with trio.fail_after(timeout):
        while io.engine.sessions or io.connections:
            await trio.sleep(0.02)


@pytest.mark.parametrize("transports, first_gone", [
    (None, "/orders"),           # socket.io-client's defaults: polling, then the upgrade
    (["websocket"], "/"),
], ids=["default-upgrade", "websocket-only"])
async def test_node_client_end_to_end(start_server, node, transports, first_gone):
    io, log = make_app()
    srv = await start_server(io)
    kw = {} if transports is None else {"transports": transports}

    a = await node.connect(srv.url, "/", auth={"token": "root-secret"}, **kw)
    b = await node.connect(srv.url, "/orders", auth={"token": "orders-secret", "n": 1}, **kw)

    sa = log.sockets[a.sid]
    if transports is None:
        # the Engine.IO handshake went over long-polling, then the upgrade happened
        assert sa.handshake.query["transport"] == "polling"
        assert await a.wait_upgrade() == "websocket"
        assert (await a.next_event("upgrade")).args == ["websocket"]
    else:
        assert a.transport == "websocket"
        assert sa.handshake.query["transport"] == "websocket"
        await a.no_event("upgrade", wait=0)
    assert await a.current_transport() == "websocket"
    assert await b.current_transport() == "websocket"

    # multiplexed: both namespaces ride one Engine.IO session, now on WebSocket
    sa, sb = log.sockets[a.sid], log.sockets[b.sid]
    assert sa.namespace.name == "/" and sb.namespace.name == "/orders"
    assert sa._connection.session is sb._connection.session
    assert len(io.engine.sessions) == 1
    assert sa._connection.session.transport == "websocket"

    # auth payload, readable in socket.handshake.auth
    assert sa.handshake.auth == {"token": "root-secret"}
    assert sb.handshake.auth == {"token": "orders-secret", "n": 1}
    who = (await b.emit_with_ack("whoami"))[0]
    assert who["auth"] == {"token": "orders-secret", "n": 1}
    assert who["sid"] == b.sid and who["ns"] == "/orders"
    assert who["address"] == "127.0.0.1"
    assert who["query"]["EIO"] == "4"

    for sock, ns in ((a, "/"), (b, "/orders")):
        # emit without an ack
        await sock.emit("note", 1, "two", {"three": [3.5, None, True]})
        seen = await log.wait("event", ns, sock.sid)
        assert seen.args == [1, "two", {"three": [3.5, None, True]}]
        # emits with acks: several ack args (tuple), one ack arg
        assert await sock.emit_with_ack("echo", 1, "x", None, [2, {"y": False}]) == \
            [1, "x", None, [2, {"y": False}]]
        assert await sock.emit_with_ack("sum", 40, 2) == [42]
        # binary client -> server, and binary inside the ack (top level and nested)
        assert await sock.emit_with_ack("kiss", BLOB) == [b"ack:" + BLOB, {"nested": BLOB}]
        assert (await log.wait("binary", ns, sock.sid)).args == [BLOB]
        # binary server -> client
        server_sock = log.sockets[sock.sid]
        await server_sock.emit("bin", BLOB, {"deep": [b"\x00", "text"]}, b"")
        ev = await sock.next_event("bin")
        assert ev.args == [BLOB, {"deep": [b"\x00", "text"]}, b""]
        # server -> client with an ack (client.js answers {"echo": args}), binary both ways
        assert await server_sock.emit_with_ack("question", 7, b"\x01\x02", timeout=5) == \
            {"echo": [7, b"\x01\x02"]}

        # a handler may await the client's ack before giving its own
        assert await sock.emit_with_ack("ask_back", 5, b"\x07") == [{"echo": [5, b"\x07"]}]

    # namespace-level handler (socket, *args)
    assert await b.emit_with_ack("place", "pizza", 2) == ["placed", b.sid, "pizza", 2]

    # DISCONNECT of one namespace leaves the other working on the same session
    gone, stays = (b, a) if first_gone == "/orders" else (a, b)
    session = sa._connection.session
    await gone.disconnect()
    assert (await log.wait("disconnect", first_gone, gone.sid)).args == \
        ["client namespace disconnect"]
    assert not session.closed
    await healthy_round_trip(stays)
    assert await stays.emit_with_ack("kiss", b"again") == [b"ack:again", {"nested": b"again"}]
    assert log.find("disconnect", sid=stays.sid) == []

    # a clean disconnect of the last namespace closes the connection
    await stays.disconnect()
    assert (await log.wait("disconnect", sid=stays.sid)).args == ["client namespace disconnect"]
    await _wait_no_sessions(io)
    assert session.closed


@pytest.mark.parametrize("transports", [None, ["websocket"]], ids=["default", "websocket"])
async def test_node_unknown_namespace(start_server, node, transports):
    io, log = make_app()
    srv = await start_server(io)
    kw = {} if transports is None else {"transports": transports}
    a = await node.connect(srv.url, "/", **kw)
    with pytest.raises(ConnectError) as info:
        await node.connect(srv.url, "/nope", **kw)  # multiplexed on a's connection
    assert info.value.message == "Invalid namespace"
    # the refusal concerns that namespace only
    await healthy_round_trip(a)
    assert len(io.engine.sessions) == 1
    # and on a fresh connection of its own
    with pytest.raises(ConnectError) as info:
        await node.connect(srv.url, "/nope", force_new=True, **kw)
    assert info.value.message == "Invalid namespace"
    await healthy_round_trip(a)


async def test_handler_waiting_for_an_ack_sees_the_disconnect(start_server, node):
    """A handler awaiting emit_with_ack learns at once that the client went away, and the
    disconnect handler runs without waiting for the ack timeout (30 s)."""
    io, log = make_app()
    srv = await start_server(io)
    a = await node.connect(srv.url, "/", transports=["websocket"], auto_ack=False)
    await a.emit("ask_back", 1)
    ev = await a.next_event("question")
    assert ev.with_ack and ev.args == [1]
    await a.disconnect()
    seen = await log.wait("ack_failed", "/", a.sid, timeout=3)
    assert "disconnected" in seen.args[0]
    assert (await log.wait("disconnect", "/", a.sid, timeout=3)).args == \
        ["client namespace disconnect"]
