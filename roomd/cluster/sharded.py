"""The sharded Redis adapter: @socket.io/redis-adapter's ``createShardedAdapter``.

Speaks socket.io-adapter's ClusterAdapter protocol over sharded pub/sub
(Redis 7: SSUBSCRIBE/SPUBLISH), on a single Redis or a Redis Cluster, in
the Node adapter's default "dynamic" subscription mode: per namespace the
main channel ``<key>#<nsp>#``, this node's response channel
``<key>#<nsp>#<uid>#``, and one channel per room this node has a socket in
(socket-id rooms excepted). A broadcast without acks to exactly one such
room goes to that room's channel, so only the nodes with a socket in it
receive it; everything else goes to the main channel. Answers go to the
requester's response channel. The server count is SHARDNUMSUB of the main
channel.

The protocol has no all-rooms request: ``all_rooms`` is this node's rooms,
as with the Node.js sharded adapter. @socket.io/redis-emitter publishes with
PUBLISH only, so it cannot reach a sharded cluster.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from ..rooms.records import BroadcastOptions, Emission, Member
from . import wire
from .base import RedisAdapterBase, ack_window, first
from .wire import MessageType

logger = logging.getLogger("roomd.cluster")


class ShardedRedisAdapter(RedisAdapterBase):
    """One namespace's rooms, shared through sharded Redis pub/sub."""

    mode = "sharded"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.uid = wire.cluster_uid()
        self._response_channel = self.channels.sharded_response(self.uid)
        self._room_channels: set[str] = set()

    async def init(self) -> None:
        self.link.subscribe(self.channels.broadcast, self._on_message)
        self.link.subscribe(self._response_channel, self._on_message)

    async def close(self) -> None:
        for channel in (self.channels.broadcast, self._response_channel,
                        *self._room_channels):
            self.link.unsubscribe(channel)
        self._room_channels.clear()

    async def count_channel_subscribers(self) -> int | None:
        return await self.link.subscriber_count(self.channels.broadcast)

    # -- room channels follow this node's rooms (run in the manager task) ----------------
    def _join(self, member: Member, rooms: tuple[str, ...]) -> None:
        new = [room for room in rooms if room not in self.rooms]
        super()._join(member, rooms)
        for room in new:
            if room in self.rooms and room not in self.members:
                channel = self.channels.room(room)
                self._room_channels.add(channel)
                self.link.subscribe(channel, self._on_message)

    def _leave(self, member: Member, rooms: tuple[str, ...]) -> None:
        super()._leave(member, rooms)
        for room in rooms:
            channel = self.channels.room(room)
            if room not in self.rooms and channel in self._room_channels:
                if self.recovery is not None:
                    # A kept session may come back to this room: its broadcasts must
                    # still reach this node's log until the session expired.
                    self._unsubscribe_later(room, channel)
                else:
                    self._unsubscribe_room(channel)

    def _unsubscribe_room(self, channel: str) -> None:
        self._room_channels.discard(channel)
        self.link.unsubscribe(channel)

    def _unsubscribe_later(self, room: str, channel: str) -> None:
        assert self.recovery is not None
        delay = self.recovery.max_disconnection_duration

        async def later() -> None:
            await trio.sleep(delay)
            if room not in self.rooms and channel in self._room_channels:
                self._unsubscribe_room(channel)
        self.spawn(later)

    # -- publishing ------------------------------------------------------------------
    def _publish(self, kind: MessageType, data: dict[str, Any], channel: str | None = None) -> None:
        payload = wire.encode_cluster_message(self.uid, self.namespace, kind, data)
        self.link.publish(channel or self.channels.broadcast, payload)

    async def _send_message(self, kind: MessageType, data: dict[str, Any],
                    channel: str | None = None) -> None:
        payload = wire.encode_cluster_message(self.uid, self.namespace, kind, data)
        await self.link.send(channel or self.channels.broadcast, payload)

    def _answer(self, requester: str, kind: MessageType, data: dict[str, Any]) -> None:
        self._publish(kind, data, self.channels.sharded_response(requester))

    @staticmethod
    def _opts(opts: BroadcastOptions) -> dict[str, Any]:
        return wire.encode_opts(opts.rooms, opts.except_rooms, opts.volatile)

    async def _publish_broadcast(self, emission: Emission, opts: BroadcastOptions) -> None:
        emission.parts()  # an argument that cannot be encoded fails before anything is sent
        channel = None
        if len(opts.rooms) == 1:
            (room,) = opts.rooms
            if not wire.looks_like_socket_id(room):
                channel = self.channels.room(room)
        await self._send_message(MessageType.BROADCAST, {
            "packet": wire.encode_packet(None, emission.data),
            "opts": self._opts(opts)}, channel)

    def new_request_id(self) -> str:
        return wire.cluster_uid()

    async def _publish_broadcast_with_ack(self, emission: Emission, request_id: str,
                                          opts: dict[str, Any]) -> None:
        await self._send_message(MessageType.BROADCAST, {
            "packet": wire.encode_packet(None, emission.data), "requestId": request_id,
            "opts": opts})

    async def _publish_fetch_sockets(self, opts: BroadcastOptions, request_id: str) -> None:
        await self._send_message(MessageType.FETCH_SOCKETS,
                                 {"opts": self._opts(opts), "requestId": request_id})

    async def _publish_sockets_join(self, opts: BroadcastOptions, rooms: list[str]) -> None:
        await self._send_message(MessageType.SOCKETS_JOIN,
                                 {"opts": self._opts(opts), "rooms": rooms})

    async def _publish_sockets_leave(self, opts: BroadcastOptions, rooms: list[str]) -> None:
        await self._send_message(MessageType.SOCKETS_LEAVE,
                                 {"opts": self._opts(opts), "rooms": rooms})

    async def _publish_disconnect_sockets(self, opts: BroadcastOptions, close: bool) -> None:
        await self._send_message(MessageType.DISCONNECT_SOCKETS,
                                 {"opts": self._opts(opts), "close": bool(close)})

    async def _publish_server_side_emit(self, args: list, request_id: str | None) -> None:
        if request_id is None:
            await self._send_message(MessageType.SERVER_SIDE_EMIT, {"packet": list(args)})
        else:
            await self._send_message(MessageType.SERVER_SIDE_EMIT,
                                     {"requestId": request_id, "packet": list(args)})

    # -- what arrives -------------------------------------------------------------------
    async def _on_message(self, channel: str, payload: bytes) -> None:
        try:
            message = wire.decode_cluster_message(payload)
            if message["uid"] == self.uid or message["nsp"] != self.namespace:
                return
            await self._handle(message)
        except wire.WireError as exc:
            logger.debug("%s: dropped a message: %s", self.namespace, exc)

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        data = message.get("data") or {}
        requester = message["uid"]
        if kind == MessageType.BROADCAST:
            namespace, event = wire.decode_packet(data.get("packet"))
            target = wire.decode_opts(data.get("opts"))
            request_id = data.get("requestId")
            if request_id is None:
                await self.apply_broadcast(event, target)
            else:
                await self._answer_broadcast(requester, request_id, event, target,
                                             data.get("opts"))
        elif kind == MessageType.SOCKETS_JOIN:
            await self.apply_join(wire.decode_opts(data.get("opts")), data.get("rooms"))
        elif kind == MessageType.SOCKETS_LEAVE:
            await self.apply_leave(wire.decode_opts(data.get("opts")), data.get("rooms"))
        elif kind == MessageType.DISCONNECT_SOCKETS:
            self.apply_disconnect(wire.decode_opts(data.get("opts")), bool(data.get("close")))
        elif kind == MessageType.FETCH_SOCKETS:
            details = await self.local_details(wire.decode_opts(data.get("opts")))
            self._answer(requester, MessageType.FETCH_SOCKETS_RESPONSE,
                         {"requestId": data.get("requestId"), "sockets": details})
        elif kind == MessageType.SERVER_SIDE_EMIT:
            self._server_event(requester, data)
        else:
            self._on_response(kind, data)

    def _server_event(self, requester: str, data: dict[str, Any]) -> None:
        request_id = data.get("requestId")
        reply = None
        if request_id is not None:
            def reply(args: list) -> None:
                self._answer(requester, MessageType.SERVER_SIDE_EMIT_RESPONSE,
                             {"requestId": request_id, "packet": first(args)})
        self.apply_server_event(data.get("packet"), reply)

    async def _answer_broadcast(self, requester: str, request_id: Any, event: list,
                                target: wire.Target, opts: Any) -> None:
        def on_count(count: int) -> None:
            self._answer(requester, MessageType.BROADCAST_CLIENT_COUNT,
                         {"requestId": request_id, "clientCount": count})

        def on_ack(value: Any) -> None:
            self._answer(requester, MessageType.BROADCAST_ACK,
                         {"requestId": request_id, "packet": value})

        await self.apply_broadcast_with_ack(
            event, target, ack_window(opts, self.request_timeout), on_count, on_ack)

    def _on_response(self, kind: int, data: dict[str, Any]) -> None:
        request_id = data.get("requestId")
        if not isinstance(request_id, str):
            return
        if kind in (MessageType.BROADCAST_CLIENT_COUNT, MessageType.BROADCAST_ACK):
            acks = self.ack_requests.get(request_id)
            if acks is None:
                return
            if kind == MessageType.BROADCAST_CLIENT_COUNT:
                acks.count(data.get("clientCount"))
            else:
                acks.ack(request_id, data.get("packet"))
            return
        request = self.requests.get(request_id)
        if request is None:
            return
        if kind == MessageType.FETCH_SOCKETS_RESPONSE:
            sockets = data.get("sockets")
            request.add(data, sockets if isinstance(sockets, list) else None)
        elif kind == MessageType.SERVER_SIDE_EMIT_RESPONSE:
            request.add({"data": data.get("packet")})
