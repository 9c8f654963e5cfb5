"""Issue 14: roomd nodes and a Node.js Socket.IO node share rooms through Redis (classic).

Each test runs a real redis-server, two roomd Servers in the test's trio loop (each with a
RedisAdapterFactory) and one Node.js Socket.IO server with @socket.io/redis-adapter
(tests/node/cluster_node.js), with stock socket.io-client sockets connected to each node.
Every cluster operation is checked from a roomd node and from the Node node. A marker
event emitted after the operation under test proves that nothing else arrived (a socket
receives packets in publication order from one publisher).
"""

from __future__ import annotations

import signal
from typing import Any

import pytest
import trio
from children import stop
from cluster_harness import NodePeer

import roomd
from roomd._errors import ClusterTimeout
from roomd.cluster import RedisAdapterFactory

WS = ["websocket"]
BYTES = b"\x00\x01\xfe\xff"


def make_roomd(url: str, *, mode: str = "classic", request_timeout: float = 5.0,
               key: str = "socket.io") -> roomd.Server:
    io = roomd.Server(adapter=RedisAdapterFactory(url, mode=mode, key=key,
                                                  request_timeout=request_timeout))

    @io.on("join")
    async def join(socket: Any, rooms: Any) -> list[str]:
        await socket.join(rooms)
        return sorted(socket.rooms)

    @io.on("connection")
    async def connection(socket: Any) -> None:
        socket.data["node"] = False

    @io.on_server_event("ping")
    async def ping(*args: Any) -> dict:
        return {"from": "roomd", "args": list(args)}

    return io


async def until(predicate: Any, timeout: float = 10, what: str = "condition") -> None:
    """Poll an async predicate until true (bounded)."""
    try:
        with trio.fail_after(timeout):
            while not await predicate():
                await trio.sleep(0.05)
    except trio.TooSlowError:
        raise AssertionError(f"{what} not reached within {timeout} s") from None


async def cluster_of(io_nodes: list[roomd.Server], peer: NodePeer | None, count: int) -> None:
    """Wait until every node counts ``count`` servers."""
    async def ready() -> bool:
        for io in io_nodes:
            if await io.sockets.adapter.server_count() != count:
                return False
        if peer is not None:
            if (await peer.command("serverCount"))["count"] != count:
                return False
        return True
    await until(ready, what=f"a cluster of {count}")


class Mixed:
    """Two roomd nodes (A, B), one Node.js node (N), a client socket on each."""

    def __init__(self, a: roomd.Server, b: roomd.Server, peer: NodePeer, urls: dict) -> None:
        self.a, self.b, self.peer, self.urls = a, b, peer, urls
        self.sockets: dict[str, Any] = {}


async def mixed(start_server: Any, node: Any, node_peer: Any, redis_url: str,
                mode: str = "classic", **kw: Any) -> Mixed:
    a = make_roomd(redis_url, mode=mode, **kw)
    b = make_roomd(redis_url, mode=mode, **kw)
    served_a = await start_server(a)
    served_b = await start_server(b)
    peer = await node_peer(redis_url, mode=mode)
    await cluster_of([a, b], peer, 3)
    m = Mixed(a, b, peer, {"a": served_a.url, "b": served_b.url, "n": peer.url})
    for name in ("a", "b", "n"):
        m.sockets[name] = await node.connect(m.urls[name], transports=WS, force_new=True)
    return m


async def join(sock: Any, *rooms: str) -> None:
    await sock.emit_with_ack("join", list(rooms))


async def marker(m: Mixed, *socks: Any) -> None:
    """From N (another publisher than A and B), wait for a marker on each socket."""
    for sock in socks:
        await m.peer.command("emit", target=NodePeer.target(rooms=[sock.sid]), event="marker")
        await sock.next_event("marker")


