"""The adapter seam (issue 14, part 1), exercised by a cluster adapter written
against it: two roomd.Servers in one process joined by an in-process bus.

The bus adapter below is what a cluster adapter does on a wire: it publishes
each operation to the other servers, which apply it to their own sockets with
``BroadcastOptions.local``. With it, the public API must reach the sockets of
both servers: broadcasts with rooms and exclusions, fetch_sockets with
RemoteSocket, sockets_join/leave, disconnect_sockets, emit_with_ack counted
per node, server_side_emit with replies, all rooms and the server count.
"""

from __future__ import annotations

import dataclasses

import pytest
import trio

import roomd
from roomd import AdapterFactory, BroadcastOptions, Emission, InMemoryAdapter, RemoteSocketRecord

WS = ["websocket"]


class Bus:
    """The 'network': every BusAdapter of a namespace, by server."""

    def __init__(self) -> None:
        self.adapters: dict[str, list[BusAdapter]] = {}

    def others(self, adapter: BusAdapter) -> list[BusAdapter]:
        return [a for a in self.adapters.get(adapter.namespace, []) if a is not adapter]


class BusAdapter(InMemoryAdapter):
    def __init__(self, namespace, context, bus: Bus) -> None:
        super().__init__(namespace, context)
        self.bus = bus
        self.published = 0

    async def init(self) -> None:
        self.bus.adapters.setdefault(self.namespace, []).append(self)

    def _remote(self, opts: BroadcastOptions) -> list[BusAdapter]:
        if opts.local:
            return []
        self.published += 1
        return self.bus.others(self)

    async def broadcast(self, emission, opts):
        for other in self._remote(opts):
            await other.broadcast(Emission(other.namespace, emission.data, "cluster"),
                                  dataclasses.replace(opts, local=True))
        await super().broadcast(emission, opts)

    async def broadcast_with_ack(self, emission, opts, on_count, on_ack):
        stops = []
        for other in self._remote(opts):
            stops.append(await other.broadcast_with_ack(
                Emission(other.namespace, emission.data), dataclasses.replace(opts, local=True),
                on_count, on_ack))
        stops.append(await super().broadcast_with_ack(emission, opts, on_count, on_ack))
        return lambda: [stop() for stop in stops]

    async def fetch_sockets(self, opts):
        found = await super().fetch_sockets(opts)
        for other in self._remote(opts):
            for member in await other.fetch_sockets(dataclasses.replace(opts, local=True)):
                details = member.owner.details()
                found.append(RemoteSocketRecord(details["id"], frozenset(details["rooms"]),
                                                details["data"], details["handshake"]))
        return found

    async def add_sockets(self, opts, rooms):
        for other in self._remote(opts):
            await other.add_sockets(dataclasses.replace(opts, local=True), rooms)
        await super().add_sockets(opts, rooms)

    async def del_sockets(self, opts, rooms):
        for other in self._remote(opts):
            await other.del_sockets(dataclasses.replace(opts, local=True), rooms)
        await super().del_sockets(opts, rooms)

    async def disconnect_sockets(self, opts, close):
        for other in self._remote(opts):
            await other.disconnect_sockets(dataclasses.replace(opts, local=True), close)
        await super().disconnect_sockets(opts, close)

    async def server_side_emit(self, args, on_reply=None):
        others = self.bus.others(self)
        for other in others:
            handler = other.context.on_server_event
            assert handler is not None
            await handler(other.namespace, args, on_reply)
        return len(others)

    async def all_rooms(self):
        rooms = await super().all_rooms()
        for other in self.bus.others(self):
            rooms |= await InMemoryAdapter.all_rooms(other)
        return rooms

    async def server_count(self):
        return 1 + len(self.bus.others(self))


@dataclasses.dataclass
class BusFactory(AdapterFactory):
    bus: Bus

    def create(self, namespace, context):
        return BusAdapter(namespace, context, self.bus)

    def status(self):
        return {"adapter": "bus", "servers": 2}


async def two_servers(start_server):
    bus = Bus()
    servers = []
    for _ in range(2):
        io = roomd.Server(adapter=BusFactory(bus))

        @io.on("join")
        async def join(socket, room):
            await socket.join(room)
            return sorted(socket.rooms)

        @io.on("ask")
        async def ask(socket, what):
            return f"{socket.id}:{what}"

        servers.append(await start_server(io))
    return servers


