"""The relay app: what ``roomd serve`` runs when no application is given.

Per configured namespace, clients may join and leave rooms themselves and
publish events to rooms, within the room-name patterns the configuration
allows. Every client event of the relay is answered by ack when the client
asked for one; a refusal is always an ``{"error": "..."}`` ack, never silence.

Client events (namespace-level handlers):

``join``    (room | [rooms])            -> {"rooms": [...]} (the socket's rooms after)
``leave``   (room | [rooms])            -> {"rooms": [...]}
``publish`` (room | [rooms], event, *args) -> {"recipients": N}
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable
from typing import Any, Protocol

from ..api.broadcast import RESERVED_EVENTS
from ..api.server import Server
from ..api.socket import Socket

logger = logging.getLogger("roomd.relay")

MAX_ROOM_NAME = 256
MAX_ROOMS_PER_REQUEST = 100


class RelayPolicy(Protocol):
    """What the configuration says of one namespace (``[[namespaces]]``)."""

    @property
    def name(self) -> str: ...

    @property
    def client_join(self) -> bool: ...

    @property
    def client_leave(self) -> bool: ...

    @property
    def client_publish(self) -> bool: ...

    @property
    def rooms(self) -> Iterable[str]: ...


class _Refused(Exception):
    pass


def _room_list(value: Any) -> list[str]:
    rooms = [value] if isinstance(value, str) else value
    if not isinstance(rooms, list) or not rooms or not all(isinstance(r, str) for r in rooms):
        raise _Refused("rooms must be a room name or a non-empty list of room names")
    if len(rooms) > MAX_ROOMS_PER_REQUEST:
        raise _Refused(f"at most {MAX_ROOMS_PER_REQUEST} rooms per request")
    return rooms


class _RelayNamespace:
    def __init__(self, server: Server, policy: RelayPolicy) -> None:
        self.server = server
        self.set_policy(policy)
        namespace = server.of(policy.name)
        self.namespace = namespace
        namespace.on("join", self._guard(self.join))
        namespace.on("leave", self._guard(self.leave))
        namespace.on("publish", self._guard(self.publish))

    def set_policy(self, policy: RelayPolicy) -> None:
        self.policy = policy
        self.patterns = tuple(policy.rooms)

    def _guard(self, handler: Any) -> Any:
        async def guarded(socket: Socket, *args: Any) -> dict:
            try:
                return await handler(socket, *args)
            except _Refused as refusal:
                return {"error": str(refusal)}
        guarded.__name__ = handler.__name__
        return guarded

    def _check_rooms(self, socket: Socket, value: Any, *, joining: bool) -> list[str]:
        rooms = _room_list(value)
        for room in rooms:
            if not room or len(room) > MAX_ROOM_NAME:
                raise _Refused(f"room names must be 1 to {MAX_ROOM_NAME} characters")
            if not any(fnmatch.fnmatchcase(room, p) for p in self.patterns):
                raise _Refused(f"room {room!r} is not allowed in {self.policy.name}")
            # Another socket's own room would let a client read its private messages
            # (a disconnected socket's too, while it may be recovered).
            if joining and room != socket.id and self.namespace.adapter.is_socket_room(room):
                raise _Refused(f"room {room!r} is a socket's private room")
        return rooms

    async def join(self, socket: Socket, rooms: Any = None, *_: Any) -> dict:
        if not self.policy.client_join:
            raise _Refused(f"joining rooms is not allowed in {self.policy.name}")
        await socket.join(self._check_rooms(socket, rooms, joining=True))
        return {"rooms": sorted(socket.rooms)}

    async def leave(self, socket: Socket, rooms: Any = None, *_: Any) -> dict:
        if not self.policy.client_leave:
            raise _Refused(f"leaving rooms is not allowed in {self.policy.name}")
        names = _room_list(rooms)
        if socket.id in names:
            raise _Refused("a socket cannot leave its own room")
        await socket.leave(names)
        return {"rooms": sorted(socket.rooms)}

    async def publish(self, socket: Socket, rooms: Any = None, event: Any = None,
                      *args: Any) -> dict:
        if not self.policy.client_publish:
            raise _Refused(f"publishing is not allowed in {self.policy.name}")
        names = self._check_rooms(socket, rooms, joining=False)
        if not isinstance(event, str) or not event or event in RESERVED_EVENTS:
            raise _Refused("the event name must be a non-empty string and not reserved")
        recipients = await socket.to(names).emit_counted(event, *args, source="client")
        return {"recipients": recipients}


class RelayApp:
    """The relay's handlers on a Server, one policy per namespace."""

    def __init__(self, server: Server, policies: Iterable[RelayPolicy]) -> None:
        self.server = server
        self.namespaces: dict[str, _RelayNamespace] = {}
        for policy in policies:
            self.namespaces[policy.name] = _RelayNamespace(server, policy)

    def update(self, policies: Iterable[RelayPolicy]) -> None:
        """Apply new policies (on SIGHUP).

        A namespace that disappears from the configuration refuses every
        client request from then on; a new one is added. Connected clients
        keep their rooms.
        """
        seen = set()
        for policy in policies:
            seen.add(policy.name)
            relay = self.namespaces.get(policy.name)
            if relay is None:
                self.namespaces[policy.name] = _RelayNamespace(self.server, policy)
            else:
                relay.set_policy(policy)
        for name, relay in self.namespaces.items():
            if name not in seen:
                relay.set_policy(_Closed(name))


class _Closed:
    """The policy of a namespace removed from the configuration."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.client_join = self.client_leave = self.client_publish = False
        self.rooms: tuple[str, ...] = ()
