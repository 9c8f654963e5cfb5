"""Issue 14: Redis down at start or during the run never stops a roomd node.

Local clients keep being served (connect, join, emit, acks, fetch) while Redis is away; the
outage is logged once per state change; publishing drops (and counts) instead of waiting;
once Redis is back every node resubscribes and the cluster works again. A node killed in
the middle of a request is the silent-node case of test_cluster_classic.
"""

from __future__ import annotations

import logging
import shutil

import pytest
import trio
from cluster_harness import RedisServer, free_port
from test_cluster_classic import WS, cluster_of, join, make_roomd, until

import roomd
from roomd.cluster.link import LinkState


async def _state_is(io, state: LinkState) -> bool:
    return io.adapter_factory.link.state is state


async def test_redis_stopped_and_restarted_mid_run(start_server, node, redis_server, caplog):
    caplog.set_level(logging.INFO, logger="roomd.cluster")
    a = make_roomd(redis_server.url)
    b = make_roomd(redis_server.url)
    srv_a, srv_b = await start_server(a), await start_server(b)
    await cluster_of([a, b], None, 2)
    sa = await node.connect(srv_a.url, transports=WS, force_new=True)
    sb = await node.connect(srv_b.url, transports=WS, force_new=True)
    await join(sa, "r")
    await join(sb, "r")
    await a.to("r").emit("before")
    await sa.next_event("before")
    await sb.next_event("before")

    await redis_server.stop()
    await until(lambda: _state_is(a, LinkState.DOWN), what="node A sees Redis down")
    await until(lambda: _state_is(b, LinkState.DOWN), what="node B sees Redis down")

    # local clients keep being served, nothing waits for Redis
    with trio.fail_after(3):
        late = await node.connect(srv_a.url, transports=WS, force_new=True)
        await join(late, "r")
        await a.to("r").emit("during", 1)
        assert (await sa.next_event("during")).args == [1]
        await late.next_event("during")
        assert await a.sockets.adapter.server_count() == 1
        assert {s.id for s in await a.in_("r").fetch_sockets()} == {sa.sid, late.sid}
        assert len(await a.to("r").emit_with_ack("q", timeout=2)) == 2
        await a.server_side_emit("nobody-listens")
    assert a.adapter_factory.link.dropped >= 2
    assert a.adapter_factory.status()["redis"] == "down"

    # several reconnection attempts, one log line
    await trio.sleep(0.5)
    await redis_server.start()
    await until(lambda: _state_is(a, LinkState.UP), what="node A reconnected")
    await until(lambda: _state_is(b, LinkState.UP), what="node B reconnected")
    await cluster_of([a, b], None, 2)
    await b.to("r").emit("after", "x")
    for sock in (sa, late, sb):
        assert (await sock.next_event("after")).args == ["x"]
    await a.to("r").emit("after-a")
    await sb.next_event("after-a")
    await sb.no_event("during", wait=0)  # lost: pub/sub keeps nothing during an outage

    downs = [r for r in caplog.records if "unavailable" in r.getMessage()]
    ups = [r for r in caplog.records if "connected" in r.getMessage()]
    assert len(downs) == 2  # one per node
    assert len(ups) == 4    # start and recovery, per node


async def test_redis_down_at_start(start_server, node):
    redis = RedisServer(port=free_port())
    a = make_roomd(redis.url)
    srv = await start_server(a)  # nothing listens on that port yet
    sock = await node.connect(srv.url, transports=WS, force_new=True)
    await join(sock, "r")
    await a.to("r").emit("local")
    await sock.next_event("local")
    assert a.adapter_factory.status()["redis"] in ("connecting", "down")
    try:
        await redis.start()
        b = make_roomd(redis.url)
        srv_b = await start_server(b)
        await cluster_of([a, b], None, 2)
        await b.emit("hello-cluster")
        assert (await sock.next_event("hello-cluster")).args == []
        other = await node.connect(srv_b.url, transports=WS, force_new=True)
        await a.emit("back")
        await other.next_event("back")
    finally:
        await redis.stop()
        shutil.rmtree(redis.workdir, ignore_errors=True)


async def test_redis_hung_never_hangs_a_node(start_server, node, redis_server):
    """Redis stops answering (SIGSTOP) without closing connections: local work goes on."""
    import signal

    a = make_roomd(redis_server.url, request_timeout=1.0)
    b = make_roomd(redis_server.url, request_timeout=1.0)
    srv_a, _ = await start_server(a), await start_server(b)
    await cluster_of([a, b], None, 2)
    sa = await node.connect(srv_a.url, transports=WS, force_new=True)
    await join(sa, "r")
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        with trio.fail_after(15):  # only a hang trips this: each step ends by a timeout
            for i in range(50):    # none of these waits for Redis
                await a.to("r").emit("hung", i)
            for i in range(50):
                assert (await sa.next_event("hung")).args == [i]
            ids = {s.id for s in await a.in_("r").fetch_sockets()}
            assert ids == {sa.sid}
            assert await a.to("r").emit_with_ack("q", timeout=3) == [{"echo": []}]
            await until(lambda: _state_is(a, LinkState.DOWN), what="Redis seen as down")
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    await until(lambda: _state_is(a, LinkState.UP), what="node A back")
    await cluster_of([a, b], None, 2)
    await b.to("r").emit("back")
    await sa.next_event("back")