async def test_broadcasts_reach_both_servers_once(start_server, node):
    s1, s2 = await two_servers(start_server)
    a = await node.connect(s1.url, transports=WS)
    b = await node.connect(s2.url, transports=WS, force_new=True)
    c = await node.connect(s2.url, transports=WS, force_new=True)
    await a.emit_with_ack("join", "r")
    await b.emit_with_ack("join", "r")
    await c.emit_with_ack("join", "other")

    await s1.io.to("r").to("other").except_("nobody").emit("hello", 1, b"\x00\x01")
    for sock in (a, b, c):
        assert (await sock.next_event("hello")).args == [1, b"\x00\x01"]
    await s2.io.to("r").except_("other").emit("only-r")
    assert (await a.next_event("only-r")).args == []
    assert (await b.next_event("only-r")).args == []
    await s1.io.emit("marker")
    await c.next_event("marker")
    with pytest.raises(trio.TooSlowError):  # the marker came after: "only-r" never will
        await c.next_event("only-r", timeout=0.2)
    assert s1.io.stats()["cluster"] == {"adapter": "bus", "servers": 2}


async def test_fetch_join_leave_disconnect_across_servers(start_server, node):
    s1, s2 = await two_servers(start_server)
    a = await node.connect(s1.url, transports=WS)
    b = await node.connect(s2.url, transports=WS, force_new=True)
    s2.io.sockets.get_socket(b.sid).data["user"] = "bob"

    fetched = {s.id: s for s in await s1.io.fetch_sockets()}
    assert set(fetched) == {a.sid, b.sid}
    assert isinstance(fetched[a.sid], roomd.Socket)
    remote = fetched[b.sid]
    assert isinstance(remote, roomd.RemoteSocket)
    assert remote.data == {"user": "bob"} and remote.rooms == {b.sid}
    assert remote.handshake["address"] == "127.0.0.1"

    await remote.emit("direct", "to-b")
    assert (await b.next_event("direct")).args == ["to-b"]
    await s1.io.sockets_join("everyone")
    assert "everyone" in s2.io.sockets.get_socket(b.sid).rooms
    assert {a.sid, b.sid, "everyone"} <= await s1.io.sockets.adapter.all_rooms()
    await s2.io.in_("everyone").sockets_leave("everyone")
    assert "everyone" not in s1.io.sockets.get_socket(a.sid).rooms
    await remote.disconnect()
    assert (await b.next_event("disconnect")).args == ["io server disconnect"]


async def test_emit_with_ack_counts_every_server(start_server, node):
    s1, s2 = await two_servers(start_server)
    a = await node.connect(s1.url, transports=WS)
    b = await node.connect(s2.url, transports=WS, force_new=True)
    replies = await s1.io.emit_with_ack("question", 42, timeout=5)
    assert sorted(map(str, replies)) == sorted(map(str, [{"echo": [42]}, {"echo": [42]}]))
    assert a.sid and b.sid


async def test_emit_with_ack_times_out_with_partial_replies(start_server, node):
    s1, s2 = await two_servers(start_server)
    await node.connect(s1.url, transports=WS)
    await node.connect(s2.url, transports=WS, force_new=True, auto_ack=False)
    try:
        await s1.io.emit_with_ack("question", timeout=0.5)
    except roomd.AckTimeout as exc:
        assert len(exc.replies) == 1
        assert "1 socket(s) did not acknowledge" in str(exc)
    else:
        raise AssertionError("expected AckTimeout")


async def test_server_side_emit_with_replies(start_server):
    s1, s2 = await two_servers(start_server)
    got = []

    @s2.io.on_server_event("hello")
    async def hello(arg):
        got.append(arg)
        return f"hi {arg}"

    await s1.io.server_side_emit("hello", "one")
    assert got == ["one"]
    assert await s1.io.server_side_emit_with_ack("hello", "two", timeout=5) == ["hi two"]
    assert await s2.io.sockets.adapter.server_count() == 2


async def test_a_single_server_has_no_other_server(start_server):
    io = roomd.Server()
    await start_server(io)
    await io.server_side_emit("nobody")
    assert await io.server_side_emit_with_ack("nobody", timeout=1) == []
    assert await io.sockets.adapter.server_count() == 1
    assert io.stats()["cluster"] == {"adapter": "memory"}


async def test_a_local_broadcast_stays_on_its_server(start_server, node):
    s1, s2 = await two_servers(start_server)
    a = await node.connect(s1.url, transports=WS)
    b = await node.connect(s2.url, transports=WS, force_new=True)
    published = s1.io.sockets.adapter.published
    await s1.io.local.emit("here")
    assert (await a.next_event("here")).args == []
    assert s1.io.sockets.adapter.published == published
    await s2.io.emit("marker")
    await b.next_event("marker")
    with pytest.raises(trio.TooSlowError):  # the marker came after: "here" never will
        await b.next_event("here", timeout=0.2)


def test_a_cluster_adapter_without_its_wire_calls_cannot_be_made():
    from roomd.cluster.base import RedisAdapterBase

    class Forgetful(RedisAdapterBase):  # no _publish_broadcast, no count_channel_subscribers
        mode = "forgetful"

    with pytest.raises(TypeError, match="abstract"):
        Forgetful("/", None, None)
