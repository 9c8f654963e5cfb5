"""The yardstick's bench app, written with roomd's API.

The protocol (../shared/bench/README.md): ``join(room)`` joins the room and
acks ``true``; ``pub(room, payload)`` emits ``msg(payload)`` to the room,
except the sender. Run it with ``roomd serve --app bench.app:io``.
"""

import roomd

io = roomd.Server(ping_interval=25, ping_timeout=20, max_payload=1_000_000,
                  transports=["websocket"])


@io.on("join")
async def join(socket: roomd.Socket, room: str) -> bool:
    await socket.join(room)
    return True


@io.on("pub")
async def pub(socket: roomd.Socket, room: str, payload: object) -> None:
    await socket.to(room).emit("msg", payload)