async def test_sharded_resubscribes_room_channels_after_an_outage(start_server, node,
                                                                  redis_server):
    a = make_roomd(redis_server.url, mode="sharded")
    b = make_roomd(redis_server.url, mode="sharded")
    srv_a, _ = await start_server(a), await start_server(b)
    await cluster_of([a, b], None, 2)
    sa = await node.connect(srv_a.url, transports=WS, force_new=True)
    await join(sa, "room-x")
    link = a.adapter_factory.link

    async def room_subscribed() -> bool:
        return await link.subscriber_count("socket.io#/#room-x#") == 1
    await until(room_subscribed, what="room-x's channel subscribed")

    await redis_server.stop()
    await until(lambda: _state_is(a, LinkState.DOWN), what="node A sees Redis down")
    await redis_server.start()
    await until(lambda: _state_is(a, LinkState.UP), what="node A reconnected")
    await until(room_subscribed, what="room-x's channel subscribed again")
    await cluster_of([a, b], None, 2)
    await b.to("room-x").emit("to-room")  # published on room-x's own channel
    assert (await sa.next_event("to-room")).args == []


@pytest.mark.parametrize("mode", ["classic", "sharded"])
async def test_recovery_on_a_node_replays_what_other_nodes_broadcast(start_server, node,
                                                                      redis_server, mode):
    """Connection state recovery is per node: a client that comes back to its node gets
    the events other nodes broadcast while it was away, from that node's log."""
    from test_recovery import RECONNECT, server_cut

    from roomd.cluster import RedisAdapterFactory

    a = roomd.Server(ping_interval=0.5, ping_timeout=0.5,
                     adapter=RedisAdapterFactory(redis_server.url, mode=mode),
                     connection_state_recovery={"max_disconnection_duration": 30})

    @a.on("connection")
    async def connection(socket) -> None:
        if not socket.recovered:
            await socket.join("r")

    b = make_roomd(redis_server.url, mode=mode)
    srv_a, _ = await start_server(a), await start_server(b)
    await cluster_of([a, b], None, 2)
    sock = await node.connect(srv_a.url, force_new=True, transports=WS, **RECONNECT)
    assert (await sock.next_event("connect")).args == [sock.sid, False]
    if mode == "sharded":  # r's own channel, subscribed once the socket joined
        link = a.adapter_factory.link

        async def subscribed() -> bool:
            return await link.subscriber_count("socket.io#/#r#") == 1
        await until(subscribed, what="r's channel subscribed")
    await b.to("r").emit("msg", 0)
    first = await sock.next_event("msg")
    assert first.args[0] == 0 and isinstance(first.args[-1], str)  # A's offset

    server_cut(a, sock.sid)
    assert (await sock.next_event("disconnect")).args == ["transport close"]
    for n in (1, 2, 3):
        await b.to("r").emit("msg", n)
    assert (await sock.next_event("connect", timeout=10)).args == [sock.sid, True]
    got = [(await sock.next_event("msg")).args[0] for _ in range(3)]
    assert got == [1, 2, 3]


@pytest.mark.parametrize("mode", ["classic", "sharded"])
async def test_garbage_on_the_channels_changes_nothing(start_server, node, redis_server, mode):
    """Anyone who can publish on Redis can send garbage: nodes drop it and carry on."""
    import coredis

    a = make_roomd(redis_server.url, mode=mode)
    b = make_roomd(redis_server.url, mode=mode)
    srv_a, _ = await start_server(a), await start_server(b)
    await cluster_of([a, b], None, 2)
    sa = await node.connect(srv_a.url, transports=WS, force_new=True)
    await join(sa, "r")
    garbage = [b"", b"\xc1", b"{", b"{}", b'{"type":7}', b'{"type":5,"requestId":{}}',
               b'{"uid":1,"nsp":"/","type":3,"data":{"packet":7}}', b"\x93\xa1x\xc0\xc0",
               b'{"type":3,"uid":"x","nsp":"/","data":{"packet":{"type":2,"data":[]}}}',
               b'{"type":2,"opts":{"rooms":"r"},"rooms":["x"]}']
    channels = ["socket.io#/#", "socket.io#/#r#", "socket.io-request#/#",
                "socket.io-response#/#", f"socket.io#/#{b.sockets.adapter.uid}#"]
    async with coredis.Redis.from_url(redis_server.url) as client:
        for channel in channels:
            for payload in garbage:
                if mode == "sharded":
                    await client.spublish(channel, payload)
                else:
                    await client.publish(channel, payload)
    await b.to("r").emit("still-fine", 1)
    assert (await sa.next_event("still-fine")).args == [1]
    assert {s.id for s in await b.fetch_sockets()} == {sa.sid}
    assert sorted(sa_rooms["room"] for sa_rooms in await a.rooms_snapshot("/")
                  if not sa_rooms["private"]) == ["r"]
