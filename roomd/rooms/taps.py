"""Taps: who watches the events roomd emits, and how many there were.

``roomd tail`` opens a tap and receives a record for every emitted event;
``roomd status`` reads the counters. A tap that does not keep up loses
records rather than slowing the RoomManager, which feeds the taps from its
own task and never awaits.
"""

from __future__ import annotations

import collections
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

# Records a tap may hold before it starts losing them.
TAP_QUEUE = 1024
# The events-per-second figure is the average over this many whole seconds.
RATE_WINDOW = 10


class Taps:
    """Event taps, the emitted-event counter and its sliding-window rate."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._taps: list[trio.MemorySendChannel[dict]] = []
        self._clock = clock
        self.events_total = 0
        # (second, events_total at the start of that second), oldest first
        self._marks: collections.deque[tuple[int, int]] = collections.deque(maxlen=RATE_WINDOW + 1)

    @property
    def watched(self) -> bool:
        """Whether anyone is tapping (so records are worth building)."""
        return bool(self._taps)

    def count(self, events: int = 1) -> None:
        """Count emitted events (each broadcast or direct emit counts once)."""
        second = int(self._clock())
        marks = self._marks
        if not marks or marks[-1][0] != second:
            marks.append((second, self.events_total))
        self.events_total += events

    def rate(self) -> float:
        """Events per second over the last RATE_WINDOW whole seconds."""
        now = int(self._clock())
        marks = [m for m in self._marks if now - m[0] <= RATE_WINDOW]
        if not marks:
            return 0.0
        first_second, first_total = marks[0]
        span = max(1, now - first_second)
        # Events of the current, unfinished second count toward the window too.
        return (self.events_total - first_total) / span

    def publish(self, record: dict) -> None:
        """Hand a record to every tap; taps that are full lose it."""
        for send in self._taps:
            try:
                send.send_nowait(record)
            except trio.WouldBlock:
                pass

    @asynccontextmanager
    async def open(self) -> AsyncIterator[trio.MemoryReceiveChannel[dict]]:
        """Receive a dict for every emitted event while the context is open."""
        send, receive = trio.open_memory_channel[dict](TAP_QUEUE)
        self._taps.append(send)
        try:
            async with receive:
                yield receive
        finally:
            self._taps.remove(send)
            send.close()


def tap_record(namespace: str, tap: dict, rooms: frozenset[str], except_rooms: frozenset[str],
               recipients: int) -> dict:
    """What ``roomd tail`` shows of one emitted event."""
    record = dict(tap, time=time.time(), namespace=namespace, rooms=sorted(rooms),
                  recipients=recipients)
    record["except"] = sorted(except_rooms)
    return record
