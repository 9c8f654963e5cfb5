"""The server side of the Socket.IO Admin UI (@socket.io/admin-ui 0.5.x).

Speaks what ``instrument()`` of that package speaks (its lib/index.ts), so the
UI's own page (admin.socket.io, or its ``ui/dist`` served anywhere) can log in
to roomd and show and drive it. Built only on roomd's public server API, like
the relay app.

- Namespace ``/admin`` (configurable). With basic auth, a client sends
  ``auth: {username, password}``; the password is checked against a bcrypt
  hash (in a worker thread, at most two at a time) and the client is sent a
  ``"session"`` id it may reconnect with (``auth: {sessionId}``; kept one
  day, at most 1000 at once). Anything else is refused with CONNECT_ERROR
  ``"invalid credentials"``.
- On connection: ``"config"`` ``{supportedFeatures}``; in development mode
  also ``"all_sockets"`` (every socket of every namespace, through
  ``fetch_sockets``).
- Every 2 s ``"server_stats"`` to the namespace (through the adapter, so every
  node's stats reach every admin client of a cluster): server id, hostname,
  pid, uptime, client counts, per-namespace socket counts and the traffic of
  the last interval as ``aggregatedEvents``.
- Development mode keeps the UI current: ``socket_connected``,
  ``socket_disconnected`` (with the reason), ``event_received`` at once;
  ``room_joined`` / ``room_left`` and ``socket_updated`` (transport, data)
  from a comparison of this node's sockets every second; ``event_sent`` from
  the server's event tap (lossy by design: a busy server drops tap records
  rather than slow down).
- The UI's actions, unless read-only: ``emit``, ``join``, ``leave``,
  ``_disconnect``, each with a namespace and an optional room filter. An
  action naming a namespace that does not exist, or malformed arguments, is
  ignored (and logged at info level); it never closes the admin connection.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import secrets
import socket as _socket
import time
from collections.abc import Iterable
from typing import Any

import bcrypt
import trio

from .._errors import ConnectRefused, RoomdError
from ..api.broadcast import RESERVED_EVENTS, BroadcastOperator, FetchedSocket
from ..api.namespace import Namespace
from ..api.server import Server
from ..api.socket import Socket

logger = logging.getLogger("roomd.admin_ui")

STATS_INTERVAL = 2.0  # the Admin UI expects server_stats every 2 s (unhealthy after 10 s)
SYNC_INTERVAL = 1.0  # how often memberships are compared for room_joined / room_left
SESSION_TTL = 86400.0  # a login session lasts one day, like the package's Redis store
MAX_SESSIONS = 1000
MAX_EVENT_SENT_FANOUT = 100  # event_sent records per broadcast, at most
BCRYPT_MAX_BYTES = 72  # bcrypt looks at the first 72 bytes (bcryptjs truncates too)
REDACTED_HEADERS = frozenset({"authorization", "cookie"})

FEATURES_WRITE = ["EMIT", "JOIN", "LEAVE", "DISCONNECT", "MJOIN", "MLEAVE", "MDISCONNECT"]


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _jsonable(value: Any) -> Any:
    """``value`` as JSON can carry it: what json cannot encode becomes its str()."""
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return str(value)


def serialize_socket(socket: FetchedSocket, namespace: str) -> dict[str, Any]:
    """A socket (this node's, or another's as a RemoteSocket) as the UI's SerializedSocket."""
    if isinstance(socket, Socket):
        handshake = socket.handshake.as_dict()
        transport: str | None = socket.transport
        client_id = socket.client_id
    else:
        remote = getattr(socket, "handshake", None)
        handshake = dict(remote) if isinstance(remote, dict) else {}
        transport, client_id = None, socket.id[:12]
    handshake.pop("auth", None)  # as the package does: auth holds credentials
    raw_headers = handshake.get("headers")
    headers = {k: ("[redacted]" if k in REDACTED_HEADERS else v)
               for k, v in (raw_headers if isinstance(raw_headers, dict) else {}).items()}
    handshake["headers"] = headers
    handshake["address"] = (headers.get("cf-connecting-ip") or headers.get("x-forwarded-for")
                            or handshake.get("address"))
    data = socket.data if isinstance(socket.data, dict) else {}
    return {
        "id": socket.id,
        "clientId": client_id,
        "transport": transport,
        "nsp": namespace,
        "data": _jsonable({k: v for k, v in data.items() if k != "_admin"}),
        "handshake": _jsonable(handshake),
        "rooms": sorted(socket.rooms),
    }


class _Sessions:
    """Login sessions: random ids with an expiry, bounded in number."""

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}

    def create(self) -> str:
        now = time.monotonic()
        self._expiry = {k: t for k, t in self._expiry.items() if t > now}
        while len(self._expiry) >= MAX_SESSIONS:
            del self._expiry[next(iter(self._expiry))]  # the oldest
        session = secrets.token_hex(8)
        self._expiry[session] = now + SESSION_TTL
        return session

    def valid(self, session: Any) -> bool:
        expiry = self._expiry.get(session) if isinstance(session, str) else None
        return expiry is not None and expiry > time.monotonic()


