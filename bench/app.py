"""The yardstick's bench app, written with roomd's API.

The protocol (../shared/bench/README.md): ``join(room)`` joins the room and
acks ``true``; ``pub(room, payload)`` emits ``msg(payload)`` to the room,
except the sender. Run it with ``roomd serve --app bench.app:io``;
:func:`make_app` makes it with more Server options (``bench/cluster_app.py``
adds a cluster adapter).
"""

from typing import Any

import roomd


async def join(socket: roomd.Socket, room: str) -> bool:
    await socket.join(room)
    return True


async def pub(socket: roomd.Socket, room: str, payload: object) -> None:
    await socket.to(room).emit("msg", payload)


def make_app(**options: Any) -> roomd.Server:
    """The bench app on a Server with the yardstick's engine options and ``options``
    (which may replace ``transports``: bench/storm_app.py lets clients poll too)."""
    options.setdefault("transports", ["websocket"])
    io = roomd.Server(ping_interval=25, ping_timeout=20, max_payload=1_000_000, **options)
    io.on("join", join)
    io.on("pub", pub)
    return io


io = make_app()
