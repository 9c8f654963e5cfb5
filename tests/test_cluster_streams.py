"""Issue 15, clustered: connection state recovery across nodes on Redis Streams.

roomd nodes with ``RedisAdapterFactory(mode="streams")`` and Node.js nodes with
@socket.io/redis-streams-adapter 0.3 share one stream. A socket.io-client with recovery
loses its transport (cut on the server side, by destroying its TCP connection), other
clients publish to its room meanwhile, and it reconnects to ANOTHER node within the
window: same id and rooms, ``recovered`` true, every missed event exactly once and in
order, the offsets being stream entry ids (roomd to roomd, roomd to Node.js, Node.js to
roomd, under continuous publishing too, and through two ``roomd serve`` relays). After
the window: a fresh session; a session is restored once, wherever. With Redis down, each
node keeps serving its own clients and recovers the sessions it kept itself. Also: the
session as Node stores it, requests and acks over pub/sub with Node.js, garbage in the
stream, a Redis Cluster refused.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import msgpack
import pytest
import trio
from cluster_harness import NodePeer
from daemon_proc import running_daemon, short_dir
from test_cluster_classic import until
from test_recovery import server_cut

import roomd
from roomd.cluster import RedisAdapterFactory

pytestmark = pytest.mark.deadline(120)

WS = ["websocket"]
RECONNECT = {"reconnection": True, "reconnectionDelay": 300, "reconnectionDelayMax": 300,
             "randomizationFactor": 0}
STREAM_ID = re.compile(r"^\d+-\d+$")


def make_roomd(url: str, window: float = 30) -> roomd.Server:
    io = roomd.Server(adapter=RedisAdapterFactory(url, mode="streams"),
                      ping_interval=0.5, ping_timeout=0.5,
                      connection_state_recovery={"max_disconnection_duration": window})

    @io.on("connection")
    async def connection(socket: roomd.Socket) -> None:
        if not socket.recovered:
            room = socket.handshake.auth.get("room")
            if room:
                await socket.join(room)
            socket.data["joined"] = room

    @io.on("publish")
    async def publish(socket: roomd.Socket, room: str, n: int) -> str:
        await socket.to(room).emit("msg", n)
        return "ok"

    @io.on_server_event("ping")
    async def ping(*args: Any) -> dict:
        return {"from": "roomd", "args": list(args)}

    @io.on("whoami")
    def whoami(socket: roomd.Socket) -> dict:
        return {"sid": socket.id, "rooms": sorted(socket.rooms), "data": socket.data,
                "recovered": socket.recovered}

    return io


async def ready(nodes: list[roomd.Server], peers: list[NodePeer], count: int) -> None:
    async def counted() -> bool:
        for io in nodes:
            if await io.sockets.adapter.server_count() != count:
                return False
        for peer in peers:
            if (await peer.command("serverCount"))["count"] != count:
                return False
        return all(io.adapter_factory.streams.up for io in nodes)
    await until(counted, what=f"a streams cluster of {count}")


async def cross_node_recovery(node: Any, first_url: str, second_url: str,
                              pub_url: str, cut: Any) -> None:
    """Connect to ``first_url``, cut, reconnect to ``second_url``; check the recovery."""
    a = await node.connect(first_url, auth={"room": "r"}, force_new=True, transports=WS,
                           **RECONNECT)
    pub = await node.connect(pub_url, force_new=True, transports=WS)
    assert (await a.next_event("connect")).args == [a.sid, False]
    before = (await a.emit_with_ack("whoami"))[0]
    assert before["rooms"] == sorted([a.sid, "r"]) and before["recovered"] is False
    n = 0
    for n in range(2):
        assert await pub.emit_with_ack("publish", "r", n) == ["ok"]
    n = 2
    msgs = [(await a.next_event("msg")).args for _ in range(2)]  # it holds an offset now
    state = await a.state()
    assert state["pid"] and STREAM_ID.match(state["offset"])

    await a.retarget(second_url)
    await cut(a)
    assert (await a.next_event("disconnect")).args == ["transport close"]
    for _ in range(3):  # while it is away
        assert await pub.emit_with_ack("publish", "r", n) == ["ok"]
        n += 1
    connect = await a.next_event("connect", timeout=10)
    assert connect.args == [a.sid, True]
    for _ in range(2):  # and once it is back
        assert await pub.emit_with_ack("publish", "r", n) == ["ok"]
        n += 1

    after = (await a.emit_with_ack("whoami"))[0]
    assert after["sid"] == a.sid and after["recovered"] is True
    assert after["rooms"] == sorted([a.sid, "r"])
    assert after["data"]["joined"] == "r"
    msgs += [(await a.next_event("msg", timeout=10)).args for _ in range(n - 2)]
    await a.no_event("msg", wait=0.3)
    assert [m[0] for m in msgs] == list(range(n))
    offsets = [m[-1] for m in msgs]
    assert all(STREAM_ID.match(o) for o in offsets)
    ids = [tuple(map(int, o.split("-"))) for o in offsets]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def roomd_cut(io: roomd.Server):
    async def cut(sock: Any) -> None:
        server_cut(io, sock.sid)
    return cut


def node_cut(peer: NodePeer):
    async def cut(sock: Any) -> None:
        await peer.command("cut", sid=sock.sid)
    return cut


async def test_roomd_to_roomd(start_server, node, redis_server):
    a, b = make_roomd(redis_server.url), make_roomd(redis_server.url)
    srv_a, srv_b = await start_server(a), await start_server(b)
    await ready([a, b], [], 2)
    await cross_node_recovery(node, srv_a.url, srv_b.url, srv_a.url, roomd_cut(a))


async def test_same_roomd_node_through_redis(start_server, node, redis_server):
    a, b = make_roomd(redis_server.url), make_roomd(redis_server.url)
    srv_a = await start_server(a)
    await start_server(b)
    await ready([a, b], [], 2)
    await cross_node_recovery(node, srv_a.url, srv_a.url, srv_a.url, roomd_cut(a))


async def test_roomd_to_node(start_server, node, node_peer, redis_server):
    a = make_roomd(redis_server.url)
    srv_a = await start_server(a)
    peer = await node_peer(redis_server.url, mode="streams", recovery=30)
    await ready([a], [peer], 2)
    await cross_node_recovery(node, srv_a.url, peer.url, srv_a.url, roomd_cut(a))


async def test_node_to_roomd(start_server, node, node_peer, redis_server):
    a = make_roomd(redis_server.url)
    srv_a = await start_server(a)
    peer = await node_peer(redis_server.url, mode="streams", recovery=30)
    await ready([a], [peer], 2)
    await cross_node_recovery(node, peer.url, srv_a.url, peer.url, node_cut(peer))


async def test_session_is_stored_as_node_stores_it(start_server, node, redis_server):
    a = make_roomd(redis_server.url)
    srv_a = await start_server(a)
    await ready([a], [], 1)
    sock = await node.connect(srv_a.url, auth={"room": "r"}, force_new=True, transports=WS)
    await sock.next_event("connect")
    pid = (await sock.state())["pid"]
    server_cut(a, sock.sid)
    key = f"sio:session:{pid}"

    async def stored() -> bool:
        return bool((await redis_server.cli("exists", key)).strip() == "1")
    await until(stored, what="the session in Redis")
    raw = (await redis_server.cli("get", key)).strip()
    session = msgpack.unpackb(base64.b64decode(raw))
    assert session == {"sid": sock.sid, "pid": pid, "rooms": sorted([sock.sid, "r"]),
                       "data": {"joined": "r"}}
    ttl = int((await redis_server.cli("pttl", key)).strip())
    assert 0 < ttl <= 30_000


async def test_after_the_window_a_fresh_session(start_server, node, redis_server):
    a, b = make_roomd(redis_server.url, window=1), make_roomd(redis_server.url, window=1)
    srv_a, srv_b = await start_server(a), await start_server(b)
    await ready([a, b], [], 2)
    sock = await node.connect(srv_a.url, auth={"room": "r"}, force_new=True, transports=WS,
                              reconnection=True, reconnectionDelay=2500,
                              reconnectionDelayMax=2500, randomizationFactor=0)
    pub = await node.connect(srv_b.url, force_new=True, transports=WS)
    await sock.next_event("connect")
    assert await pub.emit_with_ack("publish", "r", 0) == ["ok"]
    await sock.next_event("msg")
    old = sock.sid
    await sock.retarget(srv_b.url)
    server_cut(a, old)
    await sock.next_event("disconnect")
    connect = await sock.next_event("connect", timeout=15)
    assert connect.args[1] is False and connect.args[0] != old
    state = await sock.state()
    assert state["recovered"] is False


async def test_redis_down_local_serving_continues(start_server, node, redis_server):
    a, b = make_roomd(redis_server.url), make_roomd(redis_server.url)
    srv_a, srv_b = await start_server(a), await start_server(b)
    await ready([a, b], [], 2)
    x = await node.connect(srv_a.url, auth={"room": "r"}, force_new=True, transports=WS)
    y = await node.connect(srv_b.url, auth={"room": "r"}, force_new=True, transports=WS)
    pub = await node.connect(srv_a.url, force_new=True, transports=WS)
    for sock in (x, y):
        await sock.next_event("connect")
    assert await pub.emit_with_ack("publish", "r", 1) == ["ok"]
    for sock in (x, y):
        assert (await sock.next_event("msg")).args[0] == 1

    await redis_server.stop()
    with trio.fail_after(10):
        assert await pub.emit_with_ack("publish", "r", 2) == ["ok"]
    assert (await x.next_event("msg")).args[0] == 2  # local, with a local offset
    await y.no_event("msg", wait=0.3)
    assert await a.sockets.adapter.server_count() == 1

    status = a.adapter_factory.status()
    assert status["redis"] == "down" and status["stream_up"] is False
    assert status["stream_appended"] >= 1 and status["stream_failed"] >= 1
    assert status["mode"] == "streams" and status["stream"] == "socket.io"

    await redis_server.start()
    await ready([a, b], [], 2)
    assert a.adapter_factory.status()["redis"] == "up"
    assert await pub.emit_with_ack("publish", "r", 3) == ["ok"]
    for sock in (x, y):
        assert (await sock.next_event("msg")).args[0] == 3


async def test_stream_entries_and_requests_with_node(start_server, node, node_peer,
                                                     redis_server):
    a = make_roomd(redis_server.url)
    srv_a = await start_server(a)
    peer = await node_peer(redis_server.url, mode="streams")
    await ready([a], [peer], 2)
    sa = await node.connect(srv_a.url, auth={"room": "r"}, force_new=True, transports=WS)
    sn = await node.connect(peer.url, force_new=True, transports=WS)
    await sa.next_event("connect")
    await sn.next_event("connect")
    # socketsJoin from Node through the stream; a broadcast from roomd reaches Node's socket
    await peer.command("socketsJoin", target=NodePeer.target(rooms=[sn.sid]), rooms=["r"])

    async def joined() -> bool:
        return "r" in (await peer.command("localRooms"))["rooms"]
    await until(joined, what="Node's socket in r")
    await a.to("r").emit("hello", b"\x01\x02", {"k": 1})
    got = (await sa.next_event("hello")).args  # roomd recovers: the offset comes last
    assert got[:2] == [b"\x01\x02", {"k": 1}] and STREAM_ID.match(got[2])
    assert (await sn.next_event("hello")).args == [b"\x01\x02", {"k": 1}]
    # Node -> roomd: the entry id is the offset
    await peer.command("emit", target=NodePeer.target(rooms=["r"]), event="from-node", args=[7])
    got = (await sa.next_event("from-node")).args
    assert got[0] == 7 and STREAM_ID.match(got[1])
    # requests over pub/sub (msgpack): fetch_sockets both ways
    found = {s.id for s in await a.in_("r").fetch_sockets()}
    assert found == {sa.sid, sn.sid}
    reply = await peer.command("fetchSockets", target=NodePeer.target(rooms=["r"]))
    assert {s["id"] for s in reply["sockets"]} == {sa.sid, sn.sid}
    # acks and server-side emits with replies (pub/sub, msgpack), both ways
    acks = await a.to("r").emit_with_ack("question", b"\x03", timeout=5)
    assert acks == [{"echo": [b"\x03"]}] * 2
    reply = await peer.command("emitWithAck", target=NodePeer.target(rooms=["r"]),
                               event="question", args=["n"], timeout=5000)
    assert reply["args"] == [{"echo": ["n"]}] * 2
    assert await a.server_side_emit_with_ack("ping", 1, timeout=5) == [
        {"from": "node", "args": [1]}]
    reply = await peer.command("serverSideEmitWithAck", event="ping", args=[2])
    assert reply["args"] == [{"from": "roomd", "args": [2]}]
    # disconnect_sockets from roomd reaches Node's socket
    await a.in_(sn.sid).disconnect_sockets()
    assert (await sn.next_event("disconnect")).args == ["io server disconnect"]


def test_config_redis_streams(tmp_path):
    from roomd.ops.config import load_config
    from roomd.ops.daemon import adapter_factory

    path = tmp_path / "roomd.toml"
    path.write_text('[cluster]\nadapter = "redis-streams"\nurl = "redis://127.0.0.1:1"\n'
                    'stream = "s"\nstream_maxlen = 50\n')
    factory = adapter_factory(load_config(str(path)))
    assert factory.mode == "streams"
    assert (factory.streams.stream, factory.streams.maxlen) == ("s", 50)
    assert factory.status()["stream"] == "s"


async def test_redis_down_same_node_recovery_from_the_local_log(start_server, node,
                                                                redis_server):
    a = make_roomd(redis_server.url)
    srv_a = await start_server(a)
    await ready([a], [], 1)
    await redis_server.stop()

    async def down() -> bool:
        return not a.adapter_factory.streams.up
    await until(down, what="the stream link down")
    sock = await node.connect(srv_a.url, auth={"room": "r"}, force_new=True, transports=WS,
                              **RECONNECT)
    pub = await node.connect(srv_a.url, force_new=True, transports=WS)
    await sock.next_event("connect")
    assert await pub.emit_with_ack("publish", "r", 0) == ["ok"]
    msgs = [(await sock.next_event("msg")).args]
    server_cut(a, sock.sid)
    await sock.next_event("disconnect")
    for n in (1, 2):
        assert await pub.emit_with_ack("publish", "r", n) == ["ok"]
    assert (await sock.next_event("connect", timeout=10)).args == [sock.sid, True]
    msgs += [(await sock.next_event("msg")).args for _ in range(2)]
    assert [m[0] for m in msgs] == [0, 1, 2]
    # this node's own log's offsets ("<8 hex>-<seq>"), not stream ids ("<ms>-<seq>")
    assert all(len(m[1].partition("-")[0]) == 8 for m in msgs)


@pytest.mark.parametrize("publisher", ["old-node", "new-node"])
@pytest.mark.parametrize("first", ["roomd", "node"])
async def test_to_roomd_while_publishing_continuously(start_server, node, node_peer,
                                                      redis_server, publisher, first):
    # The seam between the stream's range, this node's log and the live traffic: events
    # keep coming from one publisher during the whole reconnection to roomd B; each
    # arrives once, in order, with increasing stream ids.
    b = make_roomd(redis_server.url)
    srv_b = await start_server(b)
    if first == "roomd":
        a = make_roomd(redis_server.url)
        old_url = (await start_server(a)).url
        await ready([a, b], [], 2)

        async def cut(sid: str) -> None:
            server_cut(a, sid)
    else:
        peer = await node_peer(redis_server.url, mode="streams", recovery=30)
        old_url = peer.url
        await ready([b], [peer], 2)

        async def cut(sid: str) -> None:
            await peer.command("cut", sid=sid)
    sock = await node.connect(old_url, auth={"room": "r"}, force_new=True, transports=WS,
                              **RECONNECT)
    pub = await node.connect(old_url if publisher == "old-node" else srv_b.url,
                             force_new=True, transports=WS)
    await sock.next_event("connect")
    sent = 0
    back = trio.Event()

    async def publish() -> None:
        nonlocal sent
        after = 0
        with trio.fail_after(30):
            while after < 20:
                assert await pub.emit_with_ack("publish", "r", sent) == ["ok"]
                sent += 1
                if back.is_set():
                    after += 1
                await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(publish)
        with trio.fail_after(10):
            while sent < 5:
                await trio.sleep(0.01)
        await sock.retarget(srv_b.url)
        await cut(sock.sid)
        assert (await sock.next_event("connect", timeout=10)).args == [sock.sid, True]
        back.set()
    msgs = [(await sock.next_event("msg", timeout=10)).args for _ in range(sent)]
    await sock.no_event("msg", wait=0.3)
    assert [m[0] for m in msgs] == list(range(sent))
    ids = [tuple(map(int, m[1].split("-"))) for m in msgs]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_a_redis_cluster_is_refused_and_local_serving_goes_on(start_server, node,
                                                                    redis_cluster):
    a = make_roomd(redis_cluster.url)
    srv_a = await start_server(a)
    streams = a.adapter_factory.streams

    async def refused() -> bool:
        return "not a Redis Cluster" in (streams.last_error or "")
    await until(refused, what="the Redis Cluster refused")
    assert not streams.up
    x = await node.connect(srv_a.url, auth={"room": "r"}, force_new=True, transports=WS)
    pub = await node.connect(srv_a.url, force_new=True, transports=WS)
    await x.next_event("connect")
    assert await pub.emit_with_ack("publish", "r", 1) == ["ok"]
    assert (await x.next_event("msg")).args[0] == 1


def test_stream_log_knows_the_ids_of_what_it_holds_and_dropped():
    from roomd.cluster.streams import StreamLog

    log = StreamLog(3, 1 << 20, 60.0)
    parts: list[str | bytes] = ['2["msg",1]']
    for i, offset in enumerate(["1-1", None, "1-3", "2-0", "2-1"]):
        message = log.append(parts, frozenset({"r"} if i != 3 else {"s"}), frozenset(),
                             offset)
        if offset is not None:
            assert message.eio_parts[0].endswith(f',"{offset}"]')
    assert list(log.ids) == [(1, 3), (2, 0), (2, 1)] and log.dropped_id == (1, 1)
    got = list(log.after_id((1, 3), frozenset({"r"})))
    assert [m.eio_parts[0] for m in got] == ['42["msg",1,"2-1"]']  # "2-0" was for room s


async def test_a_session_recovered_elsewhere_is_not_restored_again(start_server, node,
                                                                   redis_server):
    a, b = make_roomd(redis_server.url), make_roomd(redis_server.url)
    srv_a, srv_b = await start_server(a), await start_server(b)
    await ready([a, b], [], 2)
    sock = await node.connect(srv_a.url, auth={"room": "r"}, force_new=True, transports=WS,
                              **RECONNECT)
    pub = await node.connect(srv_b.url, force_new=True, transports=WS)
    await sock.next_event("connect")
    assert await pub.emit_with_ack("publish", "r", 0) == ["ok"]
    await sock.next_event("msg")
    state = await sock.state()
    await sock.retarget(srv_b.url)
    server_cut(a, sock.sid)
    assert (await sock.next_event("connect", timeout=10)).args == [sock.sid, True]
    # A still holds its own copy of the session; Redis says it was taken: no second restore
    assert a.sockets.adapter.recovery_status()["sessions"] == 1
    assert await a.sockets.adapter.restore_session(state["pid"], state["offset"]) is None
    # while B, where it is connected, takes a live socket over (its transport is closed)
    assert await b.sockets.adapter.restore_session(state["pid"], state["offset"]) is not None
    assert (await sock.next_event("disconnect")).args == ["transport close"]


STREAMS_RELAY = """\
[cluster]
adapter = "redis-streams"
url = "{url}"

