"""The half-open places: a connection over ``max_half_open`` waits its turn, never refused.

At most ``max_half_open`` connections are read at once (``limits.Admission``,
docs/limits.md), each counted from when its first bytes are there until its request has
been read. A connection that finds every place taken waits for one, first come first
served, holding its socket and its task but no buffer. A keep-alive connection between
two requests is the same: it holds no place while idle, and its next request, once its
first bytes are there, waits its turn like a new connection's (``http._HttpConnection``).
A reconnect storm (thousands of clients within a second, after a restart or a network
failure) is thereby served at the pace roomd can read requests, and none of it is
refused: an HTTP 503 would send each refused client into its reconnection backoff,
seconds long.

Why from the first bytes and not from the accept: a connection can be established
without its request. When the kernel's listen queue overflows it drops the handshake's
last packet or completes the handshake with a SYN cookie, and the request comes only
when the client's TCP resends it, a second or more later. Holding places, such
connections stalled everything behind them: a storm of 10,000 polling clients took a
minute with roomd idle most of it, where counting from the first bytes it is served at
full speed (docs/performance.md, "Reconnect storm"). A connection that sends nothing
holds no place and is closed after ``head_timeout``.
"""

from __future__ import annotations

import _socket
import socket

import trio

from .limits import Admission


def _arrived(sock: _socket.socket) -> bool:
    """Whether the peer sent something (or ended the stream), without reading it.

    Usually the request is there by the time its connection is accepted: one
    syscall then, no trip through the scheduler.
    """
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    except OSError:
        return True  # reset: reading the request finds out
    return True


class Turns:
    """The half-open places of ``admission``, handed out first come first served."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self._waiting = trio.lowlevel.ParkingLot()
        admission.on_room = self._release

    async def take(self, sock: _socket.socket, head_timeout: float) -> bool:
        """Wait for the connection's first bytes, then for a place (counted for it).

        ``sock`` is the connection's non-blocking socket. False, with no place taken,
        when nothing arrived within ``head_timeout`` (the end of the stream counts as
        arrived: reading the request sees it).
        """
        if not _arrived(sock):
            with trio.move_on_after(head_timeout):
                await trio.lowlevel.wait_readable(sock)
            if not _arrived(sock):
                return False
        await self.place()
        return True

    async def place(self) -> None:
        """Wait for a place (counted for the caller), first come first served.

        For a connection whose next request is already there (read by its parser
        beyond the last one, or seen by :meth:`take`).
        """
        if not self._waiting and self.admission.open_half():
            return  # no checkpoint: the connection's handler is about to read
        await self._waiting.park()  # _release counted the place before waking us

    def _release(self) -> None:
        """A place freed (``Admission.close_half``): it goes to the longest waiting."""
        waiting = self._waiting
        while waiting and self.admission.open_half():
            waiting.unpark()

    @property
    def waiting(self) -> int:
        """Connections with their first bytes there, waiting for a place."""
        return len(self._waiting)
