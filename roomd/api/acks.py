"""Waiting for acknowledgements: from one socket, and across a broadcast."""

from __future__ import annotations

from typing import Any

import trio


def ack_value(args: list) -> Any:
    """An ack's arguments as the caller sees them: none, one value, or a tuple."""
    if not args:
        return None
    if len(args) == 1:
        return args[0]
    return tuple(args)


class PendingAck:
    """One outstanding ``emit_with_ack`` to one socket."""

    __slots__ = ("done", "value", "disconnected")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: Any = None
        self.disconnected = False

    def resolve(self, args: list) -> None:
        if not self.done.is_set():
            self.value = ack_value(args)
            self.done.set()

    def abandon(self) -> None:
        """The socket went away: no ack can come any more."""
        if not self.done.is_set():
            self.disconnected = True
            self.done.set()


class AckCollector:
    """Replies to one broadcast ``emit_with_ack``, keyed by socket id.

    Complete once every node that was sent the packet has said how many
    sockets got it (``add_count``) and that many replies arrived. Replies
    may come before the counts.
    """

    __slots__ = ("replies", "_servers", "_counted", "_expected", "complete")

    def __init__(self, servers: int = 1) -> None:
        self.replies: dict[str, Any] = {}
        self._servers = servers
        self._counted = 0
        self._expected = 0
        self.complete = trio.Event()

    def add_count(self, count: int) -> None:
        self._counted += 1
        self._expected += count
        self._check()

    def add_reply(self, socket_id: str, args: list) -> None:
        self.replies.setdefault(socket_id, ack_value(args))
        self._check()

    def missing(self) -> int:
        """How many replies are still expected (a node that never counted is one)."""
        return max(0, self._expected - len(self.replies)) + (self._servers - self._counted)

    def _check(self) -> None:
        if self._counted >= self._servers and len(self.replies) >= self._expected:
            self.complete.set()