[recovery]
enabled = true
max_disconnection_duration = 30

[[namespaces]]
name = "/chat"
"""


async def test_roomd_serve_relays_recover_across_nodes(node, redis_server):
    config = STREAMS_RELAY.format(url=redis_server.url)
    with short_dir() as dir1, short_dir() as dir2:
        async with running_daemon(dir1, config) as d1, running_daemon(dir2, config) as d2:
            async def two() -> bool:
                status = (await d1.cli("status", "--json")).json()["cluster"]
                return status["servers"] == 2 and status["redis"] == "up"
            await until(two, timeout=20, what="two relays on the stream")
            a = await node.connect(d1.url, "/chat", force_new=True, transports=WS)
            pub = await node.connect(d2.url, "/chat", force_new=True, transports=WS)
            await a.next_event("connect")
            assert (await a.emit_with_ack("join", "r"))[0]["rooms"] == sorted([a.sid, "r"])
            await pub.emit_with_ack("publish", "r", "m", 0)
            got = [(await a.next_event("m")).args]
            await a.retarget(d2.url)
            await a.cut()
            await a.next_event("disconnect")
            with trio.fail_after(10):  # until d1 stored the session in Redis
                while not (await redis_server.cli("keys", "sio:session:*")).strip():
                    await trio.sleep(0.05)
            for n in (1, 2):
                await pub.emit_with_ack("publish", "r", "m", n)
            await a.reconnect()
            assert (await a.next_event("connect")).args == [a.sid, True]
            got += [(await a.next_event("m")).args for _ in range(2)]
            await a.no_event("m", wait=0.2)
            assert [args[0] for args in got] == [0, 1, 2]
            assert all(STREAM_ID.match(args[-1]) for args in got)


async def test_garbage_in_the_stream_is_dropped(start_server, node, redis_server):
    a, b = make_roomd(redis_server.url), make_roomd(redis_server.url)
    srv_a = await start_server(a)
    await start_server(b)
    await ready([a, b], [], 2)
    x = await node.connect(srv_a.url, auth={"room": "r"}, force_new=True, transports=WS)
    await x.next_event("connect")
    for fields in (["uid", "u", "nsp", "/", "type", "3", "data", "{nope"],
                   ["uid", "u", "nsp", "/", "type", "3", "data", "!!"],
                   ["uid", "u", "nsp", "/", "type", "3", "data", '{"packet":1}'],
                   ["uid", "u", "nsp", "/", "type", "x"], ["junk", "1"]):
        await redis_server.cli("xadd", "socket.io", "*", *fields)
    await b.to("r").emit("after", 1)
    assert (await x.next_event("after")).args[0] == 1
    assert a.adapter_factory.streams.up


async def test_without_recovery_no_offsets(start_server, node, node_peer, redis_server):
    a = roomd.Server(adapter=RedisAdapterFactory(redis_server.url, mode="streams"))
    srv_a = await start_server(a)
    peer = await node_peer(redis_server.url, mode="streams")
    await ready([a], [peer], 2)
    sa = await node.connect(srv_a.url, force_new=True, transports=WS)
    sn = await node.connect(peer.url, force_new=True, transports=WS)
    await sa.next_event("connect")
    await sn.next_event("connect")
    assert (await sa.state())["pid"] is None
    await a.emit("plain", 1)
    await peer.command("emit", target=NodePeer.target(), event="plain", args=[2])
    for sock in (sa, sn):
        got = sorted([(await sock.next_event("plain")).args for _ in range(2)])
        assert got == [[1], [2]]
