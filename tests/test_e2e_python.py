"""Issue 2, end to end: python-socketio's AsyncClient against roomd over real sockets,
over WebSocket and over long-polling (transports=["polling"]).

"/" and "/orders" on one Engine.IO session, emits with and without acks, binary both
ways and inside acks, server-to-client acks, the auth payload, a clean disconnect,
DISCONNECT of one namespace leaving the other working, and an unknown namespace refused
with "Invalid namespace".
"""

from __future__ import annotations

import pytest
import trio
from e2e_app import make_app
from harness import ConnectError, PyClient

BLOB = bytes(range(256)) * 4

TRANSPORTS = pytest.mark.parametrize("transports", [["websocket"], ["polling"]],
                                     ids=["websocket", "polling"])


async def _disconnect_namespace(client: PyClient, namespace: str) -> None:
    """Send DISCONNECT for one namespace, as the stock client does on ``disconnect()``
    (AsyncClient has no public per-namespace disconnect)."""
    from socketio import packet

    async def go() -> None:
        sio = client.sio
        await sio._send_packet(sio.packet_class(packet.DISCONNECT, namespace=namespace))
        sio.namespaces.pop(namespace, None)

    await client._call(go(), 5)


async def _wait_no_sessions(io, timeout: float = 5) -> None:
    with trio.fail_after(timeout):
        while io.engine.sessions or io.connections:
            await trio.sleep(0.02)


@TRANSPORTS
async def test_python_client_end_to_end(start_server, py_client, transports):
    io, log = make_app()
    srv = await start_server(io)
    p = await py_client()
    await p.connect(srv.url, ["/", "/orders"], transports=transports,
                    auth={"token": "py-secret"})
    assert p.transport() == transports[0]
    sid_root, sid_orders = p.get_sid("/"), p.get_sid("/orders")
    sa, sb = log.sockets[sid_root], log.sockets[sid_orders]
    # one Engine.IO session carries both namespaces
    assert sa._connection.session is sb._connection.session
    assert len(io.engine.sessions) == 1
    session = sa._connection.session
    assert session.transport == transports[0]
    assert sa.handshake.auth == {"token": "py-secret"}
    assert sb.handshake.auth == {"token": "py-secret"}
    who = (await p.call("whoami", namespace="/orders"))[0]
    assert who["auth"] == {"token": "py-secret"} and who["sid"] == sid_orders
    assert who["query"]["transport"] == transports[0]

    for ns, sid in (("/", sid_root), ("/orders", sid_orders)):
        await p.emit("note", 1, "two", {"three": [3.5, None, True]}, namespace=ns)
        assert (await log.wait("event", ns, sid)).args == [1, "two", {"three": [3.5, None, True]}]
        assert await p.call("echo", 1, "x", None, [2], namespace=ns) == [1, "x", None, [2]]
        assert await p.call("sum", 40, 2, namespace=ns) == [42]
        assert await p.call("kiss", BLOB, namespace=ns) == [b"ack:" + BLOB, {"nested": BLOB}]
        assert (await log.wait("binary", ns, sid)).args == [BLOB]
        server_sock = log.sockets[sid]
        await server_sock.emit("bin", BLOB, {"deep": [b"\x00", "text"]})
        ev = await p.next_event("bin", namespace=ns)
        assert ev.args == [BLOB, {"deep": [b"\x00", "text"]}]
        assert await server_sock.emit_with_ack("question", 7, b"\x01\x02", timeout=5) == \
            {"echo": [7, b"\x01\x02"]}

        assert await p.call("ask_back", 5, b"\x07", namespace=ns) == [{"echo": [5, b"\x07"]}]

    assert await p.call("place", "pizza", 2, namespace="/orders") == \
        ["placed", sid_orders, "pizza", 2]

    # DISCONNECT of /orders only: "/" keeps working on the same session
    await _disconnect_namespace(p, "/orders")
    assert (await log.wait("disconnect", "/orders", sid_orders)).args == \
        ["client namespace disconnect"]
    assert not session.closed
    assert await p.call("sum", 1, 2, namespace="/") == [3]
    assert await p.call("kiss", b"again", namespace="/") == [b"ack:again", {"nested": b"again"}]
    assert log.find("disconnect", sid=sid_root) == []

    # clean disconnect. Over WebSocket, python-engineio's disconnect() closes the socket
    # without flushing its send queue, so the DISCONNECT may never leave the client: the
    # server then sees the transport close.
    await p.disconnect()
    reason = (await log.wait("disconnect", "/", sid_root)).args[0]
    if transports == ["polling"]:
        assert reason == "client namespace disconnect"
    else:
        assert reason in ("client namespace disconnect", "transport close")
    await _wait_no_sessions(io)
    assert session.closed


@TRANSPORTS
async def test_python_client_unknown_namespace(start_server, py_client, transports):
    io, log = make_app()
    srv = await start_server(io)
    p = await py_client()
    with pytest.raises(ConnectError):
        await p.connect(srv.url, ["/nope"], transports=transports)
    ev = await p.next_event("connect_error", namespace="/nope")
    assert ev.args == [{"message": "Invalid namespace"}]
    # a healthy client on the same server is unaffected
    q = await py_client()
    await q.connect(srv.url, ["/"], transports=transports)
    assert await q.call("sum", 2, 3) == [5]
