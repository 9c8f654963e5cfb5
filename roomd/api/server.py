"""The Server: namespaces, the listener, and the operations on live state."""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import trio

from .._errors import ConfigError
from ..rooms.manager import RoomManager, Target
from ..transport.engine import Engine, EngineOptions, EngineSession
from ..transport.http import handle_connection
from ..transport.timers import Timers
from .acks import BroadcastAcks
from .broadcast import BroadcastOperator, encode_event
from .connection import Connection
from .namespace import Namespace, NamespaceFamily
from .socket import Handler, Socket

logger = logging.getLogger("roomd")

VERSION = "0.1.0"


class Server:
    """A Socket.IO v5 server.

    Times are in seconds and sizes in bytes. ``cors_origins`` lists the
    origins allowed to connect from a browser ("*" for any); empty means no
    CORS headers and no Origin check. ``outbox_limit`` bounds each
    connection's queue of unsent messages; a client that lets it fill is a
    slow consumer and ``slow_consumer`` says what happens: "disconnect" (the
    default) or "drop" (its messages are dropped until it catches up).
    """

    def __init__(self, *, ping_interval: float = 25, ping_timeout: float = 20,
                 max_payload: int = 1_000_000, connect_timeout: float = 45,
                 cors_origins: Sequence[str] | None = None, path: str = "/socket.io/",
                 outbox_limit: int = 1024, slow_consumer: str = "disconnect",
                 max_connections: int = 0,
                 transports: Sequence[str] = ("polling", "websocket")) -> None:
        if ping_interval <= 0 or ping_timeout <= 0 or connect_timeout <= 0:
            raise ConfigError("ping_interval, ping_timeout and connect_timeout must be positive")
        if max_payload < 1 or outbox_limit < 1 or max_connections < 0:
            raise ConfigError("max_payload and outbox_limit must be positive")
        if slow_consumer not in ("disconnect", "drop"):
            raise ConfigError("slow_consumer must be 'disconnect' or 'drop'")
        if not path.startswith("/"):
            raise ConfigError("path must start with '/'")
        unknown = set(transports) - {"polling", "websocket"}
        if unknown or not transports:
            raise ConfigError(f"transports must be 'polling' and/or 'websocket', got {transports!r}")
        self.options = EngineOptions(
            ping_interval=float(ping_interval), ping_timeout=float(ping_timeout),
            max_payload=int(max_payload), path=path.rstrip("/") + "/",
            cors_origins=tuple(cors_origins or ()), outbox_limit=int(outbox_limit),
            max_connections=int(max_connections), transports=tuple(transports))
        self.connect_timeout = float(connect_timeout)
        self._timers = Timers()
        self._engine = Engine(self.options, self._timers, self._on_session)
        self._manager = RoomManager(slow_consumer, self._engine.write_batch)
        self._namespaces: dict[str, Namespace] = {"/": Namespace(self, "/")}
        self._families: list[NamespaceFamily] = []
        self._connections: dict[str, Connection] = {}
        self._ack_ids = itertools.count(1)
        self._broadcast_acks = BroadcastAcks()
        self._scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._accept_scope: trio.CancelScope | None = None
        self.listen_addresses: list[str] = []
        self.started_at: float | None = None
        self._rate_mark = (0.0, 0)

    # -- namespaces -----------------------------------------------------
    def of(self, name: str | re.Pattern[str] | Callable[[str, Any], Any]
           ) -> Namespace | NamespaceFamily:
        """The namespace of that name (created if new), or a dynamic family.

        A compiled regular expression or a predicate ``fn(name, auth)``
        declares a family: a matching namespace is created on its first
        connection.
        """
        if isinstance(name, str):
            if not name.startswith("/"):
                name = "/" + name
            namespace = self._namespaces.get(name)
            if namespace is None:
                namespace = self._namespaces[name] = Namespace(self, name)
            return namespace
        family = NamespaceFamily(self, name)
        self._families.append(family)
        return family

    @property
    def sockets(self) -> Namespace:
        """The main namespace "/"."""
        return self._namespaces["/"]

    async def _resolve_namespace(self, name: str, auth: Any) -> Namespace | None:
        namespace = self._namespaces.get(name)
        if namespace is not None:
            return namespace
        for family in self._families:
            if name in family.children:
                return family.children[name]
            if await family.matches(name, auth):
                namespace = self._namespaces[name] = family.create(name)
                return namespace
        return None

    def on(self, event: str, handler: Handler | None = None) -> Any:
        """``on`` of the main namespace."""
        return self.sockets.on(event, handler)

    def use(self, middleware: Callable[..., Any]) -> Callable[..., Any]:
        """``use`` of the main namespace."""
        return self.sockets.use(middleware)

    def to(self, *rooms: str | Iterable[str]) -> BroadcastOperator:
        return self.sockets.to(*rooms)

    in_ = to

    def except_(self, *rooms: str | Iterable[str]) -> BroadcastOperator:
        return self.sockets.except_(*rooms)

    @property
    def volatile(self) -> BroadcastOperator:
        return self.sockets.volatile

    async def emit(self, event: str, *args: Any) -> None:
        await self.sockets.emit(event, *args)

    async def emit_with_ack(self, event: str, *args: Any, timeout: float) -> list[Any]:
        return await self.sockets.emit_with_ack(event, *args, timeout=timeout)

    async def fetch_sockets(self) -> list[Socket]:
        return await self.sockets.fetch_sockets()

    async def sockets_join(self, *rooms: str | Iterable[str]) -> None:
        await self.sockets.sockets_join(*rooms)

    async def sockets_leave(self, *rooms: str | Iterable[str]) -> None:
        await self.sockets.sockets_leave(*rooms)

    async def disconnect_sockets(self, close: bool = False) -> None:
        await self.sockets.disconnect_sockets(close)

    # -- internals used by the other layers ------------------------------
    def _next_ack_id(self) -> int:
        return next(self._ack_ids)

    @staticmethod
    def _tap_record(event: str, args: tuple | list, source: str) -> dict:
        """What ``roomd tail`` shows of an emitted event (and what counts it)."""
        return {"event": event, "args": args, "source": source}

    def _on_session(self, session: EngineSession) -> Connection:
        return Connection(self, session)

    def _nursery_for_connections(self) -> trio.Nursery:
        assert self._nursery is not None, "the server is not serving"
        return self._nursery

    # -- running --------------------------------------------------------
    async def serve(self, host: str = "127.0.0.1", port: int = 3000, *,
                    listeners: list[trio.SocketListener] | None = None,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled or :meth:`shutdown` completes.

        ``task_status.started`` gets the bound port (useful with port 0).
        Pass ``listeners`` to serve sockets bound elsewhere (systemd socket
        activation). Raises OSError when the address cannot be bound.
        """
        if self._scope is not None:
            raise RuntimeError("this Server is already serving")
        if listeners is None:
            listeners = await trio.open_tcp_listeners(port, host=host, backlog=4096)
        self.listen_addresses = []
        for listener in listeners:
            sockname = listener.socket.getsockname()
            self.listen_addresses.append(f"{sockname[0]}:{sockname[1]}")
        bound_port = listeners[0].socket.getsockname()[1]
        with trio.CancelScope() as self._scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._timers.run)
                await nursery.start(self._manager.run)
                self._nursery = self._engine.nursery = nursery
                self._engine.accepting = True
                self.started_at = time.time()
                self._accept_scope = trio.CancelScope()
                nursery.start_soon(self._accept, listeners, nursery)
                logger.info("listening on %s", ", ".join(self.listen_addresses))
                task_status.started(bound_port)
        self._scope = None

    async def _accept(self, listeners: list[trio.SocketListener], nursery: trio.Nursery) -> None:
        assert self._accept_scope is not None
        with self._accept_scope:
            await trio.serve_listeners(self._handle_tcp, listeners, handler_nursery=nursery)

    async def _handle_tcp(self, stream: trio.SocketStream) -> None:
        await handle_connection(self._engine, stream)

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop gracefully: stop accepting, disconnect every socket, drain.

        Each client gets a Socket.IO DISCONNECT for each namespace; queued
        messages get up to ``grace`` seconds to leave. Then :meth:`serve`
        returns.
        """
        if self._scope is None:
            return
        self._engine.accepting = False
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        with trio.move_on_after(grace):
            for connection in list(self._connections.values()):
                await connection.disconnect_all("server shutting down")
            while self._connections or self._engine.live_websockets:
                await trio.sleep(0.02)
        if self._scope is not None:
            self._scope.cancel()

    # -- introspection (the admin socket's backend) ----------------------
    def stats(self) -> dict[str, Any]:
        """Figures for ``roomd status``."""
        now = time.time()
        counts = self._manager.counts()
        total = self._manager.events_total
        mark_time, mark_total = self._rate_mark
        rate = (total - mark_total) / (now - mark_time) if mark_time and now > mark_time else 0.0
        self._rate_mark = (now, total)
        return {
            "version": VERSION,
            "started_at": self.started_at,
            "uptime": now - self.started_at if self.started_at else 0.0,
            "listen": list(self.listen_addresses),
            "connections": len(self._engine.sessions),
            "sockets": counts["sockets"],
            "namespaces": len(self._namespaces),
            "rooms": counts["rooms"],
            "events_total": total,
            "events_per_second": round(rate, 2),
        }

    def namespace_names(self) -> list[str]:
        return sorted(self._namespaces)

    async def rooms_snapshot(self, namespace: str | None = None) -> list[dict]:
        return await self._manager.rooms_snapshot(namespace)

    def sockets_snapshot(self, namespace: str | None = None, room: str | None = None
                         ) -> list[dict]:
        out = []
        for name, ns in sorted(self._namespaces.items()):
            if namespace is not None and name != namespace:
                continue
            for socket in ns._sockets.values():
                rooms = socket._member.rooms
                if room is not None and room not in rooms:
                    continue
                session = socket._connection.session
                out.append({"id": socket.id, "namespace": name, "rooms": sorted(rooms),
                            "transport": session.transport, "address": session.request.address,
                            "connected_at": session.connected_at})
        return out

    def open_tap(self) -> Any:
        """An async context manager yielding a channel of emitted-event dicts."""
        return self._manager.open_tap()

    async def admin_emit(self, namespace: str, event: str, args: list, rooms: list[str],
                         except_rooms: list[str]) -> int:
        """Emit from the admin socket; returns the number of recipients."""
        message = encode_event(namespace, event, tuple(args))
        recipients = await self._manager.broadcast(
            Target((namespace,), rooms, except_rooms), message,
            tap={"event": event, "args": list(args), "source": "admin"}, wait=True)
        return len(recipients or ())

    async def admin_disconnect(self, sid: str) -> bool:
        """Disconnect the socket with that id (in any namespace)."""
        for ns in self._namespaces.values():
            socket = ns._sockets.get(sid)
            if socket is not None:
                await socket.disconnect()
                return True
        return False
