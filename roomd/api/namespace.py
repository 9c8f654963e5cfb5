"""Namespaces: their handlers, middlewares, sockets and adapter.

A :class:`Namespace` has a fixed name and its own adapter (its rooms). A
:class:`NamespaceFamily` is declared by a regular expression or a
predicate; each concrete namespace it matches is created on its first
connection and shares the family's handlers and middlewares, like
Socket.IO's parent namespaces.
"""

from __future__ import annotations

import abc
import inspect
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

import trio

from .._errors import AckTimeout
from ..rooms.acks import AckRegistry
from ..rooms.adapter import InMemoryAdapter
from .broadcast import BroadcastOperator, FetchedSocket, check_event
from .socket import Handler, Socket, call_handler

logger = logging.getLogger("roomd.api")

Middleware = Callable[..., Any]
AdapterMaker = Callable[[str], InMemoryAdapter]


class _Handlers:
    """Handlers and middlewares, shared by a family and its namespaces."""

    def __init__(self) -> None:
        self.handlers: dict[str, list[Handler]] = {}
        self.server_handlers: dict[str, list[Handler]] = {}
        self.middlewares: list[Middleware] = []


class _Target(abc.ABC):
    """The broadcast shortcuts every namespace-like object offers."""

    @abc.abstractmethod
    def adapters(self) -> Iterable[InMemoryAdapter]:
        """The adapters an operation on this object covers."""

    def _operator(self) -> BroadcastOperator:
        return BroadcastOperator(self.adapters)

    def to(self, *rooms: str | Iterable[str]) -> BroadcastOperator:
        return self._operator().to(*rooms)

    in_ = to

    def except_(self, *rooms: str | Iterable[str]) -> BroadcastOperator:
        return self._operator().except_(*rooms)

    @property
    def volatile(self) -> BroadcastOperator:
        return self._operator().volatile

    @property
    def local(self) -> BroadcastOperator:
        return self._operator().local

    async def emit(self, event: str, *args: Any) -> None:
        await self._operator().emit(event, *args)

    async def emit_with_ack(self, event: str, *args: Any, timeout: float) -> list[Any]:
        return await self._operator().emit_with_ack(event, *args, timeout=timeout)

    async def fetch_sockets(self) -> list[FetchedSocket]:
        return await self._operator().fetch_sockets()

    async def sockets_join(self, *rooms: str | Iterable[str]) -> None:
        await self._operator().sockets_join(*rooms)

    async def sockets_leave(self, *rooms: str | Iterable[str]) -> None:
        await self._operator().sockets_leave(*rooms)

    async def disconnect_sockets(self, close: bool = False) -> None:
        await self._operator().disconnect_sockets(close)


class _Registrar(_Target):
    _shared: _Handlers

    def on(self, event: str, handler: Handler | None = None) -> Any:
        """Register a handler (usable as a decorator).

        ``connection`` handlers get the new socket. Any other event name
        registers a handler for that event on every socket of the namespace,
        called as ``handler(socket, *args)``; its return value is the ack.
        """
        def register(fn: Handler) -> Handler:
            self._shared.handlers.setdefault(event, []).append(fn)
            return fn
        return register if handler is None else register(handler)

    def on_server_event(self, event: str, handler: Handler | None = None) -> Any:
        """Register a handler for ``server_side_emit`` from other nodes of a cluster.

        Called as ``handler(*args)``; its return value answers a
        ``server_side_emit_with_ack``.
        """
        def register(fn: Handler) -> Handler:
            self._shared.server_handlers.setdefault(event, []).append(fn)
            return fn
        return register if handler is None else register(handler)

    def use(self, middleware: Middleware) -> Middleware:
        """Add a connection middleware: ``fn(socket)`` or ``fn(socket, next)``.

        A middleware refuses the connection by raising (``ConnectRefused``
        carries data for the client), or by calling ``next(error)``.
        """
        self._shared.middlewares.append(middleware)
        return middleware


