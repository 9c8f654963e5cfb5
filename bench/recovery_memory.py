"""What connection state recovery costs in memory (tracemalloc) and time, for docs/recovery.md.

    .venv/bin/python bench/recovery_memory.py

Measures, each as the growth of traced memory divided by the count:
- a namespace's adapter with recovery on, over one without (the empty stores);
- one logged packet (a small event to one room), before and after its WebSocket
  frames were computed (they are, once any WebSocket client was sent the event);
- one kept session (a socket in its own room and one other, empty ``data``);
- one room remembered for the packets that left the log (the room name
  string not counted: it exists anyway while the room does);
- the time to log one broadcast (once per broadcast, whatever its fan-out),
  beside the time to wrap it in an OutgoingMessage as every broadcast does.
"""

from __future__ import annotations

import gc
import secrets
import timeit
import tracemalloc
from collections.abc import Callable
from typing import Any

from roomd.protocol import sio
from roomd.rooms.acks import AckRegistry
from roomd.rooms.adapter import AdapterContext, InMemoryAdapter
from roomd.rooms.delivery import Delivery
from roomd.rooms.manager import RoomManager
from roomd.rooms.recovery import (
    PacketLog,
    RecoveryOptions,
    SessionRecord,
    SessionStore,
    message_size,
)
from roomd.rooms.taps import Taps
from roomd.transport.outbox import OutgoingMessage

N = 10_000


def growth(make: Callable[[], Any]) -> tuple[int, Any]:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = make()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return after - before, kept


def adapters(recovery: RecoveryOptions | None) -> list[InMemoryAdapter]:
    context = AdapterContext(RoomManager(), Delivery(), Taps(), AckRegistry(), None, recovery)
    return [InMemoryAdapter(f"/ns{i}", context) for i in range(1000)]


def main() -> None:
    plain, _ = growth(lambda: adapters(None))
    recovering, _ = growth(lambda: adapters(RecoveryOptions()))
    print(f"per namespace (empty stores): {(recovering - plain) / 1000:.0f} bytes")

    rooms = frozenset({"room-1"})
    parts = sio.encode_event("/", ["chat", {"text": "hello, world", "from": "alice"}, 42])
    log = PacketLog(N, 1 << 40, 3600)
    used, _ = growth(lambda: [log.append(parts, rooms, frozenset()) for _ in range(N)])
    size = message_size(log.entries[-1].message)
    print(f"per packet ({size}-byte event, log only): {used / N:.0f} bytes")
    used, _ = growth(lambda: [entry.message.ws_frames for entry in log.entries])
    print(f"  + its WebSocket frames once sent to a WebSocket: {used / N:.0f} bytes")

    small = PacketLog(1, 1 << 40, 3600)  # every packet but the last leaves at once
    room_sets = [frozenset({secrets.token_urlsafe(15)}) for _ in range(N + 1)]
    used, _ = growth(lambda: [small.append(parts, r, frozenset()) for r in room_sets])
    print(f"per room remembered for dropped packets (socket-id rooms): {used / N:.0f} bytes "
          f"(at most max_packets rooms)")

    store = SessionStore(N, 3600)

    def sessions() -> None:
        for _ in range(N):
            sid, pid = secrets.token_urlsafe(15), secrets.token_urlsafe(15)
            store.put(SessionRecord(sid, pid, frozenset({sid, "room-1"}), {}, 0))

    used, _ = growth(sessions)
    print(f"per session (2 rooms, empty data): {used / N:.0f} bytes")

    log = PacketLog(N, 1 << 40, 3600)
    runs = 200_000
    logged = timeit.timeit(lambda: log.append(parts, rooms, frozenset()), number=runs)
    plain = timeit.timeit(lambda: OutgoingMessage(parts), number=runs)
    print(f"time to log a broadcast: {logged / runs * 1e6:.1f} us "
          f"(an OutgoingMessage alone: {plain / runs * 1e6:.1f} us)")


if __name__ == "__main__":
    main()