async def test_broadcast_both_directions_with_binary_except_and_volatile(
        start_server, node, node_peer, redis_server, py_client):
    m = await mixed(start_server, node, node_peer, redis_server.url)
    sa, sb, sn = m.sockets["a"], m.sockets["b"], m.sockets["n"]
    outsider = await node.connect(m.urls["b"], transports=WS, force_new=True)
    py = await py_client()  # python-socketio on roomd B, polling
    await py.connect(m.urls["b"], transports=["polling"])
    await py.call("join", ["room1"])
    for sock in (sa, sb, sn):
        await join(sock, "room1")
    await join(sb, "quiet")

    # roomd -> everyone in room1, binary included
    await m.a.to("room1").emit("hello", 1, {"bin": BYTES}, [BYTES])
    for sock in (sa, sb, sn):
        ev = await sock.next_event("hello")
        assert ev.args == [1, {"bin": BYTES}, [BYTES]]

    # Node -> room1 except "quiet", volatile
    assert (await py.next_event("hello")).args == [1, {"bin": BYTES}, [BYTES]]
    await m.peer.command("emit", target=NodePeer.target(rooms=["room1"], except_rooms=["quiet"],
                                                        volatile=True),
                         event="from-node", args=["x", BYTES])
    for sock in (sa, sn):
        assert (await sock.next_event("from-node")).args == ["x", BYTES]
    assert (await py.next_event("from-node")).args == ["x", BYTES]

    # roomd: several rooms (union, once each) except one
    await m.b.to("room1").to("quiet").except_(sn.sid).emit("union", "u")
    for sock in (sa, sb):
        assert (await sock.next_event("union")).args == ["u"]

    # volatile from roomd
    await m.b.volatile.to("room1").emit("vol-roomd", BYTES)
    for sock in (sa, sb, sn):
        assert (await sock.next_event("vol-roomd")).args == [BYTES]

    # everyone (no rooms) from the Node node
    await m.peer.command("emit", target=NodePeer.target(), event="all")
    for sock in (sa, sb, sn, outsider):
        await sock.next_event("all")

    await marker(m, sa, sb, sn, outsider)
    await sb.no_event("from-node", wait=0)  # in "quiet"
    await sn.no_event("union", wait=0)      # excluded by id
    await outsider.no_event("union", wait=0)
    await outsider.no_event("hello", wait=0)
    for sock in (sa, sb, sn):                # exactly once each
        await sock.no_event("hello", wait=0)


async def test_fetch_sockets_join_leave_disconnect_across_nodes(
        start_server, node, node_peer, redis_server):
    m = await mixed(start_server, node, node_peer, redis_server.url)
    sa, sb, sn = m.sockets["a"], m.sockets["b"], m.sockets["n"]
    for sock in (sa, sb, sn):
        await join(sock, "r")

    # from roomd: local Sockets and RemoteSockets with rooms, data and handshake
    found = {s.id: s for s in await m.a.in_("r").fetch_sockets()}
    assert set(found) == {sa.sid, sb.sid, sn.sid}
    assert found[sn.sid].data == {"node": True}
    assert found[sb.sid].data == {"node": False}
    assert set(found[sn.sid].rooms) == {sn.sid, "r"}
    assert found[sn.sid].handshake["headers"]["host"].startswith("127.0.0.1")
    assert "issued" in found[sb.sid].handshake

    # from Node: roomd sockets come back with their details
    reply = await m.peer.command("fetchSockets", target=NodePeer.target(rooms=["r"]))
    by_id = {s["id"]: s for s in reply["sockets"]}
    assert set(by_id) == {sa.sid, sb.sid, sn.sid}
    assert by_id[sa.sid]["data"] == {"node": False}
    assert sorted(by_id[sa.sid]["rooms"]) == sorted([sa.sid, "r"])
    assert by_id[sb.sid]["handshake"]["url"].startswith("/socket.io/")

    # sockets_join from roomd reaches Node's and the other roomd's sockets
    await m.a.in_("r").except_(sa.sid).sockets_join("joined")
    async def joined_everywhere() -> bool:
        rooms = (await m.peer.command("localRooms"))["rooms"]
        local_b = {r["room"]: r["members"] for r in await m.b.rooms_snapshot("/")}
        return rooms.get("joined") == [sn.sid] and local_b.get("joined") == [sb.sid]
    await until(joined_everywhere, what="sockets_join on every node")
    assert "joined" not in {r["room"] for r in await m.a.rooms_snapshot("/")}

    # socketsLeave from Node reaches roomd
    await m.peer.command("socketsLeave", target=NodePeer.target(rooms=["joined"]),
                         rooms=["joined"])
    async def left() -> bool:
        return "joined" not in {r["room"] for r in await m.b.rooms_snapshot("/")}
    await until(left, what="socketsLeave on roomd")

    # socketsJoin from Node, then a remote socket's join from roomd
    await m.peer.command("socketsJoin", target=NodePeer.target(rooms=[sb.sid]), rooms=["n1"])
    remote_n = [s for s in await m.a.fetch_sockets() if s.id == sn.sid][0]
    await remote_n.join("via-remote")
    async def both() -> bool:
        rooms = (await m.peer.command("localRooms"))["rooms"]
        local_b = {r["room"] for r in await m.b.rooms_snapshot("/")}
        return rooms.get("via-remote") == [sn.sid] and "n1" in local_b
    await until(both, what="remote joins")

    # disconnect_sockets from roomd disconnects the Node node's socket, and vice versa
    await m.a.in_(sn.sid).disconnect_sockets()
    assert (await sn.next_event("disconnect")).args == ["io server disconnect"]
    await m.peer.command("disconnectSockets", target=NodePeer.target(rooms=[sb.sid]))
    assert (await sb.next_event("disconnect")).args == ["io server disconnect"]
    assert await sa.is_connected()


