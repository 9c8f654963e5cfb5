"""A raw, lightweight Socket.IO client over hand-made WebSocket frames, and the churn driver.

``RawClient`` speaks just enough Engine.IO v4 / Socket.IO v5 over a WebSocket it upgrades by
hand (masked frames from tests/harness.py): open namespaces, call events with acks, answer
pings, go away politely or abruptly. It is used in-process by tests/test_churn.py (the slow
consumer) and, as a script, is the churn load generator that test runs in a child process
(so that clients and server use both CPUs and the server's RSS is its own):

    python tests/churn_client.py PORT SOCKETS SEED CONCURRENCY

opens connections to 127.0.0.1:PORT until SOCKETS sockets have lived: each connection opens
one to four namespaces ("/", "/a", "/b", "/c"), each socket joins random rooms through the relay
app, leaves some, sometimes publishes, sometimes disconnects from its namespace alone; then
the connection ends politely (WebSocket close, Engine.IO close) or abruptly (FIN or RST).
Every ack is checked. Prints one JSON line of counts; exits non-zero on any failure.
"""

from __future__ import annotations

import base64
import json
import os
import random
import socket as stdsocket
import struct
import sys

import trio
from harness import HOST, build_request, read_ws_frame, ws_frame

ROOMS = [f"room{i}" for i in range(40)]
NAMESPACES = ["/", "/a", "/b", "/c"]


def nsp_prefix(namespace: str) -> str:
    return "" if namespace == "/" else namespace + ","


class RawClient:
    """A minimal Engine.IO/Socket.IO client over a hand-made WebSocket (masked frames)."""

    def __init__(self, stream: trio.SocketStream, leftover: bytes) -> None:
        self.stream = stream
        self.buf = bytearray(leftover)
        self.sids: dict[str, str] = {}
        self.events = 0

    @classmethod
    async def connect(cls, port: int, *, rcvbuf: int | None = None,
                      timeout: float = 10) -> RawClient:
        """Upgrade to WebSocket and read the Engine.IO open packet. ``rcvbuf`` sets a small
        SO_RCVBUF before connecting (a client that fills up quickly when it stops reading)."""
        sock = trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_STREAM)
        try:
            if rcvbuf is not None:
                sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_RCVBUF, rcvbuf)
            with trio.fail_after(timeout):
                await sock.connect((HOST, port))
                stream = trio.SocketStream(sock)
                key = base64.b64encode(os.urandom(16)).decode()
                await stream.send_all(build_request(
                    "GET", "/socket.io/?EIO=4&transport=websocket", host=f"{HOST}:{port}",
                    close=False, headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                          "Sec-WebSocket-Key": key,
                                          "Sec-WebSocket-Version": "13"}))
                buf = b""
                while b"\r\n\r\n" not in buf:
                    data = await stream.receive_some(65536)
                    if not data:
                        raise ConnectionError(f"closed during the upgrade: {buf!r}")
                    buf += data
        except BaseException:
            sock.close()
            raise
        head, _, leftover = buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"upgrade refused: {head!r}")
        client = cls(stream, leftover)
        opened = await client.recv()
        if not opened.startswith("0{"):
            raise ConnectionError(f"not an open packet: {opened!r}")
        return client

    async def send(self, text: str) -> None:
        await self.stream.send_all(ws_frame(text))

    async def recv(self, timeout: float = 10) -> str:
        """The next text message (answering pings); EOFError when the server closed."""
        while True:
            frame = await read_ws_frame(self.stream, self.buf, timeout)
            if frame is None:
                raise EOFError("connection closed")
            opcode, payload = frame
            if opcode == 8:
                raise EOFError("close frame")
            if opcode in (9, 10):
                continue
            message = payload.decode()
            if message == "2":
                await self.send("3")
                continue
            return message

    async def until(self, prefix: str, timeout: float = 10) -> str:
        """Read until a message starting with ``prefix``, skipping (and counting) events."""
        with trio.fail_after(timeout):
            while True:
                message = await self.recv(timeout)
                if message.startswith(prefix):
                    return message
                if message.startswith("42") or message.startswith("45"):
                    self.events += 1
                    continue
                raise AssertionError(f"waiting for {prefix!r}, got {message!r}")

    async def open_namespace(self, namespace: str = "/") -> str:
        prefix = "40" + nsp_prefix(namespace)
        await self.send(prefix)
        reply = await self.until(prefix + "{")
        sid = self.sids[namespace] = json.loads(reply[len(prefix):])["sid"]
        return sid

    @property
    def sid(self) -> str | None:
        return self.sids.get("/")

    async def call(self, ack_id: int, *data: object, namespace: str = "/") -> list:
        """Emit with an ack id and return the ack's arguments."""
        nsp = nsp_prefix(namespace)
        await self.send(f"42{nsp}{ack_id}" + json.dumps(list(data)))
        prefix = f"43{nsp}{ack_id}"
        return json.loads((await self.until(prefix))[len(prefix):])

    async def leave_namespace(self, namespace: str) -> None:
        await self.send("41" + nsp_prefix(namespace))
        self.sids.pop(namespace, None)

    async def close_politely(self, how: str) -> None:
        """A WebSocket close frame ("ws"), or an Engine.IO close packet ("eio")."""
        try:
            if how == "ws":
                await self.stream.send_all(ws_frame(struct.pack("!H", 1000), opcode=8))
            else:
                await self.send("1")
            with trio.move_on_after(5):
                while True:
                    await self.recv(5)
        except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(self.stream)

    async def drop(self, reset: bool) -> None:
        """Go away without a goodbye: FIN, or RST when ``reset``."""
        if reset:
            self.stream.socket.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_LINGER,
                                          struct.pack("ii", 1, 0))
        await trio.aclose_forcefully(self.stream)


