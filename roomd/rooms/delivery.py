"""Delivery: putting encoded messages into sessions' outboxes.

A broadcast's bytes go into each target session's outbox with a
non-blocking ``send``. An outbox that refuses (it is full) marks a slow
consumer: under the default policy its session is closed with the reason
"slow consumer"; a volatile message, or the "drop" policy, just skips it.
Delivery runs in the RoomManager task and never awaits.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

from ..transport.outbox import OutgoingMessage

logger = logging.getLogger("roomd.rooms")

SLOW_CONSUMER_POLICIES = ("disconnect", "drop")


class Session(Protocol):
    """What delivery needs of an Engine.IO session."""

    sid: str
    closed: bool

    def send(self, message: OutgoingMessage, volatile: bool = False) -> bool:
        """Queue without blocking; False when the outbox is full."""

    def close(self, reason: str) -> None:
        """Close the session (idempotent, never blocks)."""


class Recipient(Protocol):
    """A local socket as delivery sees it."""

    id: str
    session: Session


class Delivery:
    """Sends to local sockets and applies the slow-consumer policy.

    ``slow_consumer`` is "disconnect" (the default) or "drop". Raises
    ValueError for anything else.
    """

    __slots__ = ("_drop_slow", "slow_consumers", "broadcasts", "deliveries", "bytes_out",
                 "dropped")

    def __init__(self, slow_consumer: str = "disconnect") -> None:
        if slow_consumer not in SLOW_CONSUMER_POLICIES:
            raise ValueError(f"slow_consumer must be one of {SLOW_CONSUMER_POLICIES}")
        self._drop_slow = slow_consumer == "drop"
        self.slow_consumers = 0  # sessions closed as slow consumers since start
        # Read at scrape time (roomd.ops.metrics); added once per send_one / broadcast,
        # never per recipient.
        self.broadcasts = 0
        self.deliveries = 0  # messages accepted by outboxes
        self.bytes_out = 0  # their bytes, counted as WebSocket frames
        self.dropped = 0  # messages a full outbox refused and that were dropped

    def send_one(self, recipient: Recipient, message: OutgoingMessage,
                 volatile: bool = False) -> bool:
        """Deliver to one socket; False when it was a slow consumer."""
        if recipient.session.send(message, volatile):
            self.deliveries += 1
            self.bytes_out += len(message.ws_frames)
            return True
        self._slow((recipient,), volatile)
        return False

    def send_many(self, recipients: Iterable[Recipient], message: OutgoingMessage,
                  volatile: bool = False) -> list[Recipient] | None:
        """Deliver to each recipient once; returns the slow ones (None if none).

        The hot path of fan-out: one non-blocking put per recipient, no
        allocation unless someone is slow.
        """
        slow: list[Recipient] | None = None
        for recipient in recipients:
            if not recipient.session.send(message, volatile):
                if slow is None:
                    slow = [recipient]
                else:
                    slow.append(recipient)
        if slow:
            self._slow(slow, volatile)
        return slow

    def count_broadcast(self, delivered: int, message: OutgoingMessage) -> None:
        """Count one broadcast that ``send_many`` queued for ``delivered`` sockets."""
        self.broadcasts += 1
        if delivered:
            self.deliveries += delivered
            self.bytes_out += delivered * len(message.ws_frames)

    def _slow(self, recipients: Iterable[Recipient], volatile: bool) -> None:
        if volatile or self._drop_slow:
            self.dropped += sum(1 for _ in recipients)
            return
        for recipient in recipients:
            session = recipient.session
            if not session.closed:
                logger.warning("socket %s (session %s): outbox full, disconnecting slow consumer",
                               recipient.id, session.sid)
                self.slow_consumers += 1
                session.close("slow consumer")