async def test_server_side_emit_all_rooms_and_server_count(
        start_server, node, node_peer, redis_server):
    m = await mixed(start_server, node, node_peer, redis_server.url)
    await join(m.sockets["n"], "n-room")
    await join(m.sockets["b"], "b-room")

    assert await m.a.sockets.adapter.server_count() == 3
    assert (await m.peer.command("serverCount"))["count"] == 3

    # all rooms from roomd and from Node
    rooms = await m.a.sockets.adapter.all_rooms()
    assert {"n-room", "b-room", m.sockets["a"].sid, m.sockets["n"].sid} <= rooms
    node_rooms = set((await m.peer.command("allRooms"))["rooms"])
    assert {"n-room", "b-room", m.sockets["a"].sid} <= node_rooms

    # server-side emit without and with replies, from roomd
    # (requests are JSON in this protocol: bytes travel as JSON.stringify writes a Buffer)
    got: list[Any] = []
    m.b.on_server_event("note", lambda *args: got.append(args))
    await m.a.server_side_emit("note", 1, BYTES)
    as_json = {"type": "Buffer", "data": list(BYTES)}
    ev = await m.peer.server_event("note")
    assert ev.args == [1, as_json]
    await until(lambda: _true_when(bool(got)), what="roomd B's server event")
    assert got == [(1, as_json)]

    await m.peer.command("serverSideEmit", event="note", args=["from-node"])
    await until(lambda: _true_when(len(got) == 2), what="the Node node's server event")
    assert got[1] == ("from-node",)

    replies = await m.a.server_side_emit_with_ack("ping", "hi", timeout=5)
    assert sorted(replies, key=lambda r: r["from"]) == [
        {"from": "node", "args": ["hi"]}, {"from": "roomd", "args": ["hi"]}]

    # from Node, with acks: both roomd nodes answer
    reply = await m.peer.command("serverSideEmitWithAck", event="ping", args=["yo"])
    assert reply["args"] == [{"from": "roomd", "args": ["yo"]}] * 2


async def _true_when(value: bool) -> bool:
    return value


