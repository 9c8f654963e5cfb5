"""One timer task for every heartbeat and timeout of the server.

A task per connection sleeping until its next ping costs memory and a
wake-up per connection; here every delay in use is a FIFO lane (the same
delay means entries arrive already sorted by due time), and one task sleeps
until the earliest head of any lane.
"""

from __future__ import annotations

import collections
import logging
import weakref
from collections.abc import Callable
from typing import Any

import trio

logger = logging.getLogger("roomd.transport")


class Timers:
    """Run sync callbacks after fixed delays, from one task.

    Callbacks run in the timer task; an exception in one is logged and does
    not stop the others. Entries cannot be cancelled: a callback checks
    whether it still applies (a generation counter is the usual way).
    """

    def __init__(self) -> None:
        # delay -> entries (due, callback, weak reference to its object or None, args)
        self._lanes: dict[float, collections.deque[tuple[float, Callable[..., Any],
                                                         weakref.ref | None, tuple]]] = {}
        self._sleep: trio.CancelScope | None = None

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> None:
        self._add(delay, callback, None, args)

    def call_later_weak(self, delay: float, method: Callable[..., Any], *args: Any) -> None:
        """``call_later`` for a bound method that must not keep its object alive.

        A pending entry then holds only a weak reference: a closed session or
        connection is freed at once instead of when its timer comes due, and
        the callback is skipped if the object is gone by then. The entry holds
        a plain weak reference to the object (CPython shares one per object)
        and the function, in the entry itself: a WeakMethod per entry cost
        about 400 bytes per connection, and every object an idle connection
        keeps is scanned by the cycle collector (docs/performance.md, issue 12).
        """
        self._add(delay, method.__func__, weakref.ref(method.__self__),  # type: ignore[attr-defined]
                  args)

    def _add(self, delay: float, callback: Callable[..., Any], owner: weakref.ref | None,
             args: tuple) -> None:
        due = trio.current_time() + delay
        lane = self._lanes.get(delay)
        if lane is None:
            lane = self._lanes[delay] = collections.deque()
        lane.append((due, callback, owner, args))
        sleep = self._sleep
        if sleep is not None and due < sleep.deadline:
            sleep.deadline = due

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Fire due callbacks until cancelled."""
        task_status.started()
        while True:
            now = trio.current_time()
            for lane in list(self._lanes.values()):
                while lane and lane[0][0] <= now:
                    _, callback, owner, args = lane.popleft()
                    try:
                        if owner is None:
                            callback(*args)
                        else:
                            _call_weak(owner, callback, args)
                    except Exception:
                        logger.exception("timer callback %r failed", callback)
            heads = [lane[0][0] for lane in self._lanes.values() if lane]
            with trio.CancelScope(deadline=min(heads, default=float("inf"))) as self._sleep:
                await trio.sleep_forever()
            self._sleep = None


def _call_weak(owner_ref: weakref.ref, function: Callable[..., Any], args: tuple) -> None:
    owner = owner_ref()
    if owner is not None:
        function(owner, *args)
