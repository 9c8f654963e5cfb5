"""A plain TCP connection as a trio stream, on a bare socket.

:class:`TCPStream` is what the accept loop (``accept``) hands each new
connection: a ``trio.abc.HalfCloseableStream`` over a C-level socket
object, with the socket options trio's ``SocketStream`` sets (TCP_NODELAY,
TCP_NOTSENT_LOWAT of 16 KiB). trio's version wraps a ``socket.socket`` in a
trio socket in a ``SocketStream`` with a conflict detector: four objects
the cycle collector scans for as long as the connection lives, where this
is one (docs/performance.md, issue 12). The socket is read and written
directly where it counts (``stream_fd``); the stream methods are for the
rest (HTTP answers, the outbox's flush task, TLS on top of it).

Errors follow trio's streams: a closed stream raises
``trio.ClosedResourceError``, any other socket error
``trio.BrokenResourceError``; every method is a checkpoint.
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import socket

import trio

# trio's SocketStream's choices, and why: small messages leave at once
# (no Nagle delay), and the kernel holds at most this much unsent data, so
# that a slow reader shows up as a full outbox rather than as kernel memory.
NOTSENT_LOWAT = 16 * 1024
RECEIVE_SIZE = 64 * 1024
_NOTSENT_LOWAT_OPTION = getattr(socket, "TCP_NOTSENT_LOWAT", None)  # Linux, macOS


def _error(exc: OSError) -> trio.BrokenResourceError | trio.ClosedResourceError:
    if exc.errno == errno.EBADF:
        return trio.ClosedResourceError("this socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")


class TCPStream(trio.abc.HalfCloseableStream):
    """One accepted TCP connection; ``socket`` is the bare socket, ``fd`` its descriptor.

    :meth:`close` closes it at once (telling trio first, as every close must);
    :meth:`aclose` does the same as a checkpoint.
    """

    __slots__ = ("socket", "fd", "_eof_sent")

    def __init__(self, sock: _socket.socket, configured: bool = False) -> None:
        """``configured``: the socket has its options already (inherited from a listener
        that :func:`configure` set, as Linux accepted sockets inherit them)."""
        sock.setblocking(False)
        if not configured:
            configure(sock)
        self.socket = sock
        self.fd = sock.fileno()
        self._eof_sent = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof_sent:
            raise trio.ClosedResourceError("can't send data after sending EOF")
        await trio.lowlevel.checkpoint_if_cancelled()
        sock = self.socket
        with memoryview(data) as view:
            total = len(view)
            if not total and sock.fileno() == -1:
                raise trio.ClosedResourceError("this socket was already closed")
            sent = 0
            while sent < total:
                try:
                    sent += sock.send(view[sent:])
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self.fd)
                except OSError as exc:
                    raise _error(exc) from exc
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        if self.socket.fileno() == -1:
            raise trio.ClosedResourceError("this socket was already closed")
        await trio.lowlevel.wait_writable(self.fd)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        sock = self.socket
        while True:
            try:
                data = sock.recv(max_bytes or RECEIVE_SIZE)
            except BlockingIOError:
                pass
            except OSError as exc:
                raise _error(exc) from exc
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return data
            await trio.lowlevel.wait_readable(self.fd)

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._eof_sent:
            self._eof_sent = True
            try:
                self.socket.shutdown(_socket.SHUT_WR)
            except OSError as exc:
                raise _error(exc) from exc
        await trio.lowlevel.cancel_shielded_checkpoint()

    def close(self) -> None:
        """Close now (idempotent); a task waiting on the socket gets ClosedResourceError."""
        sock = self.socket
        if sock.fileno() != -1:
            trio.lowlevel.notify_closing(self.fd)
            sock.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


def configure(sock: _socket.socket) -> None:
    """Set the options of a connection (on a listener: of the connections it accepts)."""
    with contextlib.suppress(OSError):  # not TCP (a Unix socket passed by systemd)
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        if _NOTSENT_LOWAT_OPTION is not None:
            sock.setsockopt(_socket.IPPROTO_TCP, _NOTSENT_LOWAT_OPTION, NOTSENT_LOWAT)


def inherits_options(sock: _socket.socket) -> bool:
    """Whether an accepted socket has the options :func:`configure` set on its listener."""
    try:
        return bool(sock.getsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY)) and (
            _NOTSENT_LOWAT_OPTION is None
            or sock.getsockopt(_socket.IPPROTO_TCP, _NOTSENT_LOWAT_OPTION) == NOTSENT_LOWAT)
    except OSError:
        return False


def stream_fd(stream: trio.abc.SendStream | trio.abc.ReceiveStream) -> int:
    """The socket descriptor roomd may read and write directly, or -1.

    Only a plain TCP stream has one; for any other stream (an SSLStream)
    every byte must go through the stream's own methods.
    """
    if isinstance(stream, TCPStream):
        return stream.fd
    if isinstance(stream, trio.SocketStream):
        return stream.socket.fileno()
    return -1
