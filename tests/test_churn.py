"""Churn and slow consumers, over the server's real WebSocket endpoint (issue 3).

- 10,000 sockets connect, join, leave, publish and disconnect at random (politely or by
  dropping the TCP connection), several hundred at a time, driven by a raw, lightweight
  WebSocket client (hand-made frames, no client library): at the end the RoomManager holds no
  rooms and no sockets, the engine no sessions, and the process's memory did not keep growing
  from one round of 5,000 to the next.
- A client that stops reading does not hold up delivery to the others in its room and is
  disconnected ("slow consumer"); a volatile emit is dropped for it instead.
"""

from __future__ import annotations

import gc
import json
import os
import sys

import pytest
import trio
from churn_client import NAMESPACES, RawClient
from harness import TESTS_DIR

import roomd
from roomd.apps.relay import RelayApp
from roomd.ops.config import NamespaceConfig


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def settle(io: roomd.Server, timeout: float = 20) -> None:
    """Wait until the server holds no connection, session, socket or room."""
    with trio.fail_after(timeout):
        while (io.connections or io.engine.sessions or io.engine.live_websockets
               or (io.stats()["rooms"], io.stats()["sockets"]) != (0, 0)):
            await trio.sleep(0.05)


def assert_empty(io: roomd.Server) -> None:
    stats = io.stats()
    assert (stats["rooms"], stats["sockets"]) == (0, 0)
    for name in io.namespace_names():
        namespace = io.get_namespace(name)
        assert namespace is not None
        assert not namespace.adapter.rooms and not namespace.adapter.members, name
        assert namespace.sockets == {}
    assert io.engine.sessions == {}
    assert not io.connections
    assert io.engine.live_websockets == 0
    assert stats["broadcasts_awaiting_acks"] == 0


