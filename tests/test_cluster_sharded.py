"""Issue 14: the sharded adapter (ClusterAdapter protocol over SSUBSCRIBE/SPUBLISH).

Two roomd nodes and a Node.js node with ``createShardedAdapter``, first on a single Redis 7,
then on a 3-master Redis Cluster (where channels live on different shards). Binary travels
as msgpack here (the whole message), so bytes arrive as bytes on every side.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from cluster_harness import NodePeer
from test_cluster_classic import BYTES, WS, cluster_of, join, make_roomd, marker, until

pytestmark = pytest.mark.deadline(90)


async def _sharded(start_server, node, node_peer, url: str, cluster: bool) -> Any:
    a = make_roomd(url, mode="sharded")
    b = make_roomd(url, mode="sharded")
    srv_a, srv_b = await start_server(a), await start_server(b)
    peer = await node_peer(url, mode="sharded", cluster=cluster)
    await cluster_of([a, b], peer, 3)
    socks = {}
    for name, where in (("a", srv_a.url), ("b", srv_b.url), ("n", peer.url)):
        socks[name] = await node.connect(where, transports=WS, force_new=True)
    return a, b, peer, socks


async def subscribed(io, room: str, count: int) -> None:
    """Wait until ``count`` nodes subscribe the room's own channel (SSUBSCRIBE is async:
    a room's channel is subscribed after its first socket joined, on every node)."""
    channel = f"socket.io#/#{room}#"

    async def done() -> bool:
        return await io.adapter_factory.link.subscriber_count(channel) == count
    await until(done, what=f"{count} subscribers of {channel}")


async def _everything(a, b, peer, socks, node) -> None:
    sa, sb, sn = socks["a"], socks["b"], socks["n"]
    for sock in (sa, sb, sn):
        await join(sock, "room1")
    await join(sb, "quiet")
    await subscribed(a, "room1", 3)

    class M:  # what marker() needs
        pass
    m = M()
    m.peer = peer

    # a single room: its own sharded channel, in both directions, binary included
    await a.to("room1").emit("hello", {"b": BYTES})
    for sock in (sa, sb, sn):
        assert (await sock.next_event("hello")).args == [{"b": BYTES}]
    await peer.command("emit", target=NodePeer.target(rooms=["room1"]), event="from-node",
                       args=[BYTES, 2])
    for sock in (sa, sb, sn):
        assert (await sock.next_event("from-node")).args == [BYTES, 2]
    # the main channel: except, volatile, several rooms
    await peer.command("emit", target=NodePeer.target(rooms=["room1", "quiet"],
                                                      except_rooms=["quiet"], volatile=True),
                       event="vol")
    for sock in (sa, sn):
        await sock.next_event("vol")
    await b.except_("quiet").emit("not-quiet", 3)
    for sock in (sa, sn):
        assert (await sock.next_event("not-quiet")).args == [3]
    # a socket-id room goes to the main channel
    await a.to(sn.sid).emit("direct")
    await sn.next_event("direct")
    await marker(m, sa, sb, sn)
    await sb.no_event("vol", wait=0)
    await sb.no_event("not-quiet", wait=0)

    # fetch_sockets both ways
    found = {s.id: s for s in await a.in_("room1").fetch_sockets()}
    assert set(found) == {sa.sid, sb.sid, sn.sid}
    assert found[sn.sid].data == {"node": True}
    reply = await peer.command("fetchSockets", target=NodePeer.target(rooms=["room1"]))
    assert {s["id"] for s in reply["sockets"]} == {sa.sid, sb.sid, sn.sid}

    # join / leave / disconnect both ways
    await a.in_(sn.sid).sockets_join("j")
    await peer.command("socketsJoin", target=NodePeer.target(rooms=[sb.sid]), rooms=["j"])

    async def joined() -> bool:
        rooms = (await peer.command("localRooms"))["rooms"]
        in_b = any(r["room"] == "j" and r["members"] == [sb.sid]
                   for r in await b.rooms_snapshot("/"))
        return rooms.get("j") == [sn.sid] and in_b
    await until(joined, what="sharded sockets_join")
    await subscribed(a, "j", 2)
    await b.to("j").emit("in-j")  # j's own channel: Node subscribed it when sn joined
    await sn.next_event("in-j")
    await sb.next_event("in-j")
    await peer.command("socketsLeave", target=NodePeer.target(), rooms=["j"])

    async def left() -> bool:
        return all(r["room"] != "j" for r in await b.rooms_snapshot("/"))
    await until(left, what="sharded socketsLeave")

    # server-side emits and broadcast acks across nodes
    replies = await a.server_side_emit_with_ack("ping", BYTES, timeout=5)
    assert sorted(r["from"] for r in replies) == ["node", "roomd"]
    assert [r for r in replies if r["from"] == "roomd"][0]["args"] == [BYTES]
    reply = await peer.command("serverSideEmitWithAck", event="ping", args=[1])
    assert reply["args"] == [{"from": "roomd", "args": [1]}] * 2
    acks = await a.to("room1").emit_with_ack("question", BYTES, timeout=5)
    assert acks == [{"echo": [BYTES]}] * 3
    reply = await peer.command("emitWithAck", target=NodePeer.target(rooms=["room1"]),
                               event="question", args=["n"], timeout=5000)
    assert reply["args"] == [{"echo": ["n"]}] * 3

    await peer.command("disconnectSockets", target=NodePeer.target(rooms=[sa.sid]))
    assert (await sa.next_event("disconnect")).args == ["io server disconnect"]
    await b.in_(sn.sid).disconnect_sockets()
    assert (await sn.next_event("disconnect")).args == ["io server disconnect"]
    assert await sb.is_connected()


async def test_sharded_on_a_single_redis(start_server, node, node_peer, redis_server):
    a, b, peer, socks = await _sharded(start_server, node, node_peer, redis_server.url, False)
    await _everything(a, b, peer, socks, node)
    assert a.adapter_factory.status()["redis_cluster"] is False


async def test_sharded_on_a_redis_cluster(start_server, node, node_peer, redis_cluster):
    a, b, peer, socks = await _sharded(start_server, node, node_peer, redis_cluster.url, True)
    assert a.adapter_factory.status()["redis_cluster"] is True
    await _everything(a, b, peer, socks, node)


async def test_classic_on_a_redis_cluster(start_server, node, node_peer, redis_cluster):
    """Classic pub/sub on a Redis Cluster: NUMSUB added up over the nodes."""
    a = make_roomd(redis_cluster.url)
    b = make_roomd(redis_cluster.url)
    srv_a, _ = await start_server(a), await start_server(b)
    peer = await node_peer(redis_cluster.url, cluster=True)
    await cluster_of([a, b], peer, 3)
    sa = await node.connect(srv_a.url, transports=WS, force_new=True)
    sn = await node.connect(peer.url, transports=WS, force_new=True)
    await join(sa, "r")
    await join(sn, "r")
    await b.to("r").emit("x", BYTES)
    assert (await sa.next_event("x")).args == [BYTES]
    assert (await sn.next_event("x")).args == [BYTES]
    assert {s.id for s in await b.in_("r").fetch_sockets()} == {sa.sid, sn.sid}
    assert sorted(map(str, await b.to("r").emit_with_ack("q", 1, timeout=5))) == [
        str({"echo": [1]})] * 2
    with trio.fail_after(4):  # every node counts 0 sockets: done without waiting 5 s
        assert await b.to("nobody").emit_with_ack("q", timeout=5) == []
    assert a.adapter_factory.status()["redis_cluster"] is True
