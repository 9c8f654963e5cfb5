"""A small chat app on roomd's Python API (run: roomd serve --app chat:io --app-dir docs/examples).

Clients connect to /chat with ``auth: {"name": ...}``, join rooms with
``enter`` and talk with ``say``; everyone in the room hears it, the speaker
excepted. The server remembers each room's last messages and greets a
newcomer with them, and announces the time every minute to the lobby.
"""

from __future__ import annotations

import collections
import contextlib
import datetime

import trio

import roomd

io = roomd.Server(cors_origins=["*"])
chat = io.of("/chat")
history: dict[str, collections.deque] = collections.defaultdict(
    lambda: collections.deque(maxlen=20))


@chat.use
def require_a_name(socket: roomd.Socket) -> None:
    """Refuse connections without a name: the client gets connect_error "name required"."""
    name = socket.handshake.auth.get("name") if isinstance(socket.handshake.auth, dict) else None
    if not isinstance(name, str) or not 1 <= len(name) <= 32:
        raise roomd.ConnectRefused("name required", {"hint": "connect with auth: {name}"})
    socket.data["name"] = name


@chat.on("connection")
async def on_connection(socket: roomd.Socket) -> None:
    await socket.join("lobby")
    await socket.emit("welcome", socket.data["name"], list(history["lobby"]))

    @socket.on("disconnecting")
    async def on_disconnecting(reason: str) -> None:
        # the rooms are still visible here; in "disconnect" they are gone
        for room in socket.rooms - {socket.id}:
            await socket.to(room).emit("left", room, socket.data["name"])


@chat.on("enter")
async def enter(socket: roomd.Socket, room: str) -> dict:
    if not isinstance(room, str) or not room.startswith("room-"):
        return {"error": "rooms are named room-*"}
    await socket.join(room)
    await socket.to(room).emit("entered", room, socket.data["name"])
    return {"room": room, "history": list(history[room])}


@chat.on("say")
async def say(socket: roomd.Socket, room: str, text: str) -> dict:
    if room not in socket.rooms:
        return {"error": f"not in {room}"}
    line = {"from": socket.data["name"], "text": str(text)[:500],
            "at": datetime.datetime.now(datetime.UTC)}
    history[room].append(line)
    await socket.to(room).emit("said", room, line)
    return {"ok": True}


@io.lifespan
@contextlib.asynccontextmanager
async def clock(server: roomd.Server):
    async def announce() -> None:
        while True:
            await trio.sleep(60)
            await chat.to("lobby").volatile.emit("time", datetime.datetime.now(datetime.UTC))

    server.start_background_task(announce)
    yield