async def run_churn(port: int, sockets: int, seed: int, concurrency: int = 300,
                    timeout: float = 50) -> dict:
    """Run tests/churn_client.py against ``port`` in a child process; return its counts."""
    with trio.fail_after(timeout):
        proc = await trio.run_process(
            [sys.executable, str(TESTS_DIR / "churn_client.py"), str(port), str(sockets),
             str(seed), str(concurrency)],
            capture_stdout=True, capture_stderr=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


@pytest.mark.deadline(90)
async def test_churn_10000_sockets(start_server):
    io = roomd.Server()
    RelayApp(io, [NamespaceConfig(name=name) for name in NAMESPACES])
    seen = {"connected": 0, "bad_disconnecting": 0, "bad_disconnect": 0}
    reasons: dict[str, int] = {}

    def on_connection(socket):
        seen["connected"] += 1

        def on_disconnecting(reason):
            if socket.id not in socket.rooms:
                seen["bad_disconnecting"] += 1

        def on_disconnect(reason):
            if socket.rooms:
                seen["bad_disconnect"] += 1
            reasons[reason] = reasons.get(reason, 0) + 1

        socket.on("disconnecting", on_disconnecting)
        socket.on("disconnect", on_disconnect)

    for name in NAMESPACES:
        io.of(name).on("connection", on_connection)
    srv = await start_server(io)

    async def round_of(sockets: int, seed: int) -> dict:
        stats = await run_churn(srv.port, sockets, seed)
        assert stats["sockets"] == sockets, stats
        await settle(io)
        assert_empty(io)
        gc.collect()
        return stats

    rss0 = rss_bytes()
    first = await round_of(5000, 2)
    rss1 = rss_bytes()
    second = await round_of(5000, 3)
    rss2 = rss_bytes()

    total = 10_000
    assert seen["connected"] == total
    assert sum(reasons.values()) == total
    assert seen["bad_disconnecting"] == seen["bad_disconnect"] == 0
    assert set(reasons) <= {"client namespace disconnect", "transport close"}, reasons
    for stats in (first, second):  # every kind of ending happened
        assert min(stats["polite"], stats["dropped"], stats["namespace_disconnects"],
                   stats["published"], stats["leaves"]) > 0, stats
        assert stats["connections"] < stats["sockets"]
    growth1, growth2 = rss1 - rss0, rss2 - rss1
    print(f"churn: {first} {second}; RSS {rss0 / 2**20:.1f} MiB, +{growth1 / 2**20:.1f} MiB, "
          f"+{growth2 / 2**20:.1f} MiB")
    # No unbounded growth: a second round of 5,000 sockets adds (almost) nothing.
    # (Closed sessions used to stay alive until their heartbeat and connect-timeout timers
    # came due, 25-45 s later: about 13 MiB for this round.)
    assert growth2 < 8 * 2**20, (growth1, growth2)


async def _fast_and_slow(start_server, node, py_client, **server_kwargs):
    """A server, a room with a node socket, a python-socketio socket and a raw client that
    stops reading (small receive buffer), plus the server-side disconnect reasons."""
    io = roomd.Server(**server_kwargs)
    reasons: dict[str, str] = {}

    @io.on("connection")
    async def on_connection(socket):
        await socket.join("room")
        socket.on("disconnect", lambda reason: reasons.__setitem__(socket.id, reason))

    srv = await start_server(io)
    fast_node = await node.connect(srv.url, transports=["websocket"])
    fast_py = await py_client()
    await fast_py.connect(srv.url, transports=["websocket"])
    slow = await RawClient.connect(srv.port, rcvbuf=4096)
    slow_sid = await slow.open_namespace("/")
    assert {s.id for s in await io.to("room").fetch_sockets()} == {
        fast_node.sid, fast_py.sid, slow_sid}
    return io, reasons, fast_node, fast_py, slow, slow_sid


async def _emit_paced(io, n: int, payload: str, received, *, volatile: bool = False,
                      window: int = 16) -> None:
    """Emit n events to "room", never more than ``window`` ahead of the fast clients."""
    target = io.to("room").volatile if volatile else io.to("room")
    for i in range(n):
        with trio.fail_after(10):
            while i - received() > window:
                await trio.sleep(0.001)
        await target.emit("big", i, payload)


def _indexes(client, name: str, sock=None) -> list[int]:
    handle = getattr(sock, "handle", None)
    return [ev.args[0] for ev in client.inbox.all
            if ev.name == name and (handle is None or ev.sock == handle)]


@pytest.mark.deadline(60)
async def test_slow_consumer_does_not_delay_others_and_is_disconnected(
        start_server, node, py_client):
    io, reasons, fast_node, fast_py, slow, slow_sid = await _fast_and_slow(
        start_server, node, py_client, outbox_limit=64)
    slow_session = io.sockets.sockets[slow_sid]._connection.session
    n, payload = 600, "x" * 32 * 1024   # ~19 MB: far more than the kernel buffers hold

    def received() -> int:
        return min(len(_indexes(node, "big", fast_node)), len(_indexes(fast_py, "big")))

    with trio.fail_after(30):
        await _emit_paced(io, n, payload, received)
        while received() < n:
            await trio.sleep(0.01)
    # the others got everything, in order, while the slow one did not read at all
    assert _indexes(node, "big", fast_node) == list(range(n))
    assert _indexes(fast_py, "big") == list(range(n))
    # ... and the slow consumer was disconnected under the default policy
    with trio.fail_after(10):
        while slow_sid not in reasons:
            await trio.sleep(0.01)
    assert reasons == {slow_sid: "slow consumer"}
    assert slow_session.closed and slow_session.close_reason == "slow consumer"
    assert {s.id for s in await io.to("room").fetch_sockets()} == {fast_node.sid, fast_py.sid}
    assert await fast_node.is_connected()
    assert fast_py.connected
    # its TCP connection is closed by the server (after a short flush grace)
    with trio.fail_after(10):
        while True:
            try:
                data = await slow.stream.receive_some(1 << 20)
            except trio.BrokenResourceError:
                break
            if not data:
                break
    await trio.aclose_forcefully(slow.stream)


@pytest.mark.deadline(60)
async def test_volatile_is_dropped_for_a_slow_consumer(start_server, node, py_client):
    io, reasons, fast_node, fast_py, slow, slow_sid = await _fast_and_slow(
        start_server, node, py_client, outbox_limit=64)
    slow_session = io.sockets.sockets[slow_sid]._connection.session
    n, payload = 400, "v" * 32 * 1024

    def received() -> int:
        got = _indexes(node, "big", fast_node)
        return got[-1] + 1 if got else 0

    with trio.fail_after(30):
        await _emit_paced(io, n, payload, received, volatile=True)
        await io.emit("end")
        await fast_node.next_event("end", timeout=10)
        await fast_py.next_event("end", timeout=10)
    # the slow socket is still connected: its volatile packets were dropped, not queued
    assert not slow_session.closed
    assert slow_sid in io.sockets.sockets and reasons == {}
    got = _indexes(node, "big", fast_node)
    assert got and got == sorted(set(got))
    await slow.drop(reset=True)
    with trio.fail_after(10):
        while slow_sid not in reasons:
            await trio.sleep(0.01)
    assert reasons[slow_sid] == "transport close"


@pytest.mark.parametrize("ending", ["polite", "dropped", "reset"])
async def test_closed_connections_are_freed_at_once(start_server, ending):
    """Nothing (a pending heartbeat or connect-timeout timer, say) keeps a closed
    connection's session, Connection and Socket alive until it comes due."""
    import weakref

    io = roomd.Server()
    RelayApp(io, [NamespaceConfig(name="/")])
    srv = await start_server(io)
    client = await RawClient.connect(srv.port)
    sid = await client.open_namespace("/")
    assert await client.call(1, "join", ["r"]) == [{"rooms": sorted([sid, "r"])}]
    socket = io.sockets.sockets[sid]
    refs = [weakref.ref(socket), weakref.ref(socket._connection),
            weakref.ref(socket._connection.session)]
    del socket
    if ending == "polite":
        await client.close_politely("eio")
    else:  # a reset ends the WebSocket without a close frame or a linger
        await client.drop(reset=ending == "reset")
    await settle(io, timeout=10)
    # (the manager task's last command stays referenced until the next one: send one)
    assert await io.rooms_snapshot() == []
    with trio.fail_after(5):
        while any(ref() is not None for ref in refs):
            gc.collect()
            await trio.sleep(0.02)
    assert_empty(io)