class AdminUI:
    """The Admin UI's namespace on a Server, as ``instrument(io, opts)`` sets it up.

    Its periodic work (:meth:`run`) is a background task of the server
    (``start_background_task``), so it runs whenever the server serves. Pass
    ``start=False`` to start :meth:`run` yourself instead. ``password_hash``
    None with ``auth`` False lets anyone in (the package's ``auth: false``).
    ``server_id`` defaults to ``"<hostname>#<pid>"`` so that several roomd
    processes on one host show as several servers.
    """

    def __init__(self, server: Server, *, namespace: str = "/admin", auth: bool = True,
                 username: str = "admin", password_hash: str | None = None,
                 readonly: bool = False, mode: str = "development",
                 server_id: str | None = None, start: bool = True) -> None:
        if auth and not password_hash:
            raise RoomdError("the Admin UI needs a bcrypt password hash unless auth is off")
        if mode not in ("development", "production"):
            raise RoomdError(f"Admin UI mode must be development or production, got {mode!r}")
        self.server = server
        self.name = namespace
        ns = server.of(namespace)
        assert isinstance(ns, Namespace)
        self.namespace: Namespace = ns
        self.username = username
        self.password_hash = password_hash.encode() if password_hash else None
        self.readonly = readonly
        self.development = mode == "development"
        self.hostname = _socket.gethostname()
        self.server_id = server_id or f"{self.hostname}#{os.getpid()}"
        self.features = ([] if readonly else list(FEATURES_WRITE)) + ["AGGREGATED_EVENTS"]
        if self.development:
            self.features.append("ALL_EVENTS")
        self._sessions = _Sessions()
        self._bcrypt_limiter = trio.CapacityLimiter(2)
        self._previous: dict[str, Any] | None = None
        self._attached: set[str] = set()  # "<namespace> <socket id>" with our handlers
        self._hooked: set[str] = set()  # namespaces with our connection handler
        self._rooms: dict[tuple[str, str], frozenset[str]] = {}  # last seen memberships
        self._looks: dict[tuple[str, str], tuple[str, str]] = {}  # last seen transport, data
        self._admins = 0  # admin clients connected to this process
        # With a cluster adapter, admin clients of other nodes may be watching: this node
        # then reports its sockets and events whether or not it has admin clients itself.
        self._clustered = server.adapter_factory.status().get("adapter", "memory") != "memory"
        self._admin_arrived = trio.Event()
        self._tap_scope: trio.CancelScope | None = None
        if auth:
            ns.use(self._authenticate)
        ns.on("connection", self._on_admin_connection)
        if not readonly:
            for event, handler in (("emit", self._emit), ("join", self._join),
                                   ("leave", self._leave), ("_disconnect", self._disconnect)):
                ns.on(event, self._guard(event, handler))
        if start:
            server.start_background_task(self.run)

    # -- logging in -------------------------------------------------------
    async def _authenticate(self, socket: Socket) -> None:
        auth = socket.handshake.auth if isinstance(socket.handshake.auth, dict) else {}
        if self._sessions.valid(auth.get("sessionId")):
            return
        username, password = auth.get("username"), auth.get("password")
        if (isinstance(username, str) and isinstance(password, str)
                and secrets.compare_digest(username.encode(), self.username.encode())
                and await self._password_ok(password)):
            socket.data["_admin_session"] = self._sessions.create()
            return
        logger.info("Admin UI login refused from %s", socket.handshake.address)
        raise ConnectRefused("invalid credentials")

    async def _password_ok(self, password: str) -> bool:
        assert self.password_hash is not None
        candidate = password.encode()[:BCRYPT_MAX_BYTES]
        return await trio.to_thread.run_sync(bcrypt.checkpw, candidate, self.password_hash,
                                             limiter=self._bcrypt_limiter)

    async def _on_admin_connection(self, socket: Socket) -> None:
        self._admins += 1
        self._admin_arrived.set()
        socket.on("disconnect", self._on_admin_gone)
        session = socket.data.pop("_admin_session", None)
        if session is not None:
            await socket.emit("session", session)
        await socket.emit("config", {"supportedFeatures": self.features})
        if self.development:
            # Bring the other admin clients and the comparison's baseline up to date first,
            # so that this client's snapshot and the changes it is sent later agree.
            await self._sync_once(exclude=socket.id)
            await socket.emit("all_sockets", await self.all_sockets())
        await socket.emit("server_stats", self.server_stats(advance=False))

    def _on_admin_gone(self, reason: str) -> None:
        self._admins -= 1
        if not self._watched() and self._tap_scope is not None:
            self._tap_scope.cancel()  # nobody to show events to: close the tap

    # -- what the UI is shown ------------------------------------------------
    async def all_sockets(self) -> list[dict[str, Any]]:
        out = []
        for name in self.server.namespace_names():
            for socket in await self.server.of(name).fetch_sockets():
                out.append(serialize_socket(socket, name))
        return out

    def server_stats(self, advance: bool = True) -> dict[str, Any]:
        """The ``server_stats`` payload; ``advance`` starts a new traffic interval."""
        m = self.server.metrics()
        connections = m["connections"]
        events: list[dict[str, Any]] = []
        previous = self._previous
        if previous is not None and advance:
            stamp = int(time.time()) * 1000
            for kind, key in (("rawConnection", "connections_opened"),
                              ("packetsIn", "messages_received"), ("packetsOut", "deliveries"),
                              ("bytesIn", "bytes_received"), ("bytesOut", "bytes_sent")):
                delta = m[key] - previous[key]
                if delta > 0:
                    events.append({"timestamp": stamp, "type": kind, "count": delta})
            for reason, count in m["disconnects"].items():
                delta = count - previous["disconnects"].get(reason, 0)
                if delta > 0:
                    events.append({"timestamp": stamp, "type": "rawDisconnection",
                                   "subType": reason, "count": delta})
        if advance or previous is None:
            self._previous = m
        return {
            "serverId": self.server_id,
            "hostname": self.hostname,
            "pid": os.getpid(),
            "uptime": m["uptime"],
            "clientsCount": sum(connections.values()),
            "pollingClientsCount": connections.get("polling", 0),
            "aggregatedEvents": events,
            "namespaces": [{"name": name, "socketsCount": figures["sockets"]}
                           for name, figures in sorted(m["namespaces"].items())],
        }

    # -- the UI's actions ---------------------------------------------------
    def _guard(self, event: str, handler: Any) -> Any:
        async def guarded(socket: Socket, *args: Any) -> None:
            try:
                await handler(*args)
            except _Ignored as exc:
                logger.info("Admin UI %r from %s ignored: %s", event, socket.id, exc)
            except RoomdError as exc:
                logger.info("Admin UI %r from %s failed: %s", event, socket.id, exc)
        return guarded

    def _target(self, nsp: Any, filter_: Any) -> BroadcastOperator:
        if not isinstance(nsp, str) or self.server.get_namespace(nsp) is None:
            raise _Ignored(f"no namespace {nsp!r}")
        operator = self.server.of(nsp).to(())
        if filter_ is None or filter_ == "":
            return operator
        if not isinstance(filter_, str):
            raise _Ignored("the room filter must be a string")
        return operator.to(filter_)

    async def _emit(self, nsp: Any = None, filter_: Any = None, event: Any = None,
                    *args: Any) -> None:
        if not isinstance(event, str) or not event or event in RESERVED_EVENTS:
            raise _Ignored("the event name must be a non-empty string and not reserved")
        await self._target(nsp, filter_).emit(event, *args)

    async def _join(self, nsp: Any = None, room: Any = None, filter_: Any = None) -> None:
        await self._target(nsp, filter_).sockets_join(_room(room))

    async def _leave(self, nsp: Any = None, room: Any = None, filter_: Any = None) -> None:
        await self._target(nsp, filter_).sockets_leave(_room(room))

    async def _disconnect(self, nsp: Any = None, close: Any = False,
                          filter_: Any = None) -> None:
        await self._target(nsp, filter_).disconnect_sockets(bool(close))

    # -- running ------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Emit ``server_stats`` every 2 s (and, in development mode, keep the
        UI's view of sockets, rooms and events current) until cancelled."""
        async with trio.open_nursery() as nursery:
            self.server_stats()  # the first interval starts now
            nursery.start_soon(self._stats_loop)
            if self.development:
                self._hook_namespaces()
                nursery.start_soon(self._sync_loop)
                await nursery.start(self._tap_loop)
            task_status.started()

    async def _stats_loop(self) -> None:
        while True:
            await trio.sleep(STATS_INTERVAL)
            await self.namespace.emit("server_stats", self.server_stats())

    def _watched(self) -> bool:
        return self._admins > 0 or self._clustered

    def _hook_namespaces(self) -> None:
        for name in self.server.namespace_names():
            if name not in self._hooked:
                self._hooked.add(name)
                self.server.of(name).on("connection", self._on_socket)

    async def _on_socket(self, socket: Socket) -> None:
        """Any namespace's new socket: tell the UI at once, follow its events."""
        name = socket.namespace.name
        key = f"{name} {socket.id}"
        if key in self._attached:
            return
        self._attached.add(key)
        self._rooms[(name, socket.id)] = frozenset(socket.rooms)
        self._looks[(name, socket.id)] = _looks(socket)
        if name != self.name:
            socket.on_any(lambda event, *args: self._event_received(name, socket.id, event, args))

        async def gone(reason: str) -> None:
            self._attached.discard(key)
            self._rooms.pop((name, socket.id), None)
            self._looks.pop((name, socket.id), None)
            if self._watched():
                await self.namespace.emit("socket_disconnected", name, socket.id, reason,
                                          _now_iso())
        socket.on("disconnect", gone)
        if self._watched():
            await self.namespace.emit("socket_connected", serialize_socket(socket, name),
                                      _now_iso())

    async def _event_received(self, name: str, sid: str, event: str, args: tuple) -> None:
        if self._watched():
            await self.namespace.emit("event_received", name, sid, [event, *args], _now_iso())

    async def _sync_loop(self) -> None:
        """Compare memberships every second: room_joined / room_left, and sockets
        this process did not see connect (in a namespace a family created since)."""
        while True:
            await trio.sleep(SYNC_INTERVAL)
            self._hook_namespaces()
            if self._watched():
                await self._sync_once()

    async def _sync_once(self, exclude: str | None = None) -> None:
        """One comparison of this node's sockets (each node reports its own, so that the
        UI hears of a change once); its events go to every admin client but ``exclude``."""
        to = self.namespace.except_(exclude) if exclude else self.namespace
        seen: set[tuple[str, str]] = set()
        for name in self.server.namespace_names():
            for socket in await self.server.of(name).local.fetch_sockets():
                if not isinstance(socket, Socket):
                    continue
                key = (name, socket.id)
                seen.add(key)
                rooms = frozenset(socket.rooms)
                before = self._rooms.get(key)
                if before is None:
                    await self._on_socket(socket)
                    continue
                self._rooms[key] = rooms
                await self._compare_looks(to, name, socket)
                stamp = _now_iso()
                for room in sorted(rooms - before):
                    await to.emit("room_joined", name, room, socket.id, stamp)
                for room in sorted(before - rooms):
                    await to.emit("room_left", name, room, socket.id, stamp)
        for key in [k for k in self._rooms if k not in seen]:
            del self._rooms[key]
            self._looks.pop(key, None)
            self._attached.discard(f"{key[0]} {key[1]}")
            await to.emit("socket_disconnected", key[0], key[1], "unknown", _now_iso())

    async def _compare_looks(self, to: Any, name: str, socket: Socket) -> None:
        """socket_updated when a socket's transport (an upgrade) or its data changed."""
        key = (name, socket.id)
        before, now = self._looks.get(key), _looks(socket)
        if before == now:
            return
        self._looks[key] = now
        update: dict[str, Any] = {"id": socket.id, "nsp": name}
        if before is None or before[0] != now[0]:
            update["transport"] = now[0]
        if before is None or before[1] != now[1]:
            update["data"] = json.loads(now[1])
        await to.emit("socket_updated", update)

    async def _tap_loop(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                        ) -> None:
        """Follow the event tap while an admin client is connected (an open tap costs the
        room manager a record per emit; none is kept open for nobody)."""
        task_status.started()
        while True:
            while not self._watched():
                self._admin_arrived = trio.Event()
                await self._admin_arrived.wait()
            with trio.CancelScope() as self._tap_scope:
                async with self.server.open_tap() as tap:
                    if not self._watched():
                        self._tap_scope.cancel()
                    async for record in tap:
                        await self._event_sent(record)
            self._tap_scope = None

    async def _event_sent(self, record: dict[str, Any]) -> None:
        namespace = record.get("namespace")
        if namespace == self.name or not isinstance(namespace, str):
            return
        args = [record.get("event"), *record.get("args", ())]
        stamp = _now_iso()
        for sid in self._recipients(namespace, record.get("rooms", ()), record.get("except", ())):
            await self.namespace.emit("event_sent", namespace, sid, args, stamp)

    def _recipients(self, namespace: str, rooms: Iterable[str],
                    except_rooms: Iterable[str]) -> list[str]:
        """The sockets a tap record reached, as far as the last comparison knows."""
        rooms, excluded = set(rooms), set(except_rooms)
        out = []
        for (name, sid), member_of in self._rooms.items():
            if name != namespace or (rooms and not rooms & member_of) or excluded & member_of:
                continue
            out.append(sid)
            if len(out) >= MAX_EVENT_SENT_FANOUT:
                break
        return out


def _looks(socket: Socket) -> tuple[str, str]:
    """What socket_updated reports of a socket: its transport and its data (as JSON)."""
    data = {k: v for k, v in socket.data.items() if k != "_admin"} if socket.data else {}
    return socket.transport, json.dumps(_jsonable(data), sort_keys=True)


class _Ignored(Exception):
    pass


def _room(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _Ignored("the room must be a non-empty string")
    return value