class Namespace(_Registrar):
    """One namespace: its sockets, handlers, middlewares and rooms (its adapter)."""

    def __init__(self, name: str, adapter: InMemoryAdapter, acks: AckRegistry,
                 shared: _Handlers | None = None) -> None:
        self.name = name
        self.adapter = adapter
        self.acks = acks
        self._shared = shared or _Handlers()
        self._sockets: dict[str, Socket] = {}

    def __repr__(self) -> str:
        return f"<Namespace {self.name}>"

    @property
    def sockets(self) -> dict[str, Socket]:
        """The connected sockets of this namespace on this node, by id (a copy)."""
        return dict(self._sockets)

    def get_socket(self, sid: str) -> Socket | None:
        """The local socket with that id, or None."""
        return self._sockets.get(sid)

    def adapters(self) -> tuple[InMemoryAdapter, ...]:
        return (self.adapter,)

    def event_handlers(self, event: str) -> list[Handler]:
        """The namespace-level handlers of a client event."""
        if event == "connection":
            return _NONE
        return self._shared.handlers.get(event, _NONE)

    async def run_middlewares(self, socket: Socket) -> None:
        """Raise (ConnectRefused or any error) when a middleware refuses the socket."""
        for middleware in self._shared.middlewares:
            if _takes_next(middleware):
                refusal = _NextCall()
                await call_handler(middleware, socket, refusal)
                if refusal.error is not None:
                    raise refusal.error
            else:
                await call_handler(middleware, socket)

    async def connected(self, socket: Socket) -> None:
        """A socket joined the namespace: run the ``connection`` handlers."""
        self._sockets[socket.id] = socket
        for handler in self._shared.handlers.get("connection", _NONE):
            await call_handler(handler, socket)

    def forget(self, socket: Socket) -> None:
        if self._sockets.get(socket.id) is socket:
            del self._sockets[socket.id]

    # -- server-side events (clusters) -------------------------------------
    async def server_side_emit(self, event: str, *args: Any) -> None:
        """Send an event to the other servers of the cluster (none when alone)."""
        check_event(event)
        await self.adapter.server_side_emit([event, *args])

    async def server_side_emit_with_ack(self, event: str, *args: Any,
                                        timeout: float) -> list[Any]:
        """Send to the other servers and gather one reply from each.

        Raises AckTimeout, carrying the replies that arrived, when some
        server has not answered within ``timeout`` seconds.
        """
        check_event(event)
        replies: list[Any] = []
        expected: list[int] = []
        done = trio.Event()

        def on_reply(args: list) -> None:
            replies.append(args[0] if len(args) == 1 else tuple(args))
            if expected and len(replies) >= expected[0]:
                done.set()

        expected.append(await self.adapter.server_side_emit([event, *args], on_reply))
        if len(replies) >= expected[0]:
            done.set()
        with trio.move_on_after(timeout):
            await done.wait()
        if not done.is_set():
            raise AckTimeout(f"{expected[0] - len(replies)} server(s) did not answer {event!r} "
                             f"within {timeout} s", replies)
        return replies

    async def server_event(self, args: list, reply: Callable[[list], None] | None) -> None:
        """Run this namespace's handlers of a server-side emit from another node."""
        if not args or not isinstance(args[0], str):
            return
        result: Any = None
        for handler in self._shared.server_handlers.get(args[0], _NONE):
            try:
                result = await call_handler(handler, *args[1:])
            except Exception:
                logger.exception("namespace %s: server event handler for %r failed",
                                 self.name, args[0])
        if reply is not None:
            reply([] if result is None else [result])


_NONE: list[Handler] = []


class _NextCall:
    """The ``next`` a middleware may call: ``next()`` accepts, ``next(error)`` refuses."""

    __slots__ = ("error",)

    def __init__(self) -> None:
        self.error: BaseException | None = None

    def __call__(self, error: BaseException | None = None) -> None:
        if error is not None and self.error is None:
            self.error = error


def _takes_next(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2


class NamespaceFamily(_Registrar):
    """Namespaces declared by a pattern or a predicate ``fn(name, auth) -> bool``."""

    def __init__(self, matcher: re.Pattern[str] | Callable[[str, Any], Any],
                 make_adapter: AdapterMaker, acks: AckRegistry) -> None:
        self._matcher = matcher
        self._make_adapter = make_adapter
        self._acks = acks
        self._shared = _Handlers()
        self.children: dict[str, Namespace] = {}

    def __repr__(self) -> str:
        return f"<NamespaceFamily {self._matcher!r}>"

    async def matches(self, name: str, auth: Any) -> bool:
        if isinstance(self._matcher, re.Pattern):
            return self._matcher.fullmatch(name) is not None
        return bool(await call_handler(self._matcher, name, auth))

    def create(self, name: str) -> Namespace:
        child = self.children[name] = Namespace(name, self._make_adapter(name), self._acks,
                                                self._shared)
        return child

    def adapters(self) -> tuple[InMemoryAdapter, ...]:
        return tuple(child.adapter for child in self.children.values())
