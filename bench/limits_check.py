"""Check docs/limits.md's worst case with a measurement: ``python bench/limits_check.py``.

Starts ``roomd serve`` with the default configuration (the relay app, namespace "/"), and
from this process (another process than the server's):

1. opens N WebSocket connections (default 10,000), each connected to "/";
2. makes every socket join ``rooms_per_socket`` (100) rooms of 250-character names, all
   distinct: the most membership the relay lets a client create;
3. makes ATTACKERS of them (default 1,000) each send most of a maxPayload-sized message
   and never finish it, which is more than the memory budget can hold: the server must
   refuse the excess with close code 1013;

and prints the server's RSS after each step beside what docs/limits.md computes. Needs
2 x N file descriptors (``ulimit -n``). Loopback only. Takes a minute or two.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import trio

MB = 1024 * 1024


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def frame(payload: bytes | str, opcode: int | None = None, fin: bool = True,
          length: int | None = None) -> bytes:
    if isinstance(payload, str):
        payload, opcode = payload.encode(), 1 if opcode is None else opcode
    opcode = 2 if opcode is None else opcode
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\0\0\0\0" + payload  # a zero mask: the payload goes as it is


class Client:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def frame(self) -> bytes:
        async def need(n: int) -> None:
            while len(self.buf) < n:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError
                self.buf += data
        await need(2)
        n, pos = self.buf[1] & 0x7F, 2
        if n == 126:
            await need(4)
            n, pos = int.from_bytes(self.buf[2:4], "big"), 4
        elif n == 127:
            await need(10)
            n, pos = int.from_bytes(self.buf[2:10], "big"), 10
        await need(pos + n)
        payload = bytes(self.buf[pos:pos + n])
        del self.buf[:pos + n]
        return payload

    async def message(self, prefix: bytes) -> bytes:
        while True:
            payload = await self.frame()
            if payload == b"2":
                await self.stream.send_all(frame("3"))
            elif payload.startswith(prefix):
                return payload


async def connect(port: int) -> Client:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send_all((
        "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    client = Client(stream)
    while b"\r\n\r\n" not in client.buf:
        data = await stream.receive_some(65536)
        if not data:
            raise EOFError("closed during the upgrade")
        client.buf += data
    head, _, rest = bytes(client.buf).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    client.buf = bytearray(rest)
    await client.message(b"0{")
    await stream.send_all(frame("40"))
    await client.message(b"40")
    return client


async def in_batches(items, fn, width: int = 200) -> list:
    out: list = [None] * len(items)

    async def run(i: int, item) -> None:
        async with limiter:
            out[i] = await fn(i, item)

    limiter = trio.CapacityLimiter(width)
    async with trio.open_nursery() as nursery:
        for i, item in enumerate(items):
            nursery.start_soon(run, i, item)
    return out


async def main(args: argparse.Namespace) -> None:
    workdir = tempfile.mkdtemp(prefix="roomd-limits-")
    log = open(os.path.join(workdir, "roomd.log"), "w+")
    exe = os.path.join(os.path.dirname(sys.executable), "roomd")
    proc = subprocess.Popen([exe, "serve", "--port", "0", "--socket",
                             os.path.join(workdir, "admin.sock")], stdout=log, stderr=log)
    try:
        port = None
        with trio.fail_after(20):
            while port is None:
                await trio.sleep(0.1)
                log.seek(0)
                found = re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read())
                port = int(found.group(1)) if found else None
        base = rss(proc.pid)
        print(f"server RSS at start: {base / MB:.1f} MiB")

        t0 = time.time()
        clients = await in_batches(range(args.n), lambda i, _: connect(port))
        idle = rss(proc.pid)
        print(f"{args.n} connections: RSS {idle / MB:.1f} MiB, "
              f"{(idle - base) / args.n / 1024:.1f} KiB per connection ({time.time() - t0:.0f} s)")

        async def join(i: int, client: Client) -> None:
            rooms = [f"{i}-{j}-" + "x" * (250 - len(f"{i}-{j}-")) for j in range(args.rooms)]
            await client.stream.send_all(frame('421["join",' + json.dumps(rooms) + "]"))
            answer = await client.message(b"431")
            assert b'"rooms"' in answer, answer[:200]

        t0 = time.time()
        await in_batches(clients, join)
        joined = rss(proc.pid)
        print(f"{args.rooms} rooms each: RSS {joined / MB:.1f} MiB, "
              f"{(joined - base) / args.n / 1024:.1f} KiB per connection "
              f"({time.time() - t0:.0f} s)")

        chunk = b"a" * 65536
        size = 1_000_000
        refused = 0
        peak = joined

        async def attack(i: int, client: Client) -> None:
            nonlocal refused, peak
            try:
                await client.stream.send_all(frame(b"", opcode=1, length=size) + b"4")
                sent = 1
                while sent + len(chunk) < size - 1000:
                    await client.stream.send_all(chunk)
                    sent += len(chunk)
                peak = max(peak, rss(proc.pid))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                refused += 1

        t0 = time.time()
        await in_batches(clients[:args.attackers], attack, width=50)
        await trio.sleep(1)
        peak = max(peak, rss(proc.pid))
        print(f"{args.attackers} connections each holding a partial {size}-byte message: "
              f"RSS peak {peak / MB:.1f} MiB ({time.time() - t0:.0f} s); "
              f"{refused} refused while sending")
        closed = 0
        for client in clients[:args.attackers]:
            with trio.move_on_after(0.05):
                try:
                    while True:
                        payload = await client.frame()
                        if payload[:2] == (1013).to_bytes(2, "big"):
                            closed += 1
                            break
                except (EOFError, trio.BrokenResourceError):
                    pass
        print(f"close code 1013 (memory budget spent) seen by {closed} of them")
        for client in clients:
            await client.stream.aclose()
        await trio.sleep(2)
        print(f"after every client left: RSS {rss(proc.pid) / MB:.1f} MiB")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=10_000, help="connections")
    parser.add_argument("--rooms", type=int, default=100, help="rooms per socket")
    parser.add_argument("--attackers", type=int, default=1000,
                        help="connections that send an unfinished message")
    trio.run(main, parser.parse_args())