async def test_emit_with_ack_across_nodes(start_server, node, node_peer, redis_server):
    m = await mixed(start_server, node, node_peer, redis_server.url)
    sa, sb, sn = m.sockets["a"], m.sockets["b"], m.sockets["n"]
    for sock in (sa, sb, sn):
        await join(sock, "acks")

    replies = await m.a.to("acks").emit_with_ack("question", 42, timeout=5)
    assert sorted(map(str, replies)) == sorted(map(str, [{"echo": [42]}] * 3))

    reply = await m.peer.command("emitWithAck", target=NodePeer.target(rooms=["acks"]),
                                 event="question", args=["n", BYTES], timeout=5000)
    assert reply["args"] == [{"echo": ["n", BYTES]}] * 3

    # a socket that does not answer: partial results, an error, within the timeout
    silent = await node.connect(m.urls["b"], transports=WS, force_new=True, auto_ack=False)
    await join(silent, "acks")
    with trio.fail_after(5):
        with pytest.raises(roomd.AckTimeout) as info:
            await m.a.to("acks").emit_with_ack("question", 7, timeout=1)
    assert len(info.value.replies) == 3


async def test_emitter_publishes_into_roomd_rooms(start_server, node, node_peer, redis_server):
    a = make_roomd(redis_server.url)
    await start_server(a)
    emitter = await node_peer(redis_server.url, server=False)
    srv = a.listen_addresses[0]
    s1 = await node.connect(f"http://{srv}", transports=WS, force_new=True)
    s2 = await node.connect(f"http://{srv}", transports=WS, force_new=True)
    await join(s1, "news")
    await until(lambda: _count_is(a, 1), what="roomd subscribed")

    await emitter.command("emitter", op="emit", target=NodePeer.target(rooms=["news"]),
                          event="headline", args=["big", BYTES])
    assert (await s1.next_event("headline")).args == ["big", BYTES]
    await emitter.command("emitter", op="emit", target=NodePeer.target(except_rooms=["news"]),
                          event="others")
    assert (await s2.next_event("others")).args == []
    await emitter.command("emitter", op="socketsJoin", target=NodePeer.target(rooms=[s2.sid]),
                          rooms=["news"])
    await until(lambda: _in_room(a, "news", s2.sid), what="emitter socketsJoin")
    got: list[Any] = []
    a.on_server_event("from-emitter", lambda *args: got.append(args))
    await emitter.command("emitter", op="serverSideEmit", event="from-emitter", args=[1])
    await until(lambda: _true_when(bool(got)), what="emitter serverSideEmit")
    await emitter.command("emitter", op="socketsLeave", target=NodePeer.target(), rooms=["news"])
    await until(lambda: _not_room(a, "news"), what="emitter socketsLeave")
    await emitter.command("emitter", op="disconnectSockets",
                          target=NodePeer.target(rooms=[s1.sid]), close=True)
    # roomd says goodbye per namespace before it closes the connection
    assert (await s1.next_event("disconnect")).args in (["transport close"],
                                                         ["io server disconnect"])
    await s2.no_event("headline", wait=0)


async def _count_is(io: roomd.Server, count: int) -> bool:
    return await io.sockets.adapter.server_count() == count


async def _in_room(io: roomd.Server, room: str, sid: str) -> bool:
    return any(r["room"] == room and sid in r["members"] for r in await io.rooms_snapshot("/"))


async def _not_room(io: roomd.Server, room: str) -> bool:
    return all(r["room"] != room for r in await io.rooms_snapshot("/"))


async def test_silent_node_gives_partial_results_within_the_timeout(
        start_server, node, node_peer, redis_server):
    a = make_roomd(redis_server.url, request_timeout=1.0)
    await start_server(a)
    peer = await node_peer(redis_server.url)
    await cluster_of([a], peer, 2)
    sa = await node.connect(f"http://{a.listen_addresses[0]}", transports=WS, force_new=True)
    sn = await node.connect(peer.url, transports=WS, force_new=True)
    # A subscriber on the request channel that never answers: a hung node.
    async with trio.open_nursery() as nursery:
        proc = await nursery.start(_silent_subscriber, redis_server.port)
        await until(lambda: _count_is(a, 3), what="the silent node subscribed")
        with trio.fail_after(10), pytest.raises(ClusterTimeout) as info:  # 10 s: a hang
            await a.fetch_sockets()
        ids = {s.id for s in info.value.replies}
        assert ids == {sa.sid, sn.sid}
        with pytest.raises(ClusterTimeout) as info2:
            await a.sockets.adapter.all_rooms()
        assert sn.sid in info2.value.replies
        with pytest.raises(roomd.AckTimeout) as info3:
            await a.server_side_emit_with_ack("ping", timeout=1.5)
        assert info3.value.replies == [{"from": "node", "args": []}]
        proc.kill()
        nursery.cancel_scope.cancel()


