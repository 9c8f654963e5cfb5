"""Pending acknowledgements: per socket, and gathered across a broadcast."""

from __future__ import annotations

from collections.abc import Iterable
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

    __slots__ = ("done", "value")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: Any = None

    def resolve(self, args: list) -> None:
        if not self.done.is_set():
            self.value = ack_value(args)
            self.done.set()


class AckCollector:
    """Replies to one broadcast ``emit_with_ack``, keyed by socket id.

    Replies may arrive before the set of recipients is known; the collector
    is complete once every expected socket has answered.
    """

    __slots__ = ("replies", "expected", "complete")

    def __init__(self) -> None:
        self.replies: dict[str, Any] = {}
        self.expected: frozenset[str] | None = None
        self.complete = trio.Event()

    def expect(self, socket_ids: Iterable[str]) -> None:
        self.expected = frozenset(socket_ids)
        self.replies = {k: v for k, v in self.replies.items() if k in self.expected}
        self._check()

    def add(self, socket_id: str, args: list) -> None:
        if self.expected is not None and socket_id not in self.expected:
            return
        self.replies.setdefault(socket_id, ack_value(args))
        self._check()

    def missing(self) -> set[str]:
        return set(self.expected or ()) - set(self.replies)

    def _check(self) -> None:
        if self.expected is not None and len(self.replies) >= len(self.expected):
            self.complete.set()


class BroadcastAcks:
    """The server's open broadcast collectors, by ack id."""

    def __init__(self) -> None:
        self._open: dict[int, AckCollector] = {}

    def open(self, ack_id: int) -> AckCollector:
        collector = self._open[ack_id] = AckCollector()
        return collector

    def close(self, ack_id: int) -> None:
        self._open.pop(ack_id, None)

    def deliver(self, ack_id: int, socket_id: str, args: list) -> bool:
        collector = self._open.get(ack_id)
        if collector is None:
            return False
        collector.add(socket_id, args)
        return True
