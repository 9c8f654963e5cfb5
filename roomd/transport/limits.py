"""What one client, one address and all clients together may make roomd hold.

docs/limits.md is the resource model: every buffer a client can fill is
bounded in bytes, every wait on a client is bounded in time, and the whole
process has one byte budget. This module holds the shared counters that
enforce the parts no single connection can see:

- :class:`Budget`: the process-wide byte budget. Outboxes and incomplete
  incoming messages take bytes from it and give them back; a client whose
  buffering would exceed it is cut (the slow-consumer path, or close code
  1013 for a reader), so N clients can never hold more than the budget in
  those buffers together.
- :class:`Admission`: per-address limits (concurrent connections, a token
  bucket of new Engine.IO sessions per second) and the global cap on
  half-open HTTP connections (accepted, not yet past their request; the
  connections over it wait their turn, ``turns``). Every check is a
  dict lookup and an integer compare: a refusal builds nothing.
- :class:`RateLog`: one log line per interval for events a client can
  cause at will (refusals, malformed input), never one line per event.

Nothing here awaits or raises: callers turn a refusal into an answer.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("roomd.limits")

# How often repeated events are summarised in the log (seconds).
RATE_LOG_INTERVAL = 10.0


class Budget:
    """A byte budget shared by every connection of the process."""

    __slots__ = ("limit", "used", "peak")

    def __init__(self, limit: int) -> None:
        self.limit = limit  # 0: unlimited
        self.used = 0
        self.peak = 0

    def take(self, n: int) -> bool:
        """Reserve ``n`` bytes; False (nothing reserved) when over the budget.

        A negative ``n`` gives bytes back and always succeeds, so a holder whose
        count moves either way calls ``take(new - old)``.
        """
        used = self.used + n
        if self.limit and n > 0 and used > self.limit:
            return False
        self.used = used
        if used > self.peak:
            self.peak = used
        return True

    def hold(self, n: int) -> None:
        """Count ``n`` bytes that exist already (refusing them would free nothing)."""
        self.used += n
        if self.used > self.peak:
            self.peak = self.used

    def give(self, n: int) -> None:
        self.used -= n


class RateLog:
    """Counts events by kind and logs them as one line per interval.

    ``note("malformed HTTP", address, detail)`` logs the first event of a
    kind at once (with its detail) and opens a window of ``interval``
    seconds; the events of that kind inside the window are only counted, and
    when it closes one line says how many there were and from how many
    addresses: 2000 bad requests make two log lines, not 2000.
    ``schedule(delay, callback, *args)`` runs the window's end (the server's
    timer task).
    """

    def __init__(self, schedule: Callable[..., Any], interval: float = RATE_LOG_INTERVAL) -> None:
        self.interval = interval
        self._schedule = schedule
        self._windows: dict[str, tuple[list[int], set[str]]] = {}

    def note(self, kind: str, address: str, detail: str = "",
             level: int = logging.INFO) -> None:
        window = self._windows.get(kind)
        if window is None:
            logger.log(level, "%s from %s: %s", kind, address or "?", detail)
            self._windows[kind] = ([0], set())
            self._schedule(self.interval, self._close, kind)
            return
        count, addresses = window
        count[0] += 1
        if len(addresses) < 10_000:
            addresses.add(address)

    def _close(self, kind: str) -> None:
        window = self._windows.pop(kind, None)
        if window is not None and window[0][0]:
            logger.warning("%s: %d more in the last %.0f s from %d address(es)", kind,
                           window[0][0], self.interval, len(window[1]))


@dataclasses.dataclass
class _Bucket:
    tokens: float
    stamp: float


class Admission:
    """Per-address connection and session limits, and the half-open cap.

    ``exempt`` addresses (loopback by default: a reverse proxy on the same
    host, local tests and benchmarks) are never limited per address; the
    global half-open cap applies to everyone.
    """

    def __init__(self, *, connections_per_ip: int, sessions_per_ip_rate: float,
                 sessions_per_ip_burst: int, max_half_open: int,
                 exempt: tuple[str, ...] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.connections_per_ip = connections_per_ip
        self.rate = sessions_per_ip_rate
        self.burst = sessions_per_ip_burst
        self.max_half_open = max_half_open
        self.exempt = frozenset(_normal(a) for a in exempt)
        self._clock = clock
        self.connections: dict[str, int] = {}
        self.half_open = 0
        # Called once when a half-open connection ends below the cap (the accept loop
        # waiting for room sets it).
        self.on_room: Callable[[], None] | None = None
        self._buckets: dict[str, _Bucket] = {}

    # -- concurrent connections (counted from accept to close) ---------------
    def connect(self, address: str) -> bool:
        """Count a new TCP connection; False (not counted) when over the per-address cap."""
        if address in self.exempt or not self.connections_per_ip:
            return True
        count = self.connections.get(address, 0)
        if count >= self.connections_per_ip:
            return False
        self.connections[address] = count + 1
        return True

    def disconnect(self, address: str) -> None:
        count = self.connections.get(address)
        if count is None:
            return
        if count <= 1:
            del self.connections[address]
        else:
            self.connections[address] = count - 1

    # -- half-open HTTP connections ------------------------------------------
    def has_room(self) -> bool:
        """True when one more connection may be half-open."""
        return not self.max_half_open or self.half_open < self.max_half_open

    def open_half(self) -> bool:
        if not self.has_room():
            return False
        self.half_open += 1
        return True

    def close_half(self) -> None:
        self.half_open -= 1
        if self.on_room is not None and self.has_room():
            self.on_room()

    # -- new sessions: a token bucket per address ----------------------------
    def new_session(self, address: str) -> float:
        """0 when a new session is allowed (and counted), else seconds to wait."""
        if address in self.exempt or not self.rate:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(address)
        if bucket is None:
            if len(self._buckets) > 100_000:
                self._prune(now)
            bucket = self._buckets[address] = _Bucket(float(self.burst), now)
        else:
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def _prune(self, now: float) -> None:
        """Drop buckets that have refilled: they hold nothing an address could use."""
        full = self.burst / self.rate
        for address, bucket in list(self._buckets.items()):
            if now - bucket.stamp >= full:
                del self._buckets[address]


def _normal(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address


def client_address(peer: str, forwarded_for: str | None, trusted: frozenset[str]) -> str:
    """The client's address: the peer's, or from X-Forwarded-For behind a trusted proxy.

    Only a peer listed in ``trusted`` may speak for the client. The header
    is read from the right: the first address that is not itself a trusted
    proxy is the client (anything left of it could be forged by the client).
    """
    if not trusted or peer not in trusted or not forwarded_for:
        return peer
    for part in reversed(forwarded_for.split(",")):
        candidate = _normal(part.strip())
        if candidate and candidate not in trusted:
            try:
                ipaddress.ip_address(candidate)
            except ValueError:
                return peer
            return candidate
    return peer