async def churn(port: int, total_sockets: int, seed: int, concurrency: int) -> dict:
    """Run the churn described in the module docstring; return the counts."""
    rng = random.Random(seed)
    plans: list[list[str]] = []
    planned = 0
    while planned < total_sockets:
        k = min(rng.randint(1, 4), total_sockets - planned)
        plans.append(rng.sample(NAMESPACES, k))
        planned += k
    stats = {"sockets": 0, "connections": 0, "joins": 0, "leaves": 0, "published": 0,
             "namespace_disconnects": 0, "polite": 0, "dropped": 0, "events_seen": 0}

    async def socket_life(client: RawClient, namespace: str, ack: int) -> int:
        sid = client.sids[namespace]
        joined = set(rng.sample(ROOMS, rng.randint(1, 4)))
        ack += 1
        (reply,) = await client.call(ack, "join", sorted(joined), namespace=namespace)
        assert reply == {"rooms": sorted(joined | {sid})}, reply
        stats["joins"] += 1
        if rng.random() < 0.5:
            gone = set(rng.sample(sorted(joined), rng.randint(1, len(joined))))
            ack += 1
            (reply,) = await client.call(ack, "leave", sorted(gone), namespace=namespace)
            joined -= gone
            assert reply == {"rooms": sorted(joined | {sid})}, reply
            stats["leaves"] += 1
        if rng.random() < 0.15:
            ack += 1
            (reply,) = await client.call(ack, "publish", rng.choice(ROOMS), "chat", ack,
                                         namespace=namespace)
            assert isinstance(reply.get("recipients"), int), reply
            stats["published"] += 1
        return ack

    async def connection_life(namespaces: list[str]) -> None:
        client = await RawClient.connect(port)
        stats["connections"] += 1
        ack = 0
        for namespace in namespaces:
            await client.open_namespace(namespace)
            stats["sockets"] += 1
        for namespace in namespaces:
            ack = await socket_life(client, namespace, ack)
        if rng.random() < 0.3:
            await trio.sleep(rng.random() * 0.05)  # overlap more lifetimes
        for namespace in namespaces:
            if rng.random() < 0.2:
                await client.leave_namespace(namespace)
                stats["namespace_disconnects"] += 1
        stats["events_seen"] += client.events
        roll = rng.random()
        if roll < 0.5:
            await client.close_politely("ws" if roll < 0.3 else "eio")
            stats["polite"] += 1
        else:
            await client.drop(reset=roll > 0.8)
            stats["dropped"] += 1

    remaining = iter(plans)

    async def worker() -> None:
        for namespaces in remaining:
            await connection_life(namespaces)

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return stats


def main() -> None:
    port, total, seed, concurrency = (int(a) for a in sys.argv[1:5])
    stats = trio.run(churn, port, total, seed, concurrency)
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main()
