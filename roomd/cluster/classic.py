"""The classic Redis adapter: @socket.io/redis-adapter's ``createAdapter`` protocol.

Per namespace: PSUBSCRIBE ``<key>#<nsp>#*`` (broadcasts; a broadcast to one
room comes on that room's channel and is dropped at once by a node without
a socket in it), SUBSCRIBE the request channel (its subscriber count is the
server count) and both response channels. What @socket.io/redis-emitter
publishes arrives the same way.

Two departures from the Node.js adapter, both invisible on the wire:
sockets_join/leave and disconnect_sockets are applied to this node's
sockets at once (the Node adapter waits for its own request to come back
from Redis, so they do nothing while Redis is down) and this node's own
requests are ignored when they come back; answers go to the requester's
own response channel (``<key>-response#<nsp>#<uid>#``, which every 8.x
node subscribes to) rather than to every node.
"""

from __future__ import annotations

import logging
from typing import Any

from ..rooms.adapter import InMemoryAdapter
from ..rooms.records import BroadcastOptions, Emission
from . import wire
from .base import PendingRequest, RedisAdapterBase, ack_window, first
from .wire import RequestType

logger = logging.getLogger("roomd.cluster")


class ClassicRedisAdapter(RedisAdapterBase):
    """One namespace's rooms, shared through classic Redis pub/sub."""

    mode = "classic"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.uid = wire.classic_uid()
        self._response_channel = self.channels.specific_response(self.uid)

    async def init(self) -> None:
        link, ch = self.link, self.channels
        link.psubscribe(ch.pattern, self._on_broadcast)
        link.subscribe(ch.request, self._on_request)
        link.subscribe(ch.response, self._on_response)
        link.subscribe(self._response_channel, self._on_response)

    async def close(self) -> None:
        link, ch = self.link, self.channels
        link.punsubscribe(ch.pattern)
        for channel in (ch.request, ch.response, self._response_channel):
            link.unsubscribe(channel)

    async def count_channel_subscribers(self) -> int | None:
        return await self.link.subscriber_count(self.channels.request)

    # -- publishing ------------------------------------------------------------------
    async def _request(self, body: dict[str, Any]) -> None:
        body["uid"] = self.uid
        await self.link.send(self.channels.request, wire.encode_request(body))

    def _answer(self, request: dict[str, Any], body: dict[str, Any]) -> None:
        uid = request.get("uid")
        channel = (self.channels.specific_response(uid) if isinstance(uid, str) and uid
                   else self.channels.response)
        self.link.publish(channel, wire.encode_request(body))

    async def _publish_broadcast(self, emission: Emission, opts: BroadcastOptions) -> None:
        emission.parts()  # an argument that cannot be encoded fails before anything is sent
        channel, payload = wire.encode_classic_broadcast(
            self.uid, self.namespace, emission.data, opts.rooms, opts.except_rooms, opts.volatile,
            self.channels)
        await self.link.send(channel, payload)

    @staticmethod
    def _opts(opts: BroadcastOptions) -> dict[str, Any]:
        return {"rooms": list(opts.rooms), "except": list(opts.except_rooms)}

    def new_request_id(self) -> str:
        return wire.request_id()

    async def _publish_broadcast_with_ack(self, emission: Emission, request_id: str,
                                          opts: dict[str, Any]) -> None:
        await self._request({
            "requestId": request_id, "type": int(RequestType.BROADCAST),
            "packet": wire.encode_packet(self.namespace, emission.data), "opts": opts})

    async def _publish_fetch_sockets(self, opts: BroadcastOptions, request_id: str) -> None:
        await self._request({"requestId": request_id, "type": int(RequestType.REMOTE_FETCH),
                             "opts": self._opts(opts)})

    async def _publish_sockets_join(self, opts: BroadcastOptions, rooms: list[str]) -> None:
        await self._request({"type": int(RequestType.REMOTE_JOIN), "opts": self._opts(opts),
                             "rooms": rooms})

    async def _publish_sockets_leave(self, opts: BroadcastOptions, rooms: list[str]) -> None:
        await self._request({"type": int(RequestType.REMOTE_LEAVE), "opts": self._opts(opts),
                             "rooms": rooms})

    async def _publish_disconnect_sockets(self, opts: BroadcastOptions, close: bool) -> None:
        await self._request({"type": int(RequestType.REMOTE_DISCONNECT),
                             "opts": self._opts(opts), "close": bool(close)})

    async def _publish_server_side_emit(self, args: list, request_id: str | None) -> None:
        if request_id is None:
            await self._request({"type": int(RequestType.SERVER_SIDE_EMIT), "data": list(args)})
        else:
            await self._request({"requestId": request_id,
                                 "type": int(RequestType.SERVER_SIDE_EMIT), "data": list(args)})

    # -- the operations this protocol has beyond the shared ones --------------------------
    async def all_rooms(self) -> set[str]:
        rooms = await super().all_rooms()
        servers = await self.server_count()
        if servers <= 1:
            return rooms
        request_id = self.new_request_id()
        request = self.requests[request_id] = PendingRequest(servers - 1)
        self.factory.stats.sent("all_rooms")
        await self._request({"requestId": request_id, "type": int(RequestType.ALL_ROOMS)})
        complete = await self.wait_answers("all_rooms", request_id, request)
        rooms.update(wire.room_list(request.items))
        if not complete:
            raise self.timed_out("all_rooms", request, sorted(rooms))
        return rooms

    # -- what arrives -------------------------------------------------------------------
    async def _on_broadcast(self, channel: str, payload: bytes) -> None:
        room = self.channels.room_of(channel)
        if room is None:
            return
        if room and room not in self.rooms and self.recovery is None:
            # A room this node has no socket in: not even decoded. With connection
            # state recovery the log keeps it for sockets that may come back.
            return
        try:
            message = wire.decode_classic_broadcast(payload)
        except wire.WireError as exc:
            logger.debug("%s: dropped a broadcast: %s", self.namespace, exc)
            return
        if message.uid == self.uid or message.namespace != self.namespace:
            return
        await self.apply_broadcast(message.data, message.target)

    async def _on_request(self, channel: str, payload: bytes) -> None:
        try:
            request = wire.decode_request(payload)
            await self._handle_request(request)
        except wire.WireError as exc:
            logger.debug("%s: dropped a request: %s", self.namespace, exc)

    async def _handle_request(self, request: dict[str, Any]) -> None:
        kind = request.get("type")
        request_id = request.get("requestId")
        own = request.get("uid") == self.uid
        if own or (request_id is not None and request_id in self.requests):
            return
        if kind == RequestType.BROADCAST:
            if request_id in self.ack_requests:
                return
            await self._answer_broadcast(request)
        elif kind == RequestType.REMOTE_FETCH:
            details = await self.local_details(wire.decode_opts(request.get("opts")))
            self._answer(request, {"requestId": request_id, "sockets": details})
        elif kind == RequestType.ALL_ROOMS:
            self._answer(request, {"requestId": request_id, "rooms": list(self.rooms)})
        elif kind == RequestType.SOCKETS:
            target = wire.Target(wire.room_list(request.get("rooms")), frozenset())
            members = await InMemoryAdapter.fetch_sockets(self, BroadcastOptions(
                target.rooms, local=True))
            self._answer(request, {"requestId": request_id, "sockets": [m.id for m in members]})
        elif kind in (RequestType.REMOTE_JOIN, RequestType.REMOTE_LEAVE):
            await self._join_or_leave(request, kind == RequestType.REMOTE_JOIN)
        elif kind == RequestType.REMOTE_DISCONNECT:
            self.apply_disconnect(self._target(request), bool(request.get("close")))
        elif kind == RequestType.SERVER_SIDE_EMIT:
            self._server_event(request)

    def _target(self, request: dict[str, Any]) -> wire.Target:
        if "opts" in request:
            return wire.decode_opts(request["opts"])
        sid = request.get("sid")  # the pre-7.x form: one socket by id
        if not isinstance(sid, str):
            raise wire.WireError("a request needs opts or sid")
        return wire.Target(frozenset((sid,)), frozenset())

    async def _join_or_leave(self, request: dict[str, Any], join: bool) -> None:
        target = self._target(request)
        rooms = request.get("rooms") if "opts" in request else [request.get("room")]
        if join:
            await self.apply_join(target, rooms)
        else:
            await self.apply_leave(target, rooms)
        if "opts" not in request and request.get("requestId") is not None:
            self._answer(request, {"requestId": request["requestId"]})

    def _server_event(self, request: dict[str, Any]) -> None:
        request_id = request.get("requestId")
        reply = None
        if request_id is not None:
            def reply(args: list) -> None:
                self._answer(request, {"type": int(RequestType.SERVER_SIDE_EMIT),
                                       "requestId": request_id, "data": first(args)})
        self.apply_server_event(request.get("data"), reply)

    async def _answer_broadcast(self, request: dict[str, Any]) -> None:
        namespace, data = wire.decode_packet(request.get("packet"))
        target = wire.decode_opts(request.get("opts"))
        request_id = request.get("requestId")

        def on_count(count: int) -> None:
            self._answer(request, {"type": int(RequestType.BROADCAST_CLIENT_COUNT),
                                   "requestId": request_id, "clientCount": count})

        def on_ack(value: Any) -> None:
            self._answer(request, {"type": int(RequestType.BROADCAST_ACK),
                                   "requestId": request_id, "packet": value})

        await self.apply_broadcast_with_ack(
            data, target, ack_window(request.get("opts"), self.request_timeout), on_count, on_ack)

    async def _on_response(self, channel: str, payload: bytes) -> None:
        try:
            response = wire.decode_request(payload)
        except wire.WireError as exc:
            logger.debug("%s: dropped a response: %s", self.namespace, exc)
            return
        request_id = response.get("requestId")
        if not isinstance(request_id, str):
            return
        acks = self.ack_requests.get(request_id)
        if acks is not None:
            kind = response.get("type")
            if kind == RequestType.BROADCAST_CLIENT_COUNT:
                acks.count(response.get("clientCount"))
            elif kind == RequestType.BROADCAST_ACK:
                acks.ack(request_id, response.get("packet"))
            return
        request = self.requests.get(request_id)
        if request is None:
            return
        items = response.get("sockets")
        if items is None:
            items = response.get("rooms")
        request.add(response, items if isinstance(items, list) else None)
