"""The yardstick's bench app on a Redis cluster adapter, for ``bench/cluster_bench.py``.

Same protocol as ``bench/app.py`` (``join(room)`` acks ``true``; ``pub(room,
payload)`` emits ``msg(payload)`` to the room except the sender), but the
server shares its rooms through Redis with the classic (or sharded) protocol
of @socket.io/redis-adapter:

    ROOMD_BENCH_REDIS=redis://127.0.0.1:6379 [ROOMD_BENCH_MODE=classic] \\
        roomd serve --app bench.cluster_app:io --app-dir .

(``roomd serve``'s own ``[cluster]`` section configures only the built-in
relay app; an application passes the adapter to its Server, as here.)
"""

import os

import roomd
from roomd.cluster import RedisAdapterFactory

io = roomd.Server(
    ping_interval=25, ping_timeout=20, max_payload=1_000_000, transports=["websocket"],
    adapter=RedisAdapterFactory(os.environ["ROOMD_BENCH_REDIS"],
                                key=os.environ.get("ROOMD_BENCH_KEY", "socket.io"),
                                mode=os.environ.get("ROOMD_BENCH_MODE", "classic")))


@io.on("join")
async def join(socket: roomd.Socket, room: str) -> bool:
    await socket.join(room)
    return True


@io.on("pub")
async def pub(socket: roomd.Socket, room: str, payload: object) -> None:
    await socket.to(room).emit("msg", payload)
