"""Per-socket rate limits: a token bucket checked before each incoming event.

Each socket has a bucket of ``burst`` tokens refilled at ``rate`` tokens a
second; an event takes one. An event that finds the bucket empty is refused
(:class:`~roomd.EventRefused`: no handler runs, and a client that asked for an
ack gets ``{"error": "rate limit exceeded"}``). A socket that keeps
exceeding is disconnected: it may be refused ``strikes`` times, that
allowance refilling at one refusal per second, so a short burst over the
limit costs a few refused events while a client that keeps sending faster
than ``rate`` is gone within seconds. ``strikes`` 0 never disconnects.

The limits are read from ``settings()`` at each refusal and refill, so a
reloaded configuration applies to connected sockets at once. Refusals and
disconnections are counted in ``counters`` (the Server's) (``rate_limited_events``,
``rate_limit_disconnects``), which ``roomd status`` shows.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import trio

from .._errors import EventRefused

if TYPE_CHECKING:
    from ..api.socket import Socket

logger = logging.getLogger("roomd.ratelimit")

# How fast a socket earns back the right to be refused without being disconnected.
STRIKE_REFILL_PER_SECOND = 1.0
# Refusals a socket may collect before it is disconnected, when not configured.
DEFAULT_STRIKES = 20


class Limits(NamedTuple):
    """Events per second (0 = no limit), bucket size, refusals before disconnecting."""

    rate: float
    burst: int
    strikes: int


def default_burst(rate: float) -> int:
    """The bucket size when none is configured: one second's worth, at least 1."""
    return max(1, math.ceil(rate))


class TokenBucket:
    """The bucket of one socket; :meth:`check` is its packet middleware."""

    __slots__ = ("_socket", "_settings", "_counters", "_tokens", "_strikes", "_stamp")

    def __init__(self, socket: Socket, settings: Callable[[], Limits],
                 counters: dict[str, int]) -> None:
        # Weak: the socket holds this bucket (its middleware); no cycle to collect.
        self._socket = weakref.ref(socket)
        self._settings = settings
        self._counters = counters
        limits = settings()
        self._tokens = float(limits.burst)
        self._strikes = float(limits.strikes)
        self._stamp = trio.current_time()

    async def check(self, event: str, args: list) -> None:
        limits = self._settings()
        if limits.rate <= 0:
            return
        now = trio.current_time()
        elapsed = now - self._stamp
        self._stamp = now
        self._tokens = min(float(limits.burst), self._tokens + elapsed * limits.rate)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return
        counters = self._counters
        counters["rate_limited_events"] = counters.get("rate_limited_events", 0) + 1
        if limits.strikes > 0:
            self._strikes = min(float(limits.strikes),
                                self._strikes + elapsed * STRIKE_REFILL_PER_SECOND) - 1.0
            socket = self._socket()
            if self._strikes < 0 and socket is not None:
                counters["rate_limit_disconnects"] = counters.get("rate_limit_disconnects", 0) + 1
                logger.info("socket %s: over its rate limit in %s; disconnecting", socket.id,
                            socket.namespace.name)
                await socket.disconnect()
                raise EventRefused("rate limit exceeded; disconnected")
        raise EventRefused("rate limit exceeded")
