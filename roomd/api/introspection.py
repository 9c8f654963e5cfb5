"""What a running Server says about itself, and the admin socket's two actions.

``roomd status`` (:meth:`Introspection.stats`), the one snapshot of every
counter and gauge that the Prometheus collector and the Admin UI read
(:meth:`Introspection.metrics`), the admin socket's listings (rooms, cluster
rooms, sockets, the event tap) and its actions (emit, disconnect). The
:class:`~roomd.api.server.Server` hands it the parts it reads and offers each
of these as a method of its own. The figures are read synchronously, without
the RoomManager actor (trio runs one task at a time); the room listings and
the actions go through the adapters.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._version import VERSION
from ..rooms.acks import AckRegistry
from ..rooms.delivery import Delivery
from ..rooms.taps import Taps
from .connection import ConnectionCounters
from .namespace import Namespace

if TYPE_CHECKING:
    from .server import Server


class Introspection:
    """One server's figures and listings; ``namespaces`` is the server's own live mapping."""

    def __init__(self, server: Server, namespaces: Mapping[str, Namespace], taps: Taps,
                 delivery: Delivery, acks: AckRegistry, counters: ConnectionCounters) -> None:
        self._server = server  # its public state: engine, started_at, listen_addresses, ...
        self._namespaces = namespaces
        self._taps = taps
        self._delivery = delivery
        self._acks = acks
        self._counters = counters

    def stats(self) -> dict[str, Any]:
        """Figures for ``roomd status``."""
        now = time.time()
        sockets = rooms = 0
        for namespace in self._namespaces.values():
            n_sockets, n_rooms = namespace.adapter.counts()
            sockets += n_sockets
            rooms += n_rooms
        return {
            "version": VERSION,
            "started_at": self._server.started_at,
            "uptime": now - self._server.started_at if self._server.started_at else 0.0,
            "listen": list(self._server.listen_addresses),
            "connections": len(self._server.engine.sessions),
            "sockets": sockets,
            "namespaces": len(self._namespaces),
            "rooms": rooms,
            "events_total": self._taps.events_total,
            "events_per_second": round(self._taps.rate(), 2),
            "slow_consumers": self._delivery.slow_consumers,
            "broadcasts_awaiting_acks": self._acks.waiting,
            "cluster": self._server.adapter_factory.status(),
            "closed": dict(self._server.engine.closes),  # sessions closed, by reason
            "refused": self._refused(),  # Engine.IO requests refused, by HTTP status
            "recovery": self._recovery_stats(),
            **self._server.counters,
        }

    def _refused(self) -> dict[str, int]:
        """{"HTTP 503": n, ...}: the refusal counters (``metrics``) by status alone."""
        refused: dict[str, int] = {}
        for (status, _), count in self._server.engine.refusals.items():
            key = f"HTTP {status}"
            refused[key] = refused.get(key, 0) + count
        return refused

    def _recovery_stats(self) -> dict[str, Any] | None:
        """What the recovery stores of every namespace hold (None when off)."""
        if self._server.recovery is None:
            return None
        total = {"namespaces": 0, "sessions": 0, "packets": 0, "bytes": 0}
        for namespace in self._namespaces.values():
            held = namespace.adapter.recovery_status()
            if held is not None:
                total["namespaces"] += 1
                for key, value in held.items():
                    total[key] += value
        return total

    def metrics(self) -> dict[str, Any]:
        """Every counter and gauge, read at once (cheap: no actor round trip).

        What ``roomd.ops.metrics`` exports and the Admin UI's ``server_stats``
        are built from; docs/metrics.md says what each means. ``cluster`` is
        the adapter factory's ``status()``.
        """
        engine, delivery, acks = self._server.engine, self._delivery, self._acks
        counters = self._counters
        transports = {"polling": 0, "websocket": 0}
        for session in engine.sessions.values():
            transports[session.transport] = transports.get(session.transport, 0) + 1
        namespaces = {}
        for name, namespace in self._namespaces.items():
            sockets, rooms = namespace.adapter.counts()
            namespaces[name] = {"sockets": sockets, "rooms": rooms}
        return {
            "uptime": time.time() - self._server.started_at if self._server.started_at else 0.0,
            "connections": transports,
            "connections_opened": engine.sessions_opened,
            "disconnects": dict(engine.closes),
            "http_refusals": dict(engine.refusals),
            # docs/limits.md: the process budget and the half-open connections now
            "memory_budget": {"used": engine.budget.used, "peak": engine.budget.peak,
                              "limit": engine.budget.limit},
            "half_open": engine.admission.half_open,
            "namespaces": namespaces,
            "messages_received": engine.messages_in,
            "bytes_received": engine.bytes_in,
            "events_received": counters.events_received,
            "events_sent": self._taps.events_total,
            "broadcasts": delivery.broadcasts,
            "deliveries": delivery.deliveries,
            "bytes_sent": delivery.bytes_out,
            "dropped": delivery.dropped,
            "acks_received": acks.received,
            "ack_timeouts": acks.timeouts,
            "handler_errors": counters.handler_errors,
            "connect_errors": counters.connect_errors,
            "cluster": self._server.adapter_factory.status(),
            "recovery": self._recovery_stats(),
            "counters": dict(self._server.counters),
        }

    async def rooms_snapshot(self, namespace: str | None = None) -> list[dict]:
        out: list[dict] = []
        for name, ns in sorted(self._namespaces.items()):
            if namespace is None or name == namespace:
                out.extend(await ns.adapter.rooms_snapshot())
        return out

    async def cluster_rooms(self, namespace: str | None = None) -> list[dict]:
        """Every room of the cluster (this node's alone without a cluster adapter).

        Each entry has ``local``, the members on this node, and ``private``
        when the room is a socket's own. Raises ClusterTimeout (with what did
        answer) when a node stays silent.
        """
        out: list[dict] = []
        for name, ns in sorted(self._namespaces.items()):
            if namespace is not None and name != namespace:
                continue
            rooms = await ns.adapter.all_rooms()
            socket_ids = {s.id for s in await ns.fetch_sockets()}
            local = {r["room"]: len(r["members"]) for r in await ns.adapter.rooms_snapshot()}
            for room in sorted(rooms):
                out.append({"namespace": name, "room": room, "local": local.get(room, 0),
                            "private": room in socket_ids})
        return out

    def sockets_snapshot(self, namespace: str | None = None, room: str | None = None
                         ) -> list[dict]:
        out = []
        for name, ns in sorted(self._namespaces.items()):
            if namespace is not None and name != namespace:
                continue
            for socket in ns.sockets.values():
                rooms = socket.rooms
                if room is not None and room not in rooms:
                    continue
                out.append({"id": socket.id, "namespace": name, "rooms": sorted(rooms),
                            "transport": socket.transport, "address": socket.handshake.address,
                            "connected_at": socket.handshake.time})
        return out

    def open_tap(self) -> Any:
        """An async context manager yielding a channel of emitted-event dicts."""
        return self._taps.open()

    async def admin_emit(self, namespace: str, event: str, args: list, rooms: list[str],
                         except_rooms: list[str]) -> int:
        """Emit from the admin socket; returns the number of local recipients.

        An unknown namespace has no recipients.
        """
        target = self._namespaces.get(namespace)
        if target is None:
            return 0
        return await target.to(rooms).except_(except_rooms).emit_counted(
            event, *args, source="admin")

    async def admin_disconnect(self, sid: str) -> bool:
        """Disconnect the socket with that id (in any namespace)."""
        for ns in self._namespaces.values():
            socket = ns.get_socket(sid)
            if socket is not None:
                await socket.disconnect()
                return True
        return False
