"""Namespaces: their handlers, middlewares and sockets.

A :class:`Namespace` has a fixed name. A :class:`NamespaceFamily` is declared
by a regular expression or a predicate; each concrete namespace it matches
is created on its first connection and shares the family's handlers and
middlewares, like Socket.IO's parent namespaces.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .broadcast import BroadcastOperator
from .socket import Handler, Socket, call_handler

if TYPE_CHECKING:
    from .server import Server

Middleware = Callable[..., Any]


class _Handlers:
    """Handlers and middlewares, shared by a family and its namespaces."""

    def __init__(self) -> None:
        self.handlers: dict[str, list[Handler]] = {}
        self.middlewares: list[Middleware] = []


class _Target:
    """The broadcast shortcuts every namespace-like object offers."""

    server: Server
    _target_names: Callable[[], tuple[str, ...]]  # the namespaces an operation covers

    def _operator(self) -> BroadcastOperator:
        return BroadcastOperator(self.server, self._target_names)

    def to(self, *rooms: str | Iterable[str]) -> BroadcastOperator:
        return self._operator().to(*rooms)

    in_ = to

    def except_(self, *rooms: str | Iterable[str]) -> BroadcastOperator:
        return self._operator().except_(*rooms)

    @property
    def volatile(self) -> BroadcastOperator:
        return self._operator().volatile

    async def emit(self, event: str, *args: Any) -> None:
        await self._operator().emit(event, *args)

    async def emit_with_ack(self, event: str, *args: Any, timeout: float) -> list[Any]:
        return await self._operator().emit_with_ack(event, *args, timeout=timeout)

    async def fetch_sockets(self) -> list[Socket]:
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

    def use(self, middleware: Middleware) -> Middleware:
        """Add a connection middleware: ``fn(socket)`` or ``fn(socket, next)``.

        A middleware refuses the connection by raising (``ConnectRefused``
        carries data for the client), or by calling ``next(error)``.
        """
        self._shared.middlewares.append(middleware)
        return middleware


class Namespace(_Registrar):
    """One namespace: its sockets, handlers, middlewares and rooms."""

    def __init__(self, server: Server, name: str, shared: _Handlers | None = None) -> None:
        self.server = server
        self.name = name
        self._shared = shared or _Handlers()
        self._sockets: dict[str, Socket] = {}

    def __repr__(self) -> str:
        return f"<Namespace {self.name}>"

    @property
    def sockets(self) -> dict[str, Socket]:
        """The connected sockets of this namespace, by id (a copy)."""
        return dict(self._sockets)

    def _target_names(self) -> tuple[str, ...]:
        return (self.name,)

    def _event_handlers(self, event: str) -> list[Handler]:
        if event == "connection":
            return _NONE
        return self._shared.handlers.get(event, _NONE)

    async def _run_middlewares(self, socket: Socket) -> None:
        """Raise ConnectRefused when a middleware refuses the socket."""
        for middleware in self._shared.middlewares:
            if _takes_next(middleware):
                errors: list[BaseException] = []

                def next_(error: BaseException | None = None) -> None:
                    if error is not None:
                        errors.append(error)
                await call_handler(middleware, socket, next_)
                if errors:
                    raise errors[0]
            else:
                await call_handler(middleware, socket)

    async def _connected(self, socket: Socket) -> None:
        self._sockets[socket.id] = socket
        for handler in self._shared.handlers.get("connection", _NONE):
            await call_handler(handler, socket)


_NONE: list[Handler] = []


def _takes_next(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2


class NamespaceFamily(_Registrar):
    """Namespaces declared by a pattern or a predicate ``fn(name, auth) -> bool``."""

    def __init__(self, server: Server, matcher: re.Pattern[str] | Callable[[str, Any], Any]) -> None:
        self.server = server
        self._matcher = matcher
        self._shared = _Handlers()
        self.children: dict[str, Namespace] = {}

    def __repr__(self) -> str:
        return f"<NamespaceFamily {self._matcher!r}>"

    async def matches(self, name: str, auth: Any) -> bool:
        if isinstance(self._matcher, re.Pattern):
            return self._matcher.fullmatch(name) is not None
        return bool(await call_handler(self._matcher, name, auth))

    def create(self, name: str) -> Namespace:
        child = self.children[name] = Namespace(self.server, name, self._shared)
        return child

    def _target_names(self) -> tuple[str, ...]:
        return tuple(self.children)

