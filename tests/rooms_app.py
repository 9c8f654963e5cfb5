"""A small roomd application for the rooms / namespaces tests.

``install(nsp)`` registers namespace-level handlers that let a client drive the
server-side API (each answers by ack):

- ``join`` (room | [rooms]) / ``leave`` (room | [rooms]) -> the socket's rooms, sorted
- ``rooms`` () -> the socket's rooms, sorted
- ``to`` (rooms, event, *args)        -> socket.to(rooms).emit(event, *args)
- ``broadcast`` (event, *args)        -> socket.broadcast.emit(event, *args)
- ``broadcast_except`` (rooms, event, *args) -> socket.broadcast.except_(rooms).emit(...)

The connection handler copies ``auth["user"]`` into ``socket.data`` and records
every socket's ``disconnecting`` / ``disconnect`` (reason, rooms) in ``log``.
"""

from __future__ import annotations

from typing import Any

import roomd


class RoomsApp:
    def __init__(self) -> None:
        # (phase, socket id, namespace, reason, rooms) for disconnecting / disconnect
        self.log: list[tuple[str, str, str, str, set[str]]] = []
        self.connected: list[roomd.Socket] = []

    def install(self, nsp: Any) -> Any:
        @nsp.on("connection")
        def connection(socket: roomd.Socket) -> None:
            auth = socket.handshake.auth
            if isinstance(auth, dict) and "user" in auth:
                socket.data["user"] = auth["user"]
            self.connected.append(socket)

            def disconnecting(reason: str) -> None:
                self.log.append(("disconnecting", socket.id, socket.namespace.name, reason,
                                 socket.rooms))

            def disconnect(reason: str) -> None:
                self.log.append(("disconnect", socket.id, socket.namespace.name, reason,
                                 socket.rooms))

            socket.on("disconnecting", disconnecting)
            socket.on("disconnect", disconnect)

        @nsp.on("join")
        async def join(socket: roomd.Socket, rooms: Any) -> list[str]:
            await socket.join(rooms)
            return sorted(socket.rooms)

        @nsp.on("leave")
        async def leave(socket: roomd.Socket, rooms: Any) -> list[str]:
            await socket.leave(rooms)
            return sorted(socket.rooms)

        @nsp.on("rooms")
        def rooms(socket: roomd.Socket) -> list[str]:
            return sorted(socket.rooms)

        @nsp.on("to")
        async def to(socket: roomd.Socket, rooms: Any, event: str, *args: Any) -> str:
            await socket.to(rooms).emit(event, *args)
            return "ok"

        @nsp.on("broadcast")
        async def broadcast(socket: roomd.Socket, event: str, *args: Any) -> str:
            await socket.broadcast.emit(event, *args)
            return "ok"

        @nsp.on("broadcast_except")
        async def broadcast_except(socket: roomd.Socket, rooms: Any, event: str,
                                   *args: Any) -> str:
            await socket.broadcast.except_(rooms).emit(event, *args)
            return "ok"

        return nsp

    def events(self, sid: str) -> list[tuple[str, str, set[str]]]:
        """(phase, reason, rooms) recorded for socket ``sid``."""
        return [(phase, reason, rooms) for phase, s, _, reason, rooms in self.log if s == sid]


def make_server(*namespaces: str, **server_kwargs: Any) -> tuple[roomd.Server, RoomsApp]:
    """A Server with the app installed on "/" and on each of ``namespaces``."""
    io = roomd.Server(**server_kwargs)
    app = RoomsApp()
    app.install(io.sockets)
    for name in namespaces:
        app.install(io.of(name))
    return io, app


def count(client: Any, name: str, sock: Any = None) -> int:
    """How many ``name`` events a harness client has received (for a node socket: on it)."""
    handle = getattr(sock, "handle", sock)
    return sum(1 for ev in client.inbox.all
               if ev.name == name and (handle is None or ev.sock == handle))