async def _silent_subscriber(port: int, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    import subprocess

    proc = await trio.lowlevel.open_process(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(port), "subscribe", "socket.io-request#/#"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        task_status.started(proc)
        await proc.wait()
    finally:
        await stop(proc, signal.SIGKILL)


async def test_node_hung_then_killed_mid_request(start_server, node, node_peer, redis_server):
    """A real Node.js node stops answering (SIGSTOP), then dies (SIGKILL): the other nodes get
    partial results within request_timeout, then a whole cluster again."""
    a = make_roomd(redis_server.url, request_timeout=1.5)
    b = make_roomd(redis_server.url, request_timeout=1.5)
    srv_a, srv_b = await start_server(a), await start_server(b)
    peer = await node_peer(redis_server.url)
    await cluster_of([a, b], peer, 3)
    sa = await node.connect(srv_a.url, transports=WS, force_new=True)
    sb = await node.connect(srv_b.url, transports=WS, force_new=True)
    await node.connect(peer.url, transports=WS, force_new=True)
    for sock in (sa, sb):
        await join(sock, "r")

    peer.proc.send_signal(signal.SIGSTOP)
    try:
        # each one ends by its 1.5 s timeout; the 10 s bound only catches a hang
        with trio.fail_after(10), pytest.raises(ClusterTimeout, match="1 of 2 other node") as info:
            await a.fetch_sockets()
        partial = {s.id: s for s in info.value.replies}  # as Socket and RemoteSocket
        assert set(partial) == {sa.sid, sb.sid}
        assert isinstance(partial[sa.sid], roomd.Socket)
        assert isinstance(partial[sb.sid], roomd.RemoteSocket)
        assert partial[sb.sid].data == {"node": False}
        with trio.fail_after(10), pytest.raises(roomd.AckTimeout) as acks:
            await a.to("r").emit_with_ack("q", timeout=1.5)
        assert acks.value.replies == [{"echo": []}] * 2
        with trio.fail_after(10), pytest.raises(roomd.AckTimeout) as replies:
            await b.server_side_emit_with_ack("ping", timeout=1.5)
        assert replies.value.replies == [{"from": "roomd", "args": []}]
    finally:
        await peer.kill()
    status = a.adapter_factory.status()  # what roomd status and the metrics show
    assert status["request_timeouts"]["fetch_sockets"] == 1
    assert status["requests"]["fetch_sockets"] == 1
    assert status["requests"]["broadcast_with_ack"] == 1
    assert status["request_seconds"]["fetch_sockets"] > 0
    await cluster_of([a, b], None, 2)
    with trio.fail_after(2):
        assert {s.id for s in await a.fetch_sockets()} == {sa.sid, sb.sid}


async def test_namespaces_are_separate_across_nodes(start_server, node, node_peer, redis_server):
    a = make_roomd(redis_server.url)
    orders = a.of("/orders")

    @orders.on("join")
    async def join_orders(socket: Any, rooms: Any) -> list[str]:
        await socket.join(rooms)
        return sorted(socket.rooms)

    srv = await start_server(a)
    peer = await node_peer(redis_server.url, namespaces=("/orders",))
    await cluster_of([a], peer, 2)

    async def two_in_orders() -> bool:
        return await orders.adapter.server_count() == 2
    await until(two_in_orders, what="both nodes in /orders")
    in_orders = await node.connect(srv.url, "/orders", transports=WS, force_new=True)
    in_main = await node.connect(srv.url, "/", transports=WS, force_new=True)
    node_orders = await node.connect(peer.url, "/orders", transports=WS, force_new=True)
    await in_orders.emit_with_ack("join", ["r"])
    await in_main.emit_with_ack("join", ["r"])
    await node_orders.emit_with_ack("join", ["r"])

    await peer.command("emit", target=NodePeer.target(nsp="/orders", rooms=["r"]), event="o",
                       args=[BYTES])
    assert (await in_orders.next_event("o")).args == [BYTES]
    await orders.to("r").emit("from-roomd")
    await node_orders.next_event("from-roomd")
    ids = {s.id for s in await orders.fetch_sockets()}
    assert ids == {in_orders.sid, node_orders.sid}
    await marker_to(peer, "/", in_main)
    await in_main.no_event("o", wait=0)


async def marker_to(peer: NodePeer, nsp: str, sock: Any) -> None:
    await peer.command("emit", target=NodePeer.target(nsp=nsp, rooms=[sock.sid]), event="marker")
    await sock.next_event("marker")


async def test_dynamic_namespaces_join_the_cluster_when_created(start_server, node,
                                                               redis_server):
    import re

    nodes = []
    for _ in range(2):
        io = make_roomd(redis_server.url)
        io.of(re.compile(r"^/dyn-\d+$"))
        nodes.append(io)
    a, b = nodes
    srv_a, srv_b = await start_server(a), await start_server(b)
    on_a = await node.connect(srv_a.url, "/dyn-7", transports=WS, force_new=True)
    on_b = await node.connect(srv_b.url, "/dyn-7", transports=WS, force_new=True)
    dyn_a, dyn_b = a.get_namespace("/dyn-7"), b.get_namespace("/dyn-7")
    assert dyn_a is not None and dyn_b is not None

    async def both() -> bool:
        return await dyn_a.adapter.server_count() == 2
    await until(both, what="the dynamic namespace on both nodes")
    await dyn_b.emit("hi-dyn", 1)
    assert (await on_a.next_event("hi-dyn")).args == [1]
    assert (await on_b.next_event("hi-dyn")).args == [1]
    assert {s.id for s in await dyn_a.fetch_sockets()} == {on_a.sid, on_b.sid}


@pytest.mark.parametrize("mode", ["classic", "sharded"])
async def test_order_per_publisher(start_server, node, node_peer, redis_server, mode):
    """Many events from one publisher arrive in publication order on every other node
    (roomd batches them into pipelines; they must not be reordered)."""
    a = make_roomd(redis_server.url, mode=mode)
    srv = await start_server(a)
    peer = await node_peer(redis_server.url, mode=mode)
    await cluster_of([a], peer, 2)
    on_roomd = await node.connect(srv.url, transports=WS, force_new=True)
    on_node = await node.connect(peer.url, transports=WS, force_new=True)
    count = 300
    for i in range(count):
        await a.emit("seq", i)  # no rooms: the main channel
    got = [(await on_node.next_event("seq")).args[0] for _ in range(count)]
    assert got == list(range(count))
    await on_roomd.next_event("seq")  # and locally
    link = a.adapter_factory.link

    async def counted() -> bool:  # the counter moves once Redis has answered the pipeline
        return link.published >= count
    await until(counted, what="the publisher's count")
    assert link.dropped == 0


async def test_a_burst_faster_than_redis_is_not_dropped(start_server, node, node_peer,
                                                        redis_server):
    """More emits in a row than the publish queue holds: the emitting task waits for room
    while Redis is up (backpressure), nothing is dropped, order is kept."""
    from roomd.cluster.link import PUBLISH_QUEUE

    a = make_roomd(redis_server.url)
    b = make_roomd(redis_server.url)
    await start_server(a)
    srv_b = await start_server(b)
    await cluster_of([a, b], None, 2)
    sock = await node.connect(srv_b.url, transports=WS, force_new=True)
    await join(sock, "burst")
    count = PUBLISH_QUEUE + 2000
    for i in range(count):  # no checkpoint of its own: the queue fills up
        await a.to("nobody-here").emit("x", i)
    await a.to("burst").emit("last", count)
    assert (await sock.next_event("last", timeout=20)).args == [count]
    link = a.adapter_factory.link

    async def counted() -> bool:  # the counter moves once Redis has answered the pipeline
        return link.published == count + 1
    await until(counted, what="the publisher's count")
    assert link.dropped == 0
