"""The Server: namespaces, the listener, and the operations on live state (its figures and
listings are :mod:`.introspection`'s)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import ssl
import time
import types
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, overload

import trio

from .._errors import ConfigError
from ..protocol import sio
from ..rooms.acks import AckRegistry
from ..rooms.adapter import AdapterContext, AdapterFactory, InMemoryAdapter
from ..rooms.delivery import Delivery
from ..rooms.manager import RoomManager
from ..rooms.recovery import RecoveryOptions
from ..rooms.taps import Taps
from ..transport.accept import serve_tcp
from ..transport.engine import (
    SHUTTING_DOWN,
    AllowRequest,
    ConnectionRefusal,
    Engine,
    EngineOptions,
    EngineSession,
)
from ..transport.http import handle_connection
from ..transport.tcp import TCPStream
from ..transport.timers import Timers
from .broadcast import BroadcastOperator, FetchedSocket
from .connection import Connection, ConnectionContext, IdleWorkers
from .introspection import Introspection
from .namespace import Namespace, NamespaceFamily
from .socket import Handler

logger = logging.getLogger("roomd.server")

# How long a graceful shutdown waits for the adapters to close (a cluster
# adapter announces its departure to the other nodes).
ADAPTER_CLOSE_TIMEOUT = 2.0

Lifespan = Callable[["Server"], contextlib.AbstractAsyncContextManager[Any]]


def _engine_limits(limits: dict[str, Any]) -> dict[str, Any]:
    """Check the keyword arguments that are EngineOptions limits (docs/limits.md)."""
    fields = {f.name: f.default for f in dataclasses.fields(EngineOptions)}
    out: dict[str, Any] = {}
    for key, value in limits.items():
        default = fields.get(key)
        if key not in _LIMIT_KEYS or default is None:
            raise TypeError(f"Server() got an unexpected keyword argument {key!r}")
        if isinstance(default, tuple):
            out[key] = tuple(str(v) for v in value)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{key} must be a number of at least 0, got {value!r}")
        if key.endswith("_timeout") and not value:
            raise ConfigError(f"{key} must be greater than 0")
        kind: Any = type(default)
        out[key] = kind(value)
    return out


_LIMIT_KEYS = frozenset({
    "outbox_bytes", "memory_budget", "connections_per_ip", "sessions_per_ip_rate",
    "sessions_per_ip_burst", "exempt_addresses", "trusted_proxies", "max_half_open",
    "head_timeout", "body_timeout", "keepalive_timeout", "send_timeout", "upgrade_timeout"})


class Server:
    """A Socket.IO v5 server.

    Times are in seconds and sizes in bytes. ``cors_origins`` lists the
    origins allowed to connect from a browser ("*" for any); empty means no
    CORS headers and no Origin check. ``outbox_limit`` bounds each
    connection's queue of unsent messages; a client that lets it fill is a
    slow consumer and ``slow_consumer`` says what happens: "disconnect" (the
    default) or "drop" (its messages are dropped until it catches up).
    ``adapter`` makes each namespace's adapter: in memory by default, a
    cluster adapter factory to share rooms with other servers.

    ``max_concurrent_handlers`` caps the handlers one connection runs at
    once (1: each finishes before the next starts). A handler's exception
    is logged and the connection stays, unless ``disconnect_on_handler_error``.
    ``json_default(obj)`` encodes argument types JSON lacks beyond those
    roomd handles itself (datetime, date, time, UUID, Decimal); it is
    process-wide. ``allow_request(request)`` may refuse a handshake before
    any session exists (see :data:`AllowRequest`).
    ``connection_state_recovery`` turns Socket.IO's connection state
    recovery on: a mapping such as ``{"max_disconnection_duration": 120,
    "skip_middlewares": True}``, a ``RecoveryOptions``, or True for the
    defaults (see docs/recovery.md). It is off by default, as in Node:
    clients without recovery support see each event's offset as an extra
    last argument.
    The limits on what clients may make the server hold (``outbox_bytes``,
    ``memory_budget``, the per-address caps, the half-open cap and the
    timeouts of every wait on a client) are described, with their defaults,
    in docs/limits.md; each is an :class:`~roomd.transport.options.EngineOptions`
    field of the same name.
    Raises ConfigError for an invalid setting.
    """

    def __init__(self, *, ping_interval: float = 25, ping_timeout: float = 20,
                 max_payload: int = 1_000_000, connect_timeout: float = 45,
                 cors_origins: Sequence[str] | None = None, path: str = "/socket.io/",
                 outbox_limit: int = 1024, slow_consumer: str = "disconnect",
                 max_connections: int = 0,
                 transports: Sequence[str] = ("polling", "websocket"),
                 adapter: AdapterFactory | None = None,
                 max_concurrent_handlers: int = 16,
                 disconnect_on_handler_error: bool = False,
                 json_default: Callable[[Any], Any] | None = None,
                 allow_request: AllowRequest | None = None,
                 connection_state_recovery: (
                     RecoveryOptions | Mapping[str, Any] | bool | None) = None,
                 **limits: Any) -> None:
        if ping_interval <= 0 or ping_timeout <= 0 or connect_timeout <= 0:
            raise ConfigError("ping_interval, ping_timeout and connect_timeout must be positive")
        if max_concurrent_handlers < 1:
            raise ConfigError("max_concurrent_handlers must be at least 1")
        if max_payload < 1 or outbox_limit < 1 or max_connections < 0:
            raise ConfigError("max_payload and outbox_limit must be positive")
        if slow_consumer not in ("disconnect", "drop"):
            raise ConfigError("slow_consumer must be 'disconnect' or 'drop'")
        if not path.startswith("/"):
            raise ConfigError("path must start with '/'")
        unknown = set(transports) - {"polling", "websocket"}
        if unknown or not transports:
            raise ConfigError(
                f"transports must be 'polling' and/or 'websocket', got {transports!r}")
        self.options = EngineOptions(
            ping_interval=float(ping_interval), ping_timeout=float(ping_timeout),
            max_payload=int(max_payload), path=path.rstrip("/") + "/",
            cors_origins=tuple(cors_origins or ()), outbox_limit=int(outbox_limit),
            max_connections=int(max_connections), transports=tuple(transports),
            **_engine_limits(limits))
        self.connect_timeout = float(connect_timeout)
        self._timers = Timers()
        self.engine = Engine(self.options, self._timers, self._on_session)
        self.manager = RoomManager(self.engine.write_batch)
        self._taps = Taps()
        self._acks = AckRegistry()
        self._delivery = Delivery(slow_consumer)
        self.adapter_factory = adapter or AdapterFactory()
        self.recovery = RecoveryOptions.from_value(connection_state_recovery)
        self._adapter_context = AdapterContext(self.manager, self._delivery, self._taps,
                                               self._acks, self._on_server_event, self.recovery)
        self._namespaces: dict[str, Namespace] = {}
        self._families: list[NamespaceFamily] = []
        self._connections: dict[str, Connection] = {}
        self._connection_context = ConnectionContext(
            self._resolve_namespace, self._spawn, self._connections, self._timers,
            self.connect_timeout, max_concurrent_handlers, disconnect_on_handler_error,
            manager=self.manager, idle_workers=IdleWorkers(self._timers))
        if json_default is not None:
            sio.set_json_default(json_default)
        self.engine.allow_request = allow_request
        self._lifespans: list[Lifespan] = []
        self._background: trio.Nursery | None = None
        self._pending_background: list[tuple[Callable[..., Awaitable[Any]], tuple]] = []
        self._drained = trio.Event()
        self._finished: trio.Event | None = None
        self._scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._accept_scope: trio.CancelScope | None = None
        self.listen_addresses: list[str] = []
        self.started_at: float | None = None
        # Counters kept by apps and middlewares (rate limits, refused tokens), shown by
        # ``roomd status``: name -> count.
        self.counters: dict[str, int] = {}
        # Read for each accepted connection, so a new context (a reloaded certificate)
        # serves new connections while the open ones keep theirs.
        self.ssl_context: ssl.SSLContext | None = None
        self._introspection = Introspection(self, self._namespaces, self._taps, self._delivery,
                                            self._acks, self._connection_context.counters)
        self.of("/")

    # -- namespaces -----------------------------------------------------
    @overload
    def of(self, name: str) -> Namespace: ...

    @overload
    def of(self, name: re.Pattern[str] | Callable[[str, Any], Any]) -> NamespaceFamily: ...

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
                namespace = self._namespaces[name] = Namespace(
                    name, self._make_adapter(name), self._acks)
            return namespace
        family = NamespaceFamily(name, self._make_adapter, self._acks)
        self._families.append(family)
        return family

    def _make_adapter(self, name: str) -> InMemoryAdapter:
        adapter = self.adapter_factory.create(name, self._adapter_context)
        if self._nursery is not None:
            self._nursery.start_soon(adapter.init)
        return adapter

    @property
    def connections(self) -> Mapping[str, Connection]:
        """The open (or still closing) connections by session id, read-only."""
        return types.MappingProxyType(self._connections)

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

    @property
    def local(self) -> BroadcastOperator:
        return self.sockets.local

    async def emit(self, event: str, *args: Any) -> None:
        await self.sockets.emit(event, *args)

    async def emit_with_ack(self, event: str, *args: Any, timeout: float) -> list[Any]:
        return await self.sockets.emit_with_ack(event, *args, timeout=timeout)

    async def fetch_sockets(self) -> list[FetchedSocket]:
        return await self.sockets.fetch_sockets()

    async def sockets_join(self, *rooms: str | Iterable[str]) -> None:
        await self.sockets.sockets_join(*rooms)

    async def sockets_leave(self, *rooms: str | Iterable[str]) -> None:
        await self.sockets.sockets_leave(*rooms)

    async def disconnect_sockets(self, close: bool = False) -> None:
        await self.sockets.disconnect_sockets(close)

    async def server_side_emit(self, event: str, *args: Any) -> None:
        await self.sockets.server_side_emit(event, *args)

    async def server_side_emit_with_ack(self, event: str, *args: Any,
                                        timeout: float) -> list[Any]:
        return await self.sockets.server_side_emit_with_ack(event, *args, timeout=timeout)

    def on_server_event(self, event: str, handler: Handler | None = None) -> Any:
        """``on_server_event`` of the main namespace."""
        return self.sockets.on_server_event(event, handler)

    def on_connection_error(self, handler: Callable[[ConnectionRefusal], Any]
                            ) -> Callable[[ConnectionRefusal], Any]:
        """Register ``handler(refusal)`` for every refused Engine.IO request.

        Like Node's ``io.engine.on("connection_error")``: the refusal has the
        Engine.IO error ``code`` and ``message``, a ``context`` that says why,
        and the client's ``address`` and ``url``. The handler runs in the
        request's task and must not block; its exceptions are logged.
        """
        self.engine.error_listeners.append(handler)
        return handler

    # -- application lifespan -------------------------------------------
    def lifespan(self, factory: Lifespan) -> Lifespan:
        """Register an app lifespan (usable as a decorator).

        ``factory(server)`` returns an async context manager (write it with
        ``contextlib.asynccontextmanager``): it is entered once the server
        runs, before it accepts connections, and exited after a graceful
        :meth:`shutdown` has drained the clients (or under cancellation when
        the server is cancelled instead). An exception on entry stops
        :meth:`serve` with that exception.
        """
        self._lifespans.append(factory)
        return factory

    def start_background_task(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` beside the server, in its own task.

        Started at once when serving, else when :meth:`serve` starts. Such
        tasks are cancelled after the graceful drain, before the lifespans
        exit. An exception in one is logged; the server keeps serving.
        """
        if self._background is not None:
            self._background.start_soon(self._run_background, fn, args)
        else:
            self._pending_background.append((fn, args))

    @staticmethod
    async def _run_background(fn: Callable[..., Awaitable[Any]], args: tuple) -> None:
        try:
            await fn(*args)
        except Exception:
            logger.exception("background task %s failed", getattr(fn, "__name__", fn))

    # -- what the other layers are handed --------------------------------
    def _on_session(self, session: EngineSession) -> Connection:
        return Connection(session, self._connection_context)

    def _spawn(self, task: Any) -> None:
        assert self._nursery is not None, "the server is not serving"
        self._nursery.start_soon(task)

    async def _on_server_event(self, namespace: str, args: list, reply: Any) -> None:
        target = self._namespaces.get(namespace)
        if target is not None:
            await target.server_event(args, reply)

    # -- running --------------------------------------------------------
    async def serve(self, host: str = "127.0.0.1", port: int = 3000, *,
                    listeners: list[trio.SocketListener] | None = None,
                    ssl_context: ssl.SSLContext | None = None,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled or :meth:`shutdown` completes.

        ``task_status.started`` gets the bound port (useful with port 0).
        Pass ``listeners`` to serve sockets bound elsewhere (systemd socket
        activation). With ``ssl_context`` (see ``roomd.transport.tls``) every
        connection is TLS (https and wss); assigning :attr:`ssl_context` later
        changes it for new connections. Raises OSError when the address
        cannot be bound.
        """
        if self._scope is not None:
            raise RuntimeError("this Server is already serving")
        if ssl_context is not None:
            self.ssl_context = ssl_context
        if listeners is None:
            # The kernel's net.core.somaxconn decides the listen queue (see
            # ops.daemon.LISTEN_BACKLOG): a reconnect storm waits there.
            listeners = await trio.open_tcp_listeners(port, host=host, backlog=None)
        self.listen_addresses = []
        for listener in listeners:
            sockname = listener.socket.getsockname()
            self.listen_addresses.append(f"{sockname[0]}:{sockname[1]}")
        bound_port = listeners[0].socket.getsockname()[1]
        self._drained = trio.Event()
        self._finished = trio.Event()
        try:
            with trio.CancelScope() as self._scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self._timers.run)
                    await nursery.start(self.manager.run)
                    await nursery.start(self.adapter_factory.run)
                    self._nursery = self.engine.nursery = nursery
                    for namespace in list(self._namespaces.values()):
                        await namespace.adapter.init()
                    async with contextlib.AsyncExitStack() as lifespans:
                        for factory in self._lifespans:
                            await lifespans.enter_async_context(factory(self))
                        async with trio.open_nursery() as background:
                            self._background = background
                            pending, self._pending_background = self._pending_background, []
                            for fn, args in pending:
                                background.start_soon(self._run_background, fn, args)
                            self.engine.accepting = True
                            self.started_at = time.time()
                            self._accept_scope = trio.CancelScope()
                            nursery.start_soon(self._accept, listeners, nursery)
                            logger.info("listening on %s%s", ", ".join(self.listen_addresses),
                                        " (TLS)" if self.ssl_context is not None else "")
                            task_status.started(bound_port)
                            await self._drained.wait()
                            background.cancel_scope.cancel()
                        self._background = None
                    await self._close_adapters()
                    nursery.cancel_scope.cancel()
        finally:
            self._scope = None
            self._nursery = self._background = None
            self._finished.set()

    async def _close_adapters(self) -> None:
        """Let each adapter say goodbye (a cluster adapter tells the others), briefly."""
        with trio.move_on_after(ADAPTER_CLOSE_TIMEOUT):
            for namespace in list(self._namespaces.values()):
                try:
                    await namespace.adapter.close()
                except Exception:
                    logger.exception("adapter of %s failed to close", namespace.name)

    async def _accept(self, listeners: list[trio.SocketListener], nursery: trio.Nursery) -> None:
        assert self._accept_scope is not None
        with self._accept_scope:
            await serve_tcp(self._handle_tcp, listeners, nursery)

    def _handle_tcp(self, stream: TCPStream, address: str) -> Awaitable[None]:
        # Not a coroutine function itself: the connection's task runs handle_connection's
        # coroutine directly (one frame less per idle connection).
        return handle_connection(self.engine, stream, self.ssl_context, address)

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop gracefully: stop accepting, close every socket, drain.

        As Node's ``io.close()``: every socket's disconnect handlers run with
        the reason "server shutting down", and every Engine.IO session closes
        (a long-polling client gets the close packet, a WebSocket the close
        frame 1001) without a Socket.IO DISCONNECT, so stock clients reconnect
        with their backoff (to the next server) instead of staying away.
        Queued messages get up to ``grace`` seconds to leave. Then background
        tasks are cancelled, the lifespans exit, and :meth:`serve` returns;
        this returns when it has.
        """
        if self._scope is None or self._finished is None:
            return
        self.engine.accepting = False
        if self._accept_scope is not None:
            self._accept_scope.cancel()
        with trio.move_on_after(grace):
            for connection in list(self._connections.values()):
                await connection.close(SHUTTING_DOWN)
            while (self._connections or self.engine.live_websockets
                   or self.engine.closing_polls or self.engine.polls_in_flight):
                await trio.sleep(0.02)
        self._drained.set()
        await self._finished.wait()

    # -- introspection (the admin socket's backend, in introspection.py) ------
    def stats(self) -> dict[str, Any]:
        """Figures for ``roomd status``."""
        return self._introspection.stats()

    def metrics(self) -> dict[str, Any]:
        """Every counter and gauge, read at once (cheap: no actor round trip)."""
        return self._introspection.metrics()

    def namespace_names(self) -> list[str]:
        return sorted(self._namespaces)

    def get_namespace(self, name: str) -> Namespace | None:
        """The namespace of that name if it exists (never creates one)."""
        return self._namespaces.get(name)

    async def rooms_snapshot(self, namespace: str | None = None) -> list[dict]:
        return await self._introspection.rooms_snapshot(namespace)

    async def cluster_rooms(self, namespace: str | None = None) -> list[dict]:
        """Every room of the cluster (this node's alone without a cluster adapter)."""
        return await self._introspection.cluster_rooms(namespace)

    def sockets_snapshot(self, namespace: str | None = None, room: str | None = None
                         ) -> list[dict]:
        return self._introspection.sockets_snapshot(namespace, room)

    def open_tap(self) -> Any:
        """An async context manager yielding a channel of emitted-event dicts."""
        return self._introspection.open_tap()

    async def admin_emit(self, namespace: str, event: str, args: list, rooms: list[str],
                         except_rooms: list[str]) -> int:
        """Emit from the admin socket; returns the number of local recipients."""
        return await self._introspection.admin_emit(namespace, event, args, rooms, except_rooms)

    async def admin_disconnect(self, sid: str) -> bool:
        """Disconnect the socket with that id (in any namespace)."""
        return await self._introspection.admin_disconnect(sid)
