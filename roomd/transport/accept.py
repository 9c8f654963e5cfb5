"""The accept loop: new TCP connections, several per wake-up, each in its own task.

:func:`serve_tcp` replaces ``trio.serve_listeners`` for the Engine.IO
listener. Per wake-up of a listening socket it accepts every connection
the kernel has queued (up to :data:`ACCEPT_BATCH`, then it yields so that
the connections already open are served too), as Node's libuv does, and
starts each connection's task directly in the handler nursery. trio's
accept loop instead yields to the scheduler once per accepted connection
and wraps each handler in a coroutine of its own that closes the stream
afterwards (a frame each idle connection keeps); here the handler closes
the socket itself, and the peer address comes with the accept (no
``getpeername``). Measured in
docs/performance.md, issue 12.

Each connection is a ``tcp.TCPStream``: one object over a bare socket,
with the options trio's ``SocketStream`` sets. Errors: an
accept that fails because the process or system is out of descriptors or
memory is logged and retried after :data:`CAPACITY_PAUSE`, as trio does;
the errors a peer can cause (a connection reset before it was accepted,
a firewall's refusal) are skipped; anything else raises out of the loop.
Cancelling :func:`serve_tcp` stops accepting and closes the listeners (as
``trio.serve_listeners`` does); connections already accepted are left to
the handler nursery.
"""

from __future__ import annotations

import _socket
import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable

import trio

from .tcp import TCPStream, configure, inherits_options

logger = logging.getLogger("roomd.transport")

# Connections accepted per wake-up before the loop lets other tasks run: a
# burst of thousands must not keep the connections already open waiting.
ACCEPT_BATCH = 64
# Out of descriptors or memory: wait this long before accepting again (trio's value).
CAPACITY_PAUSE = 0.1

_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
# What a peer or the network can cause between the handshake and the accept
# (trio's list): that connection is skipped, the loop goes on.
_PEER_ERRNOS = frozenset(getattr(errno, name) for name in (
    "EPERM", "ECONNABORTED", "EPROTO", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET",
    "EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH") if hasattr(errno, name))

# handler(stream, address): serves the connection and closes the stream. It may be a
# plain function that returns the coroutine (one frame less per idle connection).
Handler = Callable[[TCPStream, str], Awaitable[None]]


async def serve_tcp(handler: Handler, listeners: list[trio.SocketListener],
                    nursery: trio.Nursery) -> None:
    """Accept on every listener until cancelled; ``handler(stream, address)`` serves
    each connection, and closes it, in a task of ``nursery``."""
    async with trio.open_nursery() as loops:
        for listener in listeners:
            loops.start_soon(_accept_loop, handler, listener, nursery)


async def _accept_loop(handler: Handler, listener: trio.SocketListener,
                       nursery: trio.Nursery) -> None:
    listening = listener.socket
    fd = listening.fileno()
    # A second Python object for the same descriptor, for its C-level accept
    # (detached, never closed, below: the listener owns the descriptor).
    raw = socket.socket(listening.family, listening.type, listening.proto, fileno=fd)
    raw.setblocking(False)
    configure(raw)  # Linux hands the options on to each accepted socket: no syscalls each
    inherited: bool | None = None  # known from the first connection
    family, kind, proto = raw.family, raw.type, raw.proto
    accept = raw._accept  # type: ignore[attr-defined]  # (descriptor, address): socket.accept's first step
    start = nursery.start_soon
    try:
        while True:
            await trio.lowlevel.wait_readable(fd)
            for _ in range(ACCEPT_BATCH):
                try:
                    conn, peer = accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in _PEER_ERRNOS:
                        continue
                    if exc.errno not in _CAPACITY_ERRNOS:
                        raise
                    logger.error("accept failed: %s; retrying in %s s",
                                 os.strerror(exc.errno), CAPACITY_PAUSE)
                    await trio.sleep(CAPACITY_PAUSE)
                    break
                sock = _socket.socket(family, kind, proto, conn)
                if inherited is None:
                    inherited = inherits_options(sock)
                stream = TCPStream(sock, configured=inherited)
                start(handler, stream, peer[0] if isinstance(peer, tuple) else str(peer or ""))
            else:
                await trio.lowlevel.checkpoint()  # a full batch: let the others run first
    finally:
        raw.detach()
        await trio.aclose_forcefully(listener)  # as trio's loop does: no more connections

