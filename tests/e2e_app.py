"""The application the end-to-end tests run: "/" and "/orders", with handlers that echo,
record and answer, and a :class:`ServerLog` the test reads to see what the server saw.

Events every socket understands (in both namespaces):

- ``echo``: the ack is every argument back (a tuple: several ack arguments).
- ``sum``: the ack is one value, the sum of the arguments.
- ``note``: no ack; recorded in the log as ("event", namespace, sid, args).
- ``kiss``: binary round trip, the ack is ``[b"ack:" + arg, {"nested": arg}]``.
- ``ask_back``: the handler awaits ``socket.emit_with_ack("question", *args)`` and returns
  the client's answer as its own ack (logs ("ack_failed", ...) when none comes).
- ``whoami``: the ack is ``{"auth", "query", "sid", "ns", "eio"}`` of the server socket.

Namespace-level handler: ``/orders`` ``place`` is answered as ``("placed", socket.id, *args)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

import roomd


@dataclass
class Seen:
    kind: str
    namespace: str
    sid: str
    args: list = field(default_factory=list)


class ServerLog:
    """What the server's handlers saw, in order; ``await log.wait(kind, ...)`` bounded."""

    def __init__(self) -> None:
        self.items: list[Seen] = []
        self.sockets: dict[str, Any] = {}  # sid -> server Socket
        self._changed = trio.Event()

    def push(self, item: Seen) -> None:
        self.items.append(item)
        self._changed.set()
        self._changed = trio.Event()

    def find(self, kind: str, namespace: str | None = None, sid: str | None = None) -> list[Seen]:
        return [s for s in self.items if s.kind == kind
                and (namespace is None or s.namespace == namespace)
                and (sid is None or s.sid == sid)]

    async def wait(self, kind: str, namespace: str | None = None, sid: str | None = None,
                   timeout: float = 5) -> Seen:
        with trio.fail_after(timeout):
            while True:
                found = self.find(kind, namespace, sid)
                if found:
                    return found[0]
                await self._changed.wait()

    async def socket(self, namespace: str, timeout: float = 5,
                     match: Callable[[Any], bool] = lambda s: True) -> Any:
        """The newest connected server socket of ``namespace`` (waits for a connection)."""
        with trio.fail_after(timeout):
            while True:
                for sock in reversed(list(self.sockets.values())):
                    if sock.namespace.name == namespace and match(sock):
                        return sock
                await self._changed.wait()


def make_app(**server_kwargs: Any) -> tuple[roomd.Server, ServerLog]:
    io = roomd.Server(**server_kwargs)
    log = ServerLog()
    orders = io.of("/orders")

    def attach(socket: Any) -> None:
        ns = socket.namespace.name
        log.sockets[socket.id] = socket
        log.push(Seen("connection", ns, socket.id, [socket.handshake.auth]))

        @socket.on("echo")
        def echo(*args: Any) -> tuple:
            return args

        @socket.on("sum")
        async def total(*args: Any) -> Any:
            await trio.sleep(0)
            return sum(args)

        @socket.on("note")
        def note(*args: Any) -> None:
            log.push(Seen("event", ns, socket.id, list(args)))

        @socket.on("kiss")
        def kiss(data: bytes) -> tuple:
            assert isinstance(data, bytes), type(data)
            log.push(Seen("binary", ns, socket.id, [data]))
            return b"ack:" + data, {"nested": data}

        @socket.on("whoami")
        def whoami() -> dict:
            h = socket.handshake
            return {"auth": h.auth, "query": {k: v for k, v in h.query.items()},
                    "sid": socket.id, "ns": ns, "address": h.address}

        @socket.on("ask_back")
        async def ask_back(*args: Any) -> Any:
            # a handler awaiting the client's ack (server-to-client emit_with_ack)
            try:
                return await socket.emit_with_ack("question", *args, timeout=30)
            except roomd.AckTimeout as exc:
                log.push(Seen("ack_failed", ns, socket.id, [str(exc)]))
                return None

        @socket.on("disconnect")
        def disconnect(reason: str) -> None:
            log.push(Seen("disconnect", ns, socket.id, [reason]))

    io.on("connection", attach)
    orders.on("connection", attach)

    @orders.on("place")
    def place(socket: Any, *args: Any) -> tuple:
        return ("placed", socket.id, *args)

    return io, log


async def healthy_round_trip(sock: Any) -> None:
    """An emit_with_ack round trip on a harness client socket (node or raw python)."""
    assert await sock.emit_with_ack("sum", 2, 3) == [5]
