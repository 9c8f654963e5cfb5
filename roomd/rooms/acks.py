"""Acknowledgements of broadcasts, collected across sockets (and nodes).

An ``emit_with_ack`` to several sockets sends one packet with one ack id;
each socket's ACK comes back through :meth:`AckRegistry.deliver`, which
calls the callback registered for that id. Ids come from one counter per
server, so a socket's own pending acks and broadcast acks never collide.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

AckCallback = Callable[[str, list], None]


class AckRegistry:
    """Ack ids, and the callbacks of the broadcasts waiting for acks."""

    __slots__ = ("_ids", "_open", "received", "timeouts")

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._open: dict[int, AckCallback] = {}
        # Read at scrape time (roomd.ops.metrics): client ACKs of the server's
        # emit_with_ack (a socket's own or a broadcast's), and waits that timed out.
        self.received = 0
        self.timeouts = 0

    def next_id(self) -> int:
        """A fresh ack id (for a socket's own ``emit_with_ack`` too)."""
        return next(self._ids)

    def open(self, callback: AckCallback) -> int:
        """Register ``callback(socket_id, args)`` under a fresh id; returns the id."""
        ack_id = next(self._ids)
        self._open[ack_id] = callback
        return ack_id

    def close(self, ack_id: int) -> None:
        """Stop collecting: later acks with that id are ignored."""
        self._open.pop(ack_id, None)

    @property
    def waiting(self) -> int:
        """How many broadcasts are waiting for acks."""
        return len(self._open)

    def deliver(self, ack_id: int, socket_id: str, args: list) -> bool:
        """Route one socket's ack; False when nobody waits for that id."""
        callback = self._open.get(ack_id)
        if callback is None:
            return False
        callback(socket_id, args)
        return True
